"""PyTorch engine: runs the fixed-dummy module directly, on CPU or one CUDA device.

Everything runs under ``torch.inference_mode``. On CUDA the engine keeps pinned host staging
buffers and, with ``cuda_graphs`` (default on CUDA), captures one CUDA graph per batch size
(input copy, model, output copy) and replays it. ``compile=True`` wraps the module in
``torch.compile`` first.
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
        self.module = torch.compile(module, dynamic=False) if compile else module
        self.compiled = bool(compile)
        self.cuda_graphs = dev.type == "cuda" and (cuda_graphs is None or bool(cuda_graphs))
        self.graph_error: str | None = None
        if dev.type == "cuda":
            shape = (self.max_batch, self.window, 25, 3)
            self._h_in = torch.empty(shape, dtype=torch.float32, pin_memory=True)
            self._h_out = torch.empty(shape, dtype=torch.float32, pin_memory=True)
            self._d_in = torch.empty(shape, dtype=torch.float32, device=dev)
            self._stream = torch.cuda.Stream(dev)
            self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _run_batch(self, x: np.ndarray, out: np.ndarray) -> None:
        try:
            if self._dev.type == "cpu":
                with torch.inference_mode():
                    out[...] = self.module(torch.from_numpy(x)).numpy()
                return
            self._run_cuda(x, out)
        except torch.cuda.OutOfMemoryError as e:
            raise EngineError(f"{self.name}: out of GPU memory ({e})") from e
        except RuntimeError as e:
            raise EngineError(f"{self.name}: inference failed ({e})") from e

    def _run_cuda(self, x: np.ndarray, out: np.ndarray) -> None:
        b = x.shape[0]
        self._h_in[:b].numpy()[...] = x
        with torch.cuda.stream(self._stream), torch.inference_mode():
            graph = self._graph_for(b) if self.cuda_graphs else None
            if graph is not None:
                graph.replay()
            else:
                self._d_in[:b].copy_(self._h_in[:b], non_blocking=True)
                self._h_out[:b].copy_(self.module(self._d_in[:b]), non_blocking=True)
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
            self.module(d_in)
        self._stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._stream):
            d_in.copy_(self._h_in[:b], non_blocking=True)
            d_out = self.module(d_in)
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
