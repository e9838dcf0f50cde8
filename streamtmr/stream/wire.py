"""The wire protocol: one msgpack map per sensor frame, one ZeroMQ frame per message.

Message (version 1)::

    {"v": 1, "src": str, "seq": int, "t_ns": int, "skeleton": "kinect_v2",
     "bodies": [{"id": int, "joints": bin(float32 LE, 25x3), "state": bin(uint8, 25)}]}

Anonymized messages add ``"anon": true, "model": str, "lat_ns": int``. Unknown keys are
ignored (forward compatible within a version); everything listed above is validated strictly.
:func:`decode` never raises anything but :class:`WireError`, whose ``reason`` is a short code
meant for counters. Hostile input cannot make the decoder allocate much: the message size is
capped before unpacking and msgpack's own limits bound every string, blob, array and map.

Recordings of a stream are files of length-prefixed wire messages (see :class:`Recorder`).
"""

from __future__ import annotations

import logging
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np

from streamtmr.skeleton import NUM_JOINTS
from streamtmr.stream.frame import TRACKED, Body, Frame

log = logging.getLogger(__name__)

VERSION = 1
SKELETON = "kinect_v2"
#: Default caps: message size (bytes) and bodies per message.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_BODIES = 6
#: Joint coordinates beyond this many metres are rejected (no depth sensor sees that far).
MAX_ABS_COORD = 100.0
MAX_STR = 256
MAX_ID = 2**64 - 1

_JOINTS_BYTES = NUM_JOINTS * 3 * 4
_STATE_BYTES = NUM_JOINTS
_F32 = np.dtype("<f4")
REASONS = ("oversized", "bad_msgpack", "not_map", "bad_version", "missing_field", "bad_type",
            "bad_skeleton", "bad_shape", "non_finite", "out_of_range", "bad_state",
            "too_many_bodies", "bad_id", "duplicate_id")


class WireError(ValueError):
    """A message that is not valid wire format. ``reason`` is one of a few short codes."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AnonInfo:
    """What an anonymized message adds: the model's name and the node's latency (ns), and
    ``"unevaluated": true`` when the model runs without a privacy card."""

    model: str
    lat_ns: int
    unevaluated: bool = False


@dataclass
class Message:
    frame: Frame
    anon: AnonInfo | None = None


def encode(frame: Frame, anon: AnonInfo | None = None) -> bytes:
    """Serialize a frame (and, for anonymized output, its :class:`AnonInfo`)."""
    bodies = []
    for b in frame.bodies:
        joints = np.asarray(b.joints)
        state = np.asarray(b.state)
        if joints.shape != (NUM_JOINTS, 3) or state.shape != (NUM_JOINTS,):
            raise ValueError(f"body {b.id}: joints {joints.shape} / state {state.shape}, "
                             f"expected (25, 3) / (25,)")
        bodies.append({"id": int(b.id),
                       "joints": np.ascontiguousarray(joints, dtype=_F32).tobytes(),
                       "state": np.ascontiguousarray(state, dtype=np.uint8).tobytes()})
    msg: dict[str, Any] = {"v": VERSION, "src": str(frame.src), "seq": int(frame.seq),
                           "t_ns": int(frame.t_ns), "skeleton": SKELETON, "bodies": bodies}
    if anon is not None:
        msg.update(anon=True, model=str(anon.model), lat_ns=int(anon.lat_ns))
        if anon.unevaluated:
            msg["unevaluated"] = True
    return msgpack.packb(msg, use_bin_type=True)


def _int(msg: dict, key: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if key not in msg:
        raise WireError("missing_field", key)
    v = msg[key]
    if type(v) is not int:
        raise WireError("bad_type", f"{key} must be an int")
    if not lo <= v <= hi:
        raise WireError("bad_type", f"{key} out of range")
    return v


def _str(msg: dict, key: str) -> str:
    if key not in msg:
        raise WireError("missing_field", key)
    v = msg[key]
    if type(v) is not str:
        raise WireError("bad_type", f"{key} must be a str")
    return v


def _body(d: Any, i: int) -> Body:
    if type(d) is not dict:
        raise WireError("bad_type", f"bodies[{i}] must be a map")
    for key in ("id", "joints", "state"):
        if key not in d:
            raise WireError("missing_field", f"bodies[{i}].{key}")
    bid = d["id"]
    if type(bid) is not int or not 0 <= bid <= MAX_ID:
        raise WireError("bad_id", f"bodies[{i}].id must be an int in [0, 2^64)")
    joints, state = d["joints"], d["state"]
    if type(joints) is not bytes or type(state) is not bytes:
        raise WireError("bad_type", f"bodies[{i}].joints/state must be bin")
    if len(joints) != _JOINTS_BYTES or len(state) != _STATE_BYTES:
        raise WireError("bad_shape", f"bodies[{i}]: joints {len(joints)} B (want {_JOINTS_BYTES}),"
                                     f" state {len(state)} B (want {_STATE_BYTES})")
    j = np.frombuffer(joints, dtype=_F32).reshape(NUM_JOINTS, 3)
    if not np.isfinite(j).all():
        raise WireError("non_finite", f"bodies[{i}].joints")
    if np.abs(j).max() > MAX_ABS_COORD:
        raise WireError("out_of_range", f"bodies[{i}].joints beyond {MAX_ABS_COORD} m")
    s = np.frombuffer(state, dtype=np.uint8)
    if s.max() > TRACKED:
        raise WireError("bad_state", f"bodies[{i}].state values must be 0, 1 or 2")
    return Body(bid, j, s)


def decode_message(data: bytes | bytearray | memoryview, *, max_bodies: int = MAX_BODIES,
                   max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Parse and validate one message. Joint arrays are read-only views on ``data``."""
    if len(data) > max_bytes:
        raise WireError("oversized", f"{len(data)} bytes > {max_bytes}")
    try:
        msg = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_bin_len=max(_JOINTS_BYTES, _STATE_BYTES), max_str_len=MAX_STR,
            max_array_len=max(max_bodies, 16), max_map_len=32, max_ext_len=0)
    except Exception as e:  # msgpack raises many types for hostile input; all mean the same
        text = str(e)
        raise WireError("oversized" if "exceeds max" in text else "bad_msgpack",
                        text[:80]) from None
    if type(msg) is not dict:
        raise WireError("not_map", type(msg).__name__)
    if "v" not in msg:
        raise WireError("missing_field", "v")
    if type(msg["v"]) is not int or msg["v"] != VERSION:
        raise WireError("bad_version", repr(msg["v"])[:20])
    src = _str(msg, "src")
    seq = _int(msg, "seq")
    t_ns = _int(msg, "t_ns")
    if _str(msg, "skeleton") != SKELETON:
        raise WireError("bad_skeleton", msg["skeleton"][:40])
    if "bodies" not in msg:
        raise WireError("missing_field", "bodies")
    raw_bodies = msg["bodies"]
    if type(raw_bodies) is not list:
        raise WireError("bad_type", "bodies must be an array")
    if len(raw_bodies) > max_bodies:
        raise WireError("too_many_bodies", f"{len(raw_bodies)} > {max_bodies}")
    bodies = [_body(d, i) for i, d in enumerate(raw_bodies)]
    if len({b.id for b in bodies}) != len(bodies):
        raise WireError("duplicate_id", "two bodies share an id")
    anon = None
    if "anon" in msg:
        if msg["anon"] is not True:
            raise WireError("bad_type", "anon must be true when present")
        anon = AnonInfo(_str(msg, "model"), _int(msg, "lat_ns"),
                        unevaluated=msg.get("unevaluated") is True)
    return Message(Frame(seq, t_ns, bodies, src), anon)


