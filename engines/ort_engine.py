"""ONNX Runtime engine: CPU by default, the CUDA execution provider when asked for and present.

The session runs with ``intra_op_num_threads`` threads (default: ``default_cpu_threads()``, no
spinning, so an idle node leaves the CPU to the VR application), sequential execution and
graph optimisation level ALL. The optimised graph is saved once (``optimized_model_filepath``)
under the cache, keyed by the ONNX file's hash, the ONNX Runtime version, the provider and the
CPU architecture, with a SHA-256 sidecar; later sessions load it with optimisation disabled.

One body (or window) per call, the common case of a single-user VR application, runs a second
session of the same graph with its batch axis fixed to 1 (``add_free_dimension_override_by_name``,
on CPU): ONNX Runtime then folds the graph's shape arithmetic (``Shape`` → ``Gather`` →
``Concat`` chains, a few hundred kernels of a step graph) into constants, about a fifth of a
small model's step (``bench/results/step-batch1-2026-12-04-cpu-2c.json``). The two sessions
share every initializer of 1 MiB or more (``add_initializer``), so a motion matcher's database
is held once.

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
import math
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
#: The exporter's name of the batch axis (``engines.onnx_export``), fixed to 1 in the
#: single-body session.
BATCH_AXIS = "batch"
#: Initializers at least this large are held once and shared by the engine's two sessions.
SHARED_BYTES = 1 << 20


#: Fusions left out of the optimised graph that is saved: ONNX Runtime (1.32) names the output
#: of every GatherSliceToSplitFusion ``split_output``, in the main graph and in an ``If``
#: branch alike (a motion matcher's search), and the saved file then fails to load ("must be
#: in single static assignment form"). In memory the name clash is harmless.
UNSAVABLE_FUSIONS = ["GatherSliceToSplitFusion"]


def cuda_unavailable_reason() -> str | None:
    """Why the CUDA execution provider cannot be used here (None when it can)."""
    import onnxruntime as ort
    if CUDA not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no {CUDA} (install onnxruntime-gpu "
                "with CUDA 12, or use --engine onnxruntime / torch-cuda)")
    return None


def shared_initializers(ort, data: bytes) -> dict:
    """The initializers of the ONNX graph ``data`` of at least :data:`SHARED_BYTES`, as
    ``OrtValue`` s (name → value) that sessions take by ``add_initializer`` instead of their own
    copy. Constants the graph holds as nodes (an exporter's folded buffers) are not among them;
    ONNX Runtime's optimised graph holds them as initializers."""
    if len(data) < SHARED_BYTES:
        return {}
    import onnx
    from onnx import helper, numpy_helper

    shared = {}
    for t in onnx.load_from_string(data).graph.initializer:
        size = math.prod(t.dims) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        if size >= SHARED_BYTES and t.data_location != onnx.TensorProto.EXTERNAL:
            shared[t.name] = ort.OrtValue.ortvalue_from_numpy(numpy_helper.to_array(t))
    return shared


class OrtEngine(Engine):
    """Runs the exported ONNX graph with ONNX Runtime."""

    def __init__(self, source: ModelSource, max_batch: int = 8, cuda: bool = False,
                 device_id: int = 0, threads: int | None = None, io_binding: bool | None = None,
                 cache: bool = True, single: bool | None = None):
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
        # single: a batch-1 session beside the general one (default on CPU; on CUDA the
        # device would hold every initializer twice)
        self._single_wanted = (not cuda) if single is None else bool(single)
        self.single = None
        self._shared: dict = {}
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

    def _session(self, ort, onnx_path: Path, providers: list, cache: bool, retry: bool = True):
        def options(level, shared=None, batch=None):
            so = ort.SessionOptions()
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = level
            so.log_severity_level = 3
            for name, value in (shared or {}).items():
                so.add_initializer(name, value)
            if batch is not None:
                so.add_free_dimension_override_by_name(BATCH_AXIS, batch)
            return so

        full = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not cache:
            return self._load(ort, onnx_path, options, full, providers)
        provider = providers[0] if isinstance(providers[0], str) else providers[0][0]
        facts = {"source_sha256": self.source.graph_key, "onnxruntime": ort.__version__,
                 "provider": provider, "machine": platform.machine(), "level": "ALL"}
        cached = cache_dir("ort") / f"{cache_key(*facts.values())}.onnx"
        if verify(cached, facts) is None:  # optimise once, write the graph, open the pair
            so = options(full)        # from it (its large constants are shareable initializers)
            tmp = cached.with_name(partial_prefix(cached) + "onnx")  # ORT picks by suffix
            so.optimized_model_filepath = str(tmp)
            ort.InferenceSession(onnx_path.read_bytes(), so, providers=providers,
                                 disabled_optimizers=UNSAVABLE_FUSIONS)
            try:
                tmp.replace(cached)
                write_sidecar(cached, facts)
            except OSError as e:
                log.warning("could not cache the optimised model at %s (%s)", cached, e)
                return self._load(ort, onnx_path, options, full, providers)
        try:
            return self._load(ort, cached, options, ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                              providers)
        except Exception as e:  # a stale or foreign optimised graph: rebuild it (once)
            if not retry:
                raise
            log.warning("cached optimised model %s unusable (%s); rebuilding", cached, e)
            cached.unlink(missing_ok=True)
            return self._session(ort, onnx_path, providers, cache, retry=False)

    def _load(self, ort, path: Path, options, level, providers: list):
        """The session of the bytes of ``path`` at optimisation ``level`` (hashed as loaded:
        :attr:`graph_sha256`) and, where wanted, :attr:`single`, the same graph with its batch
        axis fixed to 1 at level ALL; the two share the graph's large initializers."""
        data = Path(path).read_bytes()
        self._shared = shared_initializers(ort, data) if self._single_wanted else {}
        session = ort.InferenceSession(data, options(level, self._shared), providers=providers)
        self.graph_sha256 = hashlib.sha256(data).hexdigest()
        if self._single_wanted:
            full = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.single = ort.InferenceSession(data, options(full, self._shared, batch=1),
                                               providers=providers)
        return session

    def _session_for(self, batch: int):
        return self.single if batch == 1 and self.single is not None else self.session

    def _step(self, frames: np.ndarray, state: dict[str, np.ndarray]
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        feeds = {FRAMES: frames, **{STATE_IN + k: state[k] for k in self._names}}
        try:
            res = self._session_for(frames.shape[0]).run(self._outputs, feeds)
        except Exception as e:  # onnxruntime raises its own exception types
            raise EngineError(f"{self.name}: step failed ({e})") from e
        return res[0], dict(zip(self._names, res[1:], strict=True))

    def _run_batch(self, x: np.ndarray, out: np.ndarray) -> None:
        if self.streaming:  # each window a track, stepped from a fresh state
            out[...] = self._run_tracks(x)
            return
        try:
            if self._binding is None:
                out[...] = self._session_for(x.shape[0]).run([OUTPUT], {INPUT: x})[0]
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
                "single_session": self.single is not None,
                "providers": self.session.get_providers()}

    def close(self) -> None:
        self._binding = None
        self._device_out.clear()
        self.session = self.single = None
        self._shared = {}
