"""Sources: SDK conversions on recorded arrays, replay, SynthKinect live, ZeroMQ input."""

from __future__ import annotations

import ctypes
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from sensors.base import SourceError
from sensors.kinect import (
    AzureKinectSource,
    KinectSource,
    bodies_from_azure,
    bodies_from_kinect_next,
    bodies_from_pykinect,
    open_kinect_backend,
)
from sensors.open import SOURCE_SPECS, SOURCES, open_source, source_help
from sensors.replay import ReplaySource
from sensors.synthetic import SyntheticSource
from sensors.zmq_source import ZmqSource
from streamtmr import skeleton
from streamtmr.data.store import StoreWriter
from streamtmr.stream import wire
from streamtmr.stream.frame import Body, Frame

REAL = Path(__file__).resolve().parents[2] / "shared/data/real"
NTU = sorted((REAL / "ntu_samples").glob("*.skeleton")) if REAL.is_dir() else []
needs_ntu = pytest.mark.skipif(not NTU, reason=f"real NTU samples not found under {REAL}")


# ------------------------------------------------------------------------------------------
# pykinect2024 layout, as pykinect2's (PyKinect2024: _CameraSpacePoint, _Joint;
# PyKinectRuntime.KinectBody, KinectBodyFrameData.bodies: an object array of 6 slots)
# ------------------------------------------------------------------------------------------

class _CameraSpacePoint(ctypes.Structure):
    _fields_ = [("x", ctypes.c_float), ("y", ctypes.c_float), ("z", ctypes.c_float)]


class _Joint(ctypes.Structure):
    _fields_ = [("JointType", ctypes.c_int), ("Position", _CameraSpacePoint),
                ("TrackingState", ctypes.c_int)]


def _kinect_body(tracked: bool, tid: int, joints: np.ndarray, states: np.ndarray):
    if not tracked:
        return SimpleNamespace(is_tracked=False, tracking_id=-1)
    arr = (_Joint * 25)()
    for k in range(25):
        arr[k].JointType = k
        arr[k].Position = _CameraSpacePoint(*map(float, joints[k]))
        arr[k].TrackingState = int(states[k])
    # pykinect2 hands out a POINTER(_Joint) cast from the array
    return SimpleNamespace(is_tracked=True, tracking_id=tid, _keep=arr,
                           joints=ctypes.cast(arr, ctypes.POINTER(_Joint)))


def test_pykinect2024_conversion():
    rng = np.random.default_rng(0)
    joints = rng.normal(0, 1, (2, 25, 3)).astype(np.float32)
    states = rng.integers(0, 3, (2, 25))
    ids = [72057594037944738, 72057594037944739]
    frame_bodies = np.empty(6, dtype=object)  # KinectBodyFrameData.bodies: 6 slots
    for i in range(6):
        frame_bodies[i] = _kinect_body(False, -1, None, None)
    frame_bodies[1] = _kinect_body(True, ids[0], joints[0], states[0])
    frame_bodies[4] = _kinect_body(True, ids[1], joints[1], states[1])
    bodies = bodies_from_pykinect(frame_bodies)
    assert [b.id for b in bodies] == ids
    for b, j, s in zip(bodies, joints, states):
        np.testing.assert_array_equal(b.joints, j)
        np.testing.assert_array_equal(b.state, s)  # tracked / inferred / not tracked kept
        assert b.joints.dtype == np.float32 and b.state.dtype == np.uint8
    assert len(bodies_from_pykinect(frame_bodies, max_bodies=1)) == 1


# ------------------------------------------------------------------------------------------
# kinect-next layout: its own typed models (importable on any OS; opening needs Windows)
# ------------------------------------------------------------------------------------------

def _kn_body(tid: int, joints: np.ndarray, states: np.ndarray, tracked: bool = True):
    kn = pytest.importorskip("kinect_next")
    from kinect_next.models.body import JointCollection

    coll = JointCollection({kn.JointType(k): kn.Joint(
        kn.JointType(k), kn.Vector3(*map(float, joints[k])), kn.TrackingState(int(states[k])),
        kn.Quaternion(0.0, 0.0, 0.0, 1.0)) for k in range(25)})
    hand = kn.Hand(kn.HandState.OPEN, kn.TrackingConfidence.HIGH)
    return kn.Body(tid, tracked, False, coll, hand, hand, kn.Point2D(0.0, 0.0),
                   kn.TrackingState.TRACKED, kn.FrameEdges(0))


