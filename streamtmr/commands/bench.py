"""``streamtmr bench``: engine, streaming step, end-to-end node and offline benchmarks (code in
:mod:`bench`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from streamtmr.commands import UserError


def int_list(text: str) -> list[int]:
    """``"1-8"``, ``"1,2,4,8"`` or a mix (``"1-3,6"``) → sorted distinct positive integers."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer list: {text!r} (e.g. 1-8 or "
                                             "1,2,4)") from None
        if a < 1 or b < a:
            raise argparse.ArgumentTypeError(f"bad range {part!r}: positive, low-high")
        out.update(range(a, b + 1))
    return sorted(out)


def str_list(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("empty list")
    return items


def positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def register(subparsers: Any) -> None:
    from bench import DEFAULT_MODELS, PARTS

    p = subparsers.add_parser(
        "bench", help="latency and throughput benchmarks (engines, steps, node, offline)",
        description="Measure engine latency per batch of windows, streaming step latency per "
                    "frame at 1, 6, 32 and 256 bodies per call, end-to-end node latency over "
                    "ZeroMQ loopback (1 and 6 bodies, 600 frames at 30 Hz and 600 at the "
                    "maximum rate, with a per-stage breakdown) and offline throughput, for "
                    "several models and every engine present, in one run; every row names the "
                    "exact model (label and sha256 prefix). Without options: the default model "
                    f"compared with {', '.join(DEFAULT_MODELS[1:])} on every engine present.")
    p.add_argument("--models", type=str_list, default=None, metavar="LIST",
                   help="comma-separated: default, METHOD[-PRESET] (tmr-small, tmr-paper, "
                        "pmr-small, moon-resnet-small, naive, ...) or a checkpoint/.onnx path "
                        f"[{','.join(DEFAULT_MODELS)}]")
    p.add_argument("--engines", type=str_list, default=None, metavar="LIST",
                   help="comma-separated back ends, each optionally NAME@THREADS "
                        "(onnxruntime@1) [every engine present]")
    p.add_argument("--batches", type=int_list, default=None, metavar="LIST",
                   help="engine batch sizes, e.g. 1-8 or 1,2,4,8 [1-8; --quick: 1,8]")
    p.add_argument("--step-batches", type=int_list, default=None, metavar="LIST",
                   help="bodies per step call for streaming models [1,6,32,256; --quick: 1,6]")
    p.add_argument("--bodies", type=int_list, default=None, metavar="LIST",
                   help="bodies per frame for the node benchmark [1,6]")
    p.add_argument("--node-frames", type=int, default=None, metavar="N",
                   help="measured frames per node scenario [600; --quick: 20]")
    p.add_argument("--node-models", type=str_list, default=None, metavar="LIST",
                   help="models for the node benchmark (run on the first engine) "
                        "[the first of --models]")
    p.add_argument("--parts", type=str_list, default=list(PARTS), metavar="LIST",
                   help=f"which benchmarks: {','.join(PARTS)} [all]")
    p.add_argument("--rate", type=positive, default=30.0, metavar="HZ",
                   help="sensor frame rate for the node benchmark [30]")
    p.add_argument("--budget-ms", type=positive, default=10.0,
                   help="the node's latency budget per frame [10]")
    p.add_argument("--stagger-search", action="store_true",
                   help="bodies that start together get staggered search phases, as "
                        "`streamtmr run --stagger-search` gives them (step and node parts)")
    p.add_argument("--duration", type=positive, default=None, metavar="S",
                   help="time scale: engine cells 0.3×S s, step cells ≥ 0.5×S s, closed-loop "
                        "node scenarios ≤ 30×S s, offline 1.5×S s per model × engine "
                        "[1; --quick: 0.15]")
    p.add_argument("--quick", action="store_true",
                   help="tiny durations, batches 1,8, step batches 1,6, 20 node frames (smoke "
                        "test, seconds)")
    p.add_argument("--json", action="store_true",
                   help="print the results as JSON on stdout (nothing else goes there)")
    p.add_argument("--plot", default=None, metavar="PATH.png",
                   help="also write latency histograms (matplotlib)")
    p.add_argument("--save", action="store_true",
                   help="write bench/results/<date>-<host-kind>.json and refresh its README.md")
    p.add_argument("--results-dir", default=None, metavar="DIR",
                   help="where --save writes [bench/results]")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace):
    from bench import DEFAULT_MODELS
    from bench.engines import STEP_BATCHES
    from bench.suite import BenchOptions

    quick = bool(args.quick)
    return BenchOptions(
        models=args.models or list(DEFAULT_MODELS),
        engines=args.engines,
        batches=args.batches or ([1, 8] if quick else list(range(1, 9))),
        step_batches=args.step_batches or ([1, 6] if quick else list(STEP_BATCHES)),
        bodies=args.bodies or [1, 6],
        rate_hz=args.rate, duration=args.duration or (0.15 if quick else 1.0),
        node_frames=args.node_frames or (20 if quick else 600),
        node_models=args.node_models, parts=args.parts, budget_ms=args.budget_ms,
        stagger_search=args.stagger_search, quick=quick)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bench import report
    from bench.engines import EngineSpecError
    from bench.models import ModelSpecError
    from bench.suite import run_bench, run_samples_for_plot

    if args.plot and not str(args.plot).lower().endswith(".png"):
        raise UserError(f"--plot {args.plot}: the file name must end in .png")
    err = Console(stderr=True)
    try:
        opts = options_from_args(args).validate()
    except ValueError as e:
        raise UserError(str(e)) from None

    def log(msg: str) -> None:
        err.print(f"[dim]{msg}[/dim]", highlight=False, soft_wrap=True)

    try:
        result, samples = run_bench(opts, log=log)
    except (ModelSpecError, EngineSpecError) as e:
        raise UserError(str(e)) from None
    if args.json:
        sys.stdout.write(report.to_json(result) + "\n")
        sys.stdout.flush()
    else:
        report.render(result, Console())
    if args.plot:
        path = report.plot(run_samples_for_plot(samples), args.plot)
        err.print(f"latency histograms: {path}")
    if args.save:
        kwargs = {"results_dir": args.results_dir} if args.results_dir else {}
        path = report.save(result, **kwargs)
        err.print(f"saved {path} and {path.parent / 'README.md'}")
    return 0
