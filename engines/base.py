"""The one interface every inference back end implements.

An engine runs the fixed-dummy anonymizer (``Anonymizer.for_dummy``) on batches of windows
``float32 [B, T, 25, 3]`` and returns the anonymized windows of the same shape. Back ends only
implement :meth:`Engine._run_batch` for one batch of at most ``max_batch`` windows; validation,
batch splitting and the output buffer live here so that every back end behaves the same.
"""

from __future__ import annotations

import abc
import os
from typing import Any

import numpy as np

from engines.source import ModelSource
from streamtmr import skeleton


class EngineError(RuntimeError):
    """An engine cannot be built or failed while running."""


class BackendUnavailable(EngineError):
    """The requested back end is not installed or has no device (the message says what to do)."""


#: Every back end name :func:`engines.create_engine` accepts (besides "auto").
BACKENDS = ("tensorrt", "onnxruntime", "onnxruntime-cuda", "torch", "torch-cuda")


def default_cpu_threads() -> int:
    """Intra-op threads for CPU inference: 1 on machines with ≤ 2 cores (measured in
    bench/results: 2 threads were 2× slower for ONNX Runtime and far slower for torch when the
    node shares the CPU), else half the cores, at most 4 (small graphs stop scaling there)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    return 1 if cores <= 2 else min(4, cores // 2)


def check_windows(windows: Any, window: int) -> np.ndarray:
    """Validate a batch of windows; returns it C-contiguous. Raises ValueError naming the field."""
    if not isinstance(windows, np.ndarray):
        raise ValueError(f"windows: expected a numpy array, got {type(windows).__name__}")
    if windows.dtype != np.float32:
        raise ValueError(f"windows: expected dtype float32, got {windows.dtype}")
    expected = (window, skeleton.NUM_JOINTS, 3)
    if windows.ndim != 4 or windows.shape[1:] != expected:
        raise ValueError(f"windows: expected shape [B, {window}, 25, 3], got "
                         f"{list(windows.shape)}")
    if not np.isfinite(windows.sum(dtype=np.float64)):  # one reduction, no mask array
        bad = np.argwhere(~np.isfinite(windows))[0]
        raise ValueError(f"windows: non-finite value at [batch {bad[0]}, frame {bad[1]}, "
                         f"joint {bad[2]}, axis {bad[3]}]")
    return np.ascontiguousarray(windows)


def check_tracks(tracks: Any) -> np.ndarray:
    """Validate whole tracks ``float32 [B >= 1, L >= 1, 25, 3]``; returns them C-contiguous."""
    if not isinstance(tracks, np.ndarray) or tracks.ndim != 4 or min(tracks.shape[:2]) < 1:
        raise ValueError(f"tracks: expected float32 [B >= 1, L >= 1, 25, 3], got "
                         f"{list(getattr(tracks, 'shape', [type(tracks).__name__]))}")
    return check_windows(tracks, tracks.shape[1])


class Engine(abc.ABC):
    """Runs one fixed-dummy model. Subclasses set ``name``, ``device``, ``precision``."""

    name: str = "base"
    device: str = "cpu"
    precision: str = "fp32"
    #: Windowed engines run windows; streaming engines (``step``) set this True.
    streaming: bool = False
    #: SHA-256 of the graph bytes the back end actually loaded (ONNX / plan); None: the
    #: source's weights (PyTorch runs the checkpoint itself).
    graph_sha256: str | None = None
    #: The privacy card bound to the weights (set by :func:`engines.open_engine`).
    card: dict[str, Any] | None = None
    #: True when the model runs without a card (``--allow-unevaluated``).
    unevaluated: bool = False

    def __init__(self, source: ModelSource, max_batch: int = 8):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.source = source
        self.window = int(source.window)
        self.max_batch = int(max_batch)
        self.dummy_lengths = np.asarray(source.dummy.lengths, dtype=np.float32)

    # -- back end -------------------------------------------------------------------------

    @abc.abstractmethod
    def _run_batch(self, x: np.ndarray, out: np.ndarray) -> None:
        """Anonymize ``x [b, T, 25, 3]`` (1 <= b <= max_batch, validated) into ``out``."""

    def close(self) -> None:
        """Release device resources (the engine must not be used afterwards)."""
        return None

    # -- public API -------------------------------------------------------------------------

    def run(self, windows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Anonymize ``windows float32 [B, T, 25, 3]`` → ``float32 [B, T, 25, 3]``.

        Batches larger than ``max_batch`` are split. ``out`` (optional, float32 C-contiguous,
        same shape) receives the result without a new allocation.
        """
        x = check_windows(windows, self.window)
        if out is None:
            out = np.empty_like(x)
        elif (not isinstance(out, np.ndarray) or out.shape != x.shape
              or out.dtype != np.float32 or not out.flags.c_contiguous):
            raise ValueError(f"out: expected a C-contiguous float32 array of shape "
                             f"{list(x.shape)}")
        for i in range(0, x.shape[0], self.max_batch):
            self._run_batch(x[i:i + self.max_batch], out[i:i + self.max_batch])
        return out

    def run_latest(self, windows: np.ndarray, k: int = 1) -> np.ndarray:
        """Only the newest ``k`` anonymized frames of each window: ``[B, k, 25, 3]``."""
        if not 1 <= int(k) <= self.window:
            raise ValueError(f"k must be in [1, {self.window}], got {k}")
        return np.ascontiguousarray(self.run(windows)[:, self.window - int(k):])

    # -- streaming models (``streaming`` True): one frame per body and call -------------------

    def _step(self, frames: np.ndarray, state: dict[str, np.ndarray]
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Back end of :meth:`step` (validated input, ``1 <= B``)."""
        raise EngineError(f"{self.name}: no step() for this back end")

    @property
    def stagger(self) -> tuple[str, int] | None:
        """(state name, period) whose fresh value phases a periodic cost of the step (a
        motion matcher's search), or None; see :class:`streamtmr.stream.state.StateSlots`."""
        return self.source.stagger

    def state_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Per-body state: name → (shape, dtype). Only for streaming models."""
        if self.source.state_spec is None:
            raise EngineError(f"{self.name}: {self.source.name} ({self.source.method}) is a "
                              "windowed model; it has no per-body state (use run())")
        return {k: (tuple(v), np.dtype(np.float32)) for k, v in self.source.state_spec.items()}

    def init_state(self, n: int) -> dict[str, np.ndarray]:
        """Fresh track state for ``n`` bodies: name → ``float32 [n, ...]`` (zeros)."""
        return {k: np.zeros((int(n), *shape), dtype) for k, (shape, dtype)
                in self.state_spec().items()}

    def step(self, frames: np.ndarray, state: dict[str, np.ndarray]
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One frame of B bodies ``float32 [B, 25, 3]`` with their states (``[B, ...]`` each)
        → (anonymized ``float32 [B, 25, 3]``, new states). ValueError names a bad field."""
        spec = self.state_spec()
        if not isinstance(frames, np.ndarray) or frames.dtype != np.float32 \
                or frames.ndim != 3 or frames.shape[1:] != (skeleton.NUM_JOINTS, 3):
            raise ValueError(f"frames: expected float32 [B, 25, 3], got "
                             f"{getattr(frames, 'dtype', type(frames).__name__)} "
                             f"{list(getattr(frames, 'shape', []))}")
        b = frames.shape[0]
        if b < 1 or not np.isfinite(frames.sum(dtype=np.float64)):
            raise ValueError(f"frames: need >= 1 body and finite values (batch {b})")
        if set(state) != set(spec):
            raise ValueError(f"state: expected keys {sorted(spec)}, got {sorted(state)}")
        for k, (shape, dtype) in spec.items():
            v = state[k]
            if not isinstance(v, np.ndarray) or v.dtype != dtype or v.shape != (b, *shape):
                raise ValueError(f"state[{k!r}]: expected {dtype} {[b, *shape]}, got "
                                 f"{getattr(v, 'dtype', type(v).__name__)} "
                                 f"{list(getattr(v, 'shape', []))}")
        return self._step(np.ascontiguousarray(frames),
                          {k: np.ascontiguousarray(v) for k, v in state.items()})

    def run_tracks(self, tracks: np.ndarray) -> np.ndarray:
        """Streaming models: whole tracks ``float32 [B, L, 25, 3]`` (any L >= 1), each from a
        fresh state → what stepping them frame by frame gives, ``float32 [B, L, 25, 3]``.

        Output frame t depends on frames 0…t only, so tracks of different lengths may be padded
        at their ends. The default steps ``max_batch`` tracks at a time; back ends with the
        model's parallel form (PyTorch) run that instead (same function, to float rounding)."""
        x = check_tracks(tracks)
        self.state_spec()  # a windowed model has no tracks: EngineError naming it
        return self._run_tracks(x)

    def _run_tracks(self, x: np.ndarray) -> np.ndarray:
        """Back end of :meth:`run_tracks` (validated tracks)."""
        out = np.empty_like(x)
        for i in range(0, x.shape[0], self.max_batch):
            chunk = x[i:i + self.max_batch]
            state = self.init_state(chunk.shape[0])
            for t in range(x.shape[1]):
                out[i:i + len(chunk), t], state = self._step(np.ascontiguousarray(chunk[:, t]),
                                                             state)
        return out

    def warmup(self, batch_sizes: tuple[int, ...] | list[int] = (1,)) -> None:
        """Run each batch size once (allocations, kernel selection, graph capture)."""
        pose = self.source.dummy.rest_pose()
        for b in batch_sizes:
            if int(b) < 1:
                raise ValueError(f"warmup batch sizes must be >= 1, got {b}")
            self.run(np.ascontiguousarray(np.broadcast_to(
                pose, (int(b), self.window, skeleton.NUM_JOINTS, 3)), dtype=np.float32))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "max_batch": self.max_batch, "window": self.window, "model": self.source.name,
                "method": self.source.method, "dummy": self.source.dummy.name,
                "model_sha256": self.source.sha256,
                "graph_sha256": self.graph_sha256 or self.source.sha256,
                "unevaluated": self.unevaluated}

    def __repr__(self) -> str:
        d = self.describe()
        return (f"{type(self).__name__}(model={d['model']!r}, device={d['device']!r}, "
                f"window={self.window}, max_batch={self.max_batch})")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
