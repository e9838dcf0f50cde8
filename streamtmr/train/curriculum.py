"""Curricula: how a method trains, as ordered stages and one optimisation step.

The trainer (:mod:`streamtmr.train.trainer`) is method-agnostic. A method plugs in by
subclassing :class:`Curriculum` and naming it in its model's registry entry
(``trainer = "module:Class"``, see :mod:`streamtmr.models.registry`):

- :meth:`Curriculum.trainable` — the modules a stage trains (everything else is frozen);
- :meth:`Curriculum.losses` — the unweighted loss terms of one batch;
- :meth:`Curriculum.optimizers` — fresh optimisers per stage (default: one Adam);
- :meth:`Curriculum.step` — one update (default: ``Σ λ·loss``, backward, clip, step).

Methods with several optimisers (PMR's classifier/generator stages) or min/max steps
(Moon et al.) override :meth:`optimizers` and :meth:`step`; the loop stays the same.
"""

from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from streamtmr.train.config import Config, ConfigError, ModelConfig, TrainConfig


@dataclass(frozen=True)
class Stage:
    """One stage of a curriculum, resolved from the config."""

    position: int  # 0-based order in the run
    name: str
    iterations: int
    weights: dict[str, float]
    lr: float

    @property
    def active(self) -> dict[str, float]:
        """The λ of the terms that contribute (nonzero weight)."""
        return {k: w for k, w in self.weights.items() if w != 0}


@dataclass(frozen=True)
class DataInfo:
    """What a curriculum may know about the training data when the model is built."""

    labels: dict[str, list[int]]  # column → sorted raw label values (class i = labels[col][i])
    window: int


class _LossNet(nn.Module):
    """Routes a curriculum's loss computation through ``forward`` so DDP can wrap it."""

    def __init__(self, model: nn.Module, fn: Callable[..., dict[str, torch.Tensor]]):
        super().__init__()
        self.model = model
        self._fn = fn

    def forward(self, batch: dict[str, torch.Tensor], stage: Stage) -> dict[str, torch.Tensor]:
        return self._fn(self.model, batch, stage)


