"""The Node over real loopback ZeroMQ: anonymization, fail-closed behaviour, bounded queues."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from sensors.zmq_source import ZmqSource
from streamtmr import skeleton
from streamtmr.dummy import default_dummy
from streamtmr.models.registry import build_model
from streamtmr.stream import api, wire
from streamtmr.stream.frame import Body, Frame
from streamtmr.stream.node import Node, NodeConfig
from streamtmr.stream.sinks import ZmqPubSink

torch.set_num_threads(1)
T = 16
REAL = Path(__file__).resolve().parents[2] / "shared/data/real"


def make_engine(window: int = T):
    """The real torch engine running the naive retarget (fast, exact bone lengths). It keeps
    the source's bone directions, so the leak guard would refuse it: the tests of other
    behaviour run with ``leak_guard=False``; the guard has its own tests (test_leak_guard)."""
    from engines import create_engine
    return create_engine("torch", model=build_model({"method": "naive"}), window=window,
                         max_batch=8)


@pytest.fixture(scope="module")
def engine():
    return make_engine()


def person(k: int, scale: float, t: float, offset: float = 0.0) -> np.ndarray:
    """A body of a given size moving its arms: source bone lengths differ from the dummy's."""
    pose = default_dummy().rest_pose() * scale
    pose = pose + np.array([offset, 0.0, 3.0], np.float32)
    wave = 0.1 * np.sin(2 * np.pi * 0.5 * t + k)
    for j in ("ElbowLeft", "WristLeft", "HandLeft", "HandTipLeft", "ThumbLeft"):
        pose[skeleton.JOINT[j], 1] += wave
    return pose.astype(np.float32)


def frame(seq: int, ids: list[int], src: str = "test") -> Frame:
    t = seq / 30
    return Frame(seq, int(seq * 1e9 / 30),
                 [Body(i, person(i, 1.0 + 0.05 * (i % 5), t, 0.7 * i)) for i in ids], src)


def bone_err(joints: np.ndarray, lengths: np.ndarray) -> float:
    return float(np.abs(skeleton.bone_lengths(joints)[1:] - lengths[1:]).max())


def assert_anonymized(out: Frame, inputs: dict[tuple[int, int], np.ndarray], lengths):
    for b in out.bodies:
        assert bone_err(b.joints, lengths) < 1e-4
        for (_, bid), raw in inputs.items():
            if bid == b.id:
                assert not np.allclose(b.joints, raw, atol=1e-3), "raw joints published"


class Faulty:
    """A real engine with a fault switched on from the test (raise, stall, leak input, NaN)."""

    def __init__(self, inner):
        self.inner = inner
        self.window, self.max_batch = inner.window, inner.max_batch
        self.dummy_lengths, self.name = inner.dummy_lengths, "faulty"
        self.mode: str | None = None
        self.stall_s = 1.0
        self.calls = 0

    def describe(self):
        return {"model": "faulty"}

    def run_latest(self, x, k=1):
        self.calls += 1
        if self.mode == "raise":
            raise RuntimeError("CUDA error: boom")
        if self.mode == "stall":
            time.sleep(self.stall_s)
        if self.mode == "identity":  # an engine that leaks its input
            return np.ascontiguousarray(x[:, -k:])
        if self.mode == "nan":
            return np.full((x.shape[0], k, 25, 3), np.nan, np.float32)
        if self.mode == "shape":
            return np.zeros((x.shape[0], k, 20, 3), np.float32)
        return self.inner.run_latest(x, k)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------
# In-process stepping
# ------------------------------------------------------------------------------------------

def test_step_publishes_dummy_bodies(engine):
    node = Node(engine, config=NodeConfig(leak_guard=False, budget_ms=1000))
    inputs = {}
    for seq in range(40):
        f = frame(seq, [1, 2])
        for b in f.bodies:
            inputs[(seq, b.id)] = b.joints.copy()
        out = node.step(f)
        assert len(out) == 1 and out[0].seq == seq and out[0].t_ns == f.t_ns
        assert [b.id for b in out[0].bodies] == [1, 2]
        assert_anonymized(out[0], {k: v for k, v in inputs.items() if k[0] == seq},
                          engine.dummy_lengths)
    s = node.close()
    assert s["counters"]["frames_in"] == s["counters"]["frames_out"] == 40
    assert s["counters"]["bodies_out"] == 80
    for stage in ("window", "infer", "smooth", "encode", "send", "total"):
        assert s["latency"][stage]["count"] >= 40 and s["latency"][stage]["p99_ms"] >= 0


