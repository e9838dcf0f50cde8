"""Faults: the node keeps running or stops cleanly, never publishes raw data, and says what
happened. Publisher restart, stalled subscriber, engine that raises or hangs, corrupt or
tampered model files, SIGTERM mid-stream."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import zmq

from bench.soak import rss_mb
from engines import create_engine
from sensors.zmq_source import ZmqSource
from streamtmr import skeleton
from streamtmr.cache import verify
from streamtmr.cli import main
from streamtmr.dummy import default_dummy
from streamtmr.models.registry import build_model
from streamtmr.stream import api, wire
from streamtmr.stream.frame import Body, Frame
from streamtmr.stream.node import Node, NodeConfig
from streamtmr.stream.sinks import ZmqPubSink

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
LENGTHS = default_dummy().lengths
REST = default_dummy().rest_pose()
T = 16


@pytest.fixture(scope="module")
def engine():
    return create_engine("torch", model=build_model({"method": "naive"}), window=T, max_batch=8)




def person(bid: int, seq: int) -> np.ndarray:
    """A marker body: never the dummy's proportions, arms moving."""
    pose = REST * (0.85 + 0.03 * (bid % 4)) + np.array([0.8 * (bid % 3), 0, 3], np.float32)
    pose[5:12, 1] += 0.1 * np.sin(seq / 5 + bid)
    return pose.astype(np.float32)


def frame(seq: int, ids=(1, 2), src: str = "kinect", t0_ns: int = 0) -> Frame:
    return Frame(seq, t0_ns + int(seq * 1e9 / 30), [Body(i, person(i, seq)) for i in ids], src)


def bone_err(j: np.ndarray) -> float:
    return float(np.abs(skeleton.bone_lengths(j)[1:] - LENGTHS[1:]).max())


class RawGuard:
    """Remembers every input body; checks every published message against them."""

    def __init__(self):
        self.raw: set[bytes] = set()
        self.checked = 0

    def encode(self, f: Frame) -> bytes:
        for b in f.bodies:
            self.raw.add(np.ascontiguousarray(b.joints, "<f4").tobytes())
        return wire.encode(f)

    def check(self, payload: bytes) -> wire.Message:
        m = wire.decode_message(payload)
        assert m.anon is not None, "a message not marked anonymized was published"
        for b in m.frame.bodies:
            assert b.joints.tobytes() not in self.raw, "raw input joints were published"
            assert bone_err(b.joints) < 1e-3
            self.checked += 1
        return m


def drain(sub, out: list, guard: RawGuard, wait_ms: int = 0) -> None:
    while sub.poll(wait_ms):
        wait_ms = 0
        out.append(guard.check(sub.recv()))


