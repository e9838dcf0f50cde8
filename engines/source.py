"""What an engine runs: a model resolved together with its dummy and window.

A model is given as a shipped model's name (``None``/"default", "matcher"), a checkpoint path,
an ``.onnx`` file exported by :mod:`engines.onnx_export` (it carries its own metadata), or an
:class:`~streamtmr.models.base.Anonymizer` instance. Engines that run PyTorch use
:attr:`ModelSource.module`; the others use :meth:`ModelSource.onnx_file`, which exports once and
caches the file under the cache directory, keyed by the content hash of model, dummy and window.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import streamtmr
from streamtmr import __version__
from streamtmr.cache import cache_dir, file_sha256, verify, write_sidecar
from streamtmr.dummy import Dummy, resolve_dummy
from streamtmr.models.base import Anonymizer
from streamtmr.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    resolve_model,
    shipped_path,
)
from streamtmr.models.registry import find as find_method

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 64
#: File suffixes of serialised TensorRT plans (``streamtmr export --format tensorrt``).
PLAN_SUFFIXES = (".plan", ".engine", ".trt")


def state_sha256(model: nn.Module, config: dict[str, Any]) -> str:
    """Content hash of a model's config and weights (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def code_fingerprint(module: nn.Module | None) -> str:
    """Hash of :func:`source_files`: an export made by other code (a changed step, a new
    state entry, a changed search) is not reused under the same version."""
    h = hashlib.sha256()
    for f in sorted(source_files(module)):
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def source_files(module: nn.Module | None) -> set[str]:
    """The source files that define ``module`` and its submodules, and the project's modules
    those files use (geometry, the search tree)."""
    ours = (Path(streamtmr.__file__).resolve().parent, Path(__file__).resolve().parent)
    files = set()
    defining = {type(m).__module__ for m in module.modules()} if module is not None else set()
    for name in defining:  # each defining module once (a model has hundreds of submodules)
        try:
            files.add(inspect.getsourcefile(sys.modules[name]))
        except TypeError:  # a built-in module
            continue
        for used in vars(sys.modules[name]).values():
            try:
                f = inspect.getsourcefile(used)
            except TypeError:  # a constant, a built-in
                continue
            if f and any(Path(f).resolve().is_relative_to(p) for p in ours):
                files.add(f)
    return {f for f in files if f}


def as_dummy(dummy: Dummy | str | Path | np.ndarray | None) -> Dummy:
    if isinstance(dummy, Dummy):
        return dummy
    if isinstance(dummy, np.ndarray | torch.Tensor):
        return Dummy("custom", np.asarray(dummy, dtype=np.float32))
    return resolve_dummy(dummy)


@dataclass
class ModelSource:
    """A model ready for one fixed dummy and window (see the module docstring)."""

    name: str
    method: str
    config: dict[str, Any]
    window: int
    dummy: Dummy
    sha256: str
    module: nn.Module | None = None         # x [B, T, 25, 3] -> y; None for an .onnx model
    onnx_path: Path | None = None           # the .onnx file the model was given as
    plan_path: Path | None = None           # the TensorRT plan the model was given as
    deterministic: bool = True
    #: Streaming model (``step(frame, state)``): per-body state shapes, name → shape (float32);
    #: None for a windowed model.
    state_spec: dict[str, tuple[int, ...]] | None = None
    #: (state name, period): a fresh state's value of that name is the phase of a periodic
    #: step cost (a motion matcher's search), which the node staggers across bodies that
    #: start together; None: nothing to stagger.
    stagger: tuple[str, int] | None = None
    _exported: Path | None = field(default=None, repr=False)

    @property
    def streaming(self) -> bool:
        return self.state_spec is not None

    @property
    def graph_key(self) -> str:
        """Hash of everything that determines the exported graph."""
        if self.onnx_path is not None:
            return self.sha256
        h = hashlib.sha256()
        h.update(f"{self.sha256}|{self.window}|{__version__}|{torch.__version__}".encode())
        h.update(np.asarray(self.dummy.lengths, np.float32).tobytes())
        h.update(json.dumps(self.state_spec, sort_keys=True).encode())
        h.update(code_fingerprint(self.module).encode())
        return h.hexdigest()

    def onnx_file(self) -> Path:
        """The model as an ONNX file: the given one, or an export cached by :attr:`graph_key`."""
        if self.onnx_path is not None:
            return self.onnx_path
        if self.module is None:
            raise ValueError(f"{self.name}: a TensorRT plan has no ONNX graph; only the "
                             "tensorrt engine runs it")
        if self._exported is None or not self._exported.is_file():
            from engines.onnx_export import export_onnx
            path = cache_dir("onnx") / f"{self.graph_key[:32]}.onnx"
            if verify(path, {"graph_key": self.graph_key}) is None:
                log.info("exporting %s (%s) to %s", self.name, self.method, path)
                export_onnx(self, path)
                write_sidecar(path, {"graph_key": self.graph_key})
            self._exported = path
        return self._exported


def _check_window(window: int | None, default: int) -> int:
    w = default if window is None else int(window)
    if w < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return w