def test_joint_tracking_states_travel_with_the_anonymized_body(engine):
    """Each joint's tracking state (tracked / inferred) comes from the source body, fresh or
    held, and survives the wire encoding that every sink sends."""
    from streamtmr.stream.frame import INFERRED, NOT_TRACKED, TRACKED
    node = Node(engine, config=NodeConfig(leak_guard=False, budget_ms=1000))
    for seq in range(20):
        f = frame(seq, [1, 2])
        st = np.full(25, TRACKED, np.uint8)
        st[[7, 11, 15 + seq % 5]] = INFERRED  # hands inferred, one foot joint varies
        st[21] = NOT_TRACKED
        f.bodies[0].state = st
        out = node.step(f)[0]
        by_id = {b.id: b for b in out.bodies}
        np.testing.assert_array_equal(by_id[1].state, st)
        assert (by_id[2].state == TRACKED).all()
        decoded = wire.decode_message(wire.encode(out, wire.AnonInfo("m", 1)))
        np.testing.assert_array_equal(decoded.frame.bodies[0].state, st)
    node.close()


def test_bodies_appear_and_disappear(engine):
    node = Node(engine, config=NodeConfig(leak_guard=False, budget_ms=1000, gap_ms=100))
    plan = [[1]] * 5 + [[1, 2, 3]] * 5 + [[2]] * 10 + [[]] * 3 + [[4, 5, 6, 7, 8, 9]] * 3
    for seq, ids in enumerate(plan):
        out = node.step(frame(seq, ids))
        assert [b.id for b in out[0].bodies] == ids
    s = node.close()
    assert s["counters"].get("window_reset:lost", 0) >= 2  # bodies 1 and 3 left


def test_gap_duplicates_out_of_order(engine):
    node = Node(engine, config=NodeConfig(leak_guard=False, budget_ms=1000, gap_ms=200))
    seqs = [0, 1, 2, 2, 1, 3, 30, 31]  # a duplicate, a late frame, a 0.9 s gap
    published = [o.seq for s in seqs for o in node.step(frame(s, [1]))]
    assert published == [0, 1, 2, 3, 30, 31]
    st = node.close()
    assert st["dropped"]["window:duplicate"] == 1 and st["dropped"]["window:out_of_order"] == 1
    assert st["counters"]["window_reset:gap"] == 1


def test_hop_publishes_k_frames_per_call(engine):
    node = Node(engine, config=NodeConfig(leak_guard=False, budget_ms=1000, hop=4))
    outs = [node.step(frame(s, [1, 2])) for s in range(12)]
    assert [len(o) for o in outs] == [0, 0, 0, 4] * 3
    assert [f.seq for f in outs[7]] == [4, 5, 6, 7]
    for f in outs[11]:
        assert all(bone_err(b.joints, engine.dummy_lengths) < 1e-4 for b in f.bodies)
    node.close()


def test_engine_exception_fail_closed_hold_then_recover(engine):
    eng = Faulty(engine)
    node = Node(eng, config=NodeConfig(leak_guard=False, budget_ms=1000))
    good = node.step(frame(0, [1]))[0].bodies[0].joints.copy()
    eng.mode = "raise"
    for seq in range(1, 6):
        out = node.step(frame(seq, [1, 2]))
        # body 1 gets its held anonymized frame, body 2 (never anonymized) nothing
        assert [b.id for b in out[0].bodies] == [1]
        np.testing.assert_array_equal(out[0].bodies[0].joints, good)
    eng.mode = None
    out = node.step(frame(6, [1, 2]))
    assert [b.id for b in out[0].bodies] == [1, 2]
    s = node.close()
    assert s["counters"]["engine_errors"] == 5 and s["dropped"]["engine_error"] == 5
    assert s["dropped"]["no_held_frame"] == 5


def test_engine_exception_drop_policy_publishes_nothing(engine):
    eng = Faulty(engine)
    node = Node(eng, config=NodeConfig(leak_guard=False, budget_ms=1000, overrun="drop"))
    node.step(frame(0, [1]))
    eng.mode = "raise"
    assert node.step(frame(1, [1])) == []
    node.close()


@pytest.mark.parametrize("mode,reason", [("nan", "bad_output"), ("shape", "bad_output"),
                                         ("identity", "bone_check")])
def test_bad_engine_output_never_published(engine, mode, reason):
    eng = Faulty(engine)
    eng.mode = mode
    node = Node(eng, config=NodeConfig(leak_guard=False, budget_ms=1000, smoothing="none"))
    for seq in range(5):
        out = node.step(frame(seq, [1, 2]))
        assert out == [] or out[0].bodies == []
    s = node.close()
    assert s["dropped"][reason] >= 5


