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
sustains, and its latency there. Each scenario measures a fixed number of frames (600 by
default, so that its p99 is a percentile and not the maximum) after a short warm-up whose
frames are not counted (ZeroMQ connections, first calls); the node's metrics are reset when it
ends. A frame that misses the deadline is counted once (:func:`late_frames`).

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
#: A fixed-rate scenario of N frames ends after N / rate seconds; this is its safety margin.
RATE_SLACK_S = 5.0
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
            run = _ScenarioRun(pub, sub, tracks, max_bodies, **arg)
            conn.send(("done", run.run(conn)))
    finally:
        pub.close(0)
        sub.close(0)
        ctx.term()


class _ScenarioRun:
    """One scenario in the harness: publish on schedule (or closed loop), stamp replies.

    Measurement starts after ``warmup_s``; the scenario ends when ``frames`` measured frames
    were sent, or at the latest ``warmup_s + duration_s`` after the start; replies still in
    flight are then collected for :data:`DRAIN_S`.
    """

    def __init__(self, pub, sub, tracks: list[np.ndarray], max_bodies: int, *, bodies: int,
                 rate_hz: float | None, warmup_s: float, duration_s: float, frames: int,
                 src: str):
        import zmq

        self.pub, self.sub, self.tracks = pub, sub, tracks
        self.max_bodies, self.bodies, self.src, self.frames = max_bodies, bodies, src, frames
        self.period_ns = None if rate_hz is None else int(1e9 / rate_hz)
        self.poller = zmq.Poller()
        self.poller.register(sub, zmq.POLLIN)
        self.seq = 0
        self.first_measured: int | None = None
        self.awaiting: int | None = None     # closed loop: the seq whose reply we wait for
        self.awaiting_since = 0
        self.sent_measured = 0
        self.lat: list[int] = []
        self.node_lat: list[int] = []
        self.seqs: list[int] = []
        self.bodies_rx = 0
        self.timeouts = 0
        self.start = time.monotonic_ns()
        self.warm_end = self.start + int(warmup_s * 1e9)
        self.end = self.warm_end + int(duration_s * 1e9)
        self.next_send = self.start

    def run(self, conn) -> dict[str, Any]:
        while True:
            now = time.monotonic_ns()
            if self.first_measured is None and now >= self.warm_end:
                self.first_measured = self.seq
                conn.send(("measuring", None))
            if now >= self.end or self.sent_measured >= self.frames:
                break
            if self._due(now):
                self._send()
            elif self.poller.poll(self._wait_ms(now)):
                self._receive_queued()
        measured_s = (time.monotonic_ns() - self.warm_end) / 1e9
        self._drain()
        return {"sent": self.sent_measured, "received": len(self.lat),
                "bodies_received": self.bodies_rx, "seconds": round(measured_s, 3),
                "timeouts": self.timeouts, "first_measured_seq": self.first_measured,
                "lat_ns": np.asarray(self.lat, np.int64),
                "node_lat_ns": np.asarray(self.node_lat, np.int64),
                "seqs": np.asarray(self.seqs, np.int64)}

    def _due(self, now: int) -> bool:
        if self.period_ns is not None:
            return now >= self.next_send
        if self.awaiting is not None and now - self.awaiting_since > CLOSED_LOOP_TIMEOUT_S * 1e9:
            self.awaiting = None
            self.timeouts += 1
        return self.awaiting is None

    def _send(self) -> None:
        from streamtmr.stream import wire
        from streamtmr.stream.frame import TRACKED, Body, Frame

        state = np.full(25, TRACKED, np.uint8)
        k = self.seq
        t_ns = time.monotonic_ns()
        frame = Frame(k, t_ns, [Body(BODY_ID0 + b, self.tracks[b][k % len(self.tracks[b])],
                                     state) for b in range(self.bodies)], self.src)
        self.pub.send(wire.encode(frame))
        if self.first_measured is not None:
            self.sent_measured += 1
        self.awaiting, self.awaiting_since = k, t_ns
        self.seq += 1
        if self.period_ns is not None:
            self.next_send += self.period_ns

    def _wait_ms(self, now: int) -> int:
        if self.period_ns is not None:
            wait_ms = max(math.ceil((self.next_send - now) / 1e6), 0)
        else:
            limit = self.awaiting_since + CLOSED_LOOP_TIMEOUT_S * 1e9
            wait_ms = max(math.ceil((limit - now) / 1e6), 0)
        return min(wait_ms, max(math.ceil((self.end - now) / 1e6), 0))

    def _receive_queued(self) -> None:
        import zmq

        while True:  # everything queued, each stamped on arrival
            try:
                data = self.sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._receive(time.monotonic_ns(), data)

    def _receive(self, t_rx: int, data: bytes) -> None:
        from streamtmr.stream import wire

        msg = wire.decode_message(data, max_bodies=self.max_bodies)
        f = msg.frame
        if f.src != self.src:  # a straggler of an earlier scenario
            return
        if self.first_measured is not None and f.seq >= self.first_measured:
            self.lat.append(t_rx - f.t_ns)
            self.node_lat.append(msg.anon.lat_ns if msg.anon is not None else 0)
            self.seqs.append(f.seq)
            self.bodies_rx += len(f.bodies)
        if self.awaiting is not None and f.seq >= self.awaiting:
            self.awaiting = None

    def _drain(self) -> None:
        drain_end = time.monotonic_ns() + int(DRAIN_S * 1e9)
        while len(self.lat) < self.sent_measured:  # replies still in flight
            left = drain_end - time.monotonic_ns()
            if left <= 0 or not self.poller.poll(max(math.ceil(left / 1e6), 1)):
                return
            self._receive(time.monotonic_ns(), self.sub.recv())


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