def _kn_frameset(seed: int, t_ns: int):
    kn = pytest.importorskip("kinect_next")
    rng = np.random.default_rng(seed)
    joints = rng.normal(0, 1, (2, 25, 3)).astype(np.float32)
    states = rng.integers(0, 3, (2, 25))
    bodies = [_kn_body(0, joints[0], states[0], tracked=False),
              _kn_body(1001 + seed, joints[0], states[0]),
              _kn_body(2002 + seed, joints[1], states[1])]
    return kn.FrameSet(bodies=bodies, relative_time_ns=t_ns), joints, states


def test_kinect_next_conversion():
    frames, joints, states = _kn_frameset(0, 5)
    bodies = bodies_from_kinect_next(frames.bodies)
    assert [b.id for b in bodies] == [1001, 2002]  # the untracked slot is skipped
    for b, j, s in zip(bodies, joints, states):
        np.testing.assert_array_equal(b.joints, j)
        np.testing.assert_array_equal(b.state, s)
        assert b.joints.dtype == np.float32 and b.state.dtype == np.uint8
    assert len(bodies_from_kinect_next(frames.bodies, max_bodies=1)) == 1


class _RecordedKinectNext:
    """A kinect-next backend whose sensor is a recording of FrameSets (the SDK's wait: a
    frame, or nothing within the timeout; EOFError once closed)."""

    name = "recorded"
    convert = staticmethod(bodies_from_kinect_next)

    def __init__(self) -> None:
        self.queue = [_kn_frameset(1, 1_000_000_000), None, _kn_frameset(2, 1_033_333_333)]
        self.closed = False

    def wait(self, timeout_ms: int):
        if self.closed:
            raise EOFError
        if not self.queue:
            return None
        item = self.queue.pop(0)
        return None if item is None else (item[0].relative_time_ns, item[0].bodies)

    def close(self) -> None:
        self.closed = True


def test_kinect_source_frames_idle_ticks_and_close():
    src = KinectSource(backends=[_RecordedKinectNext])
    assert src.name == "kinect(recorded)"
    it = iter(src)
    first, idle, second = next(it), next(it), next(it)
    assert idle is None
    assert (first.seq, first.t_ns, second.seq, second.t_ns) == (0, 1_000_000_000,
                                                               1, 1_033_333_333)
    _, joints, states = _kn_frameset(2, 0)
    np.testing.assert_array_equal(second.bodies[1].state, states[1])  # states from the SDK
    np.testing.assert_array_equal(second.bodies[1].joints, joints[1])
    assert next(it) is None  # nothing new: an idle tick, the loop stays responsive
    src.close()
    assert src.backend.closed and list(it) == []


def test_kinect_backends_fall_back_in_order():
    def missing():
        raise ImportError("No module named 'kinect_next'")

    def no_sensor():
        raise OSError("Kinect20.dll: the SDK 2.0 runtime is not installed")
    missing.name, no_sensor.name = "kinect-next", "pykinect2024"
    assert isinstance(open_kinect_backend([missing, no_sensor, _RecordedKinectNext]),
                      _RecordedKinectNext)
    with pytest.raises(SourceError) as e:
        open_kinect_backend([missing, no_sensor])
    msg = str(e.value)
    assert "kinect-next: not installed" in msg and "pykinect2024: cannot open the sensor" in msg
    assert "SDK 2.0" in msg and "synthetic" in msg


# ------------------------------------------------------------------------------------------
# Azure Kinect layout (k4abttypes: k4a_float3_t union, k4abt_joint_t, k4abt_skeleton_t)
# ------------------------------------------------------------------------------------------

class _XYZ(ctypes.Structure):
    _fields_ = [("x", ctypes.c_float), ("y", ctypes.c_float), ("z", ctypes.c_float)]


class _Float3(ctypes.Union):
    _fields_ = [("xyz", _XYZ), ("v", ctypes.c_float * 3)]


class _Quat(ctypes.Union):
    _fields_ = [("v", ctypes.c_float * 4)]


class _AzJoint(ctypes.Structure):
    _fields_ = [("position", _Float3), ("orientation", _Quat), ("confidence_level", ctypes.c_int)]


class _AzSkeleton(ctypes.Structure):
    _fields_ = [("joints", _AzJoint * 32)]