def test_stalled_engine_does_not_block(engine):
    eng = Faulty(engine)
    node = Node(eng, config=NodeConfig(leak_guard=False, budget_ms=30, hang_ms=200))
    first = node.step(frame(0, [1]))[0].bodies[0].joints.copy()
    eng.mode, eng.stall_s = "stall", 1.5
    t0 = time.monotonic()
    out = node.step(frame(1, [1]))  # times out at the budget, holds
    assert time.monotonic() - t0 < 1.0
    np.testing.assert_array_equal(out[0].bodies[0].joints, first)
    for seq in range(2, 10):  # the worker is still busy: every frame is an overrun
        time.sleep(0.05)
        out = node.step(frame(seq, [1]))
        assert [b.id for b in out[0].bodies] == [1]
    node.step(None)
    assert time.monotonic() - t0 < 1.4
    s = node.stats()
    assert s["counters"]["overruns"] == 9 and s["counters"]["engine_hangs"] == 1
    assert s["dropped"]["engine_busy"] == 8 and s["dropped"]["budget"] == 1
    eng.mode = None
    time.sleep(1.6 - (time.monotonic() - t0))
    out = node.step(frame(60, [1]))  # the stalled call ended: normal service again
    assert bone_err(out[0].bodies[0].joints, engine.dummy_lengths) < 1e-4
    assert node.stats()["counters"]["late_results"] == 1
    node.close()


def test_held_frames_expire(engine):
    eng = Faulty(engine)
    node = Node(eng, config=NodeConfig(leak_guard=False, budget_ms=1000, hold_ms=50))
    node.step(frame(0, [1]))
    eng.mode = "raise"
    time.sleep(0.1)
    assert node.step(frame(1, [1]))[0].bodies == []
    node.close()


def test_stats_json_and_recording(engine, tmp_path):
    stats = tmp_path / "stats.json"
    rec = wire.Recorder(tmp_path / "anon.stmr")
    node = Node(engine, config=NodeConfig(leak_guard=False, budget_ms=1000, stats_json=str(stats),
                                          stats_interval_s=0.0), recorder=rec)
    node.run(iter([frame(s, [1, 2]) for s in range(10)] + [None]))
    node.close()
    data = json.loads(stats.read_text())
    assert data["counters"]["frames_out"] == 10 and data["model"] == engine.describe()["model"]
    assert set(data["latency"]) >= {"window", "infer", "smooth", "encode", "send", "total"}
    msgs = [wire.decode_message(p) for p in wire.read_recording(tmp_path / "anon.stmr")]
    assert [m.frame.seq for m in msgs] == list(range(10))
    assert all(m.anon is not None and m.anon.lat_ns > 0 for m in msgs)
    for m in msgs:
        assert all(bone_err(b.joints, engine.dummy_lengths) < 1e-4 for b in m.frame.bodies)


def test_anonymizer_api(engine):
    with api.LiveAnonymizer(engine, config=NodeConfig(leak_guard=False, budget_ms=1000)) as anon:
        out = anon.push(frame(0, [5]))
        assert out is not None and out.bodies[0].id == 5
        assert anon.push(frame(0, [5])) is None  # duplicate
        assert bone_err(out.bodies[0].joints, anon.dummy_lengths) < 1e-4


# ------------------------------------------------------------------------------------------
# Over real ZeroMQ sockets
# ------------------------------------------------------------------------------------------

def _pump(pub, sub, frames_fn, want: int, timeout_s: float = 10.0, min_seq: int = 0):
    """Publish frames until ``want`` anonymized messages (the last with ``seq >= min_seq``)
    were received: ZeroMQ subscribers join late."""
    got, seq, deadline = [], 0, time.monotonic() + timeout_s
    while ((len(got) < want or got[-1].frame.seq < min_seq)
           and time.monotonic() < deadline):
        pub.send(wire.encode(frames_fn(seq)))
        seq += 1
        while sub.poll(5):
            got.append(wire.decode_message(sub.recv()))
    return got, seq


