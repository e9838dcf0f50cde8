"""``streamtmr evaluate``: privacy and utility of anonymizers under static and adaptive attacks."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from streamtmr.commands import UserError

METHODS = ("original", "naive", "noise", "tmr", "pmr", "dmr", "moon-resnet", "moon-ae")
log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="privacy/utility evaluation (re-ID, linkage, attributes, action)",
        description="Evaluate anonymizers on the unseen (eval-split) subjects of a SynthKinect "
                    "store: re-identification, sex/age, linkage and action recognition under "
                    "static attackers (trained on original data) and adaptive ones (retrained "
                    "on the anonymized data), plus reconstruction and physical metrics. "
                    "Writes results.json and results.md (and plots) to --out.")
    p.add_argument("--data", type=Path, help="SynthKinect store (with splits in meta.json)")
    p.add_argument("--method", choices=METHODS, help="evaluate one method (with 'original')")
    p.add_argument("--checkpoint", type=Path, help="checkpoint of --method (learned methods; "
                   "default: the shipped model if it is of that method)")
    p.add_argument("--sigma", type=float, default=0.05, help="σ (m) of --method noise")
    p.add_argument("--all", action="store_true",
                   help="original, the ground-truth oracles (SynthKinect), naive, the noise σ "
                        "sweep, the shipped default, checkpoints of --models and every "
                        "runs/**/model.safetensors")
    p.add_argument("--models", type=Path, action="append",
                   help="(repeatable) YAML/JSON list of checkpoints, or a study file "
                        "(configs/studies.yaml: its trained runs with their groups; "
                        "untrained runs are skipped), "
                        "evaluated with --all or on their own")
    p.add_argument("--study-out", type=Path,
                   help="folder holding the study's runs (default: the study file's 'out')")
    p.add_argument("--methods",
                   help="evaluate only these of the collected methods (comma-separated names; "
                        "to split --all across processes that share --cache)")
    p.add_argument("--cache", type=Path,
                   help="per-method result cache (default OUT/cache): a method evaluated "
                        "before with the same model, data and settings is read back")
    p.add_argument("--no-cache", action="store_true", help="evaluate every method afresh")
    p.add_argument("--runs", type=Path, default=Path("runs"),
                   help="runs folder searched by --all (default ./runs)")
    p.add_argument("--sigmas", default="0.01,0.02,0.05,0.1,0.2",
                   help="noise σ values (m) for --all, comma separated")
    p.add_argument("--utkinect", type=Path,
                   help="also evaluate on UTKinect-Action3D in this folder (original, naive, "
                        "and the other evaluated methods)")
    p.add_argument("--utk-studies", action="store_true",
                   help="also evaluate the study runs (--models study file) on UTKinect")
    p.add_argument("--utk-epochs", type=int, default=30,
                   help="attacker epochs on UTKinect (a small set; default 30)")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), help="output folder")
    p.add_argument("--report", type=Path,
                   help="Markdown report whose generated block is rewritten (plots go to "
                        "img/ next to it)")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke run: tiny SynthKinect store generated on the fly, tiny "
                        "attackers (about a minute on 2 cores)")
    p.add_argument("--window", type=int, default=None, help="window frames (default 64)")
    p.add_argument("--epochs", type=int, default=None, help="attacker epochs (default 30)")
    p.add_argument("--width", type=int, default=None, help="attacker width (default 48)")
    p.add_argument("--tsne", action="store_true", help="t-SNE plots of H_action")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="attacker training device (cpu, cuda)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _command(args: argparse.Namespace) -> str:
    parts = ["streamtmr evaluate"]
    for key, value in vars(args).items():
        if key in ("func", "command", "verbose") or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        for v in value if isinstance(value, list) else [value]:
            parts.append(flag if v is True else f"{flag} {v}")
    return " ".join(parts)


def _sigmas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--sigmas: expected comma-separated numbers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise UserError("--sigmas: σ must be >= 0")
    return values


def _candidates(args, suite, arrays=()):
    from streamtmr.models.checkpoint import default_checkpoint_path, read_metadata

    if args.all:
        cands = suite.oracle_candidates(arrays) + suite.baseline_candidates(_sigmas(args.sigmas))
        cands += suite.default_candidate()
        for models in args.models or ():
            cands += suite.read_model_list(models, args.study_out)
        if args.runs and args.runs.is_dir():
            cands += suite.find_checkpoints(args.runs)
        return cands
    if args.models and args.method is None:
        return [c for models in args.models for c in suite.read_model_list(models,
                                                                            args.study_out)]
    if args.method is None:
        raise UserError("give --method, --models or --all")
    if args.method == "original":
        return []
    if args.method == "naive":
        return [suite.Candidate("naive", {"method": "naive"})]
    if args.method == "noise":
        return [suite.Candidate(f"noise σ={args.sigma:g}",
                                {"method": "noise", "sigma": args.sigma})]
    ckpt = args.checkpoint
    if ckpt is None:
        default = default_checkpoint_path()
        if not default.is_file() or read_metadata(default)[0].get("method") != args.method:
            raise UserError(f"--method {args.method} needs --checkpoint (the shipped default "
                            "is missing or of another method)")
        ckpt = default
    return [suite.Candidate(args.method, checkpoint=ckpt)]


def run(args: argparse.Namespace) -> int:
    import torch

    from streamtmr.data.store import StoreError
    from streamtmr.eval import protocol, report, suite
    from streamtmr.eval.attackers import TrainConfig
    from streamtmr.models.checkpoint import CheckpointError

    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    if args.data is None and not args.quick:
        raise UserError("give --data STORE (or --quick)")
    quick = args.quick
    attacker = TrainConfig(width=args.width or (16 if quick else 48),
                           epochs=args.epochs or (4 if quick else 30),
                           seed=args.seed, device=args.device)
    cfg = protocol.EvalConfig(window=args.window or (32 if quick else 64),
                              train_stride=16 if quick else 32, attacker=attacker,
                              linkage_pairs=400 if quick else 2000,
                              gap_sequences=2 if quick else 6, seed=args.seed)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="streamtmr-eval-") as tmp:
        data_path = args.data
        if quick and data_path is None:
            from streamtmr.data.synth import generate
            data_path = generate(Path(tmp) / "synth", n_subjects=9, n_actions=4, reps=2,
                                 seed=args.seed, progress=False)
        try:
            data = protocol.load_store(data_path, cfg)
            candidates = suite.unique_candidates(_candidates(args, suite, data.test))
            if args.methods is not None:
                candidates = suite.select(candidates, [n.strip() for n in
                                                       args.methods.split(",") if n.strip()])
            methods = [suite.build(c, data.dummy, str(data_path), data.info["eval_subjects"])
                       for c in candidates]
        except (StoreError, protocol.ProtocolError, CheckpointError, KeyError) as e:
            raise UserError(str(e)) from None
        print(f"evaluating {', '.join(['original'] + [m.name for m in methods])} on "
              f"{data.info['train_windows']} / {data.info['test_windows']} windows of "
              f"{len(data.info['eval_subjects'])} unseen subjects")
        cache = None if args.no_cache else suite.ResultCache(args.cache or args.out / "cache",
                                                             cfg, data_path)
        results = protocol.run_protocol(data, methods, cfg, cache)
        if cache is not None:
            print(f"cache {cache.root}: {len(cache.hits)} read back"
                  + (f" ({', '.join(cache.hits)})" if cache.hits else "")
                  + f", {len(cache.stored)} stored")
        if args.utkinect:
            from streamtmr.data.utkinect import UTKFormatError
            from streamtmr.eval.realdata import evaluate_utkinect
            # Real-data transfer of the shipped default and the methods compared with it; the
            # study runs (ablations, sweeps) too with --utk-studies.
            real = [m for m in methods if not m.name.startswith("noise") and m.oracle is None
                    and (args.utk_studies or not m.info.get("groups"))]
            try:
                utk = TrainConfig(**{**attacker.as_dict(), "epochs": args.utk_epochs})
                results["utkinect"] = evaluate_utkinect(args.utkinect, real, utk)
            except (UTKFormatError, ValueError) as e:
                raise UserError(str(e)) from None
        results["machine"] = report.machine()
        results["command"] = _command(args)
        results["seconds"] = round(time.time() - t0, 1)

        out = args.out
        img_dir = args.report.parent / "img" if args.report else out / "img"
        images = suite.plot_sweeps(results, img_dir)
        if args.tsne:
            for m in methods:  # the compared models; study runs are summarised in tables
                if m.model is not None and not m.info.get("groups"):
                    images += suite.tsne_plots(m, data, img_dir)
        results["images"] = [str(p) for p in images]
        report.write_json(results, out / "results.json")
        base = args.report.parent if args.report else out
        text = report.document(results, [os.path.relpath(p, base) for p in images])
        (out / "results.md").write_text(text)
        if args.report:
            report.update_report(args.report, text)
    for line in suite.summary_lines(results):
        print(line)
    c = results["chance"]
    print(f"chance: re-ID {100 * c['reid_top1']:.1f}%, action {100 * c['action_top1']:.1f}%, "
          "linkage AUC 0.50")
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}"
          + (f", updated {args.report}" if args.report else "")
          + f" ({results['seconds']:.0f} s)")
    return 0
