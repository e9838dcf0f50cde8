"""Checks on model and dummy files before anything reads them: no pickles, size caps.

Used by every entry point through :func:`engines.open_engine` (run, anonymize, export, the
embedding API, bench). Imports nothing of the project, so both the transport layer and the
engines may use it.
"""

from __future__ import annotations

from pathlib import Path

#: Cap on a dummy JSON file (25 bone lengths need a few hundred bytes).
MAX_DUMMY_BYTES = 1024 * 1024


class FileRefused(ValueError):
    """A model or dummy file is refused before it is read (the message says why)."""


def pickle_kind(path: str | Path) -> str | None:
    """What kind of pickle-based file ``path`` is (None when it is not one). Such files are
    never loaded: unpickling runs code chosen by whoever wrote the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (the torch.save format, pickle inside)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"a pickle (protocol {head[1]}, e.g. legacy torch.save)"
    return None


def check_file_size(path: str | Path, cap: int, what: str) -> None:
    """Refuse a file larger than ``cap`` bytes before reading it (raises FileRefused)."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        return  # the reader reports a missing or unreadable file itself
    if size > cap:
        raise FileRefused(f"{what} {path}: {size} bytes, more than the cap of {cap}")


def check_model_file(path: str | Path) -> None:
    """Refuse a model file that could only be loaded by unpickling (raises FileRefused)."""
    kind = pickle_kind(path)
    if kind is not None:
        raise FileRefused(
            f"{path}: refusing {kind}: loading it could run arbitrary code. streamtmr loads "
            "only safetensors checkpoints and exported .onnx / TensorRT models; re-save the "
            "weights with safetensors (streamtmr.models.checkpoint.save_checkpoint)")
