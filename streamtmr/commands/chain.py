"""``streamtmr chain``: put streaming checkpoints in series as one cascade checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamtmr.commands import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "chain", help="chain streaming checkpoints into one cascade checkpoint",
        description="Each stage is fed the previous stage's output, frame by frame "
                    "(streamtmr.models.cascade), e.g. the shipped default then motion "
                    "matching. The result runs, exports and evaluates like any checkpoint; "
                    "its training record lists every person any stage was trained on.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="streaming checkpoints, first stage first (at least two; 'default': "
                        "the shipped default model)")
    p.add_argument("--out", type=Path, required=True, help="the cascade checkpoint to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamtmr.models.cascade import save_chain
    from streamtmr.models.checkpoint import CheckpointError

    if len(args.checkpoints) < 2:
        raise UserError("give at least two checkpoints")
    try:
        out = save_chain(args.checkpoints, args.out)
    except (CheckpointError, ValueError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {out}")
    return 0
