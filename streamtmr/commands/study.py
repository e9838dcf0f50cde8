"""``streamtmr study``: train (or list) the runs of a study file (ablations and sweeps)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from streamtmr.commands import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "study", help="train or list the runs of an ablation/sweep study file",
        description="Train the runs of a study file (configs/studies.yaml) as parallel "
                    "`streamtmr train` processes, or list their status. Finished runs are "
                    "skipped; TMR runs stopped early resume from their last checkpoint.")
    p.add_argument("action", choices=("train", "list"))
    p.add_argument("file", type=Path, help="study YAML (e.g. configs/studies.yaml)")
    p.add_argument("--data", type=Path, help="dataset store (train)")
    p.add_argument("--out", type=Path, help="runs folder (default: the study's `out`)")
    p.add_argument("--only", help="comma-separated run names (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (default 1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="overrides train.device")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every run (repeatable)")
    p.add_argument("--deadline", type=float, metavar="S",
                   help="stop runs still going after S seconds (they resume next time)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the outcome as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamtmr.train.config import ConfigError
    from streamtmr.train.study import load_study, run_study, status

    try:
        study = load_study(args.file)
        runs = study.select([s.strip() for s in args.only.split(",")] if args.only else None)
    except ConfigError as e:
        raise UserError(str(e)) from None
    if args.action == "list":
        for r in runs:
            groups = ", ".join(r.groups) or "-"
            point = f" {r.param}={r.value:g}" if r.param else ""
            print(f"{r.name:32s} {status(study.run_dir(r, args.out)):8s} {groups}{point}")
        return 0
    if args.data is None:
        raise UserError("study train needs --data STORE")
    if args.jobs < 1:
        raise UserError("--jobs must be >= 1")
    result = run_study(study, args.data, runs, jobs=args.jobs, out=args.out,
                       device=args.device, extra=args.overrides, deadline_s=args.deadline)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    failed = [n for n, r in result.items() if r["status"] != "done"]
    print(f"{len(result) - len(failed)} of {len(result)} runs done"
          + (f"; not done: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
