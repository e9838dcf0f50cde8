"""Step latency of a streaming model: one frame of N bodies per ``engine.step`` call.

    python -m bench.step --models default --engines onnxruntime@1 torch@1 \\
        --bodies 1 6 32 256 --out bench/results/step-<date>-<host>.json

For every model × engine × number of bodies: at least ``--min-calls`` (default 600, so that
p99 means something) consecutive steps of real SynthKinect motion, the state carried from call
to call, after two warm-up calls. The bodies start together from the zero state (a matcher's
then all search on the same frames; ``--stagger-search``: phases spread as the node's option
spreads them). The JSON records the machine and its load, every model by label and SHA-256,
and the latency summary of each cell (p50/p90/p99/max, bodies per second).
``streamtmr bench`` runs the same cells (``bench.engines.bench_steps``) inside its suite; this
module is the stand-alone form for the streaming model's own record.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path
from typing import Any

from bench.engines import EngineSpec, bench_steps, build_engine, parse_engine_specs
from bench.machine import describe_machine, load_average, write_record
from bench.models import resolve_model_spec
from bench.motion import motion_clips
from bench.stats import MIN_P99_SAMPLES

BODIES = (1, 6, 32, 256)
#: Seconds one model × engine may take over all its cells (large: every cell must finish).
PAIR_BUDGET_S = 600.0


def run(models: list[str], engines: list[str], bodies: list[int], min_calls: int,
        cell_s: float, torch_threads: int = 1, log=print, staggered: bool = False
        ) -> dict[str, Any]:
    """Time every cell; returns the JSON-ready record."""
    specs, skipped = parse_engine_specs(engines)
    resolved = [resolve_model_spec(m) for m in models]
    pairs: list[tuple[Any, EngineSpec, Any]] = []
    for m in resolved:
        for s in specs:
            engine = build_engine(m, s, max_batch=max(bodies))
            if not engine.streaming:
                raise SystemExit(f"bench.step: {m.ident} is a windowed model (no step)")
            pairs.append((m, s, engine))
    clips = motion_clips(8, seed=0)
    load_before = load_average()
    rows, _ = bench_steps(pairs, sorted(bodies), clips, cell_s, min_calls,
                          pair_budget_s=PAIR_BUDGET_S, torch_threads=torch_threads, log=log,
                          staggered=staggered)
    idents = {m.label: m.ident for m in resolved}
    for row in rows:
        row["model"] = idents[row["model"]]
    return {"kind": "step latency (one frame of N bodies per engine.step call)",
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "command": "python -m bench.step " + " ".join(sys.argv[1:]),
            "machine": describe_machine(), "load_before": load_before,
            "load_after": load_average(), "models": [m.describe() for m in resolved],
            "engines_skipped": skipped, "min_calls": min_calls, "stagger_search": staggered,
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.step", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["default"])
    p.add_argument("--engines", nargs="+", default=["onnxruntime@1", "torch@1"])
    p.add_argument("--bodies", nargs="+", type=int, default=list(BODIES))
    p.add_argument("--min-calls", type=int, default=MIN_P99_SAMPLES)
    p.add_argument("--cell-s", type=float, default=1.0, help="least seconds per cell")
    p.add_argument("--out", type=Path, default=None, help="JSON (default: bench/results/"
                   "step-DATE-HOST.json)")
    p.add_argument("--stagger-search", action="store_true",
                   help="start the bodies with staggered search phases, as the node's "
                        "--stagger-search does; default: all from the zero state (a matcher's "
                        "bodies then all search on the same frames, the worst case)")
    a = p.parse_args(argv)
    if a.min_calls < MIN_P99_SAMPLES:
        p.error(f"--min-calls must be >= {MIN_P99_SAMPLES} for a p99")
    record = run(a.models, a.engines, a.bodies, a.min_calls, a.cell_s,
                 staggered=a.stagger_search)
    out = write_record(record, a.out, "step")
    print(f"wrote {out}")
    failed = [r for r in record["rows"] if "skipped" in r]
    for r in failed:
        print(f"{r['model']} / {r['engine']} / {r['bodies']} bodies: {r['skipped']}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
