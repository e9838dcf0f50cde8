"""A motion matcher's step latency, split by whether the call searched its database.

    python -m bench.search_split --model matcher --engines onnxruntime@1 onnxruntime@1/general \\
        --out bench/results/search-split-<date>-<host>.json

One body per call, ``--calls`` consecutive steps of real SynthKinect motion, or with
``--utkinect`` of UTKinect's real people (its segments on the sensor's clock, one after the
other: real people's queries lie farther from the database, where an exact search reads more),
the state carried from call to call, after two warm-up calls. A call searched when the
matcher's frames-since-search counter (the engine's ``stagger`` state entry) comes back as 1;
the first frame of a track and every ``search_every``-th frame after a search do. The record
holds the latency summary of the calls that searched, of the others and of all, per engine, so
that the cost of the search itself (and its tail) can be read apart from the rest of the step.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.engines import build_engine, parse_engine_specs, step_inputs
from bench.machine import describe_machine, load_average, write_record
from bench.models import resolve_model_spec
from bench.motion import motion_clips
from bench.stats import MIN_P99_SAMPLES, summarize_ns


def split_steps(engine, frames: np.ndarray, calls: int) -> tuple[np.ndarray, np.ndarray]:
    """Latencies (ns) of ``calls`` steps of one body over ``frames [F, 1, 25, 3]`` (cycled)
    and whether each call searched."""
    if engine.stagger is None:
        raise ValueError(f"{engine.source.name}: no search schedule (not a motion matcher)")
    key = engine.stagger[0]
    state = engine.init_state(1)
    for k in range(2):  # warm-up: allocations, first-call costs
        _, state = engine.step(frames[k], state)
    ns = np.empty(calls, np.int64)
    searched = np.empty(calls, bool)
    for i in range(calls):
        x = frames[(i + 2) % len(frames)]
        t0 = time.perf_counter_ns()
        _, state = engine.step(x, state)
        ns[i] = time.perf_counter_ns() - t0
        searched[i] = state[key][0] == 1.0
    return ns, searched


def utkinect_frames(root: str | Path) -> np.ndarray:
    """UTKinect's segments on the sensor's clock, one after the other: ``[F, 1, 25, 3]``."""
    from streamtmr.data.utkinect import on_sensor_clock, read_utkinect

    tracks = [on_sensor_clock(seg.joints, seg.frame_ids) for seg in read_utkinect(root)]
    return np.ascontiguousarray(np.concatenate(tracks)[:, None], dtype=np.float32)


def run(model: str, engines: list[str], calls: int, log=print,
        utkinect: str | Path | None = None) -> dict[str, Any]:
    specs, skipped = parse_engine_specs(engines)
    spec_model = resolve_model_spec(model)
    frames = (utkinect_frames(utkinect) if utkinect is not None
              else step_inputs(motion_clips(8, seed=0), 1))
    load_before = load_average()
    rows = []
    for s in specs:
        engine = build_engine(spec_model, s, max_batch=1)
        try:
            ns, searched = split_steps(engine, frames, calls)
        finally:
            engine.close()
        row = {"model": spec_model.ident, "engine": s.label, "bodies": 1,
               "search_share": round(float(searched.mean()), 4),
               "searched": summarize_ns(ns[searched]), "other": summarize_ns(ns[~searched]),
               "all": summarize_ns(ns)}
        rows.append(row)
        log(f"{s.label}: searched p50 {row['searched']['p50_ms']:.3f} / p99 "
            f"{row['searched']['p99_ms']:.3f} ms, other {row['other']['p50_ms']:.3f} / "
            f"{row['other']['p99_ms']:.3f} ms, all p99 {row['all']['p99_ms']:.3f} ms")
    return {"kind": "motion-matcher step latency split by search (one body per call)",
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "command": "python -m bench.search_split " + " ".join(sys.argv[1:]),
            "machine": describe_machine(), "load_before": load_before,
            "load_after": load_average(), "model": spec_model.describe(),
            "input": "utkinect" if utkinect is not None else "synthkinect",
            "engines_skipped": skipped, "calls": calls, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.search_split",
                                description=__doc__.split("\n")[0])
    p.add_argument("--model", default="matcher")
    p.add_argument("--engines", nargs="+", default=["onnxruntime@1"])
    p.add_argument("--calls", type=int, default=6000,
                   help="steps per engine (a p99 of the searching calls needs >= "
                        f"{MIN_P99_SAMPLES} of them: 5 x that for search_every 5)")
    p.add_argument("--utkinect", type=Path, default=None,
                   help="step UTKinect's real people (this folder) instead of SynthKinect")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    if a.calls < 2 * MIN_P99_SAMPLES:
        p.error(f"--calls must be >= {2 * MIN_P99_SAMPLES}")
    record = run(a.model, a.engines, a.calls, utkinect=a.utkinect)
    out = write_record(record, a.out, "search-split")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