def _loopback(ctx, engine, config=None):
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    source = ZmqSource(f"zmq://127.0.0.1:{port}", context=ctx, idle_ms=20)
    sink = ZmqPubSink("tcp://127.0.0.1:*", context=ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(sink.bound)
    node = api.BackgroundNode(source, [sink], engine, config=config or NodeConfig(leak_guard=False,
                                                                   budget_ms=1000))
    return pub, port, source, sub, node.start()


def _send_until(pub, sub, guard, got, make, cond, timeout_s=10.0, period_s=1 / 60):
    seq, deadline = 0, time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        pub.send(guard.encode(make(seq)))
        seq += 1
        drain(sub, got, guard, wait_ms=int(period_s * 1000))
    return seq


# ------------------------------------------------------------------------------------------
# Publisher restart
# ------------------------------------------------------------------------------------------

def test_publisher_restart_sequence_restarts_node_resumes(engine):
    """The sensor process dies and comes back on the same port: its sequence numbers and
    clock restart from 0. The node keeps running, resets its windows and publishes again
    (without the fix, every frame up to the old sequence number was dropped as late)."""
    ctx = zmq.Context()
    guard, got = RawGuard(), []
    pub, port, source, sub, node = _loopback(ctx, engine)
    try:
        n1 = _send_until(pub, sub, guard, got, lambda s: frame(s),
                         lambda: len(got) >= 60)
        drain(sub, got, guard, wait_ms=200)
        before = len(got)
        pub.close(0)  # the publisher is gone...
        time.sleep(0.5)
        assert node.running
        pub = ctx.socket(zmq.PUB)  # ...and restarts: seq and t_ns from 0 again
        pub.bind(f"tcp://127.0.0.1:{port}")
        got_after: list = []
        _send_until(pub, sub, guard, got_after, lambda s: frame(s, ids=(1, 3), src="kinect"),
                    lambda: sum(1 for m in got_after if m.frame.bodies) >= 20)
    finally:
        stats = node.stop()
        pub.close(0)
        sub.close(0)
        ctx.term()
    assert node.error is None and before >= 60 and n1 >= 60
    restarted = [m for m in got_after if m.frame.seq < n1 and m.frame.bodies]
    assert len(restarted) >= 20, "the node did not resume after the publisher restarted"
    assert [b.id for b in restarted[-1].frame.bodies] == [1, 3]
    assert stats["counters"]["window_reset:restart"] >= 1
    assert stats["dropped"].get("window:out_of_order", 0) <= 2
    assert guard.checked > 100


# ------------------------------------------------------------------------------------------
# Stalled subscriber
# ------------------------------------------------------------------------------------------

def test_stalled_subscriber_neither_blocks_nor_grows(engine):
    """A subscriber that never reads: the PUB queue stops at its high-water mark, the node
    keeps publishing, memory stays flat. (inproc: no kernel buffers, so anything queued would
    be this process's memory.) libzmq's PUB drops for a mute subscriber silently; that
    subscriber sees the loss as gaps in ``seq``."""
    ctx = zmq.Context()
    hwm = 16
    sink = ZmqPubSink("inproc://stalled", hwm=hwm, context=ctx, linger_ms=0)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, hwm)
    sub.connect("inproc://stalled")
    node = Node(engine, [sink], NodeConfig(leak_guard=False, budget_ms=1000, hop=8,
                                           smoothing="none"))
    ids = (1, 2, 3, 4, 5, 6)  # 6 bodies: ~2 KB per message
    n_frames, warm = 16_000, 1_600
    rss: dict[str, float] = {}
    done = threading.Event()

    def loop():
        for seq in range(n_frames):
            if seq == warm:
                rss["warm"] = rss_mb()
            node.step(frame(seq, ids))
        rss["end"] = rss_mb()
        done.set()

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    assert done.wait(120), "the node blocked on a stalled subscriber"
    stats = node.stats()
    seqs = []
    while sub.poll(50):
        seqs.append(wire.decode(sub.recv()).seq)
    node.close()
    sub.close(0)
    ctx.term()
    c = stats["counters"]
    assert c["frames_in"] == c["frames_out"] == n_frames  # the node kept publishing ~32 MB
    assert len(seqs) <= 2 * hwm + 2  # what was queued for the subscriber: two HWMs at most
    assert seqs == sorted(seqs) and seqs[0] == 0  # the oldest were kept, the rest dropped
    assert rss["end"] - rss["warm"] < 20, rss


# ------------------------------------------------------------------------------------------
# Engine raises or hangs
# ------------------------------------------------------------------------------------------

class Wrapped:
    """A real engine that can be switched to raise or to hang until released."""

    def __init__(self, inner):
        self.inner = inner
        self.window, self.max_batch = inner.window, inner.max_batch
        self.dummy_lengths = inner.dummy_lengths
        self.mode: str | None = None
        self.release = threading.Event()
        self.hung = threading.Event()

    def describe(self):
        return {"model": "wrapped"}

    def run_latest(self, x, k=1):
        if self.mode == "raise":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if self.mode == "hang":
            self.hung.set()
            self.release.wait()
        return self.inner.run_latest(x, k)


