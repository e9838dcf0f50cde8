"""Cascade: streaming anonymizers in series, each stage fed the previous stage's output.

The use in view: the learned default first (it removes most of the person from the motion),
then motion matching (every output pose becomes a pose of the dummy's own neutral motion,
chosen by the first stage's output). The second stage sees only what the first one would
publish, so the cascade reveals no more of the person than the first stage does, except
through what the second stage takes from its input directly (for motion matching: the root
path, the heading and the floor, all of them already the first stage's output).

Build one from checkpoints with :func:`save_chain` (``streamtmr chain A B --out C``); the
result is an ordinary streamtmr checkpoint whose config lists the stages' configs and whose
weights are the stages' weights under ``stages.<i>.``. Every stage must be a streaming model;
the cascade steps them frame by frame with one state per stage (keys ``s<i>.<name>``), and
``forward`` over a window is each stage's track function in turn (the same function).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from streamtmr.models.base import Anonymizer
from streamtmr.models.registry import build_model, model_class, register

#: The tiny preset: the tiny streaming TMR, then the tiny motion matcher (tests).
_TINY = {"stages": [{"method": "tmr-stream", "preset": "tiny"},
                    {"method": "motion_match", "preset": "tiny"}]}


def _stage_config(spec: dict[str, Any]) -> dict[str, Any]:
    """A stage's full config: a ``{"method", "preset"}`` pair expands to the preset's."""
    spec = dict(spec)
    preset = spec.pop("preset", None)
    if preset is None:
        return spec
    cls = model_class(spec["method"])
    if preset not in cls.presets:
        raise ValueError(f"cascade stage {spec['method']}: no preset {preset!r}")
    return {"method": cls.method, **cls.presets[preset], **spec}


@register
class Cascade(Anonymizer):
    """Streaming anonymizers in series (module docstring)."""

    method = "cascade"
    traits = frozenset({"learned", "streaming"})
    trainer = None  # its stages are trained (or built) on their own
    presets = {"tiny": _TINY}

    def __init__(self, config: dict[str, Any] | None = None):
        cfg = dict(config or {})
        specs = cfg.get("stages")
        if not isinstance(specs, list) or len(specs) < 2:
            raise ValueError("cascade: config.stages must list at least two stage configs")
        stages = [build_model(_stage_config(s)) for s in specs]
        flat = [s for s in stages if "streaming" not in model_class(s.method).traits]
        if flat:
            raise ValueError(f"cascade: every stage must be a streaming model; "
                             f"{flat[0].method} is not")
        cfg["stages"] = [dict(s.config) for s in stages]
        cfg.setdefault("window", stages[0].window)
        super().__init__({**cfg, "method": self.method})
        self.stages = nn.ModuleList(stages)

    def retarget(self, source: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
        x = source
        for stage in self.stages:
            x = stage.retarget(x, target_lengths)
        return x

    def for_dummy(self, dummy_lengths) -> CascadeDummy:
        return CascadeDummy([s.for_dummy(dummy_lengths) for s in self.stages])


def stage_key(i: int, name: str) -> str:
    """The key of stage ``i``'s state entry ``name`` in a cascade's state."""
    return f"s{i}.{name}"


def last_stage_key(model: nn.Module, name: str) -> str:
    """The key of the last stage's state entry ``name`` in ``model``'s state: prefixed in a
    cascade (:class:`Cascade`), ``name`` itself in a single model."""
    stages = getattr(model, "stages", None)
    return name if stages is None else stage_key(len(stages) - 1, name)


class CascadeDummy(nn.Module):
    """The cascade for one fixed dummy: what engines run and export (streaming)."""

    streaming = True

    def __init__(self, stages: list[nn.Module]):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self._keys = list(self.state_spec())  # the state's order, fixed once (hot path)
        # the search phase of the last stage that has one (a motion matcher's)
        staggers = [(stage_key(i, st[0]), st[1]) for i, s in enumerate(stages)
                    if (st := getattr(s, "stagger", None)) is not None]
        self.stagger = staggers[-1] if staggers else None

    @property
    def fp16_plan(self) -> bool:
        """An fp16 TensorRT plan only if every stage allows one."""
        return all(getattr(s, "fp16_plan", True) for s in self.stages)

    def state_spec(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        spec = {}
        for i, s in enumerate(self.stages):
            spec.update({stage_key(i, k): v for k, v in s.state_spec().items()})
        # "t" (frames of the track so far) is the engines' contract: the first stage's
        t = stage_key(0, "t")
        return {"t": spec[t], **{k: v for k, v in spec.items() if k != t}}

    def _split(self, state: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
        prefix = stage_key(i, "")
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if i == 0:
            own["t"] = state["t"]
        return own

    def init_state(self, batch: int) -> dict[str, torch.Tensor]:
        state = {}
        for i, s in enumerate(self.stages):
            state.update({stage_key(i, k): v for k, v in s.init_state(batch).items()})
        state["t"] = state.pop(stage_key(0, "t"))
        return {k: state[k] for k in self._keys}

    def step(self, frame: torch.Tensor, state: dict[str, torch.Tensor]):
        new: dict[str, torch.Tensor] = {}
        x = frame
        for i, s in enumerate(self.stages):
            x, st = s.step(x, self._split(state, i))
            new.update({stage_key(i, k): v for k, v in st.items()})
        new["t"] = new.pop(stage_key(0, "t"))
        return x, {k: new[k] for k in self._keys}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for s in self.stages:
            x = s(x)
        return x


def _path(spec: str | Path) -> Path:
    """A checkpoint path, or a shipped model's name (``default``, ``matcher``)."""
    from streamtmr.models.checkpoint import model_path

    return model_path(spec)


def chain(checkpoints: list[str | Path]) -> Cascade:
    """A cascade of the models in ``checkpoints`` (first → last; ``default``: the shipped
    default), weights included."""
    from streamtmr.models.checkpoint import load_checkpoint

    models = [load_checkpoint(_path(p)) for p in checkpoints]
    cascade = Cascade({"stages": [dict(m.config) for m in models]})
    for stage, m in zip(cascade.stages, models):
        stage.load_state_dict(m.state_dict(), strict=True)
    return cascade.eval()


def save_chain(checkpoints: list[str | Path], out: str | Path) -> Path:
    """Chain ``checkpoints`` (first → last) and save the cascade at ``out``. Its training
    record is the union of the stages': the cascade saw every person any stage saw (the
    evaluation refuses it on those people)."""
    from streamtmr.cache import file_sha256
    from streamtmr.models.checkpoint import (
        read_metadata,
        save_checkpoint,
        shipped_path,
    )

    names = [str(p) for p in checkpoints]  # a shipped model is recorded by its name
    checkpoints = [_path(p) for p in checkpoints]
    cascade = chain(checkpoints)
    subjects: set[int] = set()
    real: set[str] = set()
    stores = []
    for path in checkpoints:
        data = read_metadata(path)[1].get("data") or {}
        subjects |= {int(s) for s in data.get("train_subjects") or []}
        real |= set(data.get("real_subjects") or [])
        stores.append(data.get("store"))
    extra = {"data": {"store": stores[0], "stores": stores, "train_subjects": sorted(subjects),
                      "real_subjects": sorted(real)},
             "stages": [n if shipped_path(n) is not None else str(p)
                        for n, p in zip(names, checkpoints)],
             "stage_sha256": [file_sha256(p) for p in checkpoints]}
    return save_checkpoint(out, cascade, extra)
