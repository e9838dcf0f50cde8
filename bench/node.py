"""End-to-end node benchmark over ZeroMQ loopback: sensor publish → anonymized receive.

A harness process plays the sensor and the VR client: it publishes wire messages (``t_ns`` =
``time.monotonic_ns()`` just before encoding, a clock every process on the machine shares) and
subscribes to the node's output, where ``receive time − t_ns`` of each anonymized message is the
latency the whole anonymizer adds. The Node itself runs in this process — the real
:class:`~streamtmr.stream.node.Node` with a :class:`~sensors.zmq_source.ZmqSource` in and a
:class:`~streamtmr.stream.sinks.ZmqPubSink` out over TCP on 127.0.0.1 — and its own metrics
give the per-stage breakdown (decode, window, infer, smooth, encode, send, total).

Two modes per number of bodies: ``rate`` publishes at a fixed rate (30 Hz, a Kinect v2) with
the node's real budget, so overruns count; ``max`` is closed loop, each frame published as soon
as the previous one came back anonymized, with the budget lifted to :data:`MAX_MODE_BUDGET_MS`
so that every frame is freshly anonymized (not a held copy): the highest rate the node
sustains, and its latency there. Each scenario starts with a
short warm-up whose frames are not counted (ZeroMQ connections, first calls); the node's
metrics are reset when it ends.

The harness is single-threaded (one poll loop that sends on schedule and timestamps on receipt)
in its own process, so neither its timestamps nor the node wait for each other's interpreter
lock.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from bench.motion import pingpong
from bench.stats import summarize_ns

#: A closed-loop frame whose anonymized copy has not come back after this long is given up.
CLOSED_LOOP_TIMEOUT_S = 1.0
#: Replies still in flight when a scenario ends are collected for this long.
DRAIN_S = 0.3
#: The node's budget in ``max`` mode: high enough that no frame falls back to a held copy.
MAX_MODE_BUDGET_MS = 1000.0
BODY_ID0 = 1000


# ------------------------------------------------------------------------------------------
# The harness process: sensor publisher and VR-client subscriber
# ------------------------------------------------------------------------------------------

def _harness(conn, sink_endpoint: str, clips: list[np.ndarray], max_bodies: int) -> None:
    """Child process main: binds the sensor PUB, subscribes to the node, runs scenarios."""
    import zmq

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 10_000)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 10_000)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(sink_endpoint)
    tracks = [pingpong(c) for c in clips]
    conn.send(("ready", pub.getsockopt_string(zmq.LAST_ENDPOINT)))
    try:
        while True:
            cmd, arg = conn.recv()
            if cmd == "stop":
                return
            conn.send(("done", _scenario(pub, sub, conn, tracks, max_bodies, **arg)))
    finally:
        pub.close(0)
        sub.close(0)
        ctx.term()


def _scenario(pub, sub, conn, tracks: list[np.ndarray], max_bodies: int, *, bodies: int,
              rate_hz: float | None, warmup_s: float, duration_s: float,
              src: str) -> dict[str, Any]:
    import zmq

    from streamtmr.stream import wire
    from streamtmr.stream.frame import TRACKED, Body, Frame

    state = np.full(25, TRACKED, np.uint8)
    ids = [BODY_ID0 + i for i in range(bodies)]
    period_ns = None if rate_hz is None else int(1e9 / rate_hz)
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)

    seq = 0
    first_measured: int | None = None
    awaiting: int | None = None       # closed loop: the seq whose reply we wait for
    awaiting_since = 0
    sent_measured = 0
    lat: list[int] = []
    node_lat: list[int] = []
    bodies_rx = 0
    timeouts = 0
    start = time.monotonic_ns()
    warm_end = start + int(warmup_s * 1e9)
    end = warm_end + int(duration_s * 1e9)
    drain_end = end + int(DRAIN_S * 1e9)
    next_send = start

    def receive(t_rx: int, data: bytes) -> None:
        nonlocal awaiting, bodies_rx
        msg = wire.decode_message(data, max_bodies=max_bodies)
        f = msg.frame
        if f.src != src:  # a straggler of an earlier scenario
            return
        if first_measured is not None and f.seq >= first_measured:
            lat.append(t_rx - f.t_ns)
            node_lat.append(msg.anon.lat_ns if msg.anon is not None else 0)
            bodies_rx += len(f.bodies)
        if awaiting is not None and f.seq >= awaiting:
            awaiting = None

    while True:
        now = time.monotonic_ns()
        if first_measured is None and now >= warm_end:
            first_measured = seq
            conn.send(("measuring", None))
        if now >= end:
            break
        if period_ns is not None:
            due = now >= next_send
        else:
            if awaiting is not None and now - awaiting_since > CLOSED_LOOP_TIMEOUT_S * 1e9:
                awaiting = None
                timeouts += 1
            due = awaiting is None
        if due:
            k = seq
            t_ns = time.monotonic_ns()
            frame = Frame(seq, t_ns, [Body(ids[b], tracks[b][k % len(tracks[b])], state)
                                      for b in range(bodies)], src)
            pub.send(wire.encode(frame))
            if first_measured is not None:
                sent_measured += 1
            awaiting, awaiting_since = seq, t_ns
            seq += 1
            if period_ns is not None:
                next_send += period_ns
            continue
        if period_ns is not None:
            wait_ms = max(math.ceil((next_send - now) / 1e6), 0)
        else:
            wait_ms = max(math.ceil((awaiting_since + CLOSED_LOOP_TIMEOUT_S * 1e9 - now) / 1e6),
                          0)
        wait_ms = min(wait_ms, max(math.ceil((end - now) / 1e6), 0))
        if poller.poll(wait_ms):
            while True:  # everything queued, each stamped on arrival
                try:
                    data = sub.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                receive(time.monotonic_ns(), data)
    measured_s = (time.monotonic_ns() - warm_end) / 1e9
    while len(lat) < sent_measured:  # replies still in flight
        left = drain_end - time.monotonic_ns()
        if left <= 0 or not poller.poll(max(math.ceil(left / 1e6), 1)):
            break
        data = sub.recv()
        receive(time.monotonic_ns(), data)
    return {"sent": sent_measured, "received": len(lat), "bodies_received": bodies_rx,
            "seconds": round(measured_s, 3), "timeouts": timeouts,
            "lat_ns": np.asarray(lat, np.int64), "node_lat_ns": np.asarray(node_lat, np.int64)}


# ------------------------------------------------------------------------------------------
# The node side
# ------------------------------------------------------------------------------------------

def _shared_sink(sink):
    """A sink forwarding to ``sink`` whose ``close`` leaves it open for the next scenario."""
    from streamtmr.stream.sinks import Sink

    class SharedSink(Sink):
        name = sink.name

        def __init__(self) -> None:
            super().__init__()
            self.dropped = sink.dropped

        def send(self, frame, payload: bytes) -> bool:
            return sink.send(frame, payload)

    return SharedSink()


class NodeHarness:
    """The harness process, the node's ZeroMQ source and sink: reused by every scenario."""

    def __init__(self, clips: list[np.ndarray], max_bodies: int, start_timeout_s: float = 120):
        import zmq

        from sensors.zmq_source import ZmqSource
        from streamtmr.stream.sinks import ZmqPubSink

        self.max_bodies = max_bodies
        self.ctx = zmq.Context()
        self.sink = ZmqPubSink("tcp://127.0.0.1:*", hwm=10_000, context=self.ctx)
        mp = multiprocessing.get_context("spawn")
        self.conn, child = mp.Pipe()
        self.proc = mp.Process(target=_harness, args=(child, self.sink.bound, clips, max_bodies),
                               name="streamtmr-bench-harness", daemon=True)
        self.proc.start()
        child.close()
        kind, endpoint = self._recv(start_timeout_s)
        if kind != "ready":
            raise RuntimeError(f"bench harness: unexpected message {kind!r}")
        self.source = ZmqSource(endpoint, max_bodies=max_bodies, hwm=10_000, idle_ms=20,
                                context=self.ctx)

    def _recv(self, timeout_s: float) -> tuple[str, Any]:
        if not self.conn.poll(timeout_s):
            raise RuntimeError(f"bench harness: no answer within {timeout_s:.0f} s "
                               f"(alive: {self.proc.is_alive()})")
        return self.conn.recv()

    def scenario(self, engine, config, *, bodies: int, rate_hz: float | None,
                 warmup_s: float, duration_s: float, src: str) -> dict[str, Any]:
        """Run one scenario through a fresh Node; returns the harness's measurements and the
        node's final stats."""
        from streamtmr.stream.metrics import Metrics
        from streamtmr.stream.node import Node

        node = Node(engine, [_shared_sink(self.sink)], config)
        worker = threading.Thread(target=node.run, args=(self.source,),
                                  name="streamtmr-bench-node", daemon=True)
        worker.start()
        try:
            self.conn.send(("run", {"bodies": bodies, "rate_hz": rate_hz, "warmup_s": warmup_s,
                                    "duration_s": duration_s, "src": src}))
            timeout = warmup_s + duration_s + DRAIN_S + 30
            kind, result = self._recv(timeout)
            if kind == "measuring":  # warm-up over: count from here
                fresh = Metrics()
                fresh.info.update(node.metrics.info)
                node.metrics = fresh
                kind, result = self._recv(timeout)
            if kind != "done":
                raise RuntimeError(f"bench harness: unexpected message {kind!r}")
        finally:
            node.request_stop()
            worker.join(10)
            stats = node.close()
        result["node_stats"] = stats
        return result

    def close(self) -> None:
        try:
            self.conn.send(("stop", None))
        except (OSError, ValueError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(2)
        self.source.close()
        self.sink.close()
        self.ctx.term()

    def __enter__(self) -> NodeHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scenario_row(bodies: int, mode: str, rate_hz: float | None, result: dict[str, Any],
                 budget_ms: float) -> dict[str, Any]:
    """One JSON row: end-to-end and in-node latency, per-stage breakdown, overruns, drops.

    ``overruns`` are the node's own count (frames it replaced by a held copy or dropped);
    ``over_budget`` counts published frames whose in-node latency (``lat_ns`` in the message)
    exceeded ``budget_ms`` anyway — the deadline is missed without an overrun being counted
    when the node's thread is not scheduled in time.
    """
    stats = result["node_stats"]
    counters = stats.get("counters", {})
    seconds = result["seconds"]
    return {
        "bodies": bodies, "mode": mode, "target_hz": rate_hz,
        "achieved_hz": round(result["sent"] / seconds, 1) if seconds > 0 else 0.0,
        "sent": result["sent"], "received": result["received"],
        "lost": max(result["sent"] - result["received"], 0),
        "bodies_received": result["bodies_received"],
        "latency": summarize_ns(result["lat_ns"]),
        "node_latency": summarize_ns(result["node_lat_ns"]),
        "stages": {k: v for k, v in stats.get("latency", {}).items() if v.get("count")},
        "overruns": int(counters.get("overruns", 0)),
        "over_budget": int((result["node_lat_ns"] > budget_ms * 1e6).sum()),
        "bodies_held": int(counters.get("bodies_held", 0)),
        "engine_errors": int(counters.get("engine_errors", 0)),
        "dropped": {k: v for k, v in stats.get("dropped", {}).items() if v},
    }


def bench_node(engine, clips: list[np.ndarray], bodies: list[int], rate_hz: float,
               rate_s: float, max_s: float, warmup_s: float, budget_ms: float = 10.0,
               log: Callable[[str], None] = lambda s: None,
               ) -> tuple[dict[str, Any], dict[tuple[int, str], np.ndarray]]:
    """Every body count at ``rate_hz`` and closed loop. Returns the JSON section and the raw
    end-to-end samples keyed by (bodies, mode)."""
    from streamtmr.stream.node import NodeConfig

    n_max = max(bodies)
    node_log = logging.getLogger("streamtmr.stream.node")
    level = node_log.level
    if len(clips) < n_max:
        raise ValueError(f"need {n_max} motion clips, got {len(clips)}")
    config = NodeConfig(budget_ms=budget_ms, max_bodies=max(n_max, 1),
                        stats_interval_s=1e9).validate()
    closed = replace(config, budget_ms=max(budget_ms, MAX_MODE_BUDGET_MS))
    rows: list[dict[str, Any]] = []
    samples: dict[tuple[int, str], np.ndarray] = {}
    node_log.setLevel(max(logging.WARNING, node_log.getEffectiveLevel()))  # no stats lines
    try:
        with NodeHarness(clips[:n_max], max_bodies=max(n_max, 1)) as h:
            _run_scenarios(h, engine, config, closed, bodies, rate_hz, rate_s, max_s, warmup_s,
                           rows, samples, log)
    finally:
        node_log.setLevel(level)
    section = {"config": asdict(config), "max_mode_budget_ms": closed.budget_ms,
               "scenarios": rows}
    return section, samples


def _run_scenarios(h: NodeHarness, engine, config, closed, bodies: list[int], rate_hz: float,
                   rate_s: float, max_s: float, warmup_s: float, rows: list, samples: dict,
                   log: Callable[[str], None]) -> None:
    for n in bodies:
        for mode, hz, seconds, cfg in ((f"{rate_hz:g}Hz", rate_hz, rate_s, config),
                                       ("max", None, max_s, closed)):
            res = h.scenario(engine, cfg, bodies=n, rate_hz=hz, warmup_s=warmup_s,
                             duration_s=seconds, src=f"bench-{n}-{mode}")
            row = scenario_row(n, mode, hz, res, config.budget_ms)
            rows.append(row)
            samples[(n, mode)] = res["lat_ns"]
            lat = row["latency"]
            log(f"node {n} bodies @ {mode}: {row['achieved_hz']:.0f} Hz, end-to-end p50 "
                f"{lat.get('p50_ms', float('nan')):.2f} ms, p99 "
                f"{lat.get('p99_ms', float('nan')):.2f} ms, overruns {row['overruns']}, over "
                f"budget {row['over_budget']}")
