"""Soak and load test: the streaming node under a steady multi-body stream over ZeroMQ loopback.

A traffic process publishes ``--bodies`` SynthKinect people at ``--rate`` Hz (wire format, tcp
loopback) and subscribes to the node's output; this process runs the node (source → real
engine → ZeroMQ PUB sink) and samples its own resident memory. Reported as JSON, over the
measurement period after ``--warmup`` seconds:

* frames sent, received anonymized, lost end to end; the node's counters (overruns, drops by
  reason, engine errors) over the whole run;
* latency p50/p95/p99/max: the node's own (``lat_ns`` of every published message: receive →
  encode) and end to end (publisher send → subscriber receive, one monotonic clock);
* resident memory (``VmRSS``): at the end of warm-up, at the end, the maximum, growth and the
  least-squares slope (MB per minute) after warm-up;
* every received body is checked for the dummy's bone lengths (raw input would fail it).

The engine is the shipped default model (through the guarded ``engines.open_engine``), or
``--model`` (checkpoint / ONNX, run even without a privacy card: logged).

With ``--attacks`` (issue 11) the traffic process also attacks the node every
``--attack-every`` seconds of the measured period, in turn: one message over the source's hard
size cap (libzmq drops the publisher; the node must reconnect), a multipart message, a burst
of 2,000 malformed messages, a frame with a collapsed body (every joint at one point) beside
the real ones, and a flood of 1,000 subscriptions on the node's output (the sink rebinds after
its cap; the subscriber resubscribes by itself). The report counts the attacks by kind; the
node's counters show what it did; the received ratio and memory show that it kept serving.

    python -m bench.soak --bodies 6 --rate 30 --duration 3600 --record
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing as mp
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


# ------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------

def rss_mb() -> float:
    """Current resident set size of this process in MB (``/proc/self/status``; elsewhere the
    peak from ``getrusage``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


class RssSampler(threading.Thread):
    """Samples :func:`rss_mb` every ``interval_s`` into ``samples`` [(t, MB)]."""

    def __init__(self, interval_s: float = 0.5):
        super().__init__(name="rss-sampler", daemon=True)
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.monotonic() - self.t0, rss_mb()))
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)
        self.samples.append((time.monotonic() - self.t0, rss_mb()))

    def summary(self, after_s: float) -> dict[str, float]:
        """Growth after ``after_s`` seconds: start, end, max, end − start, slope."""
        pts = [(t, m) for t, m in self.samples if t >= after_s] or self.samples[-1:]
        t = np.array([p[0] for p in pts])
        m = np.array([p[1] for p in pts])
        slope = float(np.polyfit(t, m, 1)[0] * 60) if len(pts) >= 3 and np.ptp(t) > 0 else 0.0
        return {"start_mb": round(float(m[0]), 1), "end_mb": round(float(m[-1]), 1),
                "max_mb": round(float(m.max()), 1), "growth_mb": round(float(m[-1] - m[0]), 2),
                "max_growth_mb": round(float(m.max() - m[0]), 2),
                "slope_mb_per_min": round(slope, 3), "samples": len(pts),
                "before_warmup_mb": round(float(self.samples[0][1]), 1)}


# ------------------------------------------------------------------------------------------
# The traffic process: publisher + subscriber
# ------------------------------------------------------------------------------------------

def _pct(x: list[float]) -> dict[str, float]:
    if not x:
        return {"count": 0}
    a = np.asarray(x)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"count": len(a), "p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3),
            "p99_ms": round(float(p99), 3), "max_ms": round(float(a.max()), 3),
            "mean_ms": round(float(a.mean()), 3)}


ATTACKS = ("oversized", "multipart", "garbage_burst", "collapsed_body", "subscription_flood")