@pytest.mark.parametrize("n_bodies", [1, 6])
def test_tcp_loopback_publisher_node_subscriber(engine, n_bodies):
    ctx = zmq.Context()
    in_port, out_port = free_port(), free_port()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{in_port}")
    source = ZmqSource(f"zmq://127.0.0.1:{in_port}", context=ctx, idle_ms=20)
    sink = ZmqPubSink(f"tcp://127.0.0.1:{out_port}", context=ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{out_port}")
    cfg = NodeConfig(leak_guard=False, budget_ms=1000)
    node = api.BackgroundNode(source, [sink], engine, config=cfg).start()
    ids = list(range(10, 10 + n_bodies))
    inputs = {}

    def make(seq):
        f = frame(seq, ids, src="kinect-test")
        for b in f.bodies:
            inputs[(seq, b.id)] = b.joints.copy()
        return f
    try:
        got, sent = _pump(pub, sub, make, 30)
        pub.send(b"\x93garbage")
        pub.send(wire.encode(frame(sent + 100, ids))[:-7])
        got2, _ = _pump(pub, sub, lambda s: make(s + sent + 200), 5, min_seq=sent + 200)
    finally:
        stats = node.stop()
        pub.close(0)
        sub.close(0)
        ctx.term()
    assert len(got) >= 30 and not node.running and node.error is None
    for m in got + got2:
        assert m.anon is not None and m.anon.model == engine.describe()["model"]
        assert m.frame.src == "kinect-test" and m.anon.lat_ns > 0
        assert [b.id for b in m.frame.bodies] == ids
        assert_anonymized(m.frame, {k: v for k, v in inputs.items() if k[0] == m.frame.seq},
                          engine.dummy_lengths)
    assert stats["dropped"].get("input:bad_msgpack", 0) >= 2, stats["dropped"]
    assert stats["latency"]["decode"]["count"] >= 30


def test_ntu_replay_through_node(engine):
    files = sorted((REAL / "ntu_samples").glob("*.skeleton")) if REAL.is_dir() else []
    if not files:
        pytest.skip(f"real NTU samples not found under {REAL}")
    from sensors.replay import ReplaySource
    node = Node(engine, config=NodeConfig(leak_guard=False, budget_ms=1000))
    src = ReplaySource(files[0], realtime=False)
    out = []
    for f in src:
        out += node.step(f)
    node.close()
    assert len(out) > 30
    assert sum(len(f.bodies) for f in out) >= len(out)
    for f in out:
        for b in f.bodies:
            assert bone_err(b.joints, engine.dummy_lengths) < 1e-4


def test_node_thread_stops_promptly_on_idle_source(engine):
    ctx = zmq.Context()
    source = ZmqSource(f"tcp://127.0.0.1:{free_port()}", context=ctx, idle_ms=20)
    node = api.BackgroundNode(source, [], engine, config=NodeConfig(leak_guard=False)).start()
    time.sleep(0.1)
    assert node.running
    stats = node.stop(timeout_s=5)
    assert not node.running and stats is not None and source.closed
    ctx.term()


def test_concurrent_stats_reads_are_safe(engine):
    node = Node(engine, config=NodeConfig(leak_guard=False, budget_ms=1000))
    stop = threading.Event()
    snaps = []

    def reader():
        while not stop.is_set():
            snaps.append(node.stats())
    th = threading.Thread(target=reader)
    th.start()
    for seq in range(30):
        node.step(frame(seq, [1, 2, 3]))
    stop.set()
    th.join()
    node.close()
    assert snaps and all("counters" in s for s in snaps)


def test_streaming_state_steps_through_dropped_sensor_frames():
    """A source that dropped sensor frames (the next frame comes four periods late): the node
    steps the streaming state through three frames interpolated between the two it saw, and
    publishes what a node fed those frames publishes (not the filled frames themselves); with
    filling off, it publishes something else."""
    from engines import create_engine
    from streamtmr.models.registry import model_class

    torch.manual_seed(0)
    eng = create_engine("onnxruntime", model=model_class("tmr-stream").from_preset("tiny"),
                        window=None)
    st = np.full(25, 2, np.uint8)

    def fr(seq, ids, poses=None):
        t = seq / 30
        return Frame(seq, int(seq * 1e9 / 30), [Body(i, person(i, 1.0, t, 0.7 * i) if poses is None
                                                     else poses[i], st) for i in ids], "s")

    def run(cfg, seqs, fill=False):
        node, outs = Node(eng, config=cfg), {}
        for s in seqs:
            if fill and s == 13:  # the reference: the dropped frames fed as the fill makes them
                for d in (10, 11, 12):
                    a = (d - 9) / 4
                    node.step(fr(d, [1, 2], {i: (1 - a) * person(i, 1.0, 9 / 30, 0.7 * i)
                                             + a * person(i, 1.0, 13 / 30, 0.7 * i)
                                             for i in (1, 2)}))
            outs[s] = {b.id: b.joints for b in node.step(fr(s, [1, 2]))[0].bodies}
        counters = node.metrics.snapshot()["counters"]
        node.close()
        return outs, counters

    cfg = NodeConfig(budget_ms=5000, smoothing="none", gap_ms=500, leak_guard=False)
    seqs = [*range(10), 13, 14, 15]  # frames 10-12 never arrive
    got, counters = run(cfg, seqs)
    ref, _ = run(cfg, seqs, fill=True)
    for s in (13, 14, 15):
        for i in (1, 2):
            np.testing.assert_allclose(got[s][i], ref[s][i], atol=1e-5)
    assert counters["frames_filled"] == 6 and counters["frames_out"] == len(seqs)
    off, counters = run(NodeConfig(budget_ms=5000, smoothing="none", gap_ms=500,
                                   leak_guard=False, fill_dropped=0), seqs)
    assert "frames_filled" not in counters
    assert not np.allclose(off[13][1], ref[13][1], atol=1e-4)
    np.testing.assert_allclose(off[9][1], ref[9][1], atol=1e-6)  # the same until the drop
    with pytest.raises(ValueError, match="fill_dropped"):
        NodeConfig(fill_dropped=-1).validate()


class SlowSteps:
    """A real streaming engine whose steps take ``delay_s`` once the test sets it."""

    def __init__(self, inner):
        self.inner, self.delay_s = inner, 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, frames, state):
        time.sleep(self.delay_s)
        return self.inner.step(frames, state)


