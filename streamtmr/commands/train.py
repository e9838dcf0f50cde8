"""``streamtmr train``: run a training curriculum from a YAML config.

Multi-GPU / multi-node: launch the same command with ``torchrun --nproc_per_node N -m
streamtmr train ...``; every process joins the group and rank 0 logs and checkpoints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from streamtmr.commands import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train an anonymizer from a YAML config",
        description="Train an anonymizer (stages, λ weights and sizes come from the config).")
    p.add_argument("--config", type=Path,
                   help="YAML config (e.g. configs/tmr_small.yaml); with --resume defaults to "
                        "OUT/config.yaml")
    p.add_argument("--data", type=Path, required=True, help="dataset store directory")
    p.add_argument("--out", type=Path, help="run directory (default: output.dir of the config)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. train.batch_size=8 (repeatable)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="overrides train.device")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamtmr.models.checkpoint import CheckpointError
    from streamtmr.train import ConfigError, TrainError, load_config, train

    config = args.config
    if config is None:
        if not (args.resume and args.out):
            raise UserError("--config is required (unless --resume with --out)")
        config = args.out / "config.yaml"
    overrides = list(args.overrides)
    if args.no_progress:
        overrides.append("train.progress=false")
    try:
        cfg = load_config(config, overrides)
        out = train(cfg, args.data, args.out, resume=args.resume, device=args.device)
    except (ConfigError, TrainError, CheckpointError) as e:
        raise UserError(str(e)) from None
    print(f"trained model: {out}")
    return 0