def attack(kind: str, pub: Any, ctx: Any, sink_endpoint: str, frame: Any) -> Any:
    """One attack of ``kind`` through the traffic's publisher (or on the node's output);
    returns the frame to publish now (``frame``, or it with a collapsed body added)."""
    import zmq

    from streamtmr.stream import wire
    from streamtmr.stream.frame import Body, Frame

    if kind == "oversized":
        pub.send(b"\x00" * (wire.MAX_MESSAGE_BYTES + 256 * 1024))
    elif kind == "multipart":
        pub.send_multipart([wire.encode(frame), b"x" * 60_000, b"y" * 60_000])
    elif kind == "garbage_burst":
        for k in range(2000):
            pub.send(b"\x93\xff\x00garbage" + bytes([k % 251]))
    elif kind == "collapsed_body":
        point = np.tile(np.array([[0.1, 0.2, 2.5]], np.float32), (25, 1))
        return Frame(frame.seq, frame.t_ns, [*frame.bodies[:5],
                                             Body(2**63 + 7, point, frame.bodies[0].state
                                                  if frame.bodies else
                                                  np.full(25, 2, np.uint8))], frame.src)
    elif kind == "subscription_flood":
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(sink_endpoint)
        for k in range(1000):
            s.setsockopt(zmq.SUBSCRIBE, b"flood-%06d" % k + b"x" * 200)
        time.sleep(0.05)
        s.close(0)
    return frame


def traffic(ports: Any, ready: Any, results: Any, sink_endpoint: str, bodies: int, rate: float,
            warmup_s: float, duration_s: float, lengths: list[float], seed: int,
            attack_every_s: float = 0.0) -> None:
    """Publish ``bodies`` people at ``rate`` Hz; subscribe to the node; report to ``results``;
    with ``attack_every_s`` > 0, attack in turn (:data:`ATTACKS`) that often after warm-up."""
    import zmq

    from sensors.synthetic import SyntheticSource
    from streamtmr import skeleton
    from streamtmr.stream import wire
    from streamtmr.stream.frame import Body, Frame

    lengths_a = np.asarray(lengths, np.float32)
    n_loop = int(max(rate * 60, 60))
    clip = list(SyntheticSource(realtime=False, max_people=bodies, max_bodies=bodies,
                                pause_s=(0.0, 0.1), actions_per_visit=(3, 5),
                                max_frames=n_loop, seed=seed))
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 1000)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(sink_endpoint)
    ports.put(port)
    ready.wait(120)
    time.sleep(0.5)  # the node's SUB connects; subscriptions propagate

    period = 1.0 / rate
    total_s = warmup_s + duration_s
    t_start = time.monotonic()
    warm_seq = int(warmup_s * rate)
    sent = sent_meas = 0
    recv = recv_meas = bodies_recv = bone_violations = 0
    node_lat: list[float] = []
    e2e: list[float] = []
    body_counts: list[int] = []

    def drain() -> None:
        nonlocal recv, recv_meas, bodies_recv, bone_violations
        while sub.poll(0):
            data = sub.recv()
            now = time.monotonic_ns()
            m = wire.decode_message(data)
            recv += 1
            for b in m.frame.bodies:
                err = np.abs(skeleton.bone_lengths(b.joints)[1:] - lengths_a[1:]).max()
                bone_violations += int(not err < 1e-3)
            if m.frame.seq >= warm_seq:
                recv_meas += 1
                bodies_recv += len(m.frame.bodies)
                e2e.append((now - m.frame.t_ns) / 1e6)
                if m.anon is not None:
                    node_lat.append(m.anon.lat_ns / 1e6)

    seq = 0
    next_t = time.monotonic()
    attacks: dict[str, int] = {}
    next_attack = t_start + warmup_s + attack_every_s
    while time.monotonic() - t_start < total_s:
        f = clip[seq % n_loop]
        loop = seq // n_loop  # fresh ids every loop of the clip: people leave and arrive
        out = Frame(seq, time.monotonic_ns(),
                    [Body((b.id + (loop << 60)) % 2**64, b.joints, b.state) for b in f.bodies],
                    "soak")
        if attack_every_s > 0 and time.monotonic() >= next_attack:
            kind = ATTACKS[sum(attacks.values()) % len(ATTACKS)]
            out = attack(kind, pub, ctx, sink_endpoint, out)
            attacks[kind] = attacks.get(kind, 0) + 1
            next_attack += attack_every_s
        pub.send(wire.encode(out))
        sent += 1
        if seq >= warm_seq:
            sent_meas += 1
            body_counts.append(len(f.bodies))
        seq += 1
        next_t += period
        while (left := next_t - time.monotonic()) > 0:  # receive until the next frame is due
            if sub.poll(max(1, int(left * 1000))):
                drain()
        if time.monotonic() - next_t > 1.0:  # fell far behind (machine overloaded): resync
            next_t = time.monotonic()
    end = time.monotonic() + 1.0  # the last frames in flight
    while time.monotonic() < end:
        if sub.poll(100):
            drain()
    pub.close(0)
    sub.close(0)
    ctx.term()
    results.put({"sent": sent, "sent_measured": sent_meas, "received": recv,
                 "received_measured": recv_meas, "lost_measured": sent_meas - recv_meas,
                 "bodies_per_frame": round(float(np.mean(body_counts)), 2) if body_counts
                 else 0.0, "bodies_received_measured": bodies_recv,
                 "bone_violations": bone_violations, "attacks": attacks,
                 "latency_node": _pct(node_lat), "latency_end_to_end": _pct(e2e)})