def _counting_node(engine, sinks, config):
    """The real :class:`~streamtmr.stream.node.Node`, noting the seq of every frame it
    overran (held copy or nothing), so that a late frame is counted once: as an overrun, or
    as over budget when it was published fresh but late."""
    from streamtmr.stream.node import Node

    class CountingNode(Node):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.overrun_seqs: list[int] = []

        def step(self, frame, t_recv: int | None = None):
            before = self.metrics.counters["overruns"]
            out = super().step(frame, t_recv)
            if frame is not None and self.metrics.counters["overruns"] > before:
                self.overrun_seqs.append(frame.seq)
            return out

    return CountingNode(engine, sinks, config)


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
                 warmup_s: float, duration_s: float, frames: int, src: str) -> dict[str, Any]:
        """Run one scenario through a fresh Node; returns the harness's measurements, the
        node's final stats and the seqs of the frames the node overran."""
        node = _counting_node(engine, [_shared_sink(self.sink)], config)
        worker = threading.Thread(target=node.run, args=(self.source,),
                                  name="streamtmr-bench-node", daemon=True)
        worker.start()
        try:
            self.conn.send(("run", {"bodies": bodies, "rate_hz": rate_hz, "warmup_s": warmup_s,
                                    "duration_s": duration_s, "frames": frames, "src": src}))
            result = self._await_result(node, warmup_s + duration_s + DRAIN_S + 30)
        finally:
            node.request_stop()
            worker.join(10)
            stats = node.close()
        result["node_stats"] = stats
        first = result["first_measured_seq"]
        result["overrun_seqs"] = np.asarray(
            sorted({s for s in node.overrun_seqs if first is not None and s >= first}), np.int64)
        return result

    def _await_result(self, node, timeout: float) -> dict[str, Any]:
        from streamtmr.stream.metrics import Metrics

        kind, result = self._recv(timeout)
        if kind == "measuring":  # warm-up over: count from here
            fresh = Metrics()
            fresh.info.update(node.metrics.info)
            node.metrics = fresh
            kind, result = self._recv(timeout)
        if kind != "done":
            raise RuntimeError(f"bench harness: unexpected message {kind!r}")
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


def late_frames(result: dict[str, Any], budget_ms: float) -> dict[str, int]:
    """Frames that missed the deadline, each counted once.

    ``overruns``: frames the node replaced by a held copy or dropped (its own decision; a held
    copy's in-node latency may exceed the budget too, and it is not counted again);
    ``over_budget``: frames published fresh whose in-node latency (``lat_ns`` in the message)
    exceeded ``budget_ms`` anyway (the node's thread was not scheduled in time);
    ``late``: their sum — the frames a client got late or as a substitute.
    """
    overran = {int(s) for s in result["overrun_seqs"]}
    slow = {int(s) for s, ns in zip(result["seqs"], result["node_lat_ns"])
            if ns > budget_ms * 1e6}
    return {"overruns": len(overran), "over_budget": len(slow - overran),
            "late": len(overran | slow)}