def decode(data: bytes | bytearray | memoryview, *, max_bodies: int = MAX_BODIES,
           max_bytes: int = MAX_MESSAGE_BYTES) -> Frame:
    """Parse and validate one message into a :class:`Frame`; raises :class:`WireError`."""
    return decode_message(data, max_bodies=max_bodies, max_bytes=max_bytes).frame


class Decoder:
    """Decodes a stream of messages for a source: counts every message, every drop by its
    :class:`WireError` reason (``dropped``), logs the first few drops, and times the decode.
    ``received == decoded + sum(dropped.values())`` always holds."""

    def __init__(self, name: str = "wire", max_bodies: int = MAX_BODIES,
                 max_bytes: int = MAX_MESSAGE_BYTES, dropped: Counter[str] | None = None,
                 log_first: int = 10):
        self.name = name
        self.max_bodies, self.max_bytes = int(max_bodies), int(max_bytes)
        self.dropped: Counter[str] = Counter() if dropped is None else dropped
        self.received = 0
        self.decoded = 0
        self.last_decode_ns: int | None = None
        self._log_first = log_first
        self._logged = 0

    def __call__(self, data: bytes | bytearray | memoryview) -> Frame | None:
        """The decoded frame, or None when the message was dropped (and counted)."""
        self.received += 1
        t0 = time.perf_counter_ns()
        try:
            frame = decode(data, max_bodies=self.max_bodies, max_bytes=self.max_bytes)
        except WireError as e:
            self.dropped[e.reason] += 1
            if self._logged < self._log_first:
                self._logged += 1
                log.warning("%s: dropped a malformed message (%s)", self.name, e)
            return None
        self.last_decode_ns = time.perf_counter_ns() - t0
        self.decoded += 1
        return frame


# --------------------------------------------------------------------------------------------
# Recordings: a magic header, then (uint32 LE length, message) records
# --------------------------------------------------------------------------------------------

MAGIC = b"STMRREC1"
_LEN = struct.Struct("<I")


class Recorder:
    """Append wire messages to a recording file (buffered; :meth:`close` flushes)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: BinaryIO | None = open(self.path, "wb")
        self._f.write(MAGIC)
        self.count = 0

    def write(self, payload: bytes) -> None:
        if self._f is None:
            raise ValueError(f"{self.path}: recorder is closed")
        self._f.write(_LEN.pack(len(payload)))
        self._f.write(payload)
        self.count += 1

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_recording(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_recording(path: str | Path, max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[bytes]:
    """Yield the raw messages of a recording; raises ``ValueError`` naming the file and offset
    on a bad header, an oversized record or a truncated file."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError(f"{path}: not a streamtmr recording (bad header)")
        while True:
            offset = f.tell()
            head = f.read(_LEN.size)
            if not head:
                return
            if len(head) < _LEN.size:
                raise ValueError(f"{path}: truncated record header at byte {offset}")
            (n,) = _LEN.unpack(head)
            if n > max_bytes:
                raise ValueError(f"{path}: record at byte {offset} is {n} bytes (> {max_bytes})")
            payload = f.read(n)
            if len(payload) < n:
                raise ValueError(f"{path}: truncated record at byte {offset}")
            yield payload