class Curriculum:
    """Base class of a method's training recipe (see the module docstring)."""

    #: Stage names the method understands (config ``train.stages[i].name``).
    stage_names: ClassVar[tuple[str, ...]] = ()
    #: Loss names the method's λ tables may contain.
    loss_names: ClassVar[frozenset[str]] = frozenset()
    #: True for methods that train several networks against each other (critics, classifier
    #: ensembles): they run :meth:`run_own_loop` instead of the generic trainer.
    own_loop: ClassVar[bool] = False
    #: True when :meth:`augment` implements the style augmentation (``data.augment_*``).
    augments: ClassVar[bool] = False

    @classmethod
    def run_own_loop(cls, config: Config, data_dir: str | Path,
                     out_dir: str | Path | None = None) -> Path:
        """Train single-process in the method's own loop; returns the model's checkpoint."""
        raise NotImplementedError(f"{cls.__name__} trains in the generic loop")

    def __init__(self, model: nn.Module, config: Config):
        self.model = model
        self.config = config
        self.stages = self.resolve_stages(config.train, config.source)

    # -- configuration ---------------------------------------------------------------------------

    @classmethod
    def model_config(cls, model: ModelConfig, data: DataInfo) -> dict[str, Any]:
        """The config dict the model is built from (preset + overrides + data-derived sizes)."""
        from streamtmr.models.registry import model_class
        try:
            model_cls = model_class(model.method)
        except KeyError as e:
            raise ConfigError(f"model.method: {e.args[0]}") from None
        base: dict[str, Any] = {}
        if model.preset is not None:
            if model.preset not in model_cls.presets:
                raise ConfigError(f"model.preset: {model.method} has no preset {model.preset!r} "
                                  f"(have {sorted(model_cls.presets)})")
            base = dict(model_cls.presets[model.preset])
        return {"method": model.method, **base, **model.overrides}

    def default_weights(self, name: str) -> dict[str, float] | None:
        """The method's λ table for a stage name (used when the config gives none)."""
        return None

    def resolve_stages(self, train: TrainConfig, source: str) -> list[Stage]:
        stages = []
        for i, s in enumerate(train.stages):
            key = f"{source}: train.stages[{i}]"
            if self.stage_names and s.name not in self.stage_names:
                close = difflib.get_close_matches(s.name, self.stage_names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"have {list(self.stage_names)}"
                raise ConfigError(f"{key}.name: unknown stage {s.name!r} ({hint})")
            weights = s.weights if s.weights is not None else self.default_weights(s.name)
            if weights is None:
                raise ConfigError(f"{key}.weights: required (the method has no default table)")
            for k in weights:
                if self.loss_names and k not in self.loss_names:
                    close = difflib.get_close_matches(k, sorted(self.loss_names), n=1)
                    hint = (f"did you mean {close[0]!r}?" if close
                            else f"have {sorted(self.loss_names)}")
                    raise ConfigError(f"{key}.weights.{k}: unknown loss ({hint})")
            if not any(w != 0 for w in weights.values()):
                raise ConfigError(f"{key}.weights: every λ is zero, the stage would train nothing")
            stages.append(Stage(i, s.name, s.iterations, dict(weights),
                                s.lr if s.lr is not None else train.lr))
        return stages

    # -- per batch -------------------------------------------------------------------------------

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Turn a loader batch (store arrays + encoded labels) into the model's batch."""
        return batch

    def augment(self, batch: dict[str, torch.Tensor], stage: Stage | None = None,
                ) -> dict[str, torch.Tensor]:
        """Training-step augmentation of a prepared batch for ``stage`` (validation never
        sees it)."""
        return batch

    def trainable(self, stage: Stage) -> list[nn.Module]:
        raise NotImplementedError

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], stage: Stage,
               ) -> dict[str, torch.Tensor]:
        """Unweighted scalar loss terms of one batch (one per active λ)."""
        raise NotImplementedError

    def optimizers(self, stage: Stage, params: list[nn.Parameter],
                   ) -> dict[str, torch.optim.Optimizer]:
        t = self.config.train
        return {"adam": torch.optim.Adam(params, lr=stage.lr, betas=tuple(t.betas),
                                         weight_decay=t.weight_decay)}

    def step(self, net: nn.Module, batch: dict[str, torch.Tensor], stage: Stage,
             optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        """One update. ``net(batch, stage)`` returns :meth:`losses` (through DDP when used)."""
        (opt,) = optimizers.values()
        terms = net(batch, stage)
        missing = set(stage.active) - set(terms)
        if missing:
            raise RuntimeError(f"{type(self).__name__}: stage {stage.name!r} has λ for "
                               f"{sorted(missing)} but the model returned {sorted(terms)}")
        total = sum(stage.weights[k] * terms[k] for k in stage.active)
        logs = {"loss": float(total.detach()), "grad_norm": self._opt_step(opt, total)}
        logs.update({k: float(v.detach()) for k, v in terms.items()})
        return logs

    def _opt_step(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
        """Backpropagate ``loss``, clip (``train.grad_clip``), step; returns the gradient norm."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = clip_gradients(opt, self.config.train.grad_clip)
        opt.step()
        return norm


def lr_factor(step: int, iterations: int, schedule: str, warmup: int = 0,
              min_ratio: float = 0.05) -> float:
    """Multiplier of a stage's learning rate at ``step`` (0-based) of ``iterations``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, iterations - warmup - 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def clip_gradients(opt: torch.optim.Optimizer, max_norm: float) -> float:
    """Clip the global gradient norm of an optimiser's parameters; returns the norm before."""
    params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    if not params:
        return 0.0
    if max_norm > 0:
        return float(nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))


def unique_parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """Parameters of ``modules`` in a stable order, each once."""
    seen: set[int] = set()
    out = []
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


AUGMENT_KEYS = ("augment_posture", "augment_amplitude", "augment_bones", "augment_lag")


def check_supported(cfg: Config, curriculum: type[Curriculum]) -> None:
    """Settings the method's curriculum must implement: style augmentation (ConfigError)."""
    asked = [k for k in AUGMENT_KEYS if getattr(cfg.data, k)]
    if asked and not curriculum.augments:
        from streamtmr.models.registry import available
        able = [m for m in available() if _trainer_augments(m)]
        raise ConfigError(f"{cfg.source}: data.{asked[0]}: style augmentation is implemented "
                          f"for {able}, not {cfg.model.method!r}")


def _trainer_augments(method: str) -> bool:
    try:
        return curriculum_class(method).augments
    except ConfigError:  # nothing to train
        return False


def curriculum_class(method: str) -> type[Curriculum]:
    """The curriculum the method's registry entry names (``trainer = "module:Class"``)."""
    from streamtmr.models.registry import available, entry
    try:
        e = entry(method)
    except KeyError as err:
        raise ConfigError(f"model.method: {err.args[0]}") from None
    if e.trainer is None:
        trainable = [m for m in available() if entry(m).trainer is not None]
        raise ConfigError(f"model.method: {method!r} has nothing to train (trainable: "
                          f"{trainable})")
    module, name = e.trainer.split(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"model.method: {method}'s trainer {e.trainer!r} cannot be loaded "
                          f"({type(err).__name__}: {err})") from None
    if not (isinstance(cls, type) and issubclass(cls, Curriculum)):
        raise ConfigError(f"model.method: {method}'s trainer {e.trainer!r} is not a Curriculum")
    return cls