def test_azure_conversion():
    rng = np.random.default_rng(1)
    mm = rng.normal(0, 500, (32, 3)).astype(np.float32)
    conf = rng.integers(0, 4, 32)
    skel = _AzSkeleton()
    for k in range(32):
        skel.joints[k].position.v[:] = mm[k].tolist()
        skel.joints[k].confidence_level = int(conf[k])
    (body,) = bodies_from_azure([(7, skel)])
    assert body.id == 7
    np.testing.assert_allclose(body.joints, skeleton.from_azure_kinect(mm), atol=1e-6)
    az = skeleton.AZURE_KINECT_NAMES.index
    head_state = {0: 0, 1: 1, 2: 2, 3: 2}[int(conf[az("HEAD")])]
    assert body.state[skeleton.JOINT["Head"]] == head_state
    neck = min({0: 0, 1: 1, 2: 2, 3: 2}[int(conf[az(n)])] for n in ("NECK", "HEAD"))
    assert body.state[skeleton.JOINT["Neck"]] == neck


@pytest.mark.skipif(sys.platform == "win32", reason="checks the non-Windows error")
def test_kinect_source_off_windows_names_alternatives():
    with pytest.raises(SourceError) as e:
        KinectSource()
    for alt in ("replay:", "synthetic", "zmq://"):
        assert alt in str(e.value)
    with pytest.raises(SourceError, match="--source kinect"):
        open_source("kinect")


def test_azure_source_without_package():
    try:
        import pykinect_azure  # noqa: F401
        pytest.skip("pykinect_azure is installed")
    except ImportError:
        pass
    with pytest.raises(SourceError, match="synthetic"):
        AzureKinectSource()


def test_one_table_gives_help_dispatch_and_errors():
    help_text = source_help()
    assert all(kind.spec in help_text for kind in SOURCES)
    with pytest.raises(SourceError) as e:
        open_source("webcam")
    assert all(spec in str(e.value) for spec in SOURCE_SPECS)
    with open_source("synthetic", realtime=False, max_bodies=2, seed=3) as src:
        assert isinstance(src, SyntheticSource)


def test_open_source_errors(tmp_path):
    with pytest.raises(SourceError, match="expected one of"):
        open_source("webcam")
    with pytest.raises(SourceError, match="no such file"):
        open_source(f"replay:{tmp_path / 'missing.skeleton'}")
    with pytest.raises(SourceError, match="needs a path"):
        open_source("replay:")
    (tmp_path / "x.bin").write_bytes(b"junk")
    with pytest.raises(SourceError, match="not a .skeleton"):
        open_source(f"replay:{tmp_path / 'x.bin'}")
    with pytest.raises(SourceError, match="zmq://HOST:PORT"):
        open_source("zmq://nohostport")


# ------------------------------------------------------------------------------------------
# Replay
# ------------------------------------------------------------------------------------------

@needs_ntu
def test_replay_ntu_file_all_bodies_and_loop():
    from streamtmr.data.ntu import read_skeleton
    path = next(p for p in NTU if "A058" in p.name)  # the two-person sample
    seq = read_skeleton(path)
    frames = list(ReplaySource(path, realtime=False))
    assert len(frames) == seq.num_frames
    assert {b.id for f in frames for b in f.bodies} == set(seq.body_ids)
    assert max(len(f.bodies) for f in frames) >= 2
    f0 = frames[0]
    k = seq.body_ids.index(f0.bodies[0].id)
    np.testing.assert_array_equal(f0.bodies[0].joints, seq.joints[0, k])
    looped = ReplaySource(path, realtime=False, loop=True)
    it = iter(looped)
    got = [next(it) for _ in range(2 * seq.num_frames + 3)]
    looped.close()
    assert [f.seq for f in got] == list(range(len(got)))
    t = np.array([f.t_ns for f in got])
    assert (np.diff(t) > 0).all() and np.diff(t).max() >= 1e9  # the gap between passes


@needs_ntu
def test_replay_ntu_folder():
    frames = list(ReplaySource(REAL / "ntu_samples", realtime=False))
    from streamtmr.data.ntu import read_skeleton
    assert len(frames) == sum(read_skeleton(p).num_frames for p in NTU)


def test_replay_store(tmp_path):
    a = np.random.default_rng(0).normal(0, 1, (10, 25, 3)).astype(np.float32)
    b = np.zeros_like(a)
    b[5:] = 1.0
    with StoreWriter(tmp_path / "store", {"joints": (25, 3), "joints2": (25, 3)},
                     {"fps": 30}) as w:
        w.append({"joints": a, "joints2": b}, name="one")
        w.append({"joints": a[:4], "joints2": b[:4]}, name="two")
    frames = list(ReplaySource(tmp_path / "store", realtime=False))
    assert len(frames) == 14
    assert [b.id for b in frames[0].bodies] == [0]
    assert [b.id for b in frames[5].bodies] == [0, 1]
    assert [b.id for b in frames[10].bodies] == [16]
    np.testing.assert_array_equal(frames[3].bodies[0].joints, a[3])
    assert frames[10].t_ns - frames[9].t_ns > 0.5e9