def test_engine_hangs_forever_node_holds_then_stops_cleanly(engine, caplog):
    eng = Wrapped(engine)
    ctx = zmq.Context()
    guard, got = RawGuard(), []
    cfg = NodeConfig(leak_guard=False, budget_ms=40, hang_ms=300, hold_ms=600)
    pub, _, source, sub, node = _loopback(ctx, eng, cfg)
    try:
        _send_until(pub, sub, guard, got, lambda s: frame(s), lambda: len(got) >= 20)
        eng.mode = "hang"
        t_hang = time.monotonic()
        after: list = []
        _send_until(pub, sub, guard, after, lambda s: frame(10_000 + s),
                    lambda: time.monotonic() - t_hang > 1.5, period_s=1 / 30)
        assert eng.hung.is_set() and node.running
        t0 = time.monotonic()
        stats = node.stop(timeout_s=10)  # the engine thread is still stuck in its call
        stop_s = time.monotonic() - t0
    finally:
        eng.release.set()
        pub.close(0)
        sub.close(0)
        ctx.term()
    assert stats is not None and not node.running and node.error is None and stop_s < 5
    c = stats["counters"]
    assert c["engine_hangs"] == 1 and c["overruns"] >= 20
    assert stats["dropped"]["engine_busy"] >= 20
    # while hung: held anonymized frames until they expire, then frames without bodies
    with_bodies = [m for m in after if m.frame.bodies]
    assert len(with_bodies) >= 10 and any(not m.frame.bodies for m in after)
    # held = the same anonymized frame over and over (beyond the one or two outputs that were
    # in flight when the engine hung); then they expire and frames come without bodies
    for bid in (1, 2):
        seen = Counter(b.joints.tobytes() for m in with_bodies for b in m.frame.bodies
                       if b.id == bid)
        assert len(seen) <= 3 and max(seen.values()) >= 8, seen.values()
    assert "engine call running for over 300 ms" in caplog.text


def test_engine_raising_from_the_start_publishes_no_body(engine, caplog):
    eng = Wrapped(engine)
    eng.mode = "raise"
    ctx = zmq.Context()
    guard, got = RawGuard(), []
    pub, _, source, sub, node = _loopback(ctx, eng)
    try:
        _send_until(pub, sub, guard, got, lambda s: frame(s), lambda: len(got) >= 30)
    finally:
        stats = node.stop()
        pub.close(0)
        sub.close(0)
        ctx.term()
    assert node.error is None and len(got) >= 30
    assert all(m.frame.bodies == [] for m in got)  # fail-closed: nothing, never raw
    c = stats["counters"]
    assert c["engine_errors"] == c["frames_in"] >= 30
    assert c["bodies_lost"] == c["bodies_in"] and stats["dropped"]["no_held_frame"] >= 60
    assert "engine raised RuntimeError: CUDA error" in caplog.text


# ------------------------------------------------------------------------------------------
# Corrupt or tampered model files
# ------------------------------------------------------------------------------------------

def _sink_port() -> int:
    s = zmq.Context.instance().socket(zmq.PUB)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    s.close(0)
    return port


def _cli_refuses(model: Path, capsys, *extra: str) -> str:
    port = _sink_port()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    rc = main(["run", "--engine", "torch", "--model", str(model), "--window", "16", "--fast",
               "--max-frames", "30", "--sink", f"zmq://127.0.0.1:{port}", *extra])
    err = capsys.readouterr().err
    published = sub.poll(300)
    probe = ctx.socket(zmq.PUB)
    probe.bind(f"tcp://127.0.0.1:{port}")  # the sink was never opened: the port is free
    probe.close(0)
    sub.close(0)
    ctx.term()
    assert rc == 2 and "Traceback" not in err and not published
    assert str(model) in err, err
    return err


@pytest.mark.parametrize("damage", ["garbage", "truncated", "header_length"])
def test_corrupt_checkpoint_refused_nothing_published(model_ckpt, tmp_path, capsys, damage):
    data = model_ckpt.read_bytes()
    bad = tmp_path / "corrupt.safetensors"
    if damage == "garbage":
        bad.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    else:  # the header claims to be 1 TB long
        bad.write_bytes(struct.pack("<Q", 2**40) + data[8:])
    err = _cli_refuses(bad, capsys, "--allow-unevaluated")  # past the card check
    assert "cannot load the anonymizer" in err


