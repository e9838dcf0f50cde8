"""Checkpoints: safetensors weights with the model config in the file's metadata.

Loading never unpickles: tensors come from safetensors, the config from JSON. Saving is
deterministic: the same model and metadata give the same bytes (and SHA-256, which privacy cards
bind to), whichever process writes them.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from streamtmr.cache import atomic_write
from streamtmr.models.base import Anonymizer
from streamtmr.models.registry import build_model

FORMAT = "streamtmr-checkpoint-1"
DEFAULT_ASSET = "default_model.safetensors"

#: The models shipped in the package, by the name ``--model`` takes: each a file in
#: ``streamtmr/assets`` with its privacy card beside it (``NAME.json`` or ``NAME.card.json``).
#: ``matcher`` is the named preset of issue 16 (the default, then motion matching on a leash
#: over a database rendered from ``configs/matcher.yaml`` when it loads; docs/motion_matching.md,
#: "A shipped matcher").
SHIPPED = {"default": DEFAULT_ASSET, "matcher": "matcher_model.safetensors"}


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or incompatible (the message names the file)."""


def save_checkpoint(path: str | Path, model: Anonymizer, extra: dict[str, Any] | None = None,
                    ) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(model.config),
            "extra": json.dumps(extra or {})}
    atomic_write(path, _sorted_header(save(tensors, metadata=meta)))
    return path


def _sorted_header(data: bytes) -> bytes:
    """safetensors bytes with the JSON header's keys sorted. The library writes the metadata in
    hash-map order, which changes from one save to the next; the tensors' offsets count from the
    end of the header, so rewriting it (padded with spaces to 8 bytes, as the format allows)
    moves no data."""
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":"))
    raw = header.encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + n:]


def read_metadata(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, extra) of a checkpoint without building the model."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a streamtmr checkpoint (format {meta.get('format')!r})")
    try:
        return json.loads(meta["config"]), json.loads(meta.get("extra", "{}"))
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: malformed checkpoint metadata ({e})") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Anonymizer:
    """Build the model named in the checkpoint's config and load its weights (strictly)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    config, _ = read_metadata(path)
    try:
        model = build_model(config)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build model from its config ({e})") from None
    try:
        state = load_file(str(path), device=str(map_location))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path}: corrupt weights ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the config ({e})") from None
    return model.eval()


def shipped_path(spec: str | Path | None) -> Path | None:
    """The packaged file of a shipped model's name (:data:`SHIPPED`; ``None`` is "default"),
    or None when ``spec`` names no shipped model (then it is a path)."""
    name = "default" if spec is None else str(spec)
    if name not in SHIPPED:
        return None
    with resources.as_file(resources.files("streamtmr.assets").joinpath(SHIPPED[name])) as p:
        return Path(p)


def default_checkpoint_path() -> Path:
    return shipped_path("default")


def model_path(spec: str | Path | None) -> Path:
    """The file of a model spec: a shipped model's name or ``None`` (the default), else a path."""
    return shipped_path(spec) or Path(spec)


def resolve_model(spec: str | Path | None) -> Anonymizer:
    """A shipped model's name (``None``/"default" → the shipped default), or a checkpoint path."""
    path = shipped_path(spec)
    if path is not None:
        if not path.is_file():
            name = "default" if spec is None else str(spec)
            raise CheckpointError(f"{path}: the shipped {name!r} model is missing from the "
                                  "package")
        return load_checkpoint(path)
    return load_checkpoint(spec)

