"""Privacy cards: a model's evaluated numbers, bound to the SHA-256 of its weights.

A card is a JSON object with at least ``sha256`` (of the weights it describes) and ``privacy``
(the evaluation: adaptive re-ID, action kept, the command that measured them). It is found

1. next to the weights: ``NAME.card.json`` or ``NAME.json`` beside ``NAME.safetensors`` /
   ``NAME.onnx`` / ``NAME.plan`` (the shipped default's card is
   ``streamtmr/assets/default_model.json``), bound by the SHA-256 of the weights file's bytes;
2. inside an exported ONNX file, metadata ``streamtmr.card`` (written by ``streamtmr export``),
   bound by ``graph_sha256``: the SHA-256 of the serialised graph (the ONNX ``GraphProto``:
   nodes and initializers, not the metadata that carries the card).

A card whose hash does not match the bytes is refused: a card cannot be carried over to other
weights. A model without a card runs only with ``--allow-unevaluated`` (see
:func:`engines.select.open_engine`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from engines.base import EngineError

#: ONNX metadata key of an embedded card.
ONNX_KEY = "streamtmr.card"
#: Largest card file read.
MAX_CARD_BYTES = 256 * 1024


class CardError(EngineError):
    """A privacy card is missing, unreadable or bound to other weights."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def onnx_graph_sha256(data: bytes) -> str:
    """SHA-256 of the graph of a serialised ONNX model (metadata excluded)."""
    import onnx

    model = onnx.load_model_from_string(data)
    return sha256_bytes(model.graph.SerializeToString(deterministic=True))


def _card_files(path: Path) -> list[Path]:
    stem = path.name.split(".")[0]
    return [path.with_name(stem + ".card.json"), path.with_name(stem + ".json")]


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        card = json.loads(text)
    except ValueError as e:
        raise CardError(f"{where}: privacy card is not valid JSON ({e})") from None
    if not isinstance(card, dict) or not isinstance(card.get("privacy"), dict):
        raise CardError(f"{where}: not a privacy card (needs a 'privacy' object with the "
                        "evaluated numbers)")
    return card


def _onnx_card(path: Path, data: bytes) -> dict[str, Any] | None:
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # the engine reports an unreadable graph itself
        raise CardError(f"{path}: not a readable ONNX model ({e})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if ONNX_KEY not in meta:
        return None
    card = _parse(meta[ONNX_KEY], f"{path} (metadata {ONNX_KEY})")
    graph = sha256_bytes(model.graph.SerializeToString(deterministic=True))
    if card.get("graph_sha256") != graph:
        raise CardError(f"{path}: its privacy card is bound to graph {card.get('graph_sha256')}"
                        f", not to this graph ({graph})")
    return card


def find_card(path: str | Path) -> dict[str, Any] | None:
    """The privacy card of the weights at ``path`` (None when there is none). Raises
    :class:`CardError` when a card exists but is bound to other weights or unreadable."""
    path = Path(path)
    data = path.read_bytes()
    digest = sha256_bytes(data)
    for f in _card_files(path):
        if f.is_file() and f != path:
            if f.stat().st_size > MAX_CARD_BYTES:
                raise CardError(f"{f}: privacy card larger than {MAX_CARD_BYTES} bytes")
            card = _parse(f.read_text(), str(f))
            if card.get("sha256") != digest:
                raise CardError(f"{f}: privacy card is bound to weights {card.get('sha256')}, "
                                f"not to {path.name} ({digest})")
            return card
    if path.suffix.lower() == ".onnx":
        return _onnx_card(path, data)
    return None



def write_card(weights: str | Path, privacy: dict[str, Any], **fields: Any) -> Path:
    """Write the privacy card of the weights file ``weights`` beside it (``NAME.card.json``),
    bound to the SHA-256 of its bytes; ``privacy`` holds the evaluated numbers and the command
    that measured them, ``fields`` anything else (name, method, ...)."""
    weights = Path(weights)
    card = {**fields, "sha256": sha256_bytes(weights.read_bytes()), "privacy": dict(privacy)}
    path = _card_files(weights)[0]
    path.write_text(json.dumps(card, indent=1) + "\n")
    return path