def test_corrupt_onnx_refused(tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07" + os.urandom(2000))
    err = _cli_refuses(bad, capsys, "--allow-unevaluated")  # past the card check
    assert "not a readable ONNX model" in err or "not exported by streamtmr" in err


def test_tampered_tensorrt_plan_refused(tmp_path, capsys):
    from streamtmr.cache import write_sidecar
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialised plan")
    write_sidecar(plan, {"method": "naive", "window": 16, "graph_sha256": "ab" * 32,
                         "dummy": {"name": "d", "lengths": [float(x) for x in LENGTHS]}})
    plan.write_bytes(b"serialised plaN")  # one byte changed after the checksum was recorded
    err = _cli_refuses(plan, capsys, "--allow-unevaluated")  # past the card check
    assert "SHA-256" in err


def _identity_onnx(src: Path, dst: Path) -> None:
    """A graph with the same interface and metadata that returns its input unchanged."""
    m = onnx.load(str(src))
    g = m.graph
    del g.node[:]
    del g.initializer[:]
    del g.value_info[:]
    g.node.append(onnx.helper.make_node("Identity", [g.input[0].name], [g.output[0].name]))
    onnx.save(m, str(dst))


def test_tampered_cached_onnx_is_rejected_and_rebuilt(tmp_path, monkeypatch):
    """Someone swaps the cached exported graph (and the cached optimised graph) for one that
    passes raw joints through: the SHA-256 check rejects both, the model is re-exported."""
    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path / "cache"))
    model = build_model({"method": "naive"})
    x = np.ascontiguousarray(np.broadcast_to(person(1, 0), (2, T, 25, 3)), np.float32)
    first = create_engine("onnxruntime", model=model, window=T).run(x)
    cached = sorted((tmp_path / "cache").rglob("*.onnx"))
    assert {p.parent.name for p in cached} == {"onnx", "ort"}
    for p in cached:
        _identity_onnx(p, p)
        assert verify(p) is None
    leak = create_engine("onnxruntime", model=model, window=T, cache=False)
    np.testing.assert_allclose(leak.run(x), first, atol=1e-5)  # sanity: cache=False rebuilds
    again = create_engine("onnxruntime", model=model, window=T).run(x)
    np.testing.assert_allclose(again, first, atol=1e-5)
    assert not np.allclose(again, x, atol=1e-3)
    assert all(verify(p) is not None for p in cached)  # rebuilt in place


# ------------------------------------------------------------------------------------------
# SIGTERM mid-stream
# ------------------------------------------------------------------------------------------

def test_sigterm_mid_stream_from_zmq_source(model_ckpt, tmp_path):
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    in_port = pub.bind_to_random_port("tcp://127.0.0.1")
    out_port = _sink_port()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{out_port}")
    stats_path = tmp_path / "stats.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtmr", "run", "--engine", "torch", "--model",
         str(model_ckpt), "--window", "16", "--source", f"zmq://127.0.0.1:{in_port}",
         "--sink", f"zmq://127.0.0.1:{out_port}", "--budget-ms", "1000",
         "--stats-json", str(stats_path), "--stats-interval", "0.5"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    guard, got = RawGuard(), []
    try:
        seq, deadline = 0, time.monotonic() + 90
        while len(got) < 30 and time.monotonic() < deadline and proc.poll() is None:
            pub.send(guard.encode(frame(seq, ids=(7, 8, 9))))
            seq += 1
            drain(sub, got, guard, wait_ms=30)
        assert len(got) >= 30, proc.stderr.read()[-2000:] if proc.poll() is not None else ""
        proc.send_signal(signal.SIGTERM)  # mid-stream: frames keep coming
        t_end = time.monotonic() + 2
        while time.monotonic() < t_end and proc.poll() is None:
            pub.send(guard.encode(frame(seq, ids=(7, 8, 9))))
            seq += 1
            drain(sub, got, guard, wait_ms=30)
        out, err = proc.communicate(timeout=30)
        drain(sub, got, guard, wait_ms=200)
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.close(0)
        sub.close(0)
        ctx.term()
    assert proc.returncode == 0, err[-2000:]
    assert "signal 15: finishing" in err and "stats written to" in err
    final = json.loads(stats_path.read_text())
    summary = json.loads(out.strip().splitlines()[-1])
    c = Counter(final["counters"])
    assert summary["frames_out"] == c["frames_out"] >= len(got) >= 30
    assert c["frames_in"] == c["frames_out"] + c["frames_rejected"] + c["frames_lost"]
    assert guard.checked >= 90  # every received body checked: dummy bones, never raw
