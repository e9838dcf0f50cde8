"""TensorRT engine (TensorRT 10 Python API), built from the exported ONNX graph.

Build: ``OnnxParser`` → one optimisation profile over the batch axis (1 … max_batch, optimum at
max_batch) → FP16 when ``BuilderFlag.FP16`` exists and the GPU has fast FP16; TensorRT 11 drops
that flag, and the network is then created strongly typed (the precision of the ONNX graph, fp32)
→ ``build_serialized_network``. The serialised plan is cached under
``<cache>/tensorrt/<key>.plan``, keyed by GPU name, TensorRT version, the ONNX graph's hash,
precision and batch range; its SHA-256 sidecar is verified before every load, and a file that
fails the check is rebuilt, never deserialised.

Run: torch CUDA tensors serve as preallocated device buffers (addresses set once with
``set_tensor_address``), pinned host staging buffers, ``set_input_shape`` per batch size,
``execute_async_v3`` on a private stream. With ``cuda_graphs`` each batch size gets its own
execution context (input shapes set once, never changed) and one CUDA graph captured on it after
a first plain run: a graph replays exactly the context state it was captured with, so replaying
it after another batch size changed a shared context's shapes would be wrong.

FP16 plans: fp16 resolution near 3 m is ~2 mm, so positions rounded to fp16 fail the node's
1 mm bone check on about half the frames (measured on the default's output). The engine
therefore uses only the root and the root-relative bone *directions* of an fp16 plan's output
and rebuilds the joints by forward kinematics in float32 with the dummy's bone lengths
(:func:`fp32_pose`): bone lengths hold by construction, the check stays meaningful.

FP16 and the streaming state: a step graph's state carries counters and indices (frames seen,
a motion matcher's database frame, a pose atom's noise row) that float16 cannot hold exactly
above 2,048, and running sums that it would let drift. In an fp16 plan the layers on each
state entry's own update path (reachable from ``state_in.K`` and reaching ``state_out.K``) are
pinned to float32 (:func:`state_update_layers`, ``OBEY_PRECISION_CONSTRAINTS``); the heavy
layers stay fp16. A model whose computation is not float16-safe beyond its state says so with
``fp16_plan = False`` (motion matching: its search scores on a 1e-3 grid, its frame indices),
and gets an fp32 plan. Both are written against the documented API and not yet run on a GPU.

``tensorrt`` is imported lazily: without it, building the engine raises
:class:`~engines.base.BackendUnavailable` naming the alternatives.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.base import BackendUnavailable, Engine, EngineError
from engines.onnx_export import FRAMES, INPUT, OUTPUT, STATE_IN, STATE_OUT
from engines.source import ModelSource
from streamtmr import skeleton
from streamtmr.cache import atomic_write, cache_dir, cache_key, verify, write_sidecar

log = logging.getLogger(__name__)

ALTERNATIVES = "use --engine onnxruntime (CPU) or --engine torch / torch-cuda instead"
WORKSPACE_BYTES = 1 << 30
#: How :func:`build_plan` builds (part of a cached plan's key): 2 pins the state's update paths
PLAN_RECIPE = 2


def unavailable_reason() -> str | None:
    """Why TensorRT cannot be used here (None when it can)."""
    if importlib.util.find_spec("tensorrt") is None:
        return f"the tensorrt package is not installed (pip install 'tensorrt>=10'), or " \
               f"{ALTERNATIVES}"
    if not torch.cuda.is_available():
        return f"no CUDA GPU visible to torch (the TensorRT engine uses torch CUDA buffers); " \
               f"{ALTERNATIVES}"
    return None


def import_tensorrt():
    """The ``tensorrt`` module, or :class:`BackendUnavailable` naming what to do instead."""
    if reason := unavailable_reason():
        raise BackendUnavailable(f"tensorrt: {reason}")
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        raise BackendUnavailable(f"tensorrt: cannot import tensorrt ({e}); {ALTERNATIVES}") \
            from e
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise BackendUnavailable(f"tensorrt: version {trt.__version__} is too old (need >= 10)"
                                 f"; {ALTERNATIVES}")
    return trt


def plan_facts(gpu_name: str, trt_version: str, graph_sha256: str, precision: str,
               max_batch: int, window: int) -> dict[str, Any]:
    """Everything a serialised plan depends on; the cache key is derived from these."""
    return {"gpu": gpu_name, "tensorrt": trt_version, "graph_sha256": graph_sha256,
            "precision": precision, "max_batch": int(max_batch), "window": int(window),
            "recipe": PLAN_RECIPE}


def plan_path(facts: dict[str, Any]) -> Path:
    return cache_dir("tensorrt") / f"{cache_key(*facts.values())}.plan"


def load_verified_plan(path: Path, facts: dict[str, Any]) -> bytes | None:
    """The plan's bytes when its sidecar matches ``facts`` and its SHA-256; else None."""
    if verify(path, facts) is None:
        if path.exists():
            log.warning("TensorRT plan %s failed its checksum/key check; it will be rebuilt",
                        path)
        return None
    return path.read_bytes()


