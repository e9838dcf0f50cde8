"""``create_engine``: one entry point for every back end, and the automatic choice.

``engine="auto"`` tries TensorRT → ONNX Runtime CUDA → PyTorch CUDA → ONNX Runtime CPU and logs
(``logging.info``) the choice together with why each earlier back end was skipped. A back end
that is present but fails to build is skipped with its error (logged as a warning).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import BACKENDS, BackendUnavailable, Engine, EngineError
from engines.source import ModelSource, resolve_source
from engines.triton_engine import SCHEME as TRITON_SCHEME
from streamtmr.dummy import Dummy
from streamtmr.models.base import Anonymizer

log = logging.getLogger("engines")

AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime")
#: "auto" for whole recorded tracks of a streaming model (``tracks=True``: ``anonymize``): the
#: back ends that run its parallel form, every frame computed once (``Engine.run_tracks``).
TRACKS_ORDER = ("torch-cuda", "torch")


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
                  tracks: bool = False,
                  **options: Any) -> Engine:
    """Build the engine that runs ``model`` for ``dummy`` on windows of ``window`` frames.

    engine: "auto" or one of ``BACKENDS``. model: None/"default" (the shipped checkpoint), a
    checkpoint path, an exported ``.onnx`` (or TensorRT plan) file, or an Anonymizer. dummy:
    None/"default", a dummy JSON path or a :class:`~streamtmr.dummy.Dummy`. ``options`` go to
    the back end (e.g. ``threads``, ``io_binding`` and ``single`` for ONNX Runtime,
    ``cuda_graphs`` and ``compile`` for torch, ``fp16`` for TensorRT). ``triton://HOST:PORT``
    connects to a ``streamtmr serve`` server (:mod:`engines.triton_engine`). ``tracks``: the
    engine will anonymize whole recorded tracks (``run_tracks``), so "auto" picks, for a
    streaming model, a back end with its parallel form (:data:`TRACKS_ORDER`) over a stepping
    one.
    """
    if str(engine).startswith(TRITON_SCHEME):
        from engines.triton_engine import open_triton
        return open_triton(engine, model, dummy, window, max_batch, **options)
    if engine != "auto" and engine not in BACKENDS:
        raise ValueError(f"unknown engine {engine!r}; choose one of auto, {', '.join(BACKENDS)}"
                         f" or {TRITON_SCHEME}HOST:PORT")
    unknown = set(options) - set().union(*_BACKEND_OPTIONS.values())
    if unknown:
        raise TypeError(f"create_engine: unknown option(s) {sorted(unknown)}")
    source = resolve_source(model, dummy, window)
    if engine != "auto":
        return build(engine, source, max_batch=max_batch, device=device, **options)
    skipped: list[str] = []
    for backend in (TRACKS_ORDER if tracks and source.streaming else AUTO_ORDER):
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
                    "onnxruntime": {"threads", "io_binding", "cache", "single"},
                    "onnxruntime-cuda": {"threads", "io_binding", "cache", "single"},
                    "torch": {"compile", "threads"},
                    "torch-cuda": {"compile", "cuda_graphs", "threads"}}


def _options_for(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` that ``backend`` takes (auto passes each what applies)."""
    return {k: v for k, v in options.items() if k in _BACKEND_OPTIONS[backend]}


class ModelRefused(EngineError):
    """A model file failed a check of :func:`open_engine` (the message says which)."""


#: Largest model file opened (checkpoint, ONNX or plan).
MAX_MODEL_BYTES = 512 * 1024 * 1024


def _model_path(model: Anonymizer | str | Path | None) -> Path | None:
    """The file the weights come from (a shipped model's file for its name or None)."""
    if isinstance(model, Anonymizer):
        return None
    from streamtmr.models.checkpoint import model_path
    return model_path(model)


def check_files(model: Anonymizer | str | Path | None,
                dummy: Dummy | str | Path | None = None) -> Path | None:
    """Every check on the model and dummy files before anything is loaded: present, not a
    pickle, under the size caps. Returns the model's path (None for an in-memory model)."""
    from streamtmr.model_files import (
        MAX_DUMMY_BYTES,
        FileRefused,
        check_file_size,
        check_model_file,
    )

    path = _model_path(model)
    try:
        if isinstance(dummy, str | Path) and str(dummy) != "default":
            check_file_size(dummy, MAX_DUMMY_BYTES, "dummy")
        if path is not None:
            if not path.is_file():
                raise ModelRefused(f"model {path}: no such file")
            check_model_file(path)
            check_file_size(path, MAX_MODEL_BYTES, "model")
    except FileRefused as e:
        raise ModelRefused(str(e)) from None
    return path


