"""How long one training step's fresh-people pairs take to render (``streamtmr.data.pairs``):
in the training process, and with ``data.pair_workers`` processes side by side. Alternating
rounds of the same batches, one timing per batch.

    python -m bench.pair_render --pairs 12 --workers 2 --batches 20 --rounds 2 \\
        --out bench/results/pair-render-<date>-<host>.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from bench.machine import describe_machine, write_record
from bench.stats import summarize_ns
from streamtmr.data.pairs import pair_batch
from streamtmr.dummy import default_dummy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=12, help="pairs per batch (data.pairs_per_batch)")
    ap.add_argument("--workers", type=int, default=2, help="the pool's processes")
    ap.add_argument("--batches", type=int, default=20, help="timed batches per round and setting")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    lengths = np.asarray(default_dummy().lengths, np.float32)
    pool = ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn"))
    times: dict[str, list[int]] = {"inline": [], f"{a.workers} workers": []}
    start = 0
    for _ in range(a.rounds):
        for name, p in zip(times, (None, pool), strict=True):
            pair_batch(1, np.arange(a.pairs), lengths, a.window, None, p)   # warm-up
            for b in range(a.batches):
                idx = np.arange(start + b * a.pairs, start + (b + 1) * a.pairs)
                t0 = time.perf_counter_ns()
                pair_batch(1, idx, lengths, a.window, None, p)
                times[name].append(time.perf_counter_ns() - t0)
        start += a.batches * a.pairs
    pool.shutdown()
    # a few dozen batches: the mean and median, no tail percentiles
    rows = [{"setting": k, "pairs": a.pairs,
             **{q: v for q, v in summarize_ns(ns).items() if q in ("n", "mean_ms", "p50_ms")}}
            for k, ns in times.items()]
    for r in rows:
        print(f"{r['setting']}: p50 {r['p50_ms']:.1f} ms, mean {r['mean_ms']:.1f} ms "
              f"({r['n']} batches of {a.pairs} pairs)")
    record = {"kind": "fresh-people pair rendering per training batch",
              "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
              "command": "python -m bench.pair_render " + " ".join(sys.argv[1:] if argv is None
                                                                   else argv),
              "machine": describe_machine(), "rows": rows}
    print("wrote", write_record(record, a.out, "pair-render"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
