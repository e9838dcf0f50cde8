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

from engines.cache import atomic_write
from streamtmr import __version__

if TYPE_CHECKING:  # engines.source calls this module to export; the type is for readers only
    from engines.source import ModelSource

INPUT = "windows"
OUTPUT = "anonymized"
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
    """Export ``source.module`` to ``path`` (atomically) with metadata; ``onnx.checker`` on it."""
    if source.module is None:
        raise ValueError(f"{source.name}: already an ONNX model, nothing to export")
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    _register_symbolics()
    path = Path(path)
    module = source.module.eval().cpu()
    example = torch.as_tensor(example_input(source, 2))
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notices
        torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                          do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    meta = {"version": __version__, "method": source.method,
            "config": json.dumps(source.config, sort_keys=True, default=str),
            "dummy": json.dumps({"name": source.dummy.name,
                                 "lengths": [float(v) for v in source.dummy.lengths]}),
            "window": str(source.window), "model_sha256": source.sha256,
            "graph_key": source.graph_key}
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = PREFIX + k, v
    proto.producer_name, proto.producer_version = "streamtmr", __version__
    if check:
        onnx.checker.check_model(proto, full_check=True)
    atomic_write(path, proto.SerializeToString())
    return path


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
        return {**props, "config": json.loads(props["config"]),
                "dummy": json.loads(props["dummy"]), "window": int(props["window"])}
    except (json.JSONDecodeError, ValueError) as e:
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
    """Largest |ONNX Runtime − PyTorch| over ``inputs [B, T, 25, 3]`` (CPU, fp32)."""
    import onnxruntime as ort
    if source.module is None:
        raise ValueError(f"{source.name}: parity needs the PyTorch model")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y_onnx = sess.run([OUTPUT], {INPUT: np.ascontiguousarray(inputs, np.float32)})[0]
    with torch.inference_mode():
        y_torch = source.module.cpu()(torch.from_numpy(np.array(inputs, np.float32))).numpy()
    return float(np.abs(y_onnx - y_torch).max())
