"""``streamtmr anonymize``: anonymize recorded sequences offline through an inference engine."""

from __future__ import annotations

import argparse
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
    p.add_argument("--output", type=Path, required=True, help=".npy or .npz")
    p.add_argument("--model", default=None,
                   help="checkpoint or exported .onnx (default: the shipped model)")
    p.add_argument("--dummy", default=None, help="dummy JSON file (default: the shipped dummy)")
    p.add_argument("--engine", choices=ENGINES, default="auto")
    p.add_argument("--batch", type=int, default=32, help="windows per engine call")
    p.add_argument("--window", type=int, default=None,
                   help="frames per window (default: the model's own)")
    p.add_argument("--hop", type=int, default=None, help="frames between windows (default T/2)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the engine")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engines import BackendUnavailable, EngineError, create_engine
    from streamtmr.data.ntu import NTUFormatError
    from streamtmr.dummy import DummyError
    from streamtmr.models.checkpoint import CheckpointError
    from streamtmr.offline import anonymize_file

    if args.batch < 1:
        raise UserError(f"--batch must be >= 1, got {args.batch}")
    options = {} if args.threads is None else {"threads": args.threads}
    try:
        engine = create_engine(args.engine, model=args.model, dummy=args.dummy,
                               window=args.window, max_batch=args.batch, **options)
        report = anonymize_file(engine, args.input, args.output, hop=args.hop,
                                progress=not args.no_progress)
    except (CheckpointError, DummyError, NTUFormatError, FileNotFoundError, ValueError,
            TypeError, BackendUnavailable, EngineError) as e:
        raise UserError(str(e)) from None
    d = engine.describe()
    print(f"wrote {report.output}: {report.sequences} sequence(s), {report.frames} frames in "
          f"{report.seconds:.2f} s ({report.frames_per_second:,.0f} frames/s) with "
          f"{d['backend']} on {d['device']} ({d['method']}, window {d['window']})")
    return 0