def test_replay_recording_and_pacing(tmp_path):
    path = tmp_path / "rec.stmr"
    with wire.Recorder(path) as rec:
        for s in range(6):
            body = Body(3, np.full((25, 3), s, np.float32))
            rec.write(wire.encode(Frame(100 + s, 0, [body]), wire.AnonInfo("m", 1)))
    frames = list(ReplaySource(path, realtime=False))
    assert [f.bodies[0].joints[0, 0] for f in frames] == list(range(6))
    src = ReplaySource(path, realtime=True, speed=2.0)  # 60 frames/s: 5 periods ≈ 83 ms
    t0 = time.monotonic()
    assert len(list(src)) == 6
    assert time.monotonic() - t0 >= 0.07
    bad = tmp_path / "bad.stmr"
    bad.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(SourceError, match="truncated"):
        list(ReplaySource(bad, realtime=False))


# ------------------------------------------------------------------------------------------
# SynthKinect live
# ------------------------------------------------------------------------------------------

def test_synthetic_people_enter_act_leave():
    src = SyntheticSource(realtime=False, max_people=3, seed=3, actions_per_visit=(1, 2),
                          pause_s=(0.2, 1.0), max_frames=900)
    frames = list(src)
    assert len(frames) == 900 and [f.seq for f in frames[:3]] == [0, 1, 2]
    counts = [len(f.bodies) for f in frames]
    assert max(counts) >= 2 and counts[0] == 1
    spans: dict[int, list[int]] = {}
    for f in frames:
        for b in f.bodies:
            spans.setdefault(b.id, []).append(f.seq)
            assert b.joints.shape == (25, 3) and np.isfinite(b.joints).all()
    assert len(spans) >= 3  # people left and others came
    for seqs in spans.values():  # stable ids: one contiguous visit per id
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    ended = [s for s in spans.values() if s[-1] < 899]
    assert ended, "nobody ever left"
    again = list(SyntheticSource(realtime=False, max_people=3, seed=3, actions_per_visit=(1, 2),
                                 pause_s=(0.2, 1.0), max_frames=50))
    np.testing.assert_array_equal(again[40].bodies[0].joints, frames[40].bodies[0].joints)


def test_synthetic_motion_is_continuous():
    frames = list(SyntheticSource(realtime=False, max_people=1, seed=1,
                                  actions_per_visit=(3, 3), max_frames=400))
    by_id: dict[int, list[np.ndarray]] = {}
    for f in frames:
        for b in f.bodies:
            by_id.setdefault(b.id, []).append(b.joints[0])
    for roots in by_id.values():
        step = np.linalg.norm(np.diff(np.array(roots), axis=0), axis=-1)
        assert step.max() < 0.25  # no teleport between chained actions (m per frame)


# ------------------------------------------------------------------------------------------
# ZeroMQ input
# ------------------------------------------------------------------------------------------

def test_zmq_source_counts_bad_messages_and_idles():
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    src = ZmqSource(f"zmq://127.0.0.1:{port}", context=ctx, idle_ms=20)
    it = iter(src)
    good = Frame(1, 5, [Body(2, np.ones((25, 3), np.float32))], "pub")
    got, deadline = None, time.monotonic() + 5
    while got is None and time.monotonic() < deadline:  # slow joiner
        pub.send(wire.encode(good))
        got = next(it)
    assert got is not None and got.bodies[0].id == 2 and src.last_decode_ns is not None
    pub.send(b"\xc1")
    pub.send(wire.encode(Frame(2, 6, [], "pub")))
    frames = []
    while not frames or frames[-1] is None or frames[-1].seq != 2:
        frames.append(next(it))
        if len(frames) > 200:
            break
    assert frames[-1].seq == 2 and src.dropped["bad_msgpack"] == 1
    assert next(it) is None  # idle tick
    # An oversized message reaches the decoder only up to a hard cap and is dropped there.
    pub.send(b"\x00" * 70000)
    pub.send(wire.encode(Frame(3, 7, [], "pub")))
    got = None
    for _ in range(200):
        got = next(it)
        if got is not None:
            break
    assert got is not None and got.seq == 3 and src.dropped["oversized"] == 1
    src.close()
    assert list(it) == []
    pub.close(0)
    ctx.term()
