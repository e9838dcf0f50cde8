"""Fuzzing the decoder and the Node loop (the short CI version of ``bench/fuzz_wire.py``).

Every run checks: no exception escapes, nothing raw or malformed is published (each published
body has the dummy's bone lengths and equals no input body), and the counters add up.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz_wire import CATEGORIES, Harness, HostileStream, make_engine, run_mutation
from sensors.zmq_source import ZmqSource
from streamtmr import skeleton
from streamtmr.dummy import default_dummy
from streamtmr.stream import api, wire
from streamtmr.stream.node import NodeConfig
from streamtmr.stream.sinks import ZmqPubSink

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
REST = default_dummy().rest_pose()


#: The naive retarget keeps the source's bone directions: these tests of other invariants run
#: it with the leak guard off; the guard is fuzzed with the default and the leaky engine below.
NAIVE_CFG = NodeConfig(leak_guard=False, budget_ms=1000.0, hang_ms=5000.0,
                       stats_interval_s=3600.0)


@pytest.fixture(scope="module")
def engine():
    return make_engine(kind="naive")[0]


def _assert_clean(res):
    assert res["crashes"] == 0, res["crash_details"]
    assert res["ledger"] and all(res["ledger"].values()), res["ledger"]


def test_mutation_fuzz_short(engine, tmp_path):
    res = run_mutation(3000, seed=11, engine=engine, config=NAIVE_CFG, corpus=tmp_path)
    _assert_clean(res)
    assert set(res["categories"]) == set(CATEGORIES)  # every kind of hostile message sent
    assert res["messages"] == 3000 and not list(tmp_path.iterdir())
    # the node did real work: frames and bodies were anonymized, checked, published
    assert res["frames_out"] > 300 and res["bodies_out"] == res["bodies_checked"] > 300
    assert res["decoded"] + sum(res["decode_dropped"].values()) == 3000
    assert {"bad_msgpack", "oversized", "non_finite", "bad_id", "bad_shape",
            "too_many_bodies"} <= set(res["decode_dropped"])


class Chaos:
    """A real engine that misbehaves at random: raises, leaks its input, returns NaN, puts
    the body a kilometre away, or returns the wrong shape."""

    def __init__(self, inner, seed: int = 0):
        self.inner, self.rng = inner, np.random.default_rng(seed)
        self.window, self.max_batch = inner.window, inner.max_batch
        self.dummy_lengths, self.name = inner.dummy_lengths, "chaos"
        self.faults = dict.fromkeys(("calls", "raised", "leaked", "nan", "far", "short"), 0)

    def describe(self):
        return {"model": "chaos"}

    def run_latest(self, x, k=1):
        self.faults["calls"] += 1
        r = self.rng.random()
        if r < 0.1:
            self.faults["raised"] += 1
            raise RuntimeError("device lost")
        if r < 0.15:
            self.faults["leaked"] += 1
            return np.ascontiguousarray(x[:, -k:])  # the raw input
        if r < 0.2:
            self.faults["nan"] += 1
            return np.full((x.shape[0], k, 25, 3), np.nan, np.float32)
        y = self.inner.run_latest(x, k)
        if r < 0.25:
            self.faults["far"] += 1
            return y + np.float32(1000.0)  # dummy bones, but beyond the wire's range
        if r < 0.28:
            self.faults["short"] += 1
            return y[:, :, :20]
        return y


@pytest.mark.parametrize("overrun,smoothing", [("hold", "one_euro"), ("drop", "none")])
def test_fuzz_with_a_chaotic_engine(engine, overrun, smoothing):
    """Every fault is caught on the engine's output before smoothing: the leaked input fails
    the bone check with any smoothing (the smoother used to rebuild it on the dummy's bones),
    out-of-range output is bad_output."""
    cfg = NodeConfig(leak_guard=False, budget_ms=1000, overrun=overrun, smoothing=smoothing,
                     stats_interval_s=3600)
    chaos = Chaos(engine, seed=3)
    h = Harness(chaos, cfg, check_every=100, check_poison=False)
    for cat, data in _take(HostileStream(seed=5), 1500):
        h.feed(data, cat)
    led = h.close()
    assert all(led["checks"].values()), led
    c, d, f = led["counters"], led["dropped"], chaos.faults
    # How many engine calls there are depends on the worker thread's timing (a frame that finds
    # the engine busy is held, not run; a late call's result is discarded), so the counts are
    # checked against what the chaos did, not against fixed numbers.
    assert f["calls"] > 60 and min(f.values()) > 0, f  # seed 3: every fault by the 56th call
    assert 0 < c["engine_errors"] <= f["raised"] + f["short"] and d["engine_error"] > 0
    assert d["bad_output"] > 0  # NaN, far away or the wrong shape
    assert c["frames_out"] > 50
    assert d["bone_check"] > 5  # checked on the engine's output, whatever the smoothing
    if overrun == "drop":
        assert c["frames_lost"] == d["overrun_frame"] > 10


@pytest.mark.parametrize("kind", ["default", "leaky"])
def test_fuzz_guarded_default_and_a_leaky_model(kind, tmp_path):
    """The shipped model through open_engine with the leak guard on, and a model that returns
    the naive retarget (the input's bone directions) every 7th call: no published body tracks
    its input, a collapsed body never fails the others, the ledger holds."""
    eng, cfg = make_engine(kind=kind)
    res = run_mutation(800, seed=4, engine=eng, config=cfg, corpus=tmp_path)
    _assert_clean(res)
    assert res["categories"].get("poison", 0) > 5 and res["bodies_out"] > 100
    if kind == "leaky":
        assert res["node_dropped"].get("leak_guard", 0) > 5


def _take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def _corpus_inputs():
    files = sorted(p for p in CORPUS.iterdir() if p.suffix in (".bin", ".stmr")) \
        if CORPUS.is_dir() else []
    return files


@pytest.mark.parametrize("path", _corpus_inputs(), ids=lambda p: p.name)
def test_regression_corpus(engine, path):
    """Inputs that once broke an invariant: ``.bin`` one message, ``.stmr`` a sequence."""
    msgs = list(wire.read_recording(path)) if path.suffix == ".stmr" else [path.read_bytes()]
    h = Harness(engine, NAIVE_CFG, check_every=1)
    for data in msgs:
        h.feed(data)
    led = h.close()
    assert all(led["checks"].values()), led


def test_corpus_is_not_empty():
    assert _corpus_inputs(), f"the regression corpus under {CORPUS} is missing"


# ------------------------------------------------------------------------------------------
# Property tests (hypothesis)
# ------------------------------------------------------------------------------------------

_ints = st.one_of(st.integers(-2**63, 2**64 - 1), st.sampled_from([0, 1, 2**63 - 1, 2**64 - 1,
                                                                    -1, -2**63]))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=_ints, t_ns=_ints, ids=st.lists(_ints, max_size=8),
       joints=st.lists(st.binary(max_size=620), max_size=8),
       states=st.lists(st.binary(max_size=30), max_size=8),
       extra=st.dictionaries(st.sampled_from(["anon", "model", "lat_ns", "zz"]),
                             st.one_of(st.booleans(), _ints, st.text(max_size=4))))
def test_decode_accepts_only_valid_frames(seq, t_ns, ids, joints, states, extra):
    """Whatever mix of field values: a WireError with a known reason, or a frame that meets
    every constraint of the format."""
    bodies = [{"id": i, "joints": j, "state": s} for i, j, s in zip(ids, joints, states)]
    data = msgpack.packb({"v": 1, "src": "h", "seq": seq, "t_ns": t_ns,
                          "skeleton": "kinect_v2", "bodies": bodies, **extra})
    try:
        f = wire.decode(data)
    except wire.WireError as e:
        assert e.reason in wire.REASONS
        return
    assert 0 <= f.seq < 2**63 and 0 <= f.t_ns < 2**63 and len(f.bodies) <= wire.MAX_BODIES
    assert len({b.id for b in f.bodies}) == len(f.bodies)
    for b in f.bodies:
        assert 0 <= b.id < 2**64 and b.joints.shape == (25, 3) and b.state.shape == (25,)
        assert np.isfinite(b.joints).all() and np.abs(b.joints).max() <= wire.MAX_ABS_COORD
        assert b.state.max() <= 2


@st.composite
def _frames(draw):
    """A hostile but decodable stream: sequence and time jumps in both directions, few or
    many ids, poses from plausible to degenerate and extreme."""
    out, seq, t = [], draw(st.integers(0, 1000)), draw(st.integers(0, 10**12))
    for _ in range(draw(st.integers(1, 25))):
        seq = max(0, min(2**63 - 1, seq + draw(st.sampled_from([1, 1, 1, 0, -1, -400, 10**6]))))
        t = max(0, min(2**63 - 1, t + draw(st.sampled_from(
            [33_333_333] * 4 + [0, -10**9, 10**10]))))
        bodies = []
        for bid in draw(st.lists(st.sampled_from([0, 1, 7, 2**64 - 1, 12345]), max_size=6,
                                 unique=True)):
            kind = draw(st.sampled_from(["person", "person", "collapsed", "far", "random"]))
            if kind == "person":
                j = REST * draw(st.floats(0.8, 0.95)) + np.float32(draw(st.floats(-2, 2)))
            elif kind == "collapsed":
                j = np.tile(np.float32(draw(st.floats(-50, 50))), (25, 3))
            elif kind == "far":
                j = REST * np.float32(0.01) + np.float32(draw(st.floats(-99, 99)))
            else:
                j = np.asarray(draw(st.lists(st.floats(-99, 99, width=32), min_size=75,
                                             max_size=75)), np.float32).reshape(25, 3)
            bodies.append({"id": bid, "joints": np.asarray(j, "<f4").tobytes(),
                           "state": bytes([2] * 25)})
        src = draw(st.sampled_from(["a", "a", "a", "b"]))
        out.append(msgpack.packb({"v": 1, "src": src, "seq": seq, "t_ns": t,
                                  "skeleton": "kinect_v2", "bodies": bodies}))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(msgs=_frames())
def test_node_property_never_leaks_and_accounts(engine, msgs):
    cfg = NodeConfig(leak_guard=False, budget_ms=1000, gap_ms=100, stats_interval_s=3600)
    h = Harness(engine, cfg, check_every=1)
    for data in msgs:
        h.feed(data)
    led = h.close()
    assert all(led["checks"].values()), led


# ------------------------------------------------------------------------------------------
# Over real ZeroMQ sockets
# ------------------------------------------------------------------------------------------

def test_hostile_stream_over_tcp_loopback(engine):
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    source = ZmqSource(f"zmq://127.0.0.1:{port}", context=ctx, idle_ms=10, hwm=0)
    sink = ZmqPubSink("tcp://127.0.0.1:*", context=ctx, hwm=0)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(sink.bound)
    node = api.BackgroundNode(source, [sink], engine, config=NAIVE_CFG).start()
    stream, raw = HostileStream(seed=9), set()
    lengths = engine.dummy_lengths
    got = []
    try:
        deadline = time.monotonic() + 10  # subscribers join late: wait for the first message
        while source.received == 0 and time.monotonic() < deadline:
            pub.send(stream.valid())
            time.sleep(0.02)
        base, n = source.received, 600
        for _cat, data in _take(stream, n):
            if len(data) > source.hard_cap:  # libzmq cuts such a peer (tested elsewhere)
                continue
            try:
                for b in wire.decode(data).bodies:
                    raw.add(b.joints.tobytes())
            except wire.WireError:
                pass
            pub.send(data)
            t_end = time.monotonic() + 5  # pace: one message in flight at a time
            while source.received < base + 1 and time.monotonic() < t_end:
                time.sleep(0.0005)
            base = source.received
            while sub.poll(0):
                got.append(sub.recv())
        time.sleep(0.3)
        while sub.poll(100):
            got.append(sub.recv())
    finally:
        stats = node.stop()
        pub.close(0)
        sub.close(0)
        ctx.term()
    assert node.error is None and not node.running
    c, d = Counter(stats["counters"]), stats["dropped"]
    input_drops = sum(v for k, v in d.items() if k.startswith("input:"))
    assert source.received == c["frames_in"] + input_drops  # every message accounted for
    assert c["frames_in"] == c["frames_out"] + c["frames_rejected"] + c["frames_lost"]
    assert c["bodies_in"] == c["bodies_out"] + c["bodies_lost"]
    assert input_drops > 200 and len(got) == c["frames_out"] > 100
    for payload in got:
        m = wire.decode_message(payload)
        assert m.anon is not None
        for b in m.frame.bodies:
            assert b.joints.tobytes() not in raw
            assert np.abs(skeleton.bone_lengths(b.joints)[1:] - lengths[1:]).max() < 1e-3


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris is not installed (pip install atheris)")
def test_atheris_coverage_guided_smoke(tmp_path):
    out = tmp_path / "res.json"
    proc = subprocess.run([sys.executable, "-m", "bench.fuzz_wire", "--mode", "atheris",
                           "--messages", "1500", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (res,) = json.loads(out.read_text())
    _assert_clean(res)
    assert res["messages"] == 1500
