"""The method registry: one entry per anonymizer, timm-style.

A model module declares everything about its method on the class and decorates it with
:func:`register`::

    @register
    class MyRetargeter(Anonymizer):
        method = "mine"                                  # the name configs and the CLI use
        presets = {"tiny": {...}, "small": {...}}        # named sizes ("tiny" is required)
        traits = frozenset({"learned", "windowed"})      # see TRAITS
        trainer = "streamtmr.train.retarget:RetargetCurriculum"  # or None: nothing to train

:class:`MethodEntry` is what the rest of the project reads: the CLI's method choices, the trainer
dispatch (:mod:`streamtmr.train`) and the engines (``stochastic``). The trainer is *named*
(``"module:Class"`` of a :class:`streamtmr.train.curriculum.Curriculum`), never imported here:
models know no training loop; ``streamtmr.train`` resolves the name when it trains.

Every module of :mod:`streamtmr.models` is imported on the first lookup, so a new in-package
model is found without being listed anywhere; a model outside the package registers when its
module is imported (installed plugins name it in the ``streamtmr.methods`` entry-point group).
An unknown name is a :class:`KeyError` naming the close matches and every known method.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Any

from streamtmr.models.base import Anonymizer

#: What a method's ``traits`` may contain, and what each means.
TRAITS: dict[str, str] = {
    "learned": "weights come from training: running it needs a checkpoint",
    "stochastic": "random output: two runs on the same input differ (no exact ONNX parity)",
    "windowed": "maps a window of T frames at once (retarget(source [B, T, 25, 3], ...))",
    "streaming": "steps frame by frame with a per-body state (step(frame, state))",
}
ENTRY_POINT_GROUP = "streamtmr.methods"


@dataclass(frozen=True)
class MethodEntry:
    """One registered method (see the module docstring)."""

    name: str
    model: type[Anonymizer]
    traits: frozenset[str]
    trainer: str | None

    @property
    def presets(self) -> dict[str, dict[str, Any]]:
        return self.model.presets

    @property
    def learned(self) -> bool:
        return "learned" in self.traits

    @property
    def stochastic(self) -> bool:
        return "stochastic" in self.traits


_REGISTRY: dict[str, MethodEntry] = {}
_loaded = False


def _validate(cls: type[Anonymizer]) -> MethodEntry:
    name = getattr(cls, "method", None)
    if not isinstance(name, str) or not name or name == Anonymizer.method:
        raise TypeError(f"{cls.__qualname__}: set a class attribute `method` (its name)")
    traits = frozenset(cls.traits)
    unknown = sorted(traits - set(TRAITS))
    if unknown:
        raise ValueError(f"{name}: unknown trait(s) {unknown}; known: {sorted(TRAITS)}")
    if "tiny" not in cls.presets:
        raise ValueError(f"{name}: presets need a 'tiny' entry (tests), have "
                         f"{sorted(cls.presets)}")
    trainer = cls.trainer
    if trainer is not None and (not isinstance(trainer, str) or trainer.count(":") != 1):
        raise ValueError(f"{name}: trainer must be 'module:Class' or None, got {trainer!r}")
    return MethodEntry(name, cls, traits, trainer)


def _source_file(cls: type) -> str | None:
    try:
        return inspect.getsourcefile(cls)
    except (TypeError, OSError):  # defined in an interactive session: no file
        return None


def register(cls: type[Anonymizer]) -> type[Anonymizer]:
    """Class decorator: enter ``cls`` under ``cls.method`` (a second class of the same name is
    an error; re-registering the same class, e.g. on a module reload or when a module run
    as ``python -m`` is imported by its name too, replaces it)."""
    entry = _validate(cls)
    old = _REGISTRY.get(entry.name)
    same = old is not None and old.model.__qualname__ == cls.__qualname__ and (
        old.model.__module__ == cls.__module__
        or _source_file(old.model) == _source_file(cls) is not None)
    if old is not None and not same:
        raise ValueError(f"method {entry.name!r} is registered twice: "
                         f"{old.model.__module__}.{old.model.__qualname__} and "
                         f"{cls.__module__}.{cls.__qualname__}")
    _REGISTRY[entry.name] = entry
    return cls


def model_modules() -> list[str]:
    """Every module of the :mod:`streamtmr.models` package (imported on first lookup)."""
    import streamtmr.models as package
    return [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for name in model_modules():
        importlib.import_module(name)  # a broken model module fails loudly, never skipped
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
    _loaded = True


def available(trait: str | None = None) -> list[str]:
    """Registered method names (those with ``trait`` only, when given), sorted."""
    _load_all()
    if trait is not None and trait not in TRAITS:
        raise KeyError(f"unknown trait {trait!r}; known: {sorted(TRAITS)}")
    return sorted(n for n, e in _REGISTRY.items() if trait is None or trait in e.traits)


def entry(method: str) -> MethodEntry:
    """The entry of ``method`` (KeyError naming close matches and every known method)."""
    _load_all()
    if method not in _REGISTRY:
        close = difflib.get_close_matches(str(method), list(_REGISTRY), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise KeyError(f"unknown method {method!r}; {hint}available: {sorted(_REGISTRY)}")
    return _REGISTRY[method]


def find(method: str) -> MethodEntry | None:
    """The entry of ``method``, or None where this install does not know it (an exported file
    carries its own graph and may come from a plugin that is not installed here)."""
    _load_all()
    return _REGISTRY.get(method)


def model_class(method: str) -> type[Anonymizer]:
    """The class registered under ``method`` (KeyError listing the available ones)."""
    return entry(method).model


def build_model(config: dict[str, Any]) -> Anonymizer:
    """Build an untrained model from a config dict whose ``method`` key names the class."""
    return model_class(config.get("method"))(config)
