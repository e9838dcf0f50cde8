"""Lab Streaming Layer: the MoCap stream layout shared by ``--source lsl://NAME`` and
``--sink lsl://NAME``, and the sink that publishes anonymized bodies as an LSL outlet.

Layout (one sample per frame, one body per stream): 75 float32 channels, x, y, z of each of the
25 Kinect v2 joints in :data:`streamtmr.skeleton.JOINT_NAMES` order, metres, Kinect camera
axes. The stream's ``desc`` follows the LSL/XDF MoCap meta-data conventions: ``channels`` holds
one ``channel`` per value with ``label`` (``SpineBase_X``), ``marker`` (``SpineBase``), ``type``
(``PositionX``/``PositionY``/``PositionZ``) and ``unit`` (``meters``); ``setup/markers`` lists
the joints; ``acquisition`` names the producer. The outlet's stream type is ``MoCap``, its
nominal rate 30 Hz, its source id ``streamtmr:NAME@HOST`` (stable, so inlets recover after a
restart). A sample is stamped with the LSL clock when it is pushed.

An outlet carries one body: which one is chosen as for the avatar sinks
(:mod:`streamtmr.stream.follow`, ``lsl://NAME?body=first|nearest|ID``); frames without that
body push nothing (the stream is irregular there, as LSL allows).
"""

from __future__ import annotations

import socket
from urllib.parse import parse_qs, urlsplit

import numpy as np

from streamtmr.skeleton import JOINT_NAMES, NUM_JOINTS
from streamtmr.stream import follow
from streamtmr.stream.frame import Frame
from streamtmr.stream.sinks import Sink, SinkError

CHANNELS = NUM_JOINTS * 3
RATE_HZ = 30.0
STREAM_TYPE = "MoCap"
AXES = ("X", "Y", "Z")
#: Channel labels in sample order.
LABELS = tuple(f"{j}_{a}" for j in JOINT_NAMES for a in AXES)
#: ``unit`` strings of the MoCap meta-data → metres per unit.
UNITS = {"meters": 1.0, "metres": 1.0, "m": 1.0, "centimeters": 0.01, "centimetres": 0.01,
         "cm": 0.01, "millimeters": 0.001, "millimetres": 0.001, "mm": 0.001}


def import_pylsl():
    """pylsl, or ImportError naming the extra that installs it."""
    try:
        import pylsl
    except ImportError as e:  # the wheel bundles liblsl; a failure here is the package
        raise ImportError(f"pylsl is not installed or liblsl did not load ({e}); "
                          f"`pip install 'streamtmr[lsl]'`") from None
    return pylsl


def stream_name(spec: str, what: str) -> tuple[str, dict[str, list[str]]]:
    """``lsl://NAME?query`` → (NAME, parsed query); ``what`` is ``--source`` or ``--sink``."""
    u = urlsplit(spec)
    name = (u.netloc + u.path).strip("/")
    if u.scheme != "lsl" or not name:
        raise ValueError(f"{what} {spec!r}: expected lsl://NAME (an LSL stream name)")
    return name, parse_qs(u.query)


def describe(info, *, producer: str = "streamtmr") -> None:
    """Write the MoCap meta-data of this layout into a ``pylsl.StreamInfo``'s ``desc``."""
    desc = info.desc()
    channels = desc.append_child("channels")
    for joint in JOINT_NAMES:
        for axis in AXES:
            ch = channels.append_child("channel")
            ch.append_child_value("label", f"{joint}_{axis}")
            ch.append_child_value("marker", joint)
            ch.append_child_value("type", f"Position{axis}")
            ch.append_child_value("unit", "meters")
    markers = desc.append_child("setup").append_child("markers")
    for joint in JOINT_NAMES:
        markers.append_child("marker").append_child_value("label", joint)
    acq = desc.append_child("acquisition")
    acq.append_child_value("manufacturer", producer)
    acq.append_child_value("model", "Kinect v2 skeleton (25 joints)")


def read_channels(info) -> list[tuple[str, str, str]]:
    """(label, type, unit) of every ``desc/channels/channel`` (empty when there is none)."""
    out = []
    ch = info.desc().child("channels").child("channel")
    while not ch.empty():
        out.append((ch.child_value("label"), ch.child_value("type"), ch.child_value("unit")))
        ch = ch.next_sibling("channel")
    return out


def channel_layout(info) -> tuple[np.ndarray, float]:
    """How a stream's samples map to ``[25, 3]`` metres: (index of each of our 75 channels
    in the sample, metres per unit). Streams without channel labels are taken to be in this
    layout; labelled ones are matched by label. Raises ValueError naming what does not fit."""
    n = info.channel_count()
    if n != CHANNELS:
        raise ValueError(f"LSL stream {info.name()!r} has {n} channels; expected {CHANNELS} "
                         f"(x, y, z of the 25 Kinect v2 joints)")
    found = read_channels(info)
    if not found or not any(label for label, _, _ in found):
        return np.arange(CHANNELS), 1.0
    where = {label: i for i, (label, _, _) in enumerate(found)}
    missing = [label for label in LABELS if label not in where]
    if missing:
        raise ValueError(f"LSL stream {info.name()!r}: channel labels {missing[:3]} "
                         f"(and {max(len(missing) - 3, 0)} more) are missing; expected "
                         f"JointName_X/Y/Z labels of the Kinect v2 joints")
    units = {unit.lower() for _, _, unit in found if unit}
    unknown = units - set(UNITS)
    if len(units) > 1 or unknown:
        raise ValueError(f"LSL stream {info.name()!r}: channel units {sorted(units)}; expected "
                         f"one of {', '.join(sorted(UNITS))}")
    return np.array([where[label] for label in LABELS]), UNITS[units.pop()] if units else 1.0


class LslSink(Sink):
    """An LSL outlet of anonymized bodies (see the module for the layout)."""

    def __init__(self, name: str, chooser: follow.Follow | None = None):
        super().__init__()
        pylsl = import_pylsl()
        self.stream_name = name
        self.name = f"lsl({name})"
        self.follow = chooser or follow.Follow()
        if self.follow.outputs != 1:
            raise SinkError(f"--sink lsl://{name}: one body per outlet (no fanout); open one "
                            f"lsl:// sink per body with ?body=ID")
        self.source_id = f"streamtmr:{name}@{socket.gethostname()}"
        info = pylsl.StreamInfo(name, STREAM_TYPE, CHANNELS, RATE_HZ, pylsl.cf_float32,
                                self.source_id)
        describe(info)
        self.outlet = pylsl.StreamOutlet(info)

    def send(self, frame: Frame, payload: bytes) -> bool:
        (body,) = self.follow.assign(frame)
        if body is None:
            return True
        self.outlet.push_sample(np.asarray(body.joints, np.float32).reshape(CHANNELS).tolist())
        self.sent += 1
        return True

    def close(self) -> None:
        self.outlet = None  # pylsl destroys the outlet with its last reference


def open_lsl_sink(spec: str) -> LslSink:
    """``lsl://NAME[?body=first|nearest|ID]`` → :class:`LslSink`."""
    try:
        name, query = stream_name(spec, "--sink")
        chooser = follow.from_query(query)
        return LslSink(name, chooser)
    except (ValueError, ImportError) as e:
        raise SinkError(str(e) if str(e).startswith("--sink") else f"--sink {spec}: {e}") \
            from None
