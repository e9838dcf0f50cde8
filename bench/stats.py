"""Latency summaries: percentiles of timing samples, in milliseconds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The percentiles every latency is reported at (keys ``p50_ms``, ``p95_ms``, ``p99_ms``).
PERCENTILES = (50, 95, 99)
#: Samples below which a p99 is little more than the maximum (the report marks it).
MIN_P99_SAMPLES = 600


def summarize_ns(samples_ns: Sequence[int] | np.ndarray) -> dict[str, float | int]:
    """``{"n", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"}`` of samples in nanoseconds.

    Percentiles use linear interpolation between closest ranks (numpy's default), so the
    p50 of an even number of samples is the mean of the two middle ones. Empty input gives
    ``{"n": 0}``.
    """
    a = np.asarray(samples_ns, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"samples must be one-dimensional, got shape {list(a.shape)}")
    if a.size == 0:
        return {"n": 0}
    if not np.isfinite(a).all():
        raise ValueError("samples must be finite")
    p = np.percentile(a, PERCENTILES) / 1e6
    out: dict[str, float | int] = {"n": int(a.size), "mean_ms": round(float(a.mean()) / 1e6, 4)}
    for q, v in zip(PERCENTILES, p):
        out[f"p{q}_ms"] = round(float(v), 4)
    out["max_ms"] = round(float(a.max()) / 1e6, 4)
    return out
