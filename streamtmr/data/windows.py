"""Fixed-length windows over sequences ``[frames, ...]`` (numpy or torch; pure functions).

Policy: models see windows of ``T`` frames (default ``T = 64``, about 2 s at 30 Hz; PMR used
75). A sequence shorter than ``T`` is padded by repeating its last frame (the pose is held, no
fake motion is introduced). A longer one is cropped: ``"center"`` (evaluation, deterministic),
``"start"`` (the first ``T`` frames) or ``"random"`` (training; a uniformly drawn start in
``[0, frames - T]``). Sliding windows start every ``stride`` frames and the last window is
aligned to the sequence's end, so (for ``stride <= T``) every frame is covered, and no window
is padded unless the whole sequence is shorter than ``T``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

DEFAULT_WINDOW = 64
CROP_POLICIES = ("center", "start", "random")


def _check(seq: Any, T: int) -> int:
    if T < 1:
        raise ValueError(f"window length must be >= 1, got {T}")
    if len(seq) == 0:
        raise ValueError("cannot window an empty sequence")
    return len(seq)


def pad_to(seq, T: int):
    """At least ``T`` frames: pad by repeating the last frame (longer sequences unchanged)."""
    n = _check(seq, T)
    if n >= T:
        return seq
    last = seq[-1:]
    if isinstance(seq, torch.Tensor):
        return torch.cat([seq, last.expand(T - n, *seq.shape[1:])], dim=0)
    return np.concatenate([seq, np.repeat(last, T - n, axis=0)], axis=0)


def crop_start(length: int, T: int, policy: str = "center",
               rng: np.random.Generator | None = None) -> int:
    """First frame of the ``T``-frame crop of a ``length``-frame sequence (0 if shorter)."""
    if policy not in CROP_POLICIES:
        raise ValueError(f"crop policy {policy!r}: expected one of {', '.join(CROP_POLICIES)}")
    room = length - T
    if room <= 0 or policy == "start":
        return 0
    if policy == "center":
        return room // 2
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.integers(0, room + 1))


def crop(seq, T: int = DEFAULT_WINDOW, policy: str = "center",
         rng: np.random.Generator | None = None):
    """Exactly ``T`` frames: crop by ``policy`` (see the module docstring) or pad if shorter."""
    n = _check(seq, T)
    s = crop_start(n, T, policy, rng)
    return pad_to(seq[s:s + T], T)


def window_starts(length: int, T: int, stride: int) -> np.ndarray:
    """Start frames of the sliding windows: ``0, stride, ...`` plus one aligned to the end."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if T < 1:
        raise ValueError(f"window length must be >= 1, got {T}")
    if length < 1:
        raise ValueError("cannot window an empty sequence")
    last = max(length - T, 0)
    starts = np.arange(0, last + 1, stride, dtype=np.int64)
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts


def num_windows(length: int, T: int = DEFAULT_WINDOW, stride: int = 1) -> int:
    """Number of windows :func:`sliding_windows` returns for a ``length``-frame sequence."""
    return len(window_starts(length, T, stride))


def sliding_windows(seq, T: int = DEFAULT_WINDOW, stride: int = 1):
    """Stack of windows ``[N, T, ...]`` (copies); a shorter sequence gives one padded window."""
    n = _check(seq, T)
    starts = window_starts(n, T, stride)
    seq = pad_to(seq, T)
    idx = starts[:, None] + np.arange(T)[None, :]
    if isinstance(seq, torch.Tensor):
        return seq[torch.as_tensor(idx, device=seq.device)]
    return seq[idx]
