"""Offline throughput: frames/s of :func:`streamtmr.offline.anonymize_sequences`.

The same path as ``streamtmr anonymize`` on a folder of recordings: every sequence of the set
in one call, so that the engine sees large batches (a windowed model: windows of several
sequences batched into calls of up to ``max_batch`` windows, default hop ``T // 2``, stitched
and projected onto the dummy's bones; a streaming model: every frame computed once, the
sequences stepped together). Timed on SynthKinect motion; the call repeats until the time
slice is used, after one warm-up call.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from streamtmr.offline import anonymize_sequences

#: Windows per engine call, as ``streamtmr anonymize --batch`` defaults to.
OFFLINE_BATCH = 32


def bench_offline(engine, sequences: list[np.ndarray], duration_s: float,
                  group: int | None = None) -> dict[str, Any]:
    """Anonymize ``sequences`` (``group`` per call, default all of them), cycling, for at least
    ``duration_s`` (and at least one call after the warm-up call). Returns frames, seconds,
    calls, frames/s."""
    if not sequences:
        raise ValueError("offline benchmark needs at least one sequence")
    group = len(sequences) if group is None else int(group)
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
            "sequences_per_call": group, "frames_per_s": round(frames / seconds, 1),
            "max_batch": engine.max_batch, "window": engine.window,
            "streaming": bool(getattr(engine, "streaming", False))}