def fp32_pose(joints: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Joints ``[..., 25, 3]`` from a reduced-precision engine rebuilt in float32: the root and
    the unit bone directions of ``joints``, the dummy's bone ``lengths``, forward kinematics."""
    j = np.asarray(joints, np.float32)
    return skeleton.forward_kinematics(j[..., skeleton.ROOT, :], skeleton.bone_directions(j),
                                       np.asarray(lengths, np.float32)).astype(np.float32)


def _fp16_supported(trt, builder) -> bool:
    return hasattr(trt.BuilderFlag, "FP16") and bool(getattr(builder, "platform_has_fast_fp16",
                                                              True))


def io_shapes(window: int, state_spec: dict[str, tuple[int, ...]] | None
              ) -> dict[str, tuple[int, ...]]:
    """Per-item shape (batch axis left out) of every input and output tensor of the graph: the
    window graph, or a streaming model's step graph (``frames`` and ``state_in.*`` in,
    ``anonymized`` and ``state_out.*`` out)."""
    if state_spec is None:
        return {INPUT: (window, 25, 3), OUTPUT: (window, 25, 3)}
    return {FRAMES: (25, 3), **{STATE_IN + k: tuple(v) for k, v in state_spec.items()},
            OUTPUT: (25, 3), **{STATE_OUT + k: tuple(v) for k, v in state_spec.items()}}


def _inputs(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    return [n for n in shapes if n in (INPUT, FRAMES) or n.startswith(STATE_IN)]


def fp16_allowed(source: ModelSource) -> bool:
    """Whether ``source``'s model may run in an fp16 plan (``fp16_plan``, default True)."""
    return bool(getattr(source.module, "fp16_plan", True))


def state_update_layers(network, names) -> list[int]:
    """Indices of the layers of ``network`` (a TensorRT ``INetworkDefinition``, or anything with
    its ``num_layers`` / ``get_layer`` and the layers' ``num_inputs`` / ``get_input`` /
    ``num_outputs`` / ``get_output``) on the update path of each state entry in ``names``:
    reachable from the tensor ``state_in.K`` and reaching ``state_out.K``."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    reads: dict[str, list[int]] = {}  # tensor → the layers that read it
    writes: dict[str, list[int]] = {}  # tensor → the layer that writes it
    for i, layer in enumerate(layers):
        for j in range(layer.num_inputs):
            if (t := layer.get_input(j)) is not None:
                reads.setdefault(t.name, []).append(i)
        for j in range(layer.num_outputs):
            writes.setdefault(layer.get_output(j).name, []).append(i)

    def reached(start: str, forward: bool) -> set[int]:
        seen: set[int] = set()
        todo = list((reads if forward else writes).get(start, []))
        while todo:
            i = todo.pop()
            if i in seen:
                continue
            seen.add(i)
            layer = layers[i]
            if forward:
                tensors = [layer.get_output(j).name for j in range(layer.num_outputs)]
            else:
                tensors = [t.name for j in range(layer.num_inputs)
                           if (t := layer.get_input(j)) is not None]
            for t in tensors:
                todo.extend((reads if forward else writes).get(t, []))
        return seen

    pinned: set[int] = set()
    for k in names:
        pinned |= reached(STATE_IN + k, True) & reached(STATE_OUT + k, False)
    return sorted(pinned)


def pin_state_updates(trt, network, config, names) -> int:
    """Run the layers of :func:`state_update_layers` in float32 within an fp16 plan (their
    float inputs and outputs); returns how many layers were pinned."""
    floats = (trt.float32, trt.float16)
    pinned = state_update_layers(network, names)
    for i in pinned:
        layer = network.get_layer(i)
        if any((t := layer.get_input(j)) is not None and t.dtype in floats
               for j in range(layer.num_inputs)):
            layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in floats:
                layer.set_output_type(j, trt.float32)
    if pinned:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return len(pinned)


def build_plan(trt, onnx_path: Path, window: int, max_batch: int, fp16: bool = True,
               state_spec: dict[str, tuple[int, ...]] | None = None) -> tuple[bytes, str]:
    """Build a serialised engine from ``onnx_path``; returns (plan bytes, precision)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    use_fp16 = fp16 and _fp16_supported(trt, builder)
    flags = 0
    if not hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.NetworkDefinitionCreationFlag,
                                                         "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"tensorrt: cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if use_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        if state_spec:
            n = pin_state_updates(trt, network, config, state_spec)
            log.info("tensorrt: %d layers of the state's update paths pinned to fp32", n)
    profile = builder.create_optimization_profile()
    shapes = io_shapes(window, state_spec)
    for name in _inputs(shapes):  # every input: batch 1 … max_batch
        shape = shapes[name]
        profile.set_shape(name, (1, *shape), (max_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"tensorrt: building the engine for {onnx_path} failed "
                          "(see the TensorRT log above)")
    return bytes(plan), "fp16" if use_fp16 else "fp32"


class TensorRTEngine(Engine):
    """Runs a TensorRT plan built from the model's ONNX graph."""

    name = "tensorrt"

    def __init__(self, source: ModelSource, max_batch: int = 8, device: str | None = None,
                 fp16: bool = True, cuda_graphs: bool = True):
        super().__init__(source, max_batch)
        trt = import_tensorrt()
        dev = torch.device(device or "cuda")
        if dev.type != "cuda":
            raise ValueError(f"tensorrt: device must be cuda[:N], got {device!r}")
        dev = torch.device("cuda", dev.index or 0)
        self._dev, self.device = dev, str(dev)
        self._trt = trt
        torch.cuda.set_device(dev)
        self.plan_file = self._plan(trt, source, fp16, source.plan_path)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        plan = self.plan_file.read_bytes()
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        self.graph_sha256 = hashlib.sha256(plan).hexdigest()  # the bytes actually loaded
        if self.engine is None:
            raise EngineError(f"tensorrt: cannot deserialise {self.plan_file}")
        self.context = self.engine.create_execution_context()  # plain runs (no graphs)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.streaming = source.streaming
        self._shapes = io_shapes(self.window, source.state_spec)
        if sorted(names) != sorted(self._shapes):
            raise EngineError(f"tensorrt: {self.plan_file} has tensors {names}, expected "
                              f"{sorted(self._shapes)}")
        # device buffers (addresses set once), pinned host staging, per tensor
        self._d = {n: torch.empty((self.max_batch, *s), dtype=torch.float32, device=dev)
                   for n, s in self._shapes.items()}
        self._h = {n: torch.empty((self.max_batch, *s), dtype=torch.float32, pin_memory=True)
                   for n, s in self._shapes.items()}
        for n, t in self._d.items():
            self.context.set_tensor_address(n, t.data_ptr())
        self._in_names = _inputs(self._shapes)
        self._graph_contexts: dict[int, Any] = {}  # batch size → its own context
        self._out_names = [n for n in self._shapes if n not in self._in_names]
        self._stream = torch.cuda.Stream(dev)
        self.cuda_graphs = bool(cuda_graphs)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._shape_b = 0

    def _plan(self, trt, source: ModelSource, fp16: bool, given: Path | None) -> Path:
        gpu = torch.cuda.get_device_name(self._dev)
        if given is not None:  # a plan exported by `streamtmr export --format tensorrt`
            record = verify(given)
            if record is None:
                raise EngineError(f"tensorrt: {given} is missing its sidecar or fails its "
                                  "SHA-256 check; export it again")
            if record.get("gpu") != gpu or record.get("tensorrt") != trt.__version__:
                raise EngineError(f"tensorrt: {given} was built for {record.get('gpu')} / "
                                  f"TensorRT {record.get('tensorrt')}, this is {gpu} / "
                                  f"TensorRT {trt.__version__}; export it again")
            if record.get("recipe") != PLAN_RECIPE:
                raise EngineError(f"tensorrt: {given} was built by an older streamtmr (plan "
                                  f"recipe {record.get('recipe')}, this is {PLAN_RECIPE}); "
                                  "export it again")
            if record.get("window") != self.window or record.get("max_batch", 0) < \
                    self.max_batch:
                raise EngineError(f"tensorrt: {given} is for window {record.get('window')}, "
                                  f"batch <= {record.get('max_batch')}")
            self.precision = record["precision"]
            return given
        onnx_path = source.onnx_file()
        if fp16 and not fp16_allowed(source):
            log.info("tensorrt: %s is not float16-safe (fp16_plan = False); building fp32",
                     source.name)
            fp16 = False
        for precision in (("fp16", "fp32") if fp16 else ("fp32",)):
            facts = plan_facts(gpu, trt.__version__, source.graph_key, precision,
                               self.max_batch, self.window)
            path = plan_path(facts)
            if load_verified_plan(path, facts) is not None:
                self.precision = precision
                return path
        data, precision = build_plan(trt, onnx_path, self.window, self.max_batch, fp16,
                                     source.state_spec)
        facts = plan_facts(gpu, trt.__version__, source.graph_key, precision, self.max_batch,
                           self.window)
        path = plan_path(facts)
        atomic_write(path, data)
        write_sidecar(path, facts)
        self.precision = precision
        log.info("tensorrt: built %s plan %s for %s", precision, path, gpu)
        return path

    def _set_batch(self, b: int) -> None:
        if b != self._shape_b:
            self._shape(self.context, b)
            self._shape_b = b

    def _shape(self, context, b: int) -> None:
        for n in self._in_names:
            if not context.set_input_shape(n, (b, *self._shapes[n])):
                raise EngineError(f"tensorrt: batch {b} outside the engine's profile")

    def _context_for_graph(self, b: int):
        """A context of its own for batch ``b``: addresses and shapes set once."""
        context = self.engine.create_execution_context()
        if context is None:
            raise EngineError(f"tensorrt: cannot create an execution context for batch {b}")
        for n, t in self._d.items():
            context.set_tensor_address(n, t.data_ptr())
        self._shape(context, b)
        self._graph_contexts[b] = context
        return context

    def _enqueue(self, b: int, context=None) -> None:
        context = self.context if context is None else context
        for n in self._in_names:
            self._d[n][:b].copy_(self._h[n][:b], non_blocking=True)
        if not context.execute_async_v3(self._stream.cuda_stream):
            raise EngineError("tensorrt: execute_async_v3 failed")
        for n in self._out_names:
            self._h[n][:b].copy_(self._d[n][:b], non_blocking=True)

    def _step(self, frames: np.ndarray, state: dict[str, np.ndarray]
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One frame of B bodies through the step plan, ``max_batch`` bodies per execution."""
        out = np.empty_like(frames)
        new = {k: np.empty_like(v) for k, v in state.items()}
        for i in range(0, frames.shape[0], self.max_batch):
            part = slice(i, i + self.max_batch)
            b = frames[part].shape[0]
            self._h[FRAMES][:b].numpy()[...] = frames[part]
            for k, v in state.items():
                self._h[STATE_IN + k][:b].numpy()[...] = v[part]
            self._execute(b)
            y = self._h[OUTPUT][:b].numpy()
            out[part] = fp32_pose(y, self.dummy_lengths) if self.precision == "fp16" else y
            for k in state:
                new[k][part] = self._h[STATE_OUT + k][:b].numpy()
        return out, new

    def _run_batch(self, x: np.ndarray, out: np.ndarray) -> None:
        if self.streaming:  # each window a track, stepped from a fresh state
            out[...] = self._run_tracks(x)
            return
        b = x.shape[0]
        self._h[INPUT][:b].numpy()[...] = x
        self._execute(b)
        y = self._h[OUTPUT][:b].numpy()
        out[...] = fp32_pose(y, self.dummy_lengths) if self.precision == "fp16" else y

    def _execute(self, b: int) -> None:
        """Copy the staged inputs in, run, copy the outputs out (a CUDA graph per batch)."""
        with torch.cuda.stream(self._stream):
            if not self.cuda_graphs:
                self._set_batch(b)
                self._enqueue(b)
            elif b in self._graphs:
                self._graphs[b].replay()
            else:  # one plain run on b's own context settles lazy allocations, then capture
                context = self._context_for_graph(b)
                self._enqueue(b, context)
                self._stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self._stream):
                    self._enqueue(b, context)
                self._graphs[b] = graph
        self._stream.synchronize()

    def describe(self) -> dict:
        return {**super().describe(), "plan": str(self.plan_file),
                "tensorrt": self._trt.__version__, "cuda_graphs": self.cuda_graphs}

    def close(self) -> None:
        self._graphs.clear()
        self._graph_contexts.clear()
        self.context = None
        self.engine = None


def export_plan(source: ModelSource, out: str | Path, max_batch: int = 8, fp16: bool = True,
                device: str | None = None) -> dict[str, Any]:
    """Build a plan for ``source`` on this GPU and write it to ``out`` with its sidecar."""
    trt = import_tensorrt()
    dev = torch.device(device or "cuda")
    gpu = torch.cuda.get_device_name(dev)
    data, precision = build_plan(trt, source.onnx_file(), source.window, max_batch,
                                 fp16 and fp16_allowed(source), source.state_spec)
    out = Path(out)
    atomic_write(out, data)
    facts = plan_facts(gpu, trt.__version__, source.graph_key, precision, max_batch,
                       source.window)
    if source.streaming:
        facts["state_spec"] = {k: list(v) for k, v in source.state_spec.items()}
        if source.stagger is not None:
            facts["stagger"] = list(source.stagger)
    return write_sidecar(out, {**facts, "method": source.method, "model": source.name,
                               "config": source.config, "dummy": {
                                   "name": source.dummy.name,
                                   "lengths": [float(v) for v in source.dummy.lengths]}})
