"""Fixed-length windows over sequences ``[frames, ...]`` (numpy or torch; pure functions).

Policy: models see windows of ``T`` frames (default ``T = 64``, about 2 s at 30 Hz; PMR used
75). A sequence shorter than ``T`` is padded by repeating its last frame (the pose is held, no
fake motion is introduced). A longer one is cropped: ``"center"`` (evaluation, deterministic),
``"start"`` (the first ``T`` frames) or ``"random"`` (training; a uniformly drawn start in
``[0, frames - T]``). Sliding windows start every ``stride`` frames and the last window is
aligned to the sequence's end, so (for ``stride <= T``) every frame is covered, and no window
is padded unless the whole sequence is shorter than ``T``. Trailing windows (what a streaming
node sees) end at every frame and are padded at the front by the first frame.

Every windowing in the project goes through this module (training, evaluation, offline
anonymization, the streaming comparison).
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


def pad_to(seq, T: int, axis: int = 0):
    """At least ``T`` frames along ``axis`` (0: a sequence; 1: a batch of windows): pad by
    repeating the last frame (longer sequences unchanged)."""
    if T < 1:
        raise ValueError(f"window length must be >= 1, got {T}")
    n = seq.shape[axis]
    if n == 0:
        raise ValueError("cannot window an empty sequence")
    if n >= T:
        return seq
    if isinstance(seq, torch.Tensor):
        last = seq.narrow(axis, n - 1, 1)
        return torch.cat([seq, last.repeat_interleave(T - n, dim=axis)], dim=axis)
    last = np.take(seq, [n - 1], axis=axis)
    return np.concatenate([seq, np.repeat(last, T - n, axis=axis)], axis=axis)


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


def windows_at(seq, starts: np.ndarray, T: int):
    """Stack of the ``T``-frame windows starting at ``starts`` ``[N, T, ...]`` (copies); the
    sequence is first padded to ``T`` frames (:func:`pad_to`)."""
    _check(seq, T)
    seq = pad_to(seq, T)
    idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(T)[None, :]
    if isinstance(seq, torch.Tensor):
        return seq[torch.as_tensor(idx, device=seq.device)]
    return seq[idx]


def sliding_windows(seq, T: int = DEFAULT_WINDOW, stride: int = 1):
    """Stack of windows ``[N, T, ...]`` (copies); a shorter sequence gives one padded window."""
    return windows_at(seq, window_starts(_check(seq, T), T, stride), T)


def trailing_windows(seq, T: int = DEFAULT_WINDOW):
    """The window a streaming node sees at every frame, ``[L, T, ...]``: window ``t`` ends at
    frame ``t``, frames before the sequence's start are its first frame (a node pads a new
    body by repetition)."""
    n = _check(seq, T)
    first = seq[:1]
    if isinstance(seq, torch.Tensor):
        padded = torch.cat([first.expand(T - 1, *seq.shape[1:]), seq])
    else:
        padded = np.concatenate([np.repeat(first, T - 1, axis=0), seq])
    return windows_at(padded, np.arange(n), T)
