"""``streamtmr visualize`` (one sequence → GIF/MP4) and ``streamtmr compare`` (original and
anonymized side by side, same camera)."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamtmr.commands import UserError
from streamtmr.models.registry import available


def _input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path,
                   help="NTU .skeleton file, store folder, .npy ([T,25,3] or [N,T,25,3]) or .npz")
    p.add_argument("--index", type=int, default=0, help="sequence in a store/.npy/.npz")
    p.add_argument("--body", type=int, default=0, help="body of an NTU file")
    p.add_argument("--out", type=Path, required=True, help=".gif (or .mp4 with ffmpeg)")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--step", type=int, default=2, help="keep every step-th frame")
    p.add_argument("--max-frames", type=int, default=300)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("visualize", help="animate a skeleton sequence (GIF/MP4)",
                              description="Render a sequence as a 3-D stick-figure animation.")
    _input_args(p)
    p.set_defaults(func=run_visualize)
    c = subparsers.add_parser(
        "compare", help="original and anonymized side by side (GIF/MP4)",
        description="Anonymize a sequence as a streaming node would (the newest frame of the "
                    "window ending at every frame) and render it next to the original, with "
                    "the same camera and limits.")
    _input_args(c)
    c.add_argument("--method", choices=available(), default=None,
                   help="baseline or method of --checkpoint (default: the shipped model)")
    c.add_argument("--checkpoint", type=Path, default=None)
    c.add_argument("--sigma", type=float, default=0.05, help="σ of --method noise (m)")
    c.add_argument("--dummy", default=None, help="dummy JSON (default: the shipped dummy)")
    c.set_defaults(func=run_compare)


def _load(args):
    import numpy as np

    from streamtmr.data.ntu import NTUFormatError
    from streamtmr.data.store import StoreError
    from streamtmr.eval.render import RenderError, load_sequence

    if args.step < 1 or args.max_frames < 1:
        raise UserError("--step and --max-frames must be >= 1")
    try:
        seq = load_sequence(args.input, args.index, args.body)[: args.max_frames]
    except (RenderError, NTUFormatError, StoreError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    bad = np.flatnonzero(~np.isfinite(np.asarray(seq)).all(axis=(-2, -1)))
    if len(bad):  # the input is broken, not the anonymizer
        raise UserError(f"{args.input}: input has non-finite joint coordinates in frame "
                        f"{int(bad[0])} ({len(bad)} frame(s))")
    return seq


def _save(seqs, args, titles) -> None:
    from streamtmr.eval.render import RenderError, animate

    try:
        animate(seqs, args.out, titles, fps=args.fps, step=args.step)
    except RenderError as e:
        raise UserError(str(e)) from None
    print(f"wrote {args.out} ({len(seqs[0]) // args.step} frames)")


def run_visualize(args: argparse.Namespace) -> int:
    seq = _load(args)
    _save([seq], args, [args.input.name])
    return 0


def _compare_model(args):
    """The model ``compare`` runs: --checkpoint, an untrained --method, or the shipped one."""
    from streamtmr.eval.suite import untrained_candidate
    from streamtmr.models.checkpoint import load_checkpoint, resolve_model
    from streamtmr.models.registry import build_model, entry

    if args.checkpoint is not None:
        return load_checkpoint(args.checkpoint)
    if args.method is None:
        return resolve_model("default")
    if entry(args.method).learned:
        raise UserError(f"--method {args.method} needs --checkpoint")
    return build_model(untrained_candidate(args.method, args.sigma).config)


def run_compare(args: argparse.Namespace) -> int:
    from streamtmr.dummy import DummyError, resolve_dummy
    from streamtmr.eval.render import streamed_comparison
    from streamtmr.models.checkpoint import CheckpointError

    seq = _load(args)
    try:
        dummy = resolve_dummy(args.dummy)
        model = _compare_model(args)
    except (CheckpointError, DummyError) as e:
        raise UserError(str(e)) from None
    anon, err_mm, name = streamed_comparison(seq, model, dummy)
    _save([seq, anon], args, ["original", f"anonymized ({name})"])
    print(f"mean joint displacement {err_mm:.0f} mm")
    return 0
