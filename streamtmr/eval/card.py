"""A privacy card from an evaluation: the numbers of ``streamtmr evaluate``'s ``results.json``
for one method, in the card format of :mod:`engines.card`.

The card binds those numbers to the SHA-256 of the weights (``engines.card.write_card``); this
module only reads them out of the record. Pure: no files, no torch.

Values are percentages; where the record holds several attacker seeds a value is
``[mean, std]`` over the seeds (the shipped default's card, ``streamtmr/assets/
default_model.json``, uses the same convention).
"""

from __future__ import annotations

from typing import Any


class CardSourceError(ValueError):
    """The evaluation record cannot back a card (missing method, missing numbers)."""


def _pct(x: float) -> float:
    return round(100.0 * float(x), 1)


def _value(block: dict[str, Any], std: dict[str, Any] | None, *keys: str, seeds: bool):
    """``block[k1][k2]...`` as a percentage, ``[mean, std]`` when the record has seeds."""
    v: Any = block
    s: Any = std or {}
    for k in keys:
        if not isinstance(v, dict) or k not in v:
            raise CardSourceError("the evaluation record has no " + ".".join(keys))
        v = v[k]
        s = s.get(k) if isinstance(s, dict) else None
    if seeds and isinstance(s, (int, float)):
        return [_pct(v), _pct(s)]
    return _pct(v)


def _attackers(results: dict[str, Any]) -> str:
    protocol = results.get("protocol")
    a = protocol.get("attacker", {}) if isinstance(protocol, dict) else {}
    if not a:
        return "as recorded in the evaluation's results.json"
    return (f"width {a.get('width')}, {a.get('epochs')} epochs, static and adaptive (retrained "
            "on the output)")


def methods_of(results: dict[str, Any]) -> list[str]:
    """The evaluated methods of a record (the ``original`` reference excluded)."""
    return [m for m in results.get("methods", {}) if m != "original"]


def privacy_from_results(results: dict[str, Any], method: str) -> dict[str, Any]:
    """The ``privacy`` object of a card for ``method`` of an evaluation record."""
    methods = results.get("methods")
    if not isinstance(methods, dict) or method not in methods:
        raise CardSourceError(f"the evaluation record has no method {method!r} (it has: "
                              f"{', '.join(methods_of(results)) or 'none'})")
    m = methods[method]
    if "adaptive" not in m or "static" not in m:
        raise CardSourceError(f"{method!r} was not attacked in this record (run evaluate with "
                              "--attacks reid,action or more)")
    seeds = results.get("seeds") or []
    many = len(seeds) > 1
    std = m.get("std") if many else None

    def v(*keys: str):
        return _value(m, std, *keys, seeds=many)

    adaptive = m["adaptive"]
    arch = adaptive.get("reid_arch", "sgn")
    by_arch = {a: _value(adaptive, (std or {}).get("adaptive"), "reid_by_arch", a, "top1",
                         seeds=many) for a in adaptive.get("reid_by_arch", {})}
    card: dict[str, Any] = {
        "data": str(results.get("dataset", "synthkinect")) + ": every recording played through "
                "the node's path (streamtmr.eval.published), attacked on people the anonymizer "
                "never saw",
        "attackers": _attackers(results),
        "headline": "adaptive re-ID top-1 of the stronger attacker architecture",
        "reid_top1_static_pct": v("static", "reid_top1"),
        "reid_top1_adaptive_pct": v("adaptive", "reid_top1"),
        "reid_top1_adaptive_arch": arch,
        "reid_top1_adaptive_by_arch_pct": by_arch,
        "action_top1_frozen_pct": v("static", "action_top1"),
        "action_top1_retrained_pct": v("adaptive", "action_top1"),
        "chance_reid_pct": {"synthkinect": _pct(results.get("chance", {}).get("reid_top1", 0))},
        "seeds": list(seeds) or None,
        "values": "[mean, std over attacker seeds] where a pair",
        "command": results.get("command", ""),
        "machine": results.get("machine"),
    }
    chance = results.get("chance", {})
    for attr in ("sex", "age_group"):  # attribute attackers (--attacks ...,attributes)
        if f"{attr}_acc" in adaptive:
            card[f"{attr}_adaptive_pct"] = v("adaptive", f"{attr}_acc")
            card[f"{attr}_majority_pct"] = _pct(chance.get(f"{attr}_majority", 0))
    quality = m.get("quality", {})
    if "mpjpe_sync_mm" in quality:
        card["mpjpe_own_tempo_mm"] = round(float(quality["mpjpe_sync_mm"]), 1)
    if "pose_mpjpe_sync_mm" in quality:
        card["pose_mpjpe_own_tempo_mm"] = round(float(quality["pose_mpjpe_sync_mm"]), 1)
    published = m.get("published")
    if published:
        card["published"] = {"leak_guard": published.get("leak_guard"),
                             "withheld_pct": published.get("withheld_pct")}
    per_seed = m.get("per_seed")
    if per_seed:
        card["per_seed_adaptive_reid_top1_pct"] = [_pct(s["adaptive_reid_top1"])
                                                    for s in per_seed]
    utk = (results.get("utkinect") or {}).get("methods", {}).get(method)
    if utk:
        ustd = utk.get("std") if many else None
        card["chance_reid_pct"]["utkinect"] = _pct(
            results["utkinect"].get("chance", {}).get("reid_top1", 0))
        card["utkinect_reid_top1_static_pct"] = _value(utk, ustd, "static", "reid_top1",
                                                       seeds=many)
        card["utkinect_reid_top1_adaptive_pct"] = _value(utk, ustd, "adaptive", "reid_top1",
                                                         seeds=many)
        card["utkinect_action_top1_retrained_pct"] = _value(utk, ustd, "adaptive",
                                                            "action_top1", seeds=many)
        # records without a clock predate it: their rows played as consecutive frames
        card["utkinect_clock"] = results["utkinect"].get("clock", "rows")
    return card
