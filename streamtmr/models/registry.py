"""Name → anonymizer class. Model modules register themselves with :func:`register`."""

from __future__ import annotations

import importlib
from typing import Any

from streamtmr.models.base import Anonymizer

_REGISTRY: dict[str, type[Anonymizer]] = {}
#: Modules imported on first lookup so that their classes register.
_MODULES = ("streamtmr.models.baselines", "streamtmr.models.tmr", "streamtmr.models.pmr",
            "streamtmr.models.moon")


def register(cls: type[Anonymizer]) -> type[Anonymizer]:
    _REGISTRY[cls.method] = cls
    return cls


def _load_all() -> None:
    for name in _MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real missing dependency, not a module not yet written
                raise


def available() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def model_class(method: str) -> type[Anonymizer]:
    """The class registered under ``method`` (KeyError listing the available ones)."""
    _load_all()
    if method not in _REGISTRY:
        raise KeyError(f"unknown method {method!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[method]


def build_model(config: dict[str, Any]) -> Anonymizer:
    """Build an untrained model from a config dict whose ``method`` key names the class."""
    return model_class(config.get("method"))(config)
