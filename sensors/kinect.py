"""Live depth sensors: Kinect v2 (pykinect2, Windows) and Azure Kinect (pykinect_azure).

The conversions from the SDK's body structures to frames are pure functions
(:func:`bodies_from_pykinect2`, :func:`bodies_from_azure`), tested on recorded arrays with the
SDKs' layouts. The sources only poll the SDK and call them. On systems without the sensor's
SDK, opening a source raises :class:`~sensors.base.SourceError` naming the alternatives.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from sensors.base import Source, SourceError
from streamtmr import skeleton
from streamtmr.skeleton import NUM_JOINTS
from streamtmr.stream.frame import Body, Frame

ALTERNATIVES = ("replay:PATH (a .skeleton file/folder, a store or a recording), synthetic "
                "(SynthKinect people), or zmq://HOST:PORT (a sensor process elsewhere "
                "publishing the wire format)")


def bodies_from_pykinect2(bodies: Iterable[Any], max_bodies: int = 6) -> list[Body]:
    """pykinect2 ``KinectBodyFrameData.bodies`` → tracked bodies.

    Each body has ``is_tracked``, ``tracking_id`` and, when tracked, ``joints``: 25 ``_Joint``
    structures indexed by ``JointType`` (the Kinect v2 order of :mod:`streamtmr.skeleton`) with
    ``Position.x/y/z`` (camera space, metres) and ``TrackingState`` (0, 1, 2).
    """
    out = []
    for b in bodies:
        if b is None or not b.is_tracked:
            continue
        joints = np.empty((NUM_JOINTS, 3), np.float32)
        state = np.empty(NUM_JOINTS, np.uint8)
        js = b.joints
        for k in range(NUM_JOINTS):
            p = js[k].Position
            joints[k] = (p.x, p.y, p.z)
            state[k] = min(max(int(js[k].TrackingState), 0), 2)
        out.append(Body(int(b.tracking_id), joints, state))
        if len(out) == max_bodies:
            break
    return out


#: Azure Kinect confidence level (none, low, medium, high) → Kinect v2 tracking state.
_AZURE_STATE = np.array([0, 1, 2, 2], np.uint8)
#: For each Kinect v2 joint, the Azure joints it is made of (first one for the state).
_AZURE_SOURCES = [np.flatnonzero(skeleton.AZURE_MAP[j]) for j in range(NUM_JOINTS)]


def bodies_from_azure(bodies: Iterable[tuple[int, Any]], max_bodies: int = 6) -> list[Body]:
    """Azure Kinect bodies ``(id, k4abt_skeleton_t)`` → Kinect v2 bodies.

    A skeleton has ``joints``: 32 ``k4abt_joint_t`` with ``position.xyz.x/y/z`` (millimetres,
    depth-camera axes) and ``confidence_level`` (0–3). Positions go through
    :func:`streamtmr.skeleton.from_azure_kinect`; a joint's state is the lowest state of the
    Azure joints it is made of.
    """
    out = []
    for bid, skel in bodies:
        js = skel.joints
        mm = np.empty((32, 3), np.float32)
        conf = np.empty(32, np.int64)
        for k in range(32):
            p = js[k].position.xyz
            mm[k] = (p.x, p.y, p.z)
            conf[k] = min(max(int(js[k].confidence_level), 0), 3)
        az_state = _AZURE_STATE[conf]
        state = np.array([az_state[src].min() for src in _AZURE_SOURCES], np.uint8)
        out.append(Body(int(bid), skeleton.from_azure_kinect(mm).astype(np.float32), state))
        if len(out) == max_bodies:
            break
    return out


class KinectSource(Source):
    """Kinect v2 through pykinect2 (Windows, Kinect for Windows SDK 2.0): up to 6 bodies."""

    name = "kinect"

    def __init__(self, max_bodies: int = 6, idle_ms: int = 100):
        super().__init__()
        if sys.platform != "win32":
            raise SourceError(f"--source kinect needs Windows with the Kinect for Windows SDK "
                              f"2.0 and pykinect2; on {sys.platform} use {ALTERNATIVES}")
        try:
            from pykinect2 import PyKinectRuntime, PyKinectV2
        except ImportError as e:
            raise SourceError(f"--source kinect: pykinect2 is not installed ({e}); "
                              f"`pip install streamtmr[kinect]`, or use {ALTERNATIVES}") from None
        try:
            self._rt = PyKinectRuntime.PyKinectRuntime(PyKinectV2.FrameSourceTypes_Body)
        except Exception as e:  # COM errors when no sensor or no SDK runtime
            raise SourceError(f"--source kinect: cannot open the sensor ({e}); "
                              f"alternatives: {ALTERNATIVES}") from None
        self.max_bodies = max_bodies
        self.idle_ns = idle_ms * 1_000_000

    def frames(self) -> Iterator[Frame | None]:
        seq, last = 0, time.monotonic_ns()
        while not self.closed:
            if not self._rt.has_new_body_frame():
                time.sleep(0.002)
                if time.monotonic_ns() - last > self.idle_ns:
                    last = time.monotonic_ns()
                    yield None
                continue
            data = self._rt.get_last_body_frame()
            if data is None or data.bodies is None:
                continue
            last = time.monotonic_ns()
            rel = int(getattr(data, "relative_time", 0) or 0)  # 100 ns ticks
            t_ns = rel * 100 if rel > 0 else last
            yield Frame(seq, t_ns, bodies_from_pykinect2(data.bodies, self.max_bodies),
                        self.name)
            seq += 1

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._rt.close()


class AzureKinectSource(Source):
    """Azure Kinect through pykinect_azure (Azure Kinect Sensor and Body Tracking SDKs)."""

    name = "azure"

    def __init__(self, max_bodies: int = 6):
        super().__init__()
        try:
            import pykinect_azure as pykinect
        except ImportError as e:
            raise SourceError(f"--source azure: pykinect_azure is not installed ({e}); "
                              f"use {ALTERNATIVES}") from None
        try:
            pykinect.initialize_libraries(track_body=True)
            config = pykinect.default_configuration
            config.color_resolution = pykinect.K4A_COLOR_RESOLUTION_OFF
            config.depth_mode = pykinect.K4A_DEPTH_MODE_NFOV_UNBINNED
            self._device = pykinect.start_device(config=config)
            self._tracker = pykinect.start_body_tracker()
        except Exception as e:  # missing SDK libraries or device
            raise SourceError(f"--source azure: cannot open the sensor ({e}); "
                              f"alternatives: {ALTERNATIVES}") from None
        self.max_bodies = max_bodies

    def frames(self) -> Iterator[Frame]:
        seq = 0
        while not self.closed:
            self._device.update()
            bf = self._tracker.update()
            n = bf.get_num_bodies()
            pairs = [(bf.get_body(i).id, bf.get_body_skeleton(i)) for i in range(n)]
            yield Frame(seq, time.monotonic_ns(), bodies_from_azure(pairs, self.max_bodies),
                        self.name)
            seq += 1

    def close(self) -> None:
        if not self.closed:
            super().close()
            for obj in (getattr(self, "_tracker", None), getattr(self, "_device", None)):
                for method in ("destroy", "close"):
                    fn = getattr(obj, method, None)
                    if fn is not None:
                        fn()
                        break
