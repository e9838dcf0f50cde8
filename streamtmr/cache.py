"""On-disk cache for derived data: exported and compiled models, rendered databases.

The cache lives in ``$STREAMTMR_CACHE`` or ``~/.cache/streamtmr``. Every artefact that is loaded
back (optimised ONNX models, TensorRT plans, a matcher's rendered database) has a sidecar
``<file>.json`` with its SHA-256 and the facts its key was derived from; :func:`verify`
recomputes the hash before a load, so a truncated or tampered file is rebuilt instead of
deserialised. Tensors are cached as safetensors (:func:`cached_tensors`): nothing is unpickled.

The cache is bounded the way ccache bounds its own: ``$STREAMTMR_CACHE_MAX_SIZE`` (default 5G;
``0`` for no bound). Every verified read marks its entry as used (the sidecar's mtime), and
every write drops the least recently used entries until the cache fits (:func:`trim`);
``streamtmr cache`` shows, prunes or clears it by hand. Only what this module wrote is ever
removed: entries with a sidecar, and the partial files of interrupted writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

log = logging.getLogger(__name__)

MAX_SIZE_ENV = "STREAMTMR_CACHE_MAX_SIZE"
DEFAULT_MAX_SIZE = "5G"
#: prefix of a file being written (:func:`atomic_write`); one left by a crash is a stray
PARTIAL = ".partial-"
#: a partial file or a file without its sidecar younger than this may still be being written
STRAY_AFTER_S = 3600.0
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}   # as ccache: Ki = 1024


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_root() -> Path:
    """``$STREAMTMR_CACHE`` or ``~/.cache/streamtmr`` (not created)."""
    return Path(os.environ.get("STREAMTMR_CACHE") or Path.home() / ".cache" / "streamtmr")


def cache_dir(sub: str = "") -> Path:
    """:func:`cache_root` (created), optionally a sub-folder."""
    root = cache_root()
    path = root / sub if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(*parts: object) -> str:
    """A short hex key from the given facts (order matters)."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:32]


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=partial_prefix(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def partial_prefix(path: Path) -> str:
    """Name prefix of the files that are being written to become ``path``."""
    return f"{PARTIAL}{path.name}."


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_sidecar(path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Record ``path``'s SHA-256 (and ``info``) next to it, which makes it an entry, then trim
    the cache to its bound (:func:`trim`; never ``path`` itself)."""
    record = {**info, "file": path.name, "sha256": file_sha256(path)}
    atomic_write(sidecar(path), json.dumps(record, indent=1, sort_keys=True).encode())
    root = cache_root()
    if root.resolve() in path.resolve().parents:       # not a plan exported elsewhere
        removed = trim(max_size(), keep=[path], root=root)
        if removed:
            log.info("cache %s: removed %d least recently used entries (%s)", root,
                     len(removed), format_size(sum(e.size for e in removed)))
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
    try:
        os.utime(sidecar(path))                        # used now: the last to be trimmed
    except OSError:
        pass
    return record


# --------------------------------------------------------------------------------------------
# Size: entries, strays, trimming
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One cached file with its sidecar."""

    kind: str              # the sub-folder: onnx, ort, tensorrt, motion_match, ...
    path: Path
    size: int              # bytes, file and sidecar
    last_used: float       # the sidecar's mtime: written or last verified (epoch seconds)
    record: dict[str, Any]


def parse_size(text: str, where: str = MAX_SIZE_ENV) -> int:
    """``"5G"`` (10⁹), ``"500M"``, ``"1.5GiB"`` (2³⁰), ``"2048"`` (bytes) → bytes; ``"0"``: no
    bound. ValueError names ``where`` and the accepted forms."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(i?))?B?\s*", str(text), re.IGNORECASE)
    if m is None:
        raise ValueError(f"{where}: {text!r} is not a size (e.g. 5G, 500M, 1.5GiB, 2048; 0 "
                         "for no bound)")
    unit, binary = (m.group(2) or "").upper(), bool(m.group(3))
    scale = 1024 ** " KMGT".index(unit) if binary else _UNITS[unit]
    return int(float(m.group(1)) * scale)


def max_size() -> int:
    """The bound in bytes from ``$STREAMTMR_CACHE_MAX_SIZE`` (default 5G); 0: no bound."""
    return parse_size(os.environ.get(MAX_SIZE_ENV) or DEFAULT_MAX_SIZE)


def format_size(n: float) -> str:
    """Bytes as B, kB, MB or GB (powers of 1000, as :func:`parse_size` reads them)."""
    if abs(n) < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if abs(n) < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def _record(side: Path) -> dict[str, Any] | None:
    """A sidecar's record if ``side`` is one this module wrote (names its file, has a hash)."""
    try:
        record = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if (not isinstance(record, dict) or record.get("file") != side.name[:-len(".json")]
            or not re.fullmatch(r"[0-9a-f]{64}", str(record.get("sha256")))):
        return None
    return record


def _kind_folders(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def entries(root: Path | None = None) -> list[Entry]:
    """Every entry of the cache, least recently used first."""
    root = cache_dir() if root is None else Path(root)
    found = []
    for folder in _kind_folders(root):
        for side in folder.glob("*.json"):
            record = _record(side)
            path = side.with_name(side.name[:-len(".json")])
            if record is None or not path.is_file():
                continue
            try:
                size, used = path.stat().st_size + side.stat().st_size, side.stat().st_mtime
            except OSError:                            # removed meanwhile
                continue
            found.append(Entry(folder.name, path, size, used, record))
    return sorted(found, key=lambda e: (e.last_used, str(e.path)))


def strays(root: Path | None = None, older_than_s: float = STRAY_AFTER_S) -> list[Path]:
    """Files this module left behind, older than ``older_than_s``: partial writes, sidecars
    whose file is gone, and files beside our sidecars that never got their own."""
    root = cache_dir() if root is None else Path(root)
    now, found = time.time(), []
    for folder in _kind_folders(root):
        names = {p.name for p in folder.iterdir()}
        ours = {n[:-len(".json")] for n in names if n.endswith(".json")
                and _record(folder / n) is not None}
        if not ours:
            continue                                   # a folder this cache never wrote to
        suffixes = {Path(n).suffix for n in ours}
        for name in sorted(names):
            path = folder / name
            stray = (name.startswith(PARTIAL)
                     or (name.endswith(".json") and name[:-len(".json")] in ours
                         and name[:-len(".json")] not in names)
                     or (Path(name).suffix in suffixes and name not in ours
                         and name + ".json" not in names))
            try:
                if stray and path.is_file() and now - path.stat().st_mtime > older_than_s:
                    found.append(path)
            except OSError:
                continue
    return found


def remove(entry: Entry) -> bool:
    """Delete an entry (file, then sidecar); False if another process removed it first."""
    try:
        entry.path.unlink()
    except FileNotFoundError:
        return False
    sidecar(entry.path).unlink(missing_ok=True)
    return True


def trim(limit: int, keep: Iterable[Path] = (), root: Path | None = None) -> list[Entry]:
    """Remove strays, then least recently used entries until the cache holds at most ``limit``
    bytes (0: no bound), never one in ``keep``. Returns the entries removed."""
    root = cache_dir() if root is None else Path(root)
    for path in strays(root):
        try:
            path.unlink(missing_ok=True)
        except OSError as err:                         # trimming never fails a write
            log.warning("cache: could not remove %s (%s)", path, err)
    if limit <= 0:
        return []
    keep = {Path(p).resolve() for p in keep}
    found = entries(root)
    total, removed = sum(e.size for e in found), []
    for e in found:
        if total <= limit:
            break
        if e.path.resolve() in keep:
            continue
        try:
            if remove(e):
                removed.append(e)
        except OSError as err:                         # read-only, in use on Windows, ...
            log.warning("cache: could not remove %s (%s)", e.path, err)
            continue
        total -= e.size
    return removed


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