# ------------------------------------------------------------------------------------------
# The node side
# ------------------------------------------------------------------------------------------

def make_engine(model: str | None, backend: str, window: int, max_bodies: int):
    """The shipped default or ``model`` through the guarded door (file checks, leak guard; a
    model without a card runs too: a bench run, logged and marked unevaluated)."""
    from engines import open_engine
    eng = open_engine(backend, model=model or "default", window=window,
                      max_batch=max(8, max_bodies), allow_unevaluated=True)
    eng.warmup((1, max_bodies))
    return eng, (model or "default")


def soak(bodies: int = 6, rate: float = 30.0, duration_s: float = 60.0, warmup_s: float = 5.0,
         model: str | None = None, backend: str = "auto", window: int = 64,
         budget_ms: float = 10.0, seed: int = 0, attack_every_s: float = 0.0
         ) -> dict[str, Any]:
    """Run one soak; returns the report (see the module docstring)."""
    import zmq

    from sensors.zmq_source import ZmqSource
    from streamtmr.stream.node import Node, NodeConfig
    from streamtmr.stream.sinks import ZmqPubSink

    engine, model_name = make_engine(model, backend, window, bodies)
    sampler = RssSampler()
    sampler.start()
    ctx = zmq.Context()
    sink = ZmqPubSink("tcp://127.0.0.1:*", hwm=1000, context=ctx)
    spawn = mp.get_context("spawn")
    ports, results, ready = spawn.Queue(), spawn.Queue(), spawn.Event()
    proc = spawn.Process(target=traffic, name="soak-traffic", daemon=True, args=(
        ports, ready, results, sink.bound, bodies, rate, warmup_s, duration_s,
        [float(x) for x in engine.dummy_lengths], seed, attack_every_s))
    proc.start()
    port = ports.get(timeout=120)
    source = ZmqSource(f"tcp://127.0.0.1:{port}", max_bodies=bodies, hwm=1000, idle_ms=50,
                       context=ctx)
    cfg = NodeConfig(budget_ms=budget_ms, max_bodies=bodies, stats_interval_s=3600)
    node = Node(engine, [sink], cfg)
    error = None
    watcher = threading.Thread(target=lambda: (proc.join(), node.request_stop()), daemon=True)
    watcher.start()
    ready.set()
    t0 = time.monotonic()
    warm_mark = sampler.t0
    try:
        node.run(source, duration_s=warmup_s + duration_s + 30)
    except Exception as e:  # a crash is a result of the soak, reported in the JSON
        error = f"{type(e).__name__}: {e}"
    elapsed = time.monotonic() - t0
    try:
        traffic_res = results.get(timeout=30)
    except Exception as e:
        traffic_res = {}
        error = error or f"traffic process returned nothing ({type(e).__name__})"
    source.close()
    stats = node.close()
    sampler.stop()
    ctx.term()
    proc.join(10)
    c = stats["counters"]
    warm_after = (t0 - warm_mark) + warmup_s
    return {
        "kind": "soak", "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "config": {"bodies": bodies, "rate_hz": rate, "duration_s": duration_s,
                   "warmup_s": warmup_s, "window": window, "budget_ms": budget_ms,
                   "engine": engine.describe(), "model": str(model_name), "seed": seed,
                   "attack_every_s": attack_every_s},
        "attacks": traffic_res.get("attacks", {}),
        "crashes": int(error is not None) + int(proc.exitcode not in (0, None)),
        "error": error, "traffic_exit_code": proc.exitcode, "elapsed_s": round(elapsed, 1),
        "frames": {"sent": traffic_res.get("sent"), "node_in": c.get("frames_in", 0),
                   "node_out": c.get("frames_out", 0),
                   "received": traffic_res.get("received"),
                   "sent_measured": traffic_res.get("sent_measured"),
                   "received_measured": traffic_res.get("received_measured"),
                   "dropped_measured": traffic_res.get("lost_measured"),
                   "bodies_per_frame": traffic_res.get("bodies_per_frame")},
        "overruns": c.get("overruns", 0), "engine_errors": c.get("engine_errors", 0),
        "node_dropped": stats["dropped"], "node_counters": c,
        "bone_violations": traffic_res.get("bone_violations"),
        "latency_ms": {"node": traffic_res.get("latency_node"),
                       "end_to_end": traffic_res.get("latency_end_to_end"),
                       "node_stages_recent": stats["latency"]},
        "rss": sampler.summary(after_s=warm_after),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bodies", type=int, default=6)
    p.add_argument("--rate", type=float, default=30.0, help="frames per second [30]")
    p.add_argument("--duration", type=float, default=60.0, metavar="S",
                   help="measured seconds after warm-up [60]")
    p.add_argument("--warmup", type=float, default=5.0, metavar="S", help="[5]")
    p.add_argument("--model", default=None,
                   help="checkpoint or .onnx (default: the shipped model)")
    p.add_argument("--attacks", action="store_true",
                   help="attack the node during the measured period (module docstring)")
    p.add_argument("--attack-every", type=float, default=5.0, metavar="S",
                   help="seconds between attacks with --attacks [5]")
    p.add_argument("--engine", default="auto")
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--budget-ms", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the JSON here")
    p.add_argument("--record", action="store_true",
                   help="write bench/results/soak-<date>.json (with the machine)")
    args = p.parse_args(argv)
    if not 1 <= args.bodies <= 6 or args.rate <= 0 or args.duration <= 0 or args.warmup < 0:
        p.error("--bodies must be in [1, 6], --rate and --duration > 0, --warmup >= 0")
    res = soak(args.bodies, args.rate, args.duration, args.warmup, args.model, args.engine,
               args.window, args.budget_ms, args.seed,
               args.attack_every if args.attacks else 0.0)
    res["machine"] = describe_machine()
    text = json.dumps(res, indent=1, default=str)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.record:
        RESULTS.mkdir(parents=True, exist_ok=True)
        tag = "-attacks" if args.attacks else ""
        path = RESULTS / f"soak{tag}-{_dt.date.today().isoformat()}.json"
        path.write_text(text)
        print(f"recorded in {path}", file=sys.stderr)
    return 0 if res["crashes"] == 0 and not res["bone_violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
