"""``streamtmr data``: generate SynthKinect, convert real recordings, describe a store."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from streamtmr.commands import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="make and inspect skeleton datasets",
                              description="Generate, convert and inspect dataset stores.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    s = sub.add_parser("synth", help="generate a SynthKinect store",
                       description="Generate SynthKinect (see docs/synthkinect.md).")
    s.add_argument("--out", type=Path, required=True, help="output store directory")
    s.add_argument("--subjects", type=int, default=60, help="number of subjects (default 60)")
    s.add_argument("--actions", type=int, default=None,
                   help="use the first N actions (default: all)")
    s.add_argument("--views", type=float, nargs="+", default=[-45.0, 0.0, 45.0],
                   metavar="DEG", help="camera azimuths in degrees (default -45 0 45)")
    s.add_argument("--reps", type=int, default=2, help="repetitions per action (default 2)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing store")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=run_synth)

    n = sub.add_parser("ntu", help="convert a folder of NTU RGB+D .skeleton files",
                       description="Convert NTU RGB+D .skeleton files (searched recursively).")
    n.add_argument("src", type=Path, help="folder with .skeleton files")
    n.add_argument("--out", type=Path, required=True, help="output store directory")
    n.add_argument("--overwrite", action="store_true", help="replace an existing store")
    n.add_argument("--no-progress", action="store_true", help="no progress bar")
    n.set_defaults(func=run_ntu)

    u = sub.add_parser("utkinect", help="convert UTKinect-Action3D",
                       description="Convert a UTKinect-Action3D folder (joints_*.txt and "
                                   "actionLabel.txt).")
    u.add_argument("src", type=Path, help="UTKinect-Action3D folder")
    u.add_argument("--out", type=Path, required=True, help="output store directory")
    u.add_argument("--overwrite", action="store_true", help="replace an existing store")
    u.set_defaults(func=run_utkinect)

    i = sub.add_parser("info", help="describe a dataset store")
    i.add_argument("dir", type=Path, help="store directory")
    i.set_defaults(func=run_info)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if (out / "meta.json").exists() and not overwrite:
        raise UserError(f"{out}: a store already exists here (use --overwrite)")


def run_synth(args: argparse.Namespace) -> int:
    from streamtmr.data.store import StoreError
    from streamtmr.data.synth import ACTIONS, generate

    if args.subjects < 2:
        raise UserError(f"--subjects must be at least 2 (train and eval splits), got "
                        f"{args.subjects}")
    if args.actions is not None and not 1 <= args.actions <= len(ACTIONS):
        raise UserError(f"--actions must be in 1..{len(ACTIONS)}, got {args.actions}")
    if args.reps < 1:
        raise UserError(f"--reps must be at least 1, got {args.reps}")
    _check_out(args.out, args.overwrite)
    print(synth_size_line(args), flush=True)
    try:
        out = generate(args.out, n_subjects=args.subjects, n_actions=args.actions,
                       views=tuple(args.views), reps=args.reps, seed=args.seed,
                       progress=not args.no_progress, overwrite=args.overwrite)
    except (StoreError, OSError) as e:
        raise UserError(str(e)) from None
    print(f"SynthKinect store: {out}")
    return 0


def synth_size_line(args: argparse.Namespace) -> str:
    """What ``data synth`` is about to write: sequences, and bytes from the store's arrays
    (float32 per frame) times performances of 2–5 s (3.5 s on average) at its frame rate."""
    import shutil

    import numpy as np

    from streamtmr.data.synth import ACTIONS, ARRAYS, FPS

    actions = len(ACTIONS) if args.actions is None else args.actions
    n = args.subjects * actions * args.reps * len(args.views)
    per_frame = 4 * sum(int(np.prod(shape)) for shape in ARRAYS.values())
    typical, most = n * 3.5 * FPS * per_frame, n * 5.0 * FPS * per_frame
    where = args.out if args.out.exists() else args.out.resolve().parent
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    warn = f"; only {_size(free)} free there" if most > free else ""
    return (f"SynthKinect: {n:,} sequences ({args.subjects} subjects × {actions} actions × "
            f"{args.reps} reps × {len(args.views)} views), about {_size(typical)} "
            f"(at most {_size(most)}) to {args.out}{warn}")


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def run_ntu(args: argparse.Namespace) -> int:
    from streamtmr.data.convert import convert_ntu_folder
    from streamtmr.data.store import StoreError

    if not args.src.is_dir():
        raise UserError(f"{args.src}: not a directory")
    _check_out(args.out, args.overwrite)
    try:
        out = convert_ntu_folder(args.src, args.out, progress=not args.no_progress,
                                 overwrite=args.overwrite)
    except (StoreError, OSError, ValueError) as e:
        raise UserError(str(e)) from None
    print(f"NTU RGB+D store: {out}")
    return 0


def run_utkinect(args: argparse.Namespace) -> int:
    from streamtmr.data.convert import convert_utkinect
    from streamtmr.data.store import StoreError

    if not args.src.is_dir():
        raise UserError(f"{args.src}: not a directory")
    _check_out(args.out, args.overwrite)
    try:
        out = convert_utkinect(args.src, args.out, overwrite=args.overwrite)
    except (StoreError, OSError, ValueError) as e:
        raise UserError(str(e)) from None
    print(f"UTKinect-Action3D store: {out}")
    return 0


def _distinct(store, column: str) -> str:
    try:
        values = store.column(column)
    except KeyError:
        return "-"
    return str(len(np.unique(values))) if len(values) else "0"


def run_info(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from streamtmr.data.store import SkeletonStore, StoreError

    if not args.dir.is_dir():
        raise UserError(f"{args.dir}: not a directory")
    try:
        store = SkeletonStore(args.dir)
    except (StoreError, KeyError, ValueError) as e:
        raise UserError(f"{args.dir}: not a readable store ({e})") from None
    meta = store.meta
    table = Table(title=f"{args.dir} ({meta.get('name', '?')})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    frames = int(meta.get("frames", 0))
    fps = meta.get("fps")
    duration = f" ({frames / fps / 60:.1f} min at {fps} Hz)" if fps else ""
    table.add_row("sequences", str(len(store)))
    table.add_row("frames", f"{frames}{duration}")
    table.add_row("skeleton / units", f"{meta.get('skeleton', '?')} / {meta.get('units', '?')}")
    table.add_row("subjects", _distinct(store, "subject"))
    actions = meta.get("actions") or meta.get("labels", {}).get("action")
    table.add_row("actions", _distinct(store, "action")
                  + (f": {', '.join(map(str, actions))}" if actions else ""))
    views = meta.get("views_deg")
    table.add_row("views", _distinct(store, "view")
                  + (f" (azimuth {', '.join(f'{v:g}°' for v in views)})" if views else ""))
    for name, subjects in (meta.get("splits") or {}).items():
        table.add_row(f"split {name}", f"{len(subjects)} subjects")
    for name in store.array_names:
        shape = (frames, *meta["arrays"][name]["frame_shape"])
        table.add_row(f"array {name}", f"float32 {list(shape)}")
    dummy = meta.get("dummy")
    if dummy:
        from streamtmr import skeleton

        lengths = np.asarray(dummy["lengths"], dtype=np.float32)
        table.add_row("dummy", f"{dummy.get('name', '?')} (leg "
                      f"{float(skeleton.leg_length(lengths)):.3f} m, ankle→head "
                      f"{float(skeleton.standing_height(lengths)):.3f} m)")
    Console().print(table)
    return 0
