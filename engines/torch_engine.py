"""PyTorch engine: runs the fixed-dummy module directly, on CPU or one CUDA device.

Everything runs under ``torch.inference_mode`` (``torch.no_grad`` when compiled). On CUDA the
engine keeps pinned host staging buffers and, with ``cuda_graphs`` (default on CUDA), captures
one CUDA graph per batch size (input copy, model, output copy) and replays it.
``compile=True`` compiles, with ``torch.compile``, what the engine calls: ``forward`` for
windows and, for a streaming model, ``step`` (compiled code runs under ``torch.no_grad``:
dynamo's guards on tensors made from module constants fail under ``inference_mode``).

Streaming models (``source.streaming``) run ``module.step(frame, state)`` in :meth:`step`; on
CUDA one graph per batch size captures the copies of frames and states in, the step, and the
copies out (states travel through pinned host buffers: the engine API hands them back as numpy).
Windows given to :meth:`run` go through ``module.forward``, the same function in parallel.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from engines.base import BackendUnavailable, Engine, EngineError, default_cpu_threads
from engines.source import ModelSource

log = logging.getLogger(__name__)


def cuda_unavailable_reason() -> str | None:
    """Why torch cannot run on CUDA here (None when it can)."""
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return (f"torch {torch.__version__} ({build}) sees no CUDA GPU (install a CUDA build "
                "of torch, or use --engine onnxruntime / torch)")
    return None


def full_float32() -> None:
    """Convolutions and matrix products in IEEE float32 on CUDA, not TF32 (PyTorch's default
    for cuDNN convolutions). TF32's 10-bit mantissa moved the shipped default's output by
    0.06 mm, and a motion matcher's query enough to pick other database frames: 204 mm from
    the CPU on an H200, against 0.002 mm in float32, at the same step latency
    (bench/results/gpu-parity-stream-2026-12-04-h200*.json). Process-wide, as PyTorch's
    switches are."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def graph_blocker(module: torch.nn.Module) -> str | None:
    """Why ``module`` cannot be captured in a CUDA graph (None when it can): a submodule that
    branches on its data on the host declares so in its ``cuda_graph_blocker`` attribute
    (a capture would fail at its first synchronisation)."""
    for m in module.modules():
        if reason := getattr(m, "cuda_graph_blocker", None):
            return f"{type(m).__name__}: {reason}"
    return None


