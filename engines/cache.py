"""On-disk cache for exported and compiled models, with SHA-256 sidecars.

The cache lives in ``$STREAMTMR_CACHE`` or ``~/.cache/streamtmr``. Every artefact that is loaded
back into a runtime (optimised ONNX models, TensorRT plans) has a sidecar ``<file>.json`` with
its SHA-256 and the facts its key was derived from; :func:`verify` recomputes the hash before a
load, so a truncated or tampered file is rebuilt instead of deserialised.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from streamtmr.models.checkpoint import file_sha256


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
