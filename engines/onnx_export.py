"""ONNX export of a fixed-dummy model, with its metadata, checked and verified against PyTorch.

The graph takes ``windows float32 [batch, T, 25, 3]`` and returns ``anonymized`` of the same
shape; the batch axis is dynamic, T is fixed to the window. Export uses the TorchScript-based
(legacy) exporter: the dynamo exporter specialises the batch to 1 and breaks LSTMs here.
``aten::median`` (the naive retarget's bone-length estimate) has no legacy symbolic; one is
registered below (TopK over the axis, then the lower middle element, as torch defines it).

Metadata (``metadata_props``, all strings; JSON where structured) lets an engine load the file
alone: ``streamtmr.version``, ``streamtmr.method``, ``streamtmr.config``, ``streamtmr.dummy``
(``{"name", "lengths"}``), ``streamtmr.window``, ``streamtmr.model_sha256``,
``streamtmr.graph_key``.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch

from streamtmr import __version__
from streamtmr.cache import atomic_write

if TYPE_CHECKING:  # engines.source calls this module to export; the type is for readers only
    from engines.source import ModelSource

INPUT = "windows"
OUTPUT = "anonymized"
#: Step graph of a streaming model: ``frames`` + ``state_in.<name>`` → ``anonymized`` +
#: ``state_out.<name>``.
FRAMES = "frames"
STATE_IN = "state_in."
STATE_OUT = "state_out."
OPSET = 17
PREFIX = "streamtmr."


def _median_dim(g, x, dim, keepdim):
    """Symbolic for ``aten::median(x, dim, keepdim)`` → (values, indices), torch's lower median."""
    from torch.onnx import symbolic_helper as sh
    dim = sh._get_const(dim, "i", "dim")
    keepdim = sh._get_const(keepdim, "i", "keepdim")

    def const(v):
        return g.op("Constant", value_t=torch.tensor([v], dtype=torch.int64))

    n = g.op("Gather", g.op("Shape", x), const(dim), axis_i=0)
    values, indices = g.op("TopK", x, n, axis_i=dim, largest_i=0, sorted_i=1, outputs=2)
    mid = g.op("Div", g.op("Sub", n, const(1)), const(2))
    values = g.op("Gather", values, mid, axis_i=dim)
    indices = g.op("Gather", indices, mid, axis_i=dim)
    if not keepdim:
        values = g.op("Squeeze", values, const(dim))
        indices = g.op("Squeeze", indices, const(dim))
    return values, indices


_registered = False


def _register_symbolics() -> None:
    global _registered
    if not _registered:
        torch.onnx.register_custom_op_symbolic("aten::median", _median_dim, OPSET)
        _registered = True


def export_onnx(source: ModelSource, path: str | Path, opset: int = OPSET,
                check: bool = True) -> Path:
    """Export ``source.module`` to ``path`` (atomically) with metadata; ``onnx.checker`` on it.

    A streaming source exports its step graph (:func:`_export_step`), a windowed one its
    window graph."""
    if source.module is None:
        raise ValueError(f"{source.name}: already an ONNX model, nothing to export")
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    _register_symbolics()
    path = Path(path)
    module = source.module.eval().cpu()
    if source.streaming:
        graph = _export_step(module, source, opset)
    else:
        example = torch.as_tensor(example_input(source, 2))
        graph = _export(module, (example,), [INPUT], [OUTPUT], opset)
    proto = onnx.load_from_string(graph)
    meta = {"version": __version__, "method": source.method,
            "config": json.dumps(source.config, sort_keys=True, default=str),
            "dummy": json.dumps({"name": source.dummy.name,
                                 "lengths": [float(v) for v in source.dummy.lengths]}),
            "window": str(source.window), "model_sha256": source.sha256,
            "graph_key": source.graph_key}
    if source.streaming:
        meta.update(streaming="1", state_spec=json.dumps(
            {k: list(v) for k, v in source.state_spec.items()}))
        if source.stagger is not None:
            meta["stagger"] = json.dumps(list(source.stagger))
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = PREFIX + k, v
    proto.producer_name, proto.producer_version = "streamtmr", __version__
    if check:
        onnx.checker.check_model(proto, full_check=True)
    atomic_write(path, proto.SerializeToString())
    return path


