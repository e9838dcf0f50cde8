"""Offline throughput: frames/s of :func:`streamtmr.offline.anonymize_sequences`.

The same path as ``streamtmr anonymize`` (windows of several sequences batched into engine
calls of up to ``max_batch`` windows, default hop ``T // 2``, stitching and the projection onto
the dummy's bones), timed on SynthKinect sequences. Sequences are processed a few at a time
until the time slice is used, so a slow model still finishes its slice promptly.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from streamtmr.offline import anonymize_sequences

#: Windows per engine call, as ``streamtmr anonymize --batch`` defaults to.
OFFLINE_BATCH = 32


def bench_offline(engine, sequences: list[np.ndarray], duration_s: float,
                  group: int = 4) -> dict[str, Any]:
    """Anonymize ``sequences`` ``group`` at a time, cycling, for at least ``duration_s``
    (and at least one group after one warm-up group). Returns frames, seconds, frames/s."""
    if not sequences:
        raise ValueError("offline benchmark needs at least one sequence")
    groups = [sequences[i:i + group] for i in range(0, len(sequences), group)]
    anonymize_sequences(engine, groups[0])  # warm-up: allocations, first-call costs
    frames = calls = 0
    start = time.perf_counter()
    while True:
        g = groups[calls % len(groups)]
        anonymize_sequences(engine, g)
        frames += sum(len(s) for s in g)
        calls += 1
        seconds = time.perf_counter() - start
        if seconds >= duration_s:
            break
    return {"frames": frames, "seconds": round(seconds, 3), "calls": calls,
            "frames_per_s": round(frames / seconds, 1), "max_batch": engine.max_batch,
            "window": engine.window}
