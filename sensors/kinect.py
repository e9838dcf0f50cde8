"""Live depth sensors: Kinect v2 (kinect-next, else pykinect2024; Windows) and Azure Kinect
(pykinect_azure).

Kinect v2 needs Windows 10/11 (64-bit), the Kinect for Windows SDK 2.0 runtime and a USB 3.0
port. :class:`KinectSource` opens the sensor through the first library that works, in the order
of :data:`KINECT_BACKENDS`: kinect-next (typed, Python 3.10–3.13, event-driven waits, frames on
the sensor clock), then pykinect2024 (the maintained fork of PyKinect2). pykinect2 0.1.0 itself
calls ``time.clock()``, gone since Python 3.8, and is not used.

The conversions from each library's body structures to frames are pure functions
(:func:`bodies_from_kinect_next`, :func:`bodies_from_pykinect`, :func:`bodies_from_azure`),
tested on structures with the libraries' layouts. Every joint keeps its tracking state from the
SDK (0 not tracked, 1 inferred, 2 tracked). The sources only wait for the SDK and call them. On
systems without a sensor's SDK, opening a source raises :class:`~sensors.base.SourceError`
naming what is missing and the alternatives.

Shutdown: waits end every ``idle_ms`` (an idle tick), so a stop requested by Ctrl+C or
Ctrl+Break (``streamtmr run`` handles SIGINT and, on Windows, SIGBREAK) takes effect within
that time; :meth:`KinectSource.close` releases the sensor.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from sensors.base import Source, SourceError
from streamtmr import skeleton
from streamtmr.skeleton import NUM_JOINTS
from streamtmr.stream.frame import Body, Frame

log = logging.getLogger(__name__)

ALTERNATIVES = ("replay:PATH (a .skeleton file/folder, a store or a recording), synthetic "
                "(SynthKinect people), or zmq://HOST:PORT (a sensor process elsewhere "
                "publishing the wire format)")


def _body(tracking_id: int, points: Iterable[tuple[float, float, float]],
          states: Iterable[int]) -> Body:
    joints = np.array(list(points), np.float32).reshape(NUM_JOINTS, 3)
    state = np.clip(np.fromiter(states, np.int64, NUM_JOINTS), 0, 2).astype(np.uint8)
    return Body(int(tracking_id), joints, state)


def bodies_from_kinect_next(bodies: Iterable[Any], max_bodies: int = 6) -> list[Body]:
    """kinect-next ``FrameSet.bodies`` → tracked bodies.

    Each ``kinect_next.Body`` has ``is_tracked``, ``tracking_id`` and ``joints``, a
    ``JointCollection`` indexed by ``JointType`` (0–24, the Kinect v2 order of
    :mod:`streamtmr.skeleton`) whose ``Joint`` has ``position`` (``Vector3`` x, y, z: camera
    space, metres) and ``tracking_state`` (``TrackingState`` 0, 1, 2).
    """
    out = []
    for b in bodies:
        if b is None or not b.is_tracked:
            continue
        js = [b.joints[k] for k in range(NUM_JOINTS)]
        out.append(_body(b.tracking_id, ((j.position.x, j.position.y, j.position.z) for j in js),
                         (int(j.tracking_state) for j in js)))
        if len(out) == max_bodies:
            break
    return out


def bodies_from_pykinect(bodies: Iterable[Any], max_bodies: int = 6) -> list[Body]:
    """pykinect2024 (and pykinect2) ``KinectBodyFrameData.bodies`` → tracked bodies.

    Each body has ``is_tracked``, ``tracking_id`` and, when tracked, ``joints``: a pointer to
    25 ``_Joint`` structures indexed by ``JointType`` (the Kinect v2 order) with
    ``Position.x/y/z`` (camera space, metres) and ``TrackingState`` (0, 1, 2).
    """
    out = []
    for b in bodies:
        if b is None or not b.is_tracked:
            continue
        js = [b.joints[k] for k in range(NUM_JOINTS)]
        out.append(_body(b.tracking_id, ((j.Position.x, j.Position.y, j.Position.z) for j in js),
                         (int(j.TrackingState) for j in js)))
        if len(out) == max_bodies:
            break
    return out


class KinectNextBackend:
    """Kinect v2 through kinect-next: ``wait_for_frames`` blocks on the SDK's frame event."""

    name = "kinect-next"
    convert = staticmethod(bodies_from_kinect_next)

    def __init__(self) -> None:
        import kinect_next
        self._lib = kinect_next
        self.sensor = kinect_next.KinectSensor(kinect_next.StreamType.BODY)

    def wait(self, timeout_ms: int) -> tuple[int, Any] | None:
        """(sensor time in ns, bodies) of the next body frame, None after ``timeout_ms``.
        Raises EOFError once the sensor was closed."""
        try:
            frames = self.sensor.wait_for_frames(timeout_ms=timeout_ms)
        except self._lib.KinectTimeoutError:
            return None
        except self._lib.KinectClosedError:
            raise EOFError from None
        return int(frames.relative_time_ns), frames.bodies

    def close(self) -> None:
        self.sensor.close()