def _export(module: torch.nn.Module, args: tuple, inputs: list[str], outputs: list[str],
            opset: int) -> bytes:
    """Legacy-exporter bytes of ``module(*args)``, every input and output batch-dynamic."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notices
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset,
                          input_names=inputs, output_names=outputs,
                          dynamic_axes={n: {0: "batch"} for n in (*inputs, *outputs)},
                          do_constant_folding=True)
    return buf.getvalue()


class StepGraph(torch.nn.Module):
    """A streaming module's ``step`` with the state as flat tensors, in ``state_spec`` order:
    ``(frames, *state_in) -> (anonymized, *state_out)``."""

    def __init__(self, module: torch.nn.Module, names: list[str]):
        super().__init__()
        self.module, self.names = module, list(names)

    def forward(self, frames: torch.Tensor, *state: torch.Tensor):
        out, new = self.module.step(frames, dict(zip(self.names, state, strict=True)))
        return (out, *(new[n] for n in self.names))


def _export_step(module: torch.nn.Module, source: ModelSource, opset: int) -> bytes:
    """The step graph: inputs ``frames`` [B,25,3] and ``state_in.<name>``, outputs
    ``anonymized`` [B,25,3] and ``state_out.<name>``, batch axis dynamic."""
    names = list(source.state_spec)
    # a state some frames into a track, so that no branch is constant-folded away
    state = {k: v for k, v in module.init_state(2).items()}
    x = torch.as_tensor(example_input(source, 2))
    with torch.no_grad():
        for t in range(3):
            _, state = module.step(x[:, t], state)
    args = (x[:, 3], *(state[n] for n in names))
    # eval(): the exporter restores the wrapper's mode afterwards, recursively, so a wrapper
    # left in training mode would switch the model's dropout on
    return _export(StepGraph(module, names).eval(), args, [FRAMES, *(STATE_IN + n for n in names)],
                   [OUTPUT, *(STATE_OUT + n for n in names)], opset)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The streamtmr metadata of an exported ``.onnx`` file (ValueError when it has none)."""
    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError / OSError depending on the failure
        raise ValueError(f"{path}: not a readable ONNX model ({e})") from None
    props = {p.key[len(PREFIX):]: p.value for p in proto.metadata_props
             if p.key.startswith(PREFIX)}
    missing = [k for k in ("method", "config", "dummy", "window") if k not in props]
    if missing:
        raise ValueError(f"{path}: not exported by streamtmr (metadata lacks "
                         f"{', '.join(PREFIX + k for k in missing)})")
    try:
        meta = {**props, "config": json.loads(props["config"]),
                "dummy": json.loads(props["dummy"]), "window": int(props["window"])}
        if props.get("streaming") == "1":
            meta["state_spec"] = {k: tuple(int(n) for n in v)
                                  for k, v in json.loads(props["state_spec"]).items()}
        if "stagger" in props:
            name, period = json.loads(props["stagger"])
            meta["stagger"] = (str(name), int(period))
        return meta
    except (json.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: malformed streamtmr metadata ({e})") from None


def example_input(source: ModelSource, batch: int, seed: int = 0) -> np.ndarray:
    """A plausible batch: the dummy's rest pose moving and bending a little."""
    rng = np.random.default_rng(seed)
    pose = source.dummy.rest_pose()
    t = np.arange(source.window, dtype=np.float32)[None, :, None, None]
    x = pose + 0.05 * np.sin(0.2 * t + rng.uniform(0, 6, (batch, 1, 25, 3)))
    x = x + np.array([0.0, 0.0, 2.5], np.float32)
    return x.astype(np.float32)


def max_abs_error(source: ModelSource, path: str | Path, inputs: np.ndarray) -> float:
    """Largest |ONNX Runtime − PyTorch| over ``inputs [B, T, 25, 3]`` (CPU, fp32); a streaming
    model is stepped through every frame of each sequence on both sides, states carried."""
    import onnxruntime as ort
    if source.module is None:
        raise ValueError(f"{source.name}: parity needs the PyTorch model")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if source.streaming:
        return _step_error(source, sess, np.asarray(inputs, np.float32))
    y_onnx = sess.run([OUTPUT], {INPUT: np.ascontiguousarray(inputs, np.float32)})[0]
    with torch.inference_mode():
        y_torch = source.module.cpu()(torch.from_numpy(np.array(inputs, np.float32))).numpy()
    return float(np.abs(y_onnx - y_torch).max())


def _step_error(source: ModelSource, sess, inputs: np.ndarray) -> float:
    """Largest |ONNX − PyTorch| of the step graph's output over every frame, each side carrying
    its own state (so state differences count through what they do to later frames)."""
    names = list(source.state_spec)
    module = source.module.cpu()
    with torch.inference_mode():
        state = module.init_state(inputs.shape[0])
        s_onnx = {k: v.numpy() for k, v in state.items()}
        err = 0.0
        for t in range(inputs.shape[1]):
            frame = np.ascontiguousarray(inputs[:, t])
            y, state = module.step(torch.from_numpy(frame), state)
            res = sess.run(None, {FRAMES: frame, **{STATE_IN + k: s_onnx[k] for k in names}})
            s_onnx = dict(zip(names, res[1:], strict=True))
            err = max(err, float(np.abs(res[0] - y.numpy()).max()))
    return err
