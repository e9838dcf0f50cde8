"""On-disk skeleton dataset: memory-mapped frame arrays plus a per-sequence metadata table.

Layout of a store directory::

    meta.json      dataset-level facts: name, skeleton, fps, units, arrays (dtype, shape),
                   label names, splits, free-form ``info``
    index.csv      one row per sequence: ``offset`` and ``length`` (frames) plus any integer or
                   string columns (subject, action, view, rep, camera, setup, sex, ...)
    <array>.f32    raw little-endian float32 frames ``[total_frames, *frame_shape]``, one file
                   per named array; every array shares the same frame axis

Sequences of different lengths are concatenated along the frame axis, so a store holds all of
NTU-120 without loading it into memory: arrays are opened with ``numpy.memmap`` and writers
append sequence by sequence.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
_DTYPE = np.dtype("<f4")


class StoreError(ValueError):
    """A store directory is missing, incomplete or inconsistent (the message names the file)."""


@dataclass
class Sequence:
    """One sequence read back from a store: its metadata row and its arrays (views)."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def joints(self) -> np.ndarray:
        return self.arrays["joints"]


class StoreWriter:
    """Append sequences to a new store; call :meth:`close` (or use as a context manager)."""

    def __init__(self, root: str | Path, arrays: Mapping[str, tuple[int, ...]],
                 meta: Mapping[str, Any] | None = None, overwrite: bool = False):
        self.root = Path(root)
        if (self.root / "meta.json").exists() and not overwrite:
            raise StoreError(f"{self.root}: a store already exists here (pass overwrite=True)")
        self.root.mkdir(parents=True, exist_ok=True)
        if "joints" not in arrays:
            raise StoreError("a store needs a 'joints' array")
        self.frame_shapes = {k: tuple(v) for k, v in arrays.items()}
        self.meta = dict(meta or {})
        self._files = {k: open(self.root / f"{k}.f32", "wb") for k in self.frame_shapes}
        self.rows: list[dict[str, Any]] = []
        self.total = 0

    def append(self, arrays: Mapping[str, np.ndarray], **row: Any) -> None:
        n = None
        for name, shape in self.frame_shapes.items():
            if name not in arrays:
                raise StoreError(f"sequence {row} lacks array {name!r}")
            a = np.asarray(arrays[name], dtype=_DTYPE)
            if a.shape[1:] != shape:
                raise StoreError(f"array {name!r}: frame shape {a.shape[1:]}, expected {shape}")
            if n is not None and a.shape[0] != n:
                raise StoreError(f"array {name!r} has {a.shape[0]} frames, expected {n}")
            n = a.shape[0]
        for name in self.frame_shapes:
            self._files[name].write(np.ascontiguousarray(arrays[name], dtype=_DTYPE).tobytes())
        self.rows.append({"offset": self.total, "length": n, **row})
        self.total += n

    def close(self) -> Path:
        for f in self._files.values():
            f.close()
        columns: list[str] = []
        for r in self.rows:
            columns += [c for c in r if c not in columns]
        with open(self.root / "index.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns or ["offset", "length"])
            w.writeheader()
            w.writerows(self.rows)
        meta = {
            "format": FORMAT_VERSION, **self.meta,
            "arrays": {k: {"dtype": "float32", "frame_shape": list(v)}
                       for k, v in self.frame_shapes.items()},
            "frames": self.total, "sequences": len(self.rows),
        }
        (self.root / "meta.json").write_text(json.dumps(meta, indent=1))
        return self.root

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            for f in self._files.values():
                f.close()


def _parse(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


class SkeletonStore:
    """Read-only view of a store directory (arrays are memory-mapped, nothing is loaded)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise StoreError(f"{meta_path}: not found (is {self.root} a streamtmr dataset?)")
        try:
            self.meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(f"{meta_path}: invalid JSON ({e})") from None
        if self.meta.get("format") != FORMAT_VERSION:
            raise StoreError(f"{meta_path}: unsupported format {self.meta.get('format')!r}")
        index_path = self.root / "index.csv"
        if not index_path.is_file():
            raise StoreError(f"{index_path}: not found")
        with open(index_path, newline="") as f:
            self.rows = [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]
        total = int(self.meta["frames"])
        self._arrays: dict[str, np.ndarray] = {}
        for name, spec in self.meta["arrays"].items():
            path = self.root / f"{name}.f32"
            shape = (total, *spec["frame_shape"])
            expected = int(np.prod(shape)) * _DTYPE.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise StoreError(f"{path}: expected {expected} bytes for shape {shape}")
            self._arrays[name] = (np.memmap(path, dtype=_DTYPE, mode="r", shape=shape)
                                  if total else np.zeros(shape, _DTYPE))
        for i, r in enumerate(self.rows):
            if r["offset"] + r["length"] > total:
                raise StoreError(f"{index_path}: row {i + 2} runs past the end of the arrays")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def array_names(self) -> list[str]:
        return list(self._arrays)

    def array(self, name: str) -> np.ndarray:
        """The whole memory-mapped frame array ``[total_frames, ...]``."""
        return self._arrays[name]

    def column(self, name: str) -> np.ndarray:
        """One metadata column for every sequence, as a numpy array."""
        if self.rows and name not in self.rows[0]:
            raise KeyError(f"{self.root}: no column {name!r} (have {list(self.rows[0])})")
        return np.array([r[name] for r in self.rows])

    def rows_of(self, split: str, view: int | None = None) -> list[dict]:
        """The rows of the people of ``split`` (``meta["splits"]``), in store order; with
        ``view``, only that camera's."""
        splits = self.meta.get("splits", {})
        if split not in splits:
            raise KeyError(f"{self.root}: no split {split!r} (have {sorted(splits)})")
        people = {int(s) for s in splits[split]}
        return [r for r in self.rows
                if int(r["subject"]) in people and (view is None or r["view"] == view)]

    def __getitem__(self, i: int) -> Sequence:
        r = self.rows[i]
        sl = slice(r["offset"], r["offset"] + r["length"])
        return Sequence(dict(r), {k: a[sl] for k, a in self._arrays.items()})

    def __iter__(self) -> Iterator[Sequence]:
        return (self[i] for i in range(len(self)))
