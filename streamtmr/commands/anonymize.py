"""``streamtmr anonymize``: anonymize recorded sequences offline through an inference engine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamtmr.commands import UserError

ENGINES = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cuda", "torch", "torch-cuda")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "anonymize", help="anonymize recorded sequences (NTU .skeleton, .npy, .npz)",
        description="Retarget recorded motion onto the dummy offline. Input: an NTU .skeleton "
                    "file, a folder of them (actor 1 of each, denoised), a .npy [N, T, 25, 3] "
                    "or a .npz of [T, 25, 3] arrays (metres). Output: .npy (equal lengths, "
                    "same shape as the input) or .npz (one array per input). Long sequences "
                    "go through overlapping windows stitched by cross-fading.")
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True,
                   help=".npy, .npz or .bvh (one BVH file per body: x.bvh, or x_body0.bvh, "
                        "x_body1.bvh, … when there are several)")
    p.add_argument("--model", default=None,
                   help="checkpoint, exported .onnx, or a shipped model: default, matcher "
                        "(default: default)")
    p.add_argument("--dummy", default=None, help="dummy JSON file (default: the shipped dummy)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="auto: for a streaming model the PyTorch parallel form (whole tracks, "
                        "every frame computed once); otherwise as `streamtmr run`")
    p.add_argument("--batch", type=int, default=32, help="windows per engine call")
    p.add_argument("--window", type=int, default=None,
                   help="frames per window (default: the model's own)")
    p.add_argument("--hop", type=int, default=None, help="frames between windows (default T/2)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the engine")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--streamed", action="store_true", default=None,
                   help="write exactly what `streamtmr run` would publish (the node's path: "
                        "state/windows, checks, smoothing; no deadline); the default for "
                        "streaming models")
    p.add_argument("--allow-unevaluated", action="store_true",
                   help="run a model without a privacy card (logged)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engines import BackendUnavailable, EngineError, open_engine
    from streamtmr.bvh import anonymize_to_bvh
    from streamtmr.data.ntu import NTUFormatError
    from streamtmr.dummy import DummyError
    from streamtmr.models.checkpoint import CheckpointError
    from streamtmr.offline import anonymize_file

    if args.batch < 1:
        raise UserError(f"--batch must be >= 1, got {args.batch}")
    options = {} if args.threads is None else {"threads": args.threads}
    if not args.output.parent.is_dir():
        raise UserError(f"--output {args.output}: folder {args.output.parent} does not exist")
    try:
        engine = open_engine(args.engine, model=args.model, dummy=args.dummy,
                             window=args.window, max_batch=args.batch,
                             allow_unevaluated=args.allow_unevaluated, tracks=True, **options)
        if args.output.suffix.lower() == ".bvh":
            report, bodies = anonymize_to_bvh(engine, args.input, args.output, hop=args.hop,
                                              progress=not args.no_progress,
                                              streamed=args.streamed)
        else:
            report, bodies = anonymize_file(engine, args.input, args.output, hop=args.hop,
                                            progress=not args.no_progress,
                                            streamed=args.streamed), []
    except (CheckpointError, DummyError, NTUFormatError, FileNotFoundError, ValueError,
            TypeError, BackendUnavailable, EngineError) as e:
        raise UserError(str(e)) from None
    d = engine.describe()
    if report.substituted:
        print(f"warning: invalid model output replaced by the neighbouring output in "
              f"{len(report.substituted)} place(s): {', '.join(report.substituted[:8])}"
              + (" ..." if len(report.substituted) > 8 else ""), file=sys.stderr)
    print(f"wrote {report.output}: {report.sequences} sequence(s), {report.frames} frames in "
          f"{report.seconds:.2f} s ({report.frames_per_second:,.0f} frames/s) with "
          f"{d['backend']} on {d['device']} ({d['method']}, window {d['window']})")
    if len(bodies) > 1:
        for name, path in bodies:
            print(f"  {path.name}: {name}")
    return 0
