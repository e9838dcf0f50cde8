"""``create_engine``: one entry point for every back end, and the automatic choice.

``engine="auto"`` tries TensorRT → ONNX Runtime CUDA → PyTorch CUDA → ONNX Runtime CPU and logs
(``logging.info``) the choice together with why each earlier back end was skipped. A back end
that is present but fails to build is skipped with its error (logged as a warning).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from engines.base import BACKENDS, BackendUnavailable, Engine
from engines.source import ModelSource, resolve_source
from streamtmr.dummy import Dummy
from streamtmr.models.base import Anonymizer

log = logging.getLogger("engines")

AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime")


def unavailable_reason(backend: str, source: ModelSource | None = None,
                       device: str | None = None) -> str | None:
    """Why ``backend`` cannot run ``source`` here (None when it can, as far as can be told
    without building it)."""
    cpu_only = device is not None and str(device).startswith("cpu")
    if backend not in BACKENDS:
        raise ValueError(f"unknown engine {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
    if source is not None and source.plan_path is not None and backend != "tensorrt":
        return "the model is a TensorRT plan"
    if backend == "tensorrt":
        if cpu_only:
            return f"device {device!r} requested"
        from engines.tensorrt_engine import unavailable_reason as trt_reason
        return trt_reason()
    if backend == "onnxruntime-cuda":
        if cpu_only:
            return f"device {device!r} requested"
        from engines.ort_engine import cuda_unavailable_reason
        return cuda_unavailable_reason()
    if backend in ("torch", "torch-cuda") and source is not None and source.module is None:
        return "the model is an ONNX file (the torch engine needs a checkpoint)"
    if backend == "torch-cuda":
        if cpu_only:
            return f"device {device!r} requested"
        from engines.torch_engine import cuda_unavailable_reason
        return cuda_unavailable_reason()
    return None


def build(backend: str, source: ModelSource, max_batch: int = 8, device: str | None = None,
          **options: Any) -> Engine:
    """Build ``backend`` for ``source`` (raises :class:`BackendUnavailable` when it cannot)."""
    if (reason := unavailable_reason(backend, source, device)) is not None:
        raise BackendUnavailable(f"{backend}: {reason}")
    if backend == "tensorrt":
        from engines.tensorrt_engine import TensorRTEngine
        return TensorRTEngine(source, max_batch=max_batch, device=device, **options)
    if backend in ("onnxruntime", "onnxruntime-cuda"):
        from engines.ort_engine import OrtEngine
        cuda = backend == "onnxruntime-cuda"
        device_id = _cuda_index(device) if cuda else 0
        return OrtEngine(source, max_batch=max_batch, cuda=cuda, device_id=device_id,
                         **options)
    from engines.torch_engine import TorchEngine
    if backend == "torch-cuda":
        device = device if device is not None and str(device).startswith("cuda") else "cuda"
    return TorchEngine(source, max_batch=max_batch, device=device, **options)


def _cuda_index(device: str | None) -> int:
    if device is None or str(device) == "cuda":
        return 0
    try:
        return int(str(device).split(":", 1)[1])
    except (IndexError, ValueError):
        raise ValueError(f"device must be cuda or cuda:N, got {device!r}") from None


def create_engine(engine: str = "auto",
                  model: Anonymizer | str | Path | None = None,
                  dummy: Dummy | str | Path | None = None,
                  window: int | None = 64,
                  max_batch: int = 8,
                  device: str | None = None,
                  **options: Any) -> Engine:
    """Build the engine that runs ``model`` for ``dummy`` on windows of ``window`` frames.

    engine: "auto" or one of ``BACKENDS``. model: None/"default" (the shipped checkpoint), a
    checkpoint path, an exported ``.onnx`` (or TensorRT plan) file, or an Anonymizer. dummy:
    None/"default", a dummy JSON path or a :class:`~streamtmr.dummy.Dummy`. ``options`` go to
    the back end (e.g. ``threads`` and ``io_binding`` for ONNX Runtime, ``cuda_graphs`` and
    ``compile`` for torch, ``fp16`` for TensorRT).
    """
    if engine != "auto" and engine not in BACKENDS:
        raise ValueError(f"unknown engine {engine!r}; choose one of auto, {', '.join(BACKENDS)}")
    unknown = set(options) - set().union(*_BACKEND_OPTIONS.values())
    if unknown:
        raise TypeError(f"create_engine: unknown option(s) {sorted(unknown)}")
    source = resolve_source(model, dummy, window)
    if engine != "auto":
        return build(engine, source, max_batch=max_batch, device=device, **options)
    skipped: list[str] = []
    for backend in AUTO_ORDER:
        reason = unavailable_reason(backend, source, device)
        if reason is None:
            try:
                chosen = build(backend, source, max_batch=max_batch, device=device,
                               **_options_for(backend, options))
            except Exception as e:  # a present back end that fails to build: try the next
                log.warning("engine auto: %s failed to start (%s)", backend, e)
                reason = f"failed to start ({e})"
            else:
                why = "; ".join(skipped) if skipped else "first choice"
                log.info("engine auto: chose %s on %s for %s (skipped: %s)", chosen.name,
                         chosen.device, source.name, why)
                return chosen
        skipped.append(f"{backend}: {reason}")
    raise BackendUnavailable("no engine can run this model: " + "; ".join(skipped))


_BACKEND_OPTIONS = {"tensorrt": {"fp16", "cuda_graphs"},
                    "onnxruntime": {"threads", "io_binding", "cache"},
                    "onnxruntime-cuda": {"threads", "io_binding", "cache"},
                    "torch": {"compile", "threads"},
                    "torch-cuda": {"compile", "cuda_graphs", "threads"}}


def _options_for(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` that ``backend`` takes (auto passes each what applies)."""
    return {k: v for k, v in options.items() if k in _BACKEND_OPTIONS[backend]}
