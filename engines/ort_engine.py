"""ONNX Runtime engine: CPU by default, the CUDA execution provider when asked for and present.

The session runs with ``intra_op_num_threads`` threads (default: ``default_cpu_threads()``, no
spinning, so an idle node leaves the CPU to the VR application), sequential execution and
graph optimisation level ALL. The optimised graph is saved once (``optimized_model_filepath``)
under the cache, keyed by the ONNX file's hash, the ONNX Runtime version, the provider and the
CPU architecture, with a SHA-256 sidecar; later sessions load it with optimisation disabled.

Hot path: with ``io_binding`` the output of each call is bound straight into the caller's
(or the engine's preallocated) buffer, so ONNX Runtime allocates no output array per call.

Streaming models export their step graph (``frames`` + ``state_in.*`` → ``anonymized`` +
``state_out.*``): :meth:`step` feeds the states in and hands the new ones back; :meth:`run` on
windows steps each window as a track from a fresh state (the same function as the parallel
forward).
"""

from __future__ import annotations

import hashlib
import logging
import platform
from pathlib import Path

import numpy as np

from engines.base import BackendUnavailable, Engine, EngineError, default_cpu_threads
from engines.onnx_export import FRAMES, INPUT, OUTPUT, STATE_IN, STATE_OUT
from engines.source import ModelSource
from streamtmr.cache import cache_dir, cache_key, partial_prefix, verify, write_sidecar

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def cuda_unavailable_reason() -> str | None:
    """Why the CUDA execution provider cannot be used here (None when it can)."""
    import onnxruntime as ort
    if CUDA not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no {CUDA} (install onnxruntime-gpu "
                "with CUDA 12, or use --engine onnxruntime / torch-cuda)")
    return None


class OrtEngine(Engine):
    """Runs the exported ONNX graph with ONNX Runtime."""

    def __init__(self, source: ModelSource, max_batch: int = 8, cuda: bool = False,
                 device_id: int = 0, threads: int | None = None, io_binding: bool | None = None,
                 cache: bool = True):
        super().__init__(source, max_batch)
        import onnxruntime as ort
        self.name = "onnxruntime-cuda" if cuda else "onnxruntime"
        if cuda and (reason := cuda_unavailable_reason()):
            raise BackendUnavailable(f"onnxruntime-cuda: {reason}")
        threads = default_cpu_threads() if threads is None else threads
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = int(threads)
        providers: list = [(CUDA, {"device_id": int(device_id)}), CPU] if cuda else [CPU]
        self.device = f"cuda:{int(device_id)}" if cuda else "cpu"
        onnx_path = source.onnx_file()
        self.session = self._session(ort, onnx_path, providers, cache)
        if cuda and self.session.get_providers()[0] != CUDA:
            raise BackendUnavailable(
                f"onnxruntime-cuda: {CUDA} failed to initialise (CUDA/cuDNN libraries missing "
                f"or no GPU {device_id}); use --engine onnxruntime or torch")
        # Measured on 2 CPU cores (naive and TMR small, batch 1 and 8): binding the output
        # brings no measurable gain on CPU, so it is off there by default; on CUDA it keeps the
        # output in a preallocated device buffer per batch size instead of a new one per call.
        self.io_binding = bool(cuda) if io_binding is None else bool(io_binding)
        self._binding = self.session.io_binding() if self.io_binding else None
        self._out_device = "cuda" if cuda else "cpu"
        self._device_id = int(device_id)
        self._device_out: dict[int, object] = {}
        self.streaming = source.streaming
        if self.streaming:  # step graph: frames + state_in.* → anonymized + state_out.*
            self._names = list(source.state_spec)
            self._outputs = [OUTPUT, *(STATE_OUT + k for k in self._names)]

    def _session(self, ort, onnx_path: Path, providers: list, cache: bool):
        def options(level):
            so = ort.SessionOptions()
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = level
            so.log_severity_level = 3
            return so

        full = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not cache:
            return self._load(ort, onnx_path, options(full), providers)
        provider = providers[0] if isinstance(providers[0], str) else providers[0][0]
        facts = {"source_sha256": self.source.graph_key, "onnxruntime": ort.__version__,
                 "provider": provider, "machine": platform.machine(), "level": "ALL"}
        cached = cache_dir("ort") / f"{cache_key(*facts.values())}.onnx"
        if verify(cached, facts) is not None:
            try:
                return self._load(ort, cached,
                                  options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL), providers)
            except Exception as e:  # a stale or foreign optimised graph: rebuild it
                log.warning("cached optimised model %s unusable (%s); rebuilding", cached, e)
        so = options(full)
        tmp = cached.with_name(partial_prefix(cached) + "onnx")  # ORT picks the format by suffix
        so.optimized_model_filepath = str(tmp)
        session = self._load(ort, onnx_path, so, providers)
        try:
            tmp.replace(cached)
            write_sidecar(cached, facts)
        except OSError as e:
            log.warning("could not cache the optimised model at %s (%s)", cached, e)
        return session

    def _load(self, ort, path: Path, so, providers: list):
        """A session from the bytes of ``path``, hashed as loaded (:attr:`graph_sha256`)."""
        data = Path(path).read_bytes()
        session = ort.InferenceSession(data, so, providers=providers)
        self.graph_sha256 = hashlib.sha256(data).hexdigest()
        return session

    def _step(self, frames: np.ndarray, state: dict[str, np.ndarray]
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        feeds = {FRAMES: frames, **{STATE_IN + k: state[k] for k in self._names}}
        try:
            res = self.session.run(self._outputs, feeds)
        except Exception as e:  # onnxruntime raises its own exception types
            raise EngineError(f"{self.name}: step failed ({e})") from e
        return res[0], dict(zip(self._names, res[1:], strict=True))

    def _run_batch(self, x: np.ndarray, out: np.ndarray) -> None:
        if self.streaming:  # each window a track, stepped from a fresh state
            out[...] = self._run_tracks(x)
            return
        try:
            if self._binding is None:
                out[...] = self.session.run([OUTPUT], {INPUT: x})[0]
                return
            b = self._binding
            b.bind_cpu_input(INPUT, x)
            if self._out_device == "cpu":
                b.bind_output(OUTPUT, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
                self.session.run_with_iobinding(b)
            else:  # preallocated device output per batch size
                ov = self._device_out.get(x.shape[0])
                if ov is None:
                    import onnxruntime as ort
                    ov = ort.OrtValue.ortvalue_from_shape_and_type(
                        list(x.shape), np.float32, "cuda", self._device_id)
                    self._device_out[x.shape[0]] = ov
                b.bind_ortvalue_output(OUTPUT, ov)
                self.session.run_with_iobinding(b)
                out[...] = ov.numpy()
        except Exception as e:  # onnxruntime raises its own exception types
            raise EngineError(f"{self.name}: inference failed ({e})") from e

    def describe(self) -> dict:
        return {**super().describe(), "threads": self.threads, "io_binding": self.io_binding,
                "providers": self.session.get_providers()}

    def close(self) -> None:
        self._binding = None
        self._device_out.clear()
        self.session = None
