"""Fixed-length windows from a :class:`~streamtmr.data.store.SkeletonStore` for training and
evaluation.

Both entry points cut one ``window``-frame crop per sequence (see
:mod:`streamtmr.data.windows` for the crop and padding policy) and apply the *same* crop to
every requested array of that sequence, so e.g. ``joints`` and ``target`` stay frame-aligned.
Labels come from the store's index columns that exist among :data:`LABEL_COLUMNS`. A label
column holding strings (e.g. ``sex`` = ``"F"``/``"M"``) is mapped to integers through the
store's ``meta.json`` ``labels[column]`` list when it lists every value, else through the sorted
distinct values of the whole store (so every split of one store shares one mapping).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from streamtmr.data.store import SkeletonStore
from streamtmr.data.windows import DEFAULT_WINDOW, crop_start, pad_to, window_starts

LABEL_COLUMNS = ("subject", "action", "view", "rep", "sex", "age_group")


def _open(store: SkeletonStore | str | Path) -> SkeletonStore:
    return store if isinstance(store, SkeletonStore) else SkeletonStore(store)


def label_table(store: SkeletonStore) -> tuple[dict[str, np.ndarray], dict[str, list[Any]]]:
    """Integer label arrays (one entry per sequence) for the label columns the store has, and
    the value list of each column that had to be mapped from strings."""
    labels: dict[str, np.ndarray] = {}
    names: dict[str, list[Any]] = {}
    if not store.rows:
        return labels, names
    declared = store.meta.get("labels", {}) if isinstance(store.meta.get("labels"), dict) else {}
    for col in LABEL_COLUMNS:
        if col not in store.rows[0]:
            continue
        values = [r[col] for r in store.rows]
        if all(isinstance(v, int) for v in values):
            labels[col] = np.asarray(values, dtype=np.int64)
            continue
        listed = declared.get(col)
        vocab = (list(listed) if isinstance(listed, list) and set(values) <= set(listed)
                 else sorted({str(v) for v in values}))
        lookup = {v: i for i, v in enumerate(vocab)}
        labels[col] = np.asarray([lookup[v if v in lookup else str(v)] for v in values],
                                 dtype=np.int64)
        names[col] = vocab
    return labels, names


def select_sequences(store: SkeletonStore, subjects: Iterable[int] | None = None) -> np.ndarray:
    """Store row indices of the sequences whose ``subject`` is in ``subjects`` (all if None)."""
    if subjects is None:
        return np.arange(len(store), dtype=np.int64)
    if store.rows and "subject" not in store.rows[0]:
        raise ValueError(f"{store.root}: cannot filter by subject, the store has no 'subject' "
                         f"column (columns: {', '.join(store.rows[0])})")
    wanted = {int(s) for s in subjects}
    return np.asarray([i for i, r in enumerate(store.rows) if int(r["subject"]) in wanted],
                      dtype=np.int64)


def _check_arrays(store: SkeletonStore, arrays: Sequence[str]) -> tuple[str, ...]:
    arrays = (arrays,) if isinstance(arrays, str) else tuple(arrays)
    if not arrays:
        raise ValueError("ask for at least one array")
    missing = [a for a in arrays if a not in store.array_names]
    if missing:
        raise ValueError(f"{store.root}: no array {', '.join(map(repr, missing))} "
                         f"(have {', '.join(store.array_names)})")
    return arrays


def _window(store: SkeletonStore, name: str, row: dict[str, Any], start: int,
            T: int) -> np.ndarray:
    first = row["offset"] + start
    frames = store.array(name)[first:first + min(T, row["length"] - start)]
    return pad_to(np.array(frames, dtype=np.float32), T)


class WindowDataset(Dataset):
    """One ``window``-frame crop per sequence of a store, as a dict of tensors.

    ``ds[i]`` = ``{array: float32 [window, *frame_shape], label: int64 scalar, ...}`` for the
    requested ``arrays`` and the label columns the store has. With ``crop="random"`` the crop of
    item ``i`` is drawn from ``numpy.random.default_rng((seed, epoch, i))``: reproducible,
    identical in every DataLoader worker, and different every epoch once :meth:`set_epoch` is
    called.
    """

    def __init__(self, store: SkeletonStore | str | Path, window: int = DEFAULT_WINDOW,
                 crop: str = "random", subjects: Iterable[int] | None = None,
                 arrays: Sequence[str] = ("joints",), seed: int = 0):
        self.store = _open(store)
        self.window = int(window)
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        crop_start(self.window, self.window, crop)  # validates the policy name
        self.crop = crop
        self.arrays = _check_arrays(self.store, arrays)
        self.seed = int(seed)
        self.epoch = 0
        self.indices = select_sequences(self.store, subjects)
        self.labels, self.label_names = label_table(self.store)

    def __getstate__(self) -> dict[str, Any]:
        # Pickle the store's path, not its memory maps (which would pickle as full copies),
        # so spawned DataLoader workers reopen the store instead of receiving its data.
        return {**self.__dict__, "store": self.store.root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, store=SkeletonStore(state["store"]))

    def set_epoch(self, epoch: int) -> None:
        """Draw new random crops (call once per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} sequences")
        i %= len(self)
        k = int(self.indices[i])
        row = self.store.rows[k]
        rng = (np.random.default_rng((self.seed, self.epoch, i)) if self.crop == "random"
               else None)
        start = crop_start(row["length"], self.window, self.crop, rng)
        item = {name: torch.from_numpy(_window(self.store, name, row, start, self.window))
                for name in self.arrays}
        for col, values in self.labels.items():
            item[col] = torch.tensor(int(values[k]), dtype=torch.long)
        return item


def load_windows(store: SkeletonStore | str | Path, window: int = DEFAULT_WINDOW,
                 crop: str = "center", subjects: Iterable[int] | None = None,
                 arrays: Sequence[str] = ("joints",), *, stride: int | None = None,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """All windows at once, for evaluation.

    Without ``stride``: one crop per sequence (policy ``crop``; ``"random"`` draws from
    ``seed``). With ``stride``: every sliding window of every sequence (the last one aligned to
    the sequence's end). Returns float32 ``[N, window, *frame_shape]`` per array, int64 ``[N]``
    per label column, plus ``sequence`` (store row of each window) and ``start`` (its first
    frame).
    """
    store = _open(store)
    arrays = _check_arrays(store, arrays)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    rows = select_sequences(store, subjects)
    labels, _ = label_table(store)
    rng = np.random.default_rng(seed)
    seq_of: list[int] = []
    starts: list[int] = []
    for k in rows:
        length = store.rows[k]["length"]
        s = (window_starts(length, window, stride) if stride is not None
             else [crop_start(length, window, crop, rng)])
        seq_of += [int(k)] * len(s)
        starts += [int(x) for x in s]
    out: dict[str, np.ndarray] = {}
    for name in arrays:
        shape = store.array(name).shape[1:]
        buf = np.empty((len(starts), window, *shape), np.float32)
        for n, (k, s) in enumerate(zip(seq_of, starts, strict=True)):
            buf[n] = _window(store, name, store.rows[k], s, window)
        out[name] = buf
    seq_index = np.asarray(seq_of, dtype=np.int64)
    for col, values in labels.items():
        out[col] = values[seq_index]
    out["sequence"] = seq_index
    out["start"] = np.asarray(starts, dtype=np.int64)
    return out
