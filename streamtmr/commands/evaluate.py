"""``streamtmr evaluate``: privacy and utility of anonymizers under static and adaptive attacks."""

from __future__ import annotations

import argparse
import logging
import shlex
import threading
import time
from pathlib import Path

from streamtmr.commands import UserError
from streamtmr.eval.attackers import ARCHITECTURES
from streamtmr.models.registry import available

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
    p.add_argument("--method", choices=["original", *available()],
                   help="evaluate one method (with 'original')")
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
    p.add_argument("--utk-subjects",
                   help="evaluate on these UTKinect people only, e.g. 6-10 or 1,3,5: the half "
                        "that a model trained with data.real_utkinect_subjects never saw")
    p.add_argument("--utk-clock", choices=("sensor", "rows"), default="sensor",
                   help="play UTKinect on the sensor's 30 Hz frame clock, the skipped frames "
                        "interpolated (default), or its recorded rows as consecutive frames "
                        "(the protocol before 2026-12-03)")
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
    p.add_argument("--seeds", default=None, metavar="LIST",
                   help="attacker seeds, comma-separated (e.g. 0,1,2): one run each, reported "
                        "as mean ± std [--seed]")
    p.add_argument("--attacker-archs", default="sgn", metavar="LIST",
                   help="re-ID attacker backbones (sgn, transformer); the strongest is "
                        "reported [sgn]")
    p.add_argument("--attacks", default="reid,attributes,linkage,action", metavar="LIST",
                   help="attacks to train (re-ID and action always) "
                        "[reid,attributes,linkage,action]")
    p.set_defaults(func=run)


def _command(args: argparse.Namespace) -> str:
    parts = ["streamtmr evaluate"]
    for key, value in vars(args).items():
        if key in ("func", "command", "verbose") or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        for v in value if isinstance(value, list) else [value]:
            parts.append(flag if v is True else f"{flag} {shlex.quote(str(v))}")
    return " ".join(parts)                             # pastes back into a shell


def _sigmas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--sigmas: expected comma-separated numbers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise UserError("--sigmas: σ must be >= 0")
    return values


#: What ``--attacks`` may name (re-ID and action are always trained).
ATTACKS = ("reid", "attributes", "linkage", "action")


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _subject_ids(text: str) -> tuple[int, ...]:
    """``6-10`` or ``1,3,5`` (or both, ``1-3,7``) → sorted subject ids."""
    ids: set[int] = set()
    try:
        for part in (v.strip() for v in text.split(",")):
            if part:
                lo, _, hi = part.partition("-")
                ids.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UserError(f"--utk-subjects: expected ids or ranges like 6-10 or 1,3,5, "
                        f"got {text!r}") from None
    if len(ids) < 2:
        raise UserError(f"--utk-subjects: needs >= 2 people, got {text!r}")
    return tuple(sorted(ids))


def _names(text: str, flag: str, known) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise UserError(f"{flag}: {', '.join(bad) or 'empty'}: choose from {', '.join(known)}")
    return tuple(dict.fromkeys(("reid", *names, "action"))) if known is ATTACKS else names


def _request(args: argparse.Namespace):
    from streamtmr.eval.runner import EvalRequest

    methods = (None if args.methods is None else
               [n.strip() for n in args.methods.split(",") if n.strip()])
    return EvalRequest(
        data=args.data, method=args.method, checkpoint=args.checkpoint, sigma=args.sigma,
        all=args.all, models=list(args.models or ()), study_out=args.study_out,
        methods=methods, cache=args.cache, no_cache=args.no_cache, runs=args.runs,
        sigmas=_sigmas(args.sigmas), utkinect=args.utkinect, utk_studies=args.utk_studies,
        utk_epochs=args.utk_epochs, utk_clock=args.utk_clock,
        utk_subjects=_subject_ids(args.utk_subjects) if args.utk_subjects else None,
        out=args.out, report=args.report, quick=args.quick,
        window=args.window, epochs=args.epochs, width=args.width, tsne=args.tsne,
        device=args.device, seed=args.seed, command=_command(args),
        seeds=_ints(args.seeds, "--seeds") if args.seeds else (),
        attacker_archs=_names(args.attacker_archs, "--attacker-archs", ARCHITECTURES),
        attacks=_names(args.attacks, "--attacks", ATTACKS))


def run(args: argparse.Namespace) -> int:
    import torch

    from streamtmr.data.store import StoreError
    from streamtmr.data.utkinect import UTKFormatError
    from streamtmr.eval import suite
    from streamtmr.eval.protocol import ProtocolError
    from streamtmr.eval.runner import run_evaluation
    from streamtmr.models.checkpoint import CheckpointError

    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    request = _request(args)
    try:
        with Heartbeat() as beat:
            results = run_evaluation(request, log=beat.line)
    except (StoreError, ProtocolError, CheckpointError, UTKFormatError) as e:
        raise UserError(str(e)) from None
    except KeyError as e:
        raise UserError(str(e.args[0])) from None
    for line in suite.summary_lines(results):
        print(line)
    c = results["chance"]
    print(f"chance: re-ID {100 * c['reid_top1']:.1f}%, action {100 * c['action_top1']:.1f}%, "
          "linkage AUC 0.50")
    out, rep = request.out, request.report
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}"
          + (f", updated {rep}" if rep else "") + f" ({results['seconds']:.0f} s)")
    return 0


class Heartbeat(logging.Handler):
    """Signs of life of a long evaluation: progress lines are printed at once (also when stdout
    is not a terminal) and remembered with the evaluation's log lines; a named thread repeats
    the latest with the elapsed time every ``every_s`` while a stage runs silently."""

    def __init__(self, every_s: float = 30.0):
        super().__init__(logging.INFO)
        self.every_s = every_s
        self.last = "starting"
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="evaluate-heartbeat",
                                        daemon=True)

    def line(self, text: str) -> None:
        """A progress line of the runner: printed now, remembered for the heartbeat."""
        print(text, flush=True)
        self.last = text

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("streamtmr.eval", "streamtmr.data", "engines")):
            self.last = record.getMessage()

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            log.info("evaluate: %.0f s elapsed; last step: %s", time.monotonic() - self._t0,
                     self.last)

    def __enter__(self) -> Heartbeat:
        logging.getLogger().addHandler(self)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        logging.getLogger().removeHandler(self)
