"""The models a benchmark compares, named on the command line.

A model spec is one of

* ``default`` — the shipped default model (``streamtmr/assets/default_model.safetensors``);
  while the package has none, DisentangledTMR ``small`` with seeded random weights stands in
  and is labelled so (latency does not depend on the weights);
* another shipped model's name (``matcher``: ``streamtmr.models.checkpoint.SHIPPED``);
* ``METHOD`` or ``METHOD-PRESET`` — an untrained model from its preset, e.g. ``tmr-small``,
  ``tmr-paper``, ``pmr-small``, ``moon-resnet-small``, ``naive`` (without a preset: ``small``
  where the method has one, else ``tiny``);
* a path to a checkpoint (``.safetensors``) or an exported ``.onnx`` file.

Untrained models are seeded, so their weights — and the cached ONNX export keyed by their
content hash — are the same in every run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import DEFAULT_MODELS
from streamtmr.models.base import Anonymizer

__all__ = ["DEFAULT_MODELS", "BenchModel", "ModelSpecError", "resolve_model_spec"]
SEED = 0


class ModelSpecError(ValueError):
    """A model spec that names no method, preset or file (the message lists what exists)."""


@dataclass
class BenchModel:
    """A resolved model spec: what engines are built from, and how to label it."""

    spec: str
    label: str
    note: str
    method: str
    preset: str | None
    weights: str            # "trained", "random (seed 0)" or "file"
    window: int
    params: int | None
    model: Anonymizer | str  # an Anonymizer, or a path / "default" for create_engine
    sha256: str = ""         # of the weights file, or of config + weights in memory

    @property
    def ident(self) -> str:
        """The exact model: label and sha256 prefix (what every recorded row names)."""
        return f"{self.label} sha256:{self.sha256[:12]}"

    def for_engine(self) -> Anonymizer | str:
        """What to hand to :func:`engines.create_engine`: a private copy of an in-memory model
        (a CUDA engine moves its module's parameters to the GPU)."""
        return copy.deepcopy(self.model) if isinstance(self.model, Anonymizer) else self.model

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "label": self.label, "note": self.note,
                "method": self.method,
                "preset": self.preset, "weights": self.weights, "window": self.window,
                "params": self.params, "sha256": self.sha256, "ident": self.ident}


def _params(model: Anonymizer) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _from_preset(spec: str, method: str, preset: str | None) -> BenchModel:
    from streamtmr.models.registry import available, model_class
    methods = available()
    if method not in methods:
        raise ModelSpecError(f"--models {spec}: no method {method!r} (have {', '.join(methods)})")
    cls = model_class(method)
    if preset is None:
        preset = "small" if "small" in cls.presets else "tiny"
    if preset not in cls.presets:
        raise ModelSpecError(f"--models {spec}: {method} has no preset {preset!r} "
                             f"(have {', '.join(sorted(cls.presets))})")
    torch.manual_seed(SEED)
    model = cls.from_preset(preset).eval()
    from engines.source import state_sha256
    return BenchModel(spec, f"{method}-{preset}", f"{method} preset {preset!r}, untrained",
                      method, preset, f"random (seed {SEED})", model.window, _params(model),
                      model, state_sha256(model, model.config))


def default_model_present() -> bool:
    from streamtmr.models.checkpoint import default_checkpoint_path
    return default_checkpoint_path().is_file()


def resolve_model_spec(spec: str) -> BenchModel:
    """Resolve one spec (see the module docstring); raises :class:`ModelSpecError`."""
    from streamtmr.models.registry import available
    spec = spec.strip()
    if spec == "default":
        if not default_model_present():
            m = _from_preset(spec, "tmr", "small")
            m.label = "default"
            m.note = ("stand-in: tmr-small with random weights (no shipped default model yet; "
                      "latency does not depend on the weights)")
            return m
    from streamtmr.models.checkpoint import shipped_path
    if shipped_path(spec) is not None:
        from streamtmr.cache import file_sha256
        from streamtmr.models.checkpoint import resolve_model
        model, path = resolve_model(spec), shipped_path(spec)
        return BenchModel(spec, spec, f"the shipped {model.method} model "
                          f"({path.name})", model.method, None, "trained",
                          model.window, _params(model), spec, file_sha256(path))
    path = Path(spec)
    if spec.lower().endswith((".onnx", ".safetensors", ".plan", ".engine", ".trt")):
        if not path.is_file():
            raise ModelSpecError(f"--models {spec}: no such file")
        if spec.lower().endswith(".safetensors"):
            from streamtmr.models.checkpoint import load_checkpoint
            model = load_checkpoint(path)
            from streamtmr.cache import file_sha256
            return BenchModel(spec, path.name, f"{model.method} checkpoint {path}",
                              model.method, None, "file", model.window, _params(model),
                              str(path), file_sha256(path))
        from engines import resolve_source
        source = resolve_source(str(path), None, None)
        return BenchModel(spec, path.name, f"{source.method} exported model {path}",
                          source.method, None, "file", source.window, None, str(path),
                          source.sha256)
    methods = available()
    if spec in methods:
        return _from_preset(spec, spec, None)
    method, _, preset = spec.rpartition("-")
    if method in methods:
        return _from_preset(spec, method, preset)
    raise ModelSpecError(f"--models {spec}: not a method, METHOD-PRESET or model file "
                         f"(methods: {', '.join(methods)}; presets: tiny, small, paper)")