def resolve_source(model: Anonymizer | str | Path | None = None,
                   dummy: Dummy | str | Path | None = None,
                   window: int | None = DEFAULT_WINDOW) -> ModelSource:
    """Resolve ``model``, ``dummy`` and ``window`` as :func:`engines.create_engine` takes them.

    ``window=None`` uses the model's own (its config, or the window an ``.onnx`` was exported
    for). An ``.onnx`` file fixes its window and dummy: a different explicit one is an error.
    """
    if isinstance(model, str | Path) and str(model).lower().endswith(".onnx"):
        return _onnx_source(Path(model), dummy, window)
    if isinstance(model, str | Path) and str(model).lower().endswith(PLAN_SUFFIXES):
        return _plan_source(Path(model), dummy, window)
    if isinstance(model, Anonymizer):
        anonymizer, name = model, f"{model.method} (in memory)"
        sha = state_sha256(model, model.config)
    else:
        path = shipped_path(model)
        if path is not None:
            try:
                anonymizer = resolve_model(model)
            except CheckpointError as e:
                raise CheckpointError(f"{e}; pass a checkpoint or an exported .onnx instead "
                                      "(model=... / --model)") from None
            name = "default" if model is None else str(model)
        else:
            anonymizer, name, path = load_checkpoint(model), str(model), Path(model)
        sha = file_sha256(path)
    w = _check_window(window, anonymizer.window)
    if "window" in anonymizer.config and int(anonymizer.config["window"]) != w:
        log.warning("%s was configured for window %s; running it on window %d",
                    name, anonymizer.config["window"], w)
    d = as_dummy(dummy)
    anonymizer.eval()
    module = anonymizer.for_dummy(torch.tensor(np.array(d.lengths), dtype=torch.float32)).eval()
    return ModelSource(name=name, method=anonymizer.method, config=dict(anonymizer.config),
                       window=w, dummy=d, sha256=sha, module=module,
                       deterministic="stochastic" not in type(anonymizer).traits,
                       state_spec=_state_spec(module), stagger=_stagger(module))


def _stagger(module: nn.Module) -> tuple[str, int] | None:
    st = getattr(module, "stagger", None)
    return None if st is None else (str(st[0]), int(st[1]))


def _state_spec(module: nn.Module) -> dict[str, tuple[int, ...]] | None:
    """Per-body state shapes of a streaming module (``streaming = True``), else None."""
    if not getattr(module, "streaming", False):
        return None
    return {k: tuple(int(n) for n in shape) for k, (shape, _) in module.state_spec().items()}


def _deterministic(method: str) -> bool:
    """False for a method whose registry entry is ``stochastic``; a file exported by a method
    this install does not know (a plugin's) runs its own graph and counts as deterministic."""
    entry = find_method(method)
    return entry is None or not entry.stochastic


def _check_baked(path: Path, meta: dict[str, Any], dummy: Any, window: int | None) -> Dummy:
    """The dummy baked into an exported file; an explicit different dummy/window is an error."""
    baked = Dummy(meta["dummy"]["name"], np.asarray(meta["dummy"]["lengths"], np.float32))
    if window is not None and int(window) != int(meta["window"]):
        raise ValueError(f"{path} was exported for window {meta['window']}, not {window} "
                         f"(pass window={meta['window']} or None)")
    if dummy is not None:
        wanted = as_dummy(dummy)
        if not np.allclose(wanted.lengths, baked.lengths, atol=1e-6):
            raise ValueError(f"{path} has dummy {baked.name!r} baked in; it cannot run dummy "
                             f"{wanted.name!r} (export the model again with that dummy)")
    return baked


def _onnx_source(path: Path, dummy: Any, window: int | None) -> ModelSource:
    from engines.onnx_export import read_metadata
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX model")
    meta = read_metadata(path)
    baked = _check_baked(path, meta, dummy, window)
    return ModelSource(name=str(path), method=meta["method"], config=meta["config"],
                       window=int(meta["window"]), dummy=baked, sha256=file_sha256(path),
                       onnx_path=path, deterministic=_deterministic(meta["method"]),
                       state_spec=meta.get("state_spec"), stagger=meta.get("stagger"))


def _plan_source(path: Path, dummy: Any, window: int | None) -> ModelSource:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such TensorRT plan")
    record = verify(path)
    if record is None or "dummy" not in record:
        raise ValueError(f"{path}: missing or failing sidecar {path.name}.json (SHA-256 check); "
                         "export the plan again with `streamtmr export --format tensorrt`")
    baked = _check_baked(path, record, dummy, window)
    return ModelSource(name=str(path), method=record["method"], config=record.get("config", {}),
                       window=int(record["window"]), dummy=baked,
                       sha256=record["graph_sha256"], plan_path=path,
                       state_spec={k: tuple(v) for k, v in record["state_spec"].items()}
                       if "state_spec" in record else None,
                       stagger=tuple(record["stagger"]) if record.get("stagger") else None,
                       deterministic=_deterministic(record["method"]))
