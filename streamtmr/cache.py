"""On-disk cache for derived data: exported and compiled models, rendered databases.

The cache lives in ``$STREAMTMR_CACHE`` or ``~/.cache/streamtmr``. Every artefact that is loaded
back (optimised ONNX models, TensorRT plans, a matcher's rendered database) has a sidecar
``<file>.json`` with its SHA-256 and the facts its key was derived from; :func:`verify`
recomputes the hash before a load, so a truncated or tampered file is rebuilt instead of
deserialised. Tensors are cached as safetensors (:func:`cached_tensors`): nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

log = logging.getLogger(__name__)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir(sub: str = "") -> Path:
    """``$STREAMTMR_CACHE`` or ``~/.cache/streamtmr`` (created), optionally a sub-folder."""
    root = Path(os.environ.get("STREAMTMR_CACHE") or Path.home() / ".cache" / "streamtmr")
    path = root / sub if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(*parts: object) -> str:
    """A short hex key from the given facts (order matters)."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:32]


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_sidecar(path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Record ``path``'s SHA-256 (and ``info``) next to it."""
    record = {**info, "file": path.name, "sha256": file_sha256(path)}
    atomic_write(sidecar(path), json.dumps(record, indent=1, sort_keys=True).encode())
    return record


def verify(path: Path, expect: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The sidecar record when ``path`` exists, matches its SHA-256 and ``expect``; else None."""
    try:
        record = json.loads(sidecar(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or not path.is_file():
        return None
    if any(record.get(k) != v for k, v in (expect or {}).items()):
        return None
    if record.get("sha256") != file_sha256(path):
        return None
    return record


def source_sha256(root: str | Path) -> str:
    """SHA-256 over every ``.py`` file under ``root``: their paths and contents."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@cache
def code_sha256() -> str:
    """:func:`source_sha256` of the ``streamtmr`` package: an entry derived by this code is not
    reused by other code."""
    return source_sha256(Path(__file__).resolve().parent)


def cached_tensors(kind: str, facts: dict[str, Any],
                   build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``build()``'s tensors, read back from the cache where an entry of ``kind`` was written
    for the same ``facts`` (JSON-ready; with the package's code and the numpy and torch
    versions) and still verifies; otherwise built, then written. Writing is best effort: a
    cache that cannot be written costs the time, never the result."""
    import numpy as np

    text = json.dumps({"kind": kind, "facts": facts, "code_sha256": code_sha256(),
                       "numpy": np.__version__, "torch": torch.__version__},
                      sort_keys=True, default=str)               # numpy scalars and the like
    record, key = json.loads(text), hashlib.sha256(text.encode()).hexdigest()
    expect = {"facts_sha256": key}
    try:
        path = cache_dir(kind) / f"{key[:32]}.safetensors"
    except OSError as e:
        log.warning("%s: no cache folder (%s); building without a cache", kind, e)
        return build()
    if verify(path, expect) is not None:
        try:
            return load_file(path)
        except (OSError, SafetensorError) as e:
            log.warning("%s: cache entry %s unusable (%s); building it again", kind, path, e)
    tensors = build()
    try:
        atomic_write(path, save({k: v.contiguous() for k, v in tensors.items()}))
        write_sidecar(path, {**expect, **record})
    except OSError as e:
        log.warning("%s: could not cache the result at %s (%s)", kind, path, e)
    return tensors
