"""How long a model takes to start: building it from its checkpoint, with an empty cache (the
shipped ``matcher`` renders its database and builds its search tree here) and again with the
cache that build filled (``build_cached``), and opening it through ``engines.open_engine`` the
way ``streamtmr run`` does (card, engine, warm-up, leak guard), first with an empty cache (the
ONNX export included) and then with the cache the first open filled.

    python -m bench.load_time --models matcher default --repeats 3 \\
        --out bench/results/load-time-<date>-<host>.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe_machine, load_average
from bench.models import resolve_model_spec


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(spec: str, engine: str = "onnxruntime", repeats: int = 3,
            allow_unevaluated: bool = False) -> dict[str, Any]:
    """Seconds to build ``spec`` and to open it, each with an empty cache and then with the
    cache the first call filled, ``repeats`` times each (a fresh temporary cache for every
    first call). ``allow_unevaluated`` opens a model without a privacy card (a variant
    measured for its cost only; the row says so)."""
    from engines.select import open_engine
    from streamtmr.models.checkpoint import load_checkpoint, model_path

    model = resolve_model_spec(spec)
    path = model_path(spec)
    build, built, cold, warm = [], [], [], []
    before = os.environ.get("STREAMTMR_CACHE")

    def open_close():
        open_engine(engine, model=spec, allow_unevaluated=allow_unevaluated).close()

    try:
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as cache:
                os.environ["STREAMTMR_CACHE"] = cache
                build.append(_seconds(lambda: load_checkpoint(path)))
                built.append(_seconds(lambda: load_checkpoint(path)))
            with tempfile.TemporaryDirectory() as cache:
                os.environ["STREAMTMR_CACHE"] = cache
                cold.append(_seconds(open_close))
                warm.append(_seconds(open_close))
    finally:
        if before is None:
            os.environ.pop("STREAMTMR_CACHE", None)
        else:
            os.environ["STREAMTMR_CACHE"] = before

    def summary(xs: list[float]) -> dict[str, float]:
        return {"median_s": round(float(np.median(xs)), 2), "max_s": round(max(xs), 2)}

    row = {"model": model.ident, "engine": engine, "repeats": repeats,
           "build": summary(build), "build_cached": summary(built), "open_cold": summary(cold),
           "open_warm": summary(warm)}
    if allow_unevaluated:
        row["allow_unevaluated"] = True
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["matcher", "default"])
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True)
    p.add_argument("--allow-unevaluated", action="store_true",
                   help="open models without a privacy card (variants measured for cost)")
    a = p.parse_args(argv)
    if a.repeats < 1:
        p.error("--repeats must be >= 1")
    load_before = load_average()
    rows = []
    for spec in a.models:
        rows.append(measure(spec, a.engine, a.repeats, a.allow_unevaluated))
        r = rows[-1]
        print(f"{r['model']}: build {r['build']['median_s']} s (cached "
              f"{r['build_cached']['median_s']} s), open cold "
              f"{r['open_cold']['median_s']} s, warm {r['open_warm']['median_s']} s", flush=True)
    record = {"kind": "load_time", "date": _dt.date.today().isoformat(),
              "command": "python -m bench.load_time " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "machine": describe_machine(), "load_before": load_before,
              "load_after": load_average(), "rows": rows}
    Path(a.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