def leak_score(engine: Engine, clip: np.ndarray | None = None) -> float:
    """Median bone-direction angle (degrees) between ``engine``'s output and its input on the
    calibration clip (:func:`streamtmr.leak_guard.calibration_clip`); NaN when the output is
    not finite."""
    from streamtmr import leak_guard

    clip = leak_guard.calibration_clip() if clip is None else clip
    if engine.streaming:
        state = engine.init_state(len(clip))
        outs = []
        for t in range(clip.shape[1]):
            y, state = engine.step(np.ascontiguousarray(clip[:, t]), state)
            outs.append(y)
        out, src = np.stack(outs, axis=1), clip
    else:
        T = engine.window
        L = clip.shape[1]
        seqs = clip if L >= T else np.concatenate(
            [clip, np.repeat(clip[:, -1:], T - L, axis=1)], axis=1)
        starts = sorted({0, seqs.shape[1] - T})
        src = np.ascontiguousarray(np.concatenate([seqs[:, s:s + T] for s in starts]))
        out = engine.run(src)
    if not np.isfinite(out).all():
        return float("nan")
    return float(np.median(leak_guard.frame_angles(out, src)))


def open_engine(engine: str = "auto", model: Anonymizer | str | Path | None = None,
                dummy: Dummy | str | Path | None = None, window: int | None = 64,
                max_batch: int = 8, device: str | None = None, *,
                allow_unevaluated: bool = False, leak_guard: bool = True,
                warmup: bool = True, tracks: bool = False, **options: Any) -> Engine:
    """The guarded door to an engine, used by every entry point (run, anonymize, export, the
    embedding API, bench). Checks, in order: the files (:func:`check_files`: pickles refused,
    size caps), the privacy card bound to the weights' SHA-256 (:mod:`engines.card`; without
    one the model is refused unless ``allow_unevaluated``, which is logged and sets
    ``engine.unevaluated``), then builds the engine (:func:`create_engine`), warms it up and
    runs the leak guard's start-up check: a model whose output tracks its input on the
    calibration clip (median angle below :data:`streamtmr.leak_guard.MARGIN_DEG`) is refused.
    ``leak_guard=False`` skips that check (the evaluation's pass-through baselines only);
    ``tracks`` is :func:`create_engine`'s (offline work on whole tracks).
    Every refusal is a :class:`ModelRefused` with a one-line message.
    """
    from engines.card import CardError, find_card
    from streamtmr.leak_guard import MARGIN_DEG

    # triton://: the server checked its files and sends the card bound to what it serves
    remote = create_engine(engine, model=model, dummy=dummy, window=window,
                           max_batch=max_batch, **options) if _is_remote(engine) else None
    path = None if remote else check_files(model, dummy)
    try:
        card = remote.card if remote else find_card(path) if path is not None else None
    except (CardError, OSError) as e:  # a card for other weights describes nothing here
        if not allow_unevaluated:
            raise ModelRefused(f"{e}; pass --allow-unevaluated to run it anyway") from None
        log.warning("%s: ignored (--allow-unevaluated)", e)
        card = None
    what = remote.url if remote else "the in-memory model" if path is None else str(path)
    if card is None and not allow_unevaluated:
        if remote:
            remote.close()
        raise ModelRefused(f"model {what}: no privacy card bound to its weights (see "
                           "engines/card.py); pass --allow-unevaluated to run it anyway "
                           "(every output message is then marked unevaluated)")
    if card is None:
        log.warning("model %s runs WITHOUT a privacy card (--allow-unevaluated): every output "
                    "message is marked \"unevaluated\": true", what)
    eng = remote or create_engine(engine, model=model, dummy=dummy, window=window,
                                  max_batch=max_batch, device=device, tracks=tracks, **options)
    eng.card, eng.unevaluated = card, card is None
    try:
        if warmup:
            eng.warmup()
        if leak_guard:
            score = leak_score(eng)
            if not score >= MARGIN_DEG:
                raise ModelRefused(
                    f"leak guard: model {what} follows its input on the calibration clip "
                    f"(median bone-direction angle {score:.2f}° < margin {MARGIN_DEG}°); "
                    "refusing to publish a pass-through model")
    except BaseException:
        eng.close()
        raise
    return eng


def _is_remote(engine: str) -> bool:
    return str(engine).startswith(TRITON_SCHEME)