def late_count(row: dict[str, Any]) -> int:
    """Frames of a node scenario that missed the deadline, each once (runs saved before the
    ``late`` field counted a held frame both as an overrun and as over budget)."""
    return int(row["late"]) if "late" in row else int(row["overruns"] + row["over_budget"])


def scenario_row(bodies: int, mode: str, rate_hz: float | None, result: dict[str, Any],
                 budget_ms: float) -> dict[str, Any]:
    """One JSON row: end-to-end and in-node latency, per-stage breakdown, late frames
    (:func:`late_frames`), drops."""
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
        **late_frames(result, budget_ms),
        "node_overrun_counter": int(counters.get("overruns", 0)),
        "bodies_held": int(counters.get("bodies_held", 0)),
        "engine_errors": int(counters.get("engine_errors", 0)),
        "dropped": {k: v for k, v in stats.get("dropped", {}).items() if v},
    }


def bench_node(engine, clips: list[np.ndarray], bodies: list[int], rate_hz: float,
               frames: int, max_s: float, warmup_s: float, budget_ms: float = 10.0,
               log: Callable[[str], None] = lambda s: None, stagger_search: bool = False,
               ) -> tuple[dict[str, Any], dict[tuple[int, str], np.ndarray]]:
    """Every body count at ``rate_hz`` and closed loop, ``frames`` measured frames each (closed
    loop: at most ``max_s`` seconds). Returns the JSON section and the raw end-to-end samples
    keyed by (bodies, mode)."""
    from streamtmr.stream.node import NodeConfig

    n_max = max(bodies)
    if len(clips) < n_max:
        raise ValueError(f"need {n_max} motion clips, got {len(clips)}")
    config = NodeConfig(budget_ms=budget_ms, max_bodies=max(n_max, 1),
                        stats_interval_s=1e9, stagger_search=stagger_search).validate()
    closed = replace(config, budget_ms=max(budget_ms, MAX_MODE_BUDGET_MS))
    plan = [(n, f"{rate_hz:g}Hz", rate_hz, frames / rate_hz + RATE_SLACK_S, config)
            for n in bodies] + [(n, "max", None, max_s, closed) for n in bodies]
    plan.sort(key=lambda p: p[0])  # per body count: at the rate, then closed loop
    rows: list[dict[str, Any]] = []
    samples: dict[tuple[int, str], np.ndarray] = {}
    node_log = logging.getLogger("streamtmr.stream.node")
    level = node_log.level
    node_log.setLevel(max(logging.WARNING, node_log.getEffectiveLevel()))  # no stats lines
    try:
        with NodeHarness(clips[:n_max], max_bodies=max(n_max, 1)) as h:
            for n, mode, hz, seconds, cfg in plan:
                res = h.scenario(engine, cfg, bodies=n, rate_hz=hz, warmup_s=warmup_s,
                                 duration_s=seconds, frames=frames, src=f"bench-{n}-{mode}")
                rows.append(scenario_row(n, mode, hz, res, config.budget_ms))
                samples[(n, mode)] = res["lat_ns"]
                log(_scenario_line(rows[-1]))
    finally:
        node_log.setLevel(level)
    section = {"config": asdict(config), "max_mode_budget_ms": closed.budget_ms,
               "frames_per_scenario": frames, "scenarios": rows}
    return section, samples


def _scenario_line(row: dict[str, Any]) -> str:
    lat = row["latency"]
    return (f"node {row['bodies']} bodies @ {row['mode']}: {row['sent']} frames, "
            f"{row['achieved_hz']:.0f} Hz, end-to-end p50 {lat.get('p50_ms', float('nan')):.2f}"
            f" ms, p99 {lat.get('p99_ms', float('nan')):.2f} ms, late {row['late']} "
            f"({row['overruns']} overruns + {row['over_budget']} over budget)")
