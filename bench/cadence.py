"""Step latency by call cadence: what an idle gap between frames costs a streaming step.

    python -m bench.cadence --model default --engine onnxruntime@1 \\
        --gaps-ms 0 1 5 33.3 --out bench/results/cadence-<date>-<host>.json

The node steps each frame once, at the sensor's rate (30 Hz for Kinect v2), and sleeps in
between; ``bench.step`` times steps back to back. This study times the same ``engine.step`` of
one body after a gap of each ``--gaps-ms`` (0 = back to back), at least ``--calls``
(default 600, so that p99 means something) per cell, through three paths:

* ``inline``: the calling thread sleeps through the gap (``time.sleep``), then calls
  ``engine.step``;
* ``worker``: the same gap, then the node's own path, :class:`streamtmr.stream.node._Worker`
  (submit, then wait for the result, as :class:`streamtmr.stream.node.Node` does every frame);
* ``spin``: the calling thread busy-waits through the gap (the core never goes idle), then
  calls ``engine.step`` inline.

``worker`` − ``inline`` is the thread hand-off. A gap against 0 is what the interval costs on
this host; ``spin`` against ``inline`` tells whether that is the core going idle (spin would
be fast) or the model's memory going cold in the meantime (spin as slow as sleep). The JSON
records the machine, its load before and after, the exact model (label and SHA-256) and
each cell's latency summary.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.engines import build_engine, parse_engine_specs, step_inputs, use_threads
from bench.machine import describe_machine, load_average, write_record
from bench.models import resolve_model_spec
from bench.motion import motion_clips
from bench.stats import MIN_P99_SAMPLES, summarize_ns

GAPS_MS = (0.0, 1.0, 5.0, 1000.0 / 30)
PATHS = ("inline", "worker", "spin")


def time_cadence(engine, frames: np.ndarray, gap_s: float, calls: int, path: str,
                 worker=None) -> np.ndarray:
    """Latencies (ns) of ``calls`` steps of ``frames [F, B, 25, 3]``, each after ``gap_s`` idle
    seconds, the state carried from call to call; ``path`` is one of :data:`PATHS`."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path == "worker" and worker is None:
        raise ValueError("path 'worker' needs the worker")
    state = engine.init_state(frames.shape[1])
    for k in range(2):  # warm-up: allocations, first-call costs
        _, state = engine.step(frames[k], state)
    samples = np.empty(calls, np.int64)
    for i in range(calls):
        x = frames[(i + 2) % len(frames)]
        if path == "spin":
            end = time.perf_counter() + gap_s
            while time.perf_counter() < end:
                pass
        elif gap_s > 0:
            time.sleep(gap_s)
        if path != "worker":
            t0 = time.perf_counter_ns()
            _, state = engine.step(x, state)
            t1 = time.perf_counter_ns()
        else:
            t0 = time.perf_counter_ns()
            worker.submit(lambda x=x, s=state: engine.step(x, s), i)
            res = worker.wait(60.0)
            t1 = time.perf_counter_ns()
            if res is None:
                raise RuntimeError("engine step took over 60 s")
            _, out, err = res
            if err is not None:
                raise err
            _, state = out
        samples[i] = t1 - t0
    return samples


def run(model: str, engine_spec: str, gaps_ms: list[float], calls: int,
        log=print) -> dict[str, Any]:
    """Time every gap × path cell; returns the JSON-ready record."""
    from streamtmr.stream.node import _Worker

    (spec,), skipped = parse_engine_specs([engine_spec])
    m = resolve_model_spec(model)
    engine = build_engine(m, spec, max_batch=1)
    if not getattr(engine, "streaming", False):
        raise SystemExit(f"bench.cadence: {m.ident} is a windowed model (no step)")
    use_threads(spec, 1)
    frames = step_inputs(motion_clips(1, seed=0), 1)
    worker = _Worker()
    load_before = load_average()
    rows = []
    try:
        for gap in gaps_ms:
            for path in PATHS if gap > 0 else PATHS[:2]:
                s = time_cadence(engine, frames, gap / 1e3, calls, path, worker)
                row = {"model": m.ident, "engine": spec.label, "bodies": 1, "gap_ms": gap,
                       "path": path, **summarize_ns(s)}
                rows.append(row)
                log(f"gap {gap:6.1f} ms, {path:6s}: p50 {row['p50_ms']:.3f} ms, "
                    f"p99 {row['p99_ms']:.3f} ms ({row['n']} calls)")
    finally:
        worker.stop()
    return {"kind": "step latency by call cadence (one body; idle gap before each call)",
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "command": "python -m bench.cadence " + " ".join(sys.argv[1:]),
            "machine": describe_machine(), "load_before": load_before,
            "load_after": load_average(), "models": [m.describe()],
            "engines_skipped": skipped, "calls": calls, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cadence", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--engine", default="onnxruntime@1")
    p.add_argument("--gaps-ms", nargs="+", type=float, default=list(GAPS_MS))
    p.add_argument("--calls", type=int, default=MIN_P99_SAMPLES)
    p.add_argument("--out", type=Path, default=None, help="JSON (default: bench/results/"
                   "cadence-DATE-HOST.json)")
    a = p.parse_args(argv)
    if a.calls < MIN_P99_SAMPLES:
        p.error(f"--calls must be >= {MIN_P99_SAMPLES} for a p99")
    if min(a.gaps_ms) < 0:
        p.error("--gaps-ms must be >= 0")
    record = run(a.model, a.engine, a.gaps_ms, a.calls)
    out = write_record(record, a.out, "cadence")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
