"""``streamtmr card``: write a model's privacy card from the evaluation that measured it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from streamtmr.commands import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "card", help="write a checkpoint's privacy card from its evaluation",
        description="Reads the numbers of one method out of a 'streamtmr evaluate' record "
                    "(results.json) and writes them beside the weights as NAME.card.json, "
                    "bound to the SHA-256 of the weights (engines.card). The record must name "
                    "these very weights: the checkpoint it evaluated has to be the same bytes. "
                    "With the card, 'streamtmr run --model WEIGHTS' runs without "
                    "--allow-unevaluated.")
    p.add_argument("weights", type=Path, help="the evaluated checkpoint (.safetensors)")
    p.add_argument("--results", type=Path, required=True, action="append",
                   help="results.json of 'streamtmr evaluate' (the headline run); give it again "
                        "for another record (e.g. the light attackers), kept under 'other_records'")
    p.add_argument("--method", default=None,
                   help="the method's name in the record (default: the one whose checkpoint "
                        "is WEIGHTS)")
    p.add_argument("--name", default=None, help="the card's name (default: the method's)")
    p.set_defaults(func=run)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise UserError(f"{path}: not an evaluation record ({e})") from None


def _method(results: dict, path: Path, weights_sha: str, wanted: str | None) -> str:
    """The method of ``results`` that evaluated the weights of SHA-256 ``weights_sha``."""
    from engines.card import sha256_bytes
    from streamtmr.eval.card import methods_of

    names = [wanted] if wanted else methods_of(results)
    seen = []
    for name in names:
        info = results.get("methods", {}).get(name, {}).get("info", {})
        ckpt = info.get("checkpoint")
        if not ckpt or ckpt == "None":
            seen.append(f"{name}: no checkpoint recorded")
            continue
        try:
            digest = sha256_bytes(Path(ckpt).read_bytes())
        except OSError:
            seen.append(f"{name}: {ckpt} not found (run from the directory evaluate ran in)")
            continue
        if digest == weights_sha:
            return name
        seen.append(f"{name}: {ckpt} is other weights ({digest[:12]})")
    raise UserError(f"{path}: no evaluated method is these weights ({weights_sha[:12]}): "
                    + "; ".join(seen))


def run(args: argparse.Namespace) -> int:
    from engines.card import sha256_bytes, write_card
    from streamtmr.eval.card import CardSourceError, privacy_from_results

    try:
        weights_sha = sha256_bytes(args.weights.read_bytes())
    except OSError as e:
        raise UserError(f"{args.weights}: cannot read ({e.strerror})") from None
    privacy, method, info = {}, None, {}
    for k, path in enumerate(args.results):
        results = _read(path)
        name = _method(results, path, weights_sha, args.method)
        try:
            block = privacy_from_results(results, name)
        except CardSourceError as e:
            raise UserError(f"{path}: {e}") from None
        block["record"] = str(path)
        if k == 0:
            privacy, method = block, name
            info = results["methods"][name].get("info", {})
        else:
            privacy.setdefault("other_records", []).append(block)
    out = write_card(args.weights, privacy, name=args.name or method,
                     method=info.get("method"))
    print(f"wrote {out}: adaptive re-ID {privacy['reid_top1_adaptive_pct']} % "
          f"({privacy['reid_top1_adaptive_arch']}), frozen action "
          f"{privacy['action_top1_frozen_pct']} %, retrained "
          f"{privacy['action_top1_retrained_pct']} %")
    return 0