class PyKinect2024Backend:
    """Kinect v2 through pykinect2024: its runtime thread fills the last body frame, polled."""

    name = "pykinect2024"
    convert = staticmethod(bodies_from_pykinect)

    def __init__(self) -> None:
        # pykinect2024 0.1.2024 builds its body array with ``numpy.object`` (removed in NumPy
        # 1.24) and swallows the error, so it would deliver no body frame: restore the alias.
        if "object" not in np.__dict__:
            np.object = object  # type: ignore[attr-defined]
        from pykinect2024 import PyKinect2024, PyKinectRuntime
        self.rt = PyKinectRuntime.PyKinectRuntime(PyKinect2024.FrameSourceTypes_Body)

    def wait(self, timeout_ms: int) -> tuple[int, Any] | None:
        deadline = time.monotonic() + timeout_ms / 1000
        while not self.rt.has_new_body_frame():
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.002)
        data = self.rt.get_last_body_frame()
        if data is None or data.bodies is None:
            return None
        return int(getattr(data, "relative_time", 0) or 0) * 100, data.bodies  # 100 ns ticks

    def close(self) -> None:
        self.rt.close()


#: Kinect v2 libraries, tried in this order.
KINECT_BACKENDS: tuple[Callable[[], Any], ...] = (KinectNextBackend, PyKinect2024Backend)


def open_kinect_backend(backends: Iterable[Callable[[], Any]] = KINECT_BACKENDS):
    """The first backend that opens; SourceError saying why each one did not."""
    why = []
    for make in backends:
        name = getattr(make, "name", getattr(make, "__name__", "backend"))
        try:
            backend = make()
        except ImportError as e:
            why.append(f"{name}: not installed ({e})")
            continue
        except Exception as e:  # COM/SDK errors: no sensor, no runtime, no USB 3.0 port
            why.append(f"{name}: cannot open the sensor ({type(e).__name__}: {e})")
            continue
        log.info("Kinect v2 through %s", name)
        return backend
    raise SourceError(f"--source kinect: no Kinect v2 library could open the sensor "
                      f"({'; '.join(why)}); install the Kinect for Windows SDK 2.0 and "
                      f"`pip install 'streamtmr[kinect]'`, or use {ALTERNATIVES}")


class KinectSource(Source):
    """Kinect v2 (Windows, Kinect for Windows SDK 2.0): up to 6 bodies with joint states."""

    name = "kinect"

    def __init__(self, max_bodies: int = 6, idle_ms: int = 100,
                 backends: Iterable[Callable[[], Any]] | None = None):
        super().__init__()
        if backends is None and sys.platform != "win32":
            raise SourceError(f"--source kinect needs Windows with the Kinect for Windows SDK "
                              f"2.0 and kinect-next or pykinect2024; on {sys.platform} use "
                              f"{ALTERNATIVES}")
        self.backend = open_kinect_backend(KINECT_BACKENDS if backends is None else backends)
        self.name = f"kinect({self.backend.name})"
        self.max_bodies = max_bodies
        self.idle_ms = idle_ms

    def frames(self) -> Iterator[Frame | None]:
        seq = 0
        while not self.closed:
            try:
                got = self.backend.wait(self.idle_ms)
            except EOFError:  # closed from another thread
                return
            if got is None:
                yield None
                continue
            sensor_ns, bodies = got
            t_ns = sensor_ns if sensor_ns > 0 else time.monotonic_ns()
            yield Frame(seq, t_ns, self.backend.convert(bodies, self.max_bodies), self.name)
            seq += 1

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.backend.close()


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
