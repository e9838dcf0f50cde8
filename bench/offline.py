"""Offline throughput: frames/s of what ``streamtmr anonymize`` runs by default.

The same path as ``streamtmr anonymize`` on a folder of recordings, every sequence of the set
in one call so that the engine sees large batches: a streaming model goes through
:func:`streamtmr.offline.publish_sequences` (what the node would publish: whole tracks through
the engine's ``run_tracks`` — the PyTorch parallel form, every frame computed once, or stepping
on the other back ends — then the node's gate, state restarts and smoothing per frame, up to 256
tracks side by side); a windowed model's windows of several sequences are batched into calls of
up to ``max_batch`` windows (default hop ``T // 2``), stitched and projected onto the dummy's
bones (:func:`streamtmr.offline.anonymize_sequences`). ``streamtmr anonymize --engine auto``
picks PyTorch for a streaming model (``engines.select.TRACKS_ORDER``). Timed on SynthKinect
motion; the call repeats until the time slice is used, after one warm-up call.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from streamtmr.offline import anonymize_sequences, publish_sequences

#: Windows per engine call, as ``streamtmr anonymize --batch`` defaults to.
OFFLINE_BATCH = 32


def written_by_anonymize(engine):
    """What ``streamtmr anonymize`` runs by default: what the node would publish for a
    streaming model (:func:`~streamtmr.offline.publish_sequences`), stitched windows for a
    windowed one."""
    return publish_sequences if getattr(engine, "streaming", False) else anonymize_sequences


def bench_offline(engine, sequences: list[np.ndarray], duration_s: float,
                  group: int | None = None) -> dict[str, Any]:
    """Anonymize ``sequences`` (``group`` per call, default all of them), cycling, for at least
    ``duration_s`` (and at least one call after the warm-up call). Returns frames, seconds,
    calls, frames/s."""
    if not sequences:
        raise ValueError("offline benchmark needs at least one sequence")
    group = len(sequences) if group is None else int(group)
    groups = [sequences[i:i + group] for i in range(0, len(sequences), group)]
    anonymize = written_by_anonymize(engine)
    anonymize(engine, groups[0])  # warm-up: allocations, first-call costs
    frames = calls = 0
    start = time.perf_counter()
    while True:
        g = groups[calls % len(groups)]
        anonymize(engine, g)
        frames += sum(len(s) for s in g)
        calls += 1
        seconds = time.perf_counter() - start
        if seconds >= duration_s:
            break
    return {"frames": frames, "seconds": round(seconds, 3), "calls": calls,
            "sequences_per_call": group, "frames_per_s": round(frames / seconds, 1),
            "max_batch": engine.max_batch, "window": engine.window,
            "streaming": bool(getattr(engine, "streaming", False))}
