"""Inference back ends behind one interface: TensorRT, ONNX Runtime, PyTorch; ONNX export.

Typical use::

    from engines import create_engine
    engine = create_engine("auto", model="default", dummy="default", window=64, max_batch=8)
    engine.warmup((1, 8))
    y = engine.run(windows)            # float32 [B, T, 25, 3] -> [B, T, 25, 3]
    newest = engine.run_latest(windows, k=1)
"""

from engines.base import BACKENDS, BackendUnavailable, Engine, EngineError, check_windows
from engines.select import (
    AUTO_ORDER,
    ModelRefused,
    create_engine,
    open_engine,
    unavailable_reason,
)
from engines.source import ModelSource, resolve_source

__all__ = ["AUTO_ORDER", "BACKENDS", "BackendUnavailable", "Engine", "EngineError",
           "ModelRefused", "ModelSource", "check_windows", "create_engine", "open_engine",
           "resolve_source", "unavailable_reason"]