def test_every_dropped_frame_is_counted_filled_or_skipped_when_the_engine_is_slow():
    """Dropped frames the state could not be stepped through count as ``fill_skipped``: a fill
    step that outruns the frame's deadline, and a gap that arrives while the engine is still
    busy with that step."""
    from engines import create_engine
    from streamtmr.models.registry import model_class

    eng = SlowSteps(create_engine("onnxruntime", window=None,
                                  model=model_class("tmr-stream").from_preset("tiny")))
    node = Node(eng, config=NodeConfig(budget_ms=50, smoothing="none", gap_ms=2000,
                                       leak_guard=False, fill_dropped=7))

    def fr(seq):
        return Frame(seq, int(seq * 1e9 / 30),
                     [Body(i, person(i, 1.0, seq / 30, 0.7 * i)) for i in (1, 2)], "s")

    try:
        for seq in range(10):
            node.step(fr(seq))
        eng.delay_s = 0.4
        node.step(fr(13))  # 10-12 dropped: the first fill step outruns the deadline
        node.step(fr(17))  # 14-16 dropped: that step still runs, no fill can start
        c = node.metrics.snapshot()["counters"]
    finally:
        node.close()
    assert c.get("frames_filled", 0) + c["fill_skipped"] == 2 * (3 + 3)
    assert c["overruns"] >= 2


def test_streaming_engine_state_slots_reset_on_gap_like_windows():
    """A streaming model (engine.streaming): one state slot per body, one batched step per
    frame; a gap restarts the body's track exactly as a new body (same output as a fresh
    node), and other bodies are unaffected."""
    from engines import create_engine
    from streamtmr.models.registry import model_class

    torch.manual_seed(0)
    eng = create_engine("onnxruntime", model=model_class("tmr-stream").from_preset("tiny"),
                        window=None)
    assert eng.streaming
    cfg = NodeConfig(budget_ms=5000, smoothing="none", gap_ms=200, leak_guard=False)
    st = np.full(25, 2, np.uint8)

    def fr(seq, t_s, ids):
        return Frame(seq, int(t_s * 1e9), [Body(i, person(i, 1.0, t_s, 0.7 * i), st)
                                           for i in ids], "s")

    node = Node(eng, config=cfg)
    for s in range(20):
        node.step(fr(s, s / 30, [1, 2]))
    after_gap = [node.step(fr(20 + s, 2.0 + s / 30, [1]))[0].bodies[0].joints
                 for s in range(10)]  # body 1 returns after 1.3 s: a new track
    node.close()
    fresh = Node(eng, config=cfg)
    ref = [fresh.step(fr(20 + s, 2.0 + s / 30, [1]))[0].bodies[0].joints for s in range(10)]
    fresh.close()
    np.testing.assert_allclose(np.stack(after_gap), np.stack(ref), atol=1e-5)
    # batched: two bodies stepped together equal each stepped alone
    both, one = Node(eng, config=cfg), Node(eng, config=cfg)
    for s in range(15):
        a = {b.id: b.joints for b in both.step(fr(s, s / 30, [1, 2]))[0].bodies}
        b = one.step(fr(s, s / 30, [2]))[0].bodies[0].joints
        np.testing.assert_allclose(a[2], b, atol=1e-5)
    both.close()
    one.close()