class TorchEngine(Engine):
    """Runs ``source.module`` with PyTorch."""

    def __init__(self, source: ModelSource, max_batch: int = 8, device: str | None = None,
                 cuda_graphs: bool | None = None, compile: bool = False,
                 threads: int | None = None):
        super().__init__(source, max_batch)
        dev = torch.device(device or "cpu")
        self.name = "torch-cuda" if dev.type == "cuda" else "torch"
        if source.module is None:
            raise EngineError(f"{self.name}: {source.name} is an ONNX file; the torch engine "
                              "needs a checkpoint (use --engine onnxruntime or tensorrt)")
        if dev.type == "cuda":
            if reason := cuda_unavailable_reason():
                raise BackendUnavailable(f"torch-cuda: {reason}")
            dev = torch.device("cuda", dev.index if dev.index is not None else 0)
            full_float32()
        elif dev.type != "cpu":
            raise ValueError(f"torch engine: unsupported device {device!r} (cpu or cuda[:N])")
        if dev.type == "cpu":
            torch.set_num_threads(int(threads) if threads is not None else default_cpu_threads())
        elif threads is not None:
            torch.set_num_threads(int(threads))
        self.device = str(dev)
        self._dev = dev
        module = source.module.to(dev).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.compiled = bool(compile)
        self._forward = torch.compile(module, dynamic=False) if compile else module
        step = module.step if source.streaming else None   # a windowed model has no step
        self._step_fn = torch.compile(step, dynamic=False) if compile and step else step
        self._no_grad = torch.no_grad if compile else torch.inference_mode
        self.cuda_graphs = dev.type == "cuda" and (cuda_graphs is None or bool(cuda_graphs))
        self.graph_error: str | None = None
        if self.cuda_graphs and (blocker := graph_blocker(module)):
            self.cuda_graphs, self.graph_error = False, blocker
        if dev.type == "cuda":
            shape = (self.max_batch, self.window, 25, 3)
            self._h_in = torch.empty(shape, dtype=torch.float32, pin_memory=True)
            self._h_out = torch.empty(shape, dtype=torch.float32, pin_memory=True)
            self._d_in = torch.empty(shape, dtype=torch.float32, device=dev)
            self._stream = torch.cuda.Stream(dev)
            self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.streaming = source.streaming
        self._step_graphs: dict[int, _CudaStep] = {}

    def _step(self, frames: np.ndarray, state: dict[str, np.ndarray]
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        try:
            if self._dev.type == "cpu":
                with self._no_grad():
                    y, new = self._step_fn(torch.from_numpy(frames),
                                              {k: torch.from_numpy(v) for k, v in state.items()})
                return y.numpy(), {k: v.numpy() for k, v in new.items()}
            return self._step_cuda(frames, state)
        except torch.cuda.OutOfMemoryError as e:
            raise EngineError(f"{self.name}: out of GPU memory ({e})") from e
        except RuntimeError as e:
            raise EngineError(f"{self.name}: step failed ({e})") from e

    def _step_cuda(self, frames: np.ndarray, state: dict[str, np.ndarray]):
        b = frames.shape[0]
        runner = self._step_graphs.get(b)
        if runner is None:
            runner = self._step_graphs[b] = _CudaStep(self._step_fn, self.state_spec(), b,
                                                      self._dev, self._stream, self._no_grad)
        if self.cuda_graphs and runner.graph is None:
            try:
                runner.capture()
            except RuntimeError as e:
                self.cuda_graphs = False
                self.graph_error = str(e).splitlines()[0]
                torch.cuda.synchronize(self._dev)
                log.warning("%s: CUDA graph capture of step failed, running eagerly (%s)",
                            self.name, self.graph_error)
        return runner(frames, state)

    #: Frames (tracks × length) per parallel call of :meth:`run_tracks`: bounds the memory of
    #: the banded attention (about 1 KB per frame and attention head in float32).
    TRACK_FRAMES = 1 << 15

    def _run_tracks(self, x: np.ndarray) -> np.ndarray:
        """The streaming model's parallel form (``module(tracks)``): the same function as
        stepping (``tests/test_tmr_stream.py``, ``tests/test_anonymize.py``), each frame
        computed once."""
        out = np.empty_like(x)
        per_call = max(1, self.TRACK_FRAMES // x.shape[1])
        try:
            with self._no_grad():
                for i in range(0, x.shape[0], per_call):
                    y = self._forward(torch.from_numpy(x[i:i + per_call]).to(self._dev))
                    out[i:i + per_call] = y.float().cpu().numpy()
        except torch.cuda.OutOfMemoryError as e:
            raise EngineError(f"{self.name}: out of GPU memory ({e})") from e
        except RuntimeError as e:
            raise EngineError(f"{self.name}: inference failed ({e})") from e
        return out

    def _run_batch(self, x: np.ndarray, out: np.ndarray) -> None:
        try:
            if self._dev.type == "cpu":
                with self._no_grad():
                    out[...] = self._forward(torch.from_numpy(x)).numpy()
                return
            self._run_cuda(x, out)
        except torch.cuda.OutOfMemoryError as e:
            raise EngineError(f"{self.name}: out of GPU memory ({e})") from e
        except RuntimeError as e:
            raise EngineError(f"{self.name}: inference failed ({e})") from e

    def _run_cuda(self, x: np.ndarray, out: np.ndarray) -> None:
        b = x.shape[0]
        self._h_in[:b].numpy()[...] = x
        with torch.cuda.stream(self._stream), self._no_grad():
            graph = self._graph_for(b) if self.cuda_graphs else None
            if graph is not None:
                graph.replay()
            else:
                self._d_in[:b].copy_(self._h_in[:b], non_blocking=True)
                self._h_out[:b].copy_(self._forward(self._d_in[:b]), non_blocking=True)
        self._stream.synchronize()
        out[...] = self._h_out[:b].numpy()

    def _graph_for(self, b: int) -> torch.cuda.CUDAGraph | None:
        """The CUDA graph for batch size ``b``, captured on first use. A model that cannot be
        captured (e.g. it copies host data inside its forward pass) runs eagerly from then on,
        with the reason logged and kept in :meth:`describe`."""
        if b in self._graphs:
            return self._graphs[b][0]
        try:
            return self._capture(b)[0]
        except RuntimeError as e:
            self.cuda_graphs = False
            self.graph_error = str(e).splitlines()[0]
            self._graphs.clear()
            torch.cuda.synchronize(self._dev)
            log.warning("%s: CUDA graph capture failed, running eagerly (%s)", self.name,
                        self.graph_error)
            return None

    def _capture(self, b: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture copy-in, model and copy-out for batch size ``b`` (after warm-up runs)."""
        d_in = self._d_in[:b]
        for _ in range(3):  # warm-up on the side stream, as CUDA graph capture requires
            d_in.copy_(self._h_in[:b], non_blocking=True)
            self._forward(d_in)
        self._stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._stream):
            d_in.copy_(self._h_in[:b], non_blocking=True)
            d_out = self._forward(d_in)
            self._h_out[:b].copy_(d_out, non_blocking=True)
        self._graphs[b] = (graph, d_out)
        return self._graphs[b]

    def describe(self) -> dict:
        return {**super().describe(), "cuda_graphs": self.cuda_graphs, "compiled": self.compiled,
                **({"cuda_graph_error": self.graph_error} if self.graph_error else {})}

    def close(self) -> None:
        if self._dev.type == "cuda":
            self._graphs.clear()
            torch.cuda.synchronize(self._dev)


class _CudaStep:
    """A streaming module's step for one batch size on CUDA: pinned host buffers, device
    buffers, and (after :meth:`capture`) one CUDA graph of copy-in, step and copy-out."""

    def __init__(self, step, spec: dict[str, tuple[tuple[int, ...], np.dtype]], b: int,
                 dev: torch.device, stream: torch.cuda.Stream, no_grad=torch.inference_mode):
        self.step, self.stream, self.graph, self.no_grad = step, stream, None, no_grad
        states = {k: (b, *shape) for k, (shape, _) in spec.items()}
        self.names = list(spec)
        ins, outs = {"frames": (b, 25, 3), **states}, {"anonymized": (b, 25, 3), **states}
        self.h_in = {k: torch.empty(s, dtype=torch.float32, pin_memory=True)
                     for k, s in ins.items()}
        self.h_out = {k: torch.empty(s, dtype=torch.float32, pin_memory=True)
                      for k, s in outs.items()}
        self.d_in = {k: torch.empty(s, dtype=torch.float32, device=dev) for k, s in ins.items()}

    def _run(self) -> None:
        for k, t in self.d_in.items():
            t.copy_(self.h_in[k], non_blocking=True)
        y, new = self.step(self.d_in["frames"], {k: self.d_in[k] for k in self.names})
        for k, t in {"anonymized": y, **new}.items():
            self.h_out[k].copy_(t, non_blocking=True)

    def capture(self) -> None:
        with torch.cuda.stream(self.stream), self.no_grad():
            for _ in range(3):  # warm-up on the side stream, as CUDA graph capture requires
                self._run()
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                self._run()
        self.graph = graph

    def __call__(self, frames: np.ndarray, state: dict[str, np.ndarray]):
        self.h_in["frames"].numpy()[...] = frames
        for k in self.names:
            self.h_in[k].numpy()[...] = state[k]
        with torch.cuda.stream(self.stream), self.no_grad():
            if self.graph is not None:
                self.graph.replay()
            else:
                self._run()
        self.stream.synchronize()
        return (self.h_out["anonymized"].numpy().copy(),
                {k: self.h_out[k].numpy().copy() for k in self.names})
