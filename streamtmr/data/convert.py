"""Convert raw recordings into a :class:`~streamtmr.data.store.SkeletonStore`.

``convert_ntu_folder`` streams a folder of NTU RGB+D ``.skeleton`` files (searched recursively,
sorted by file name) one file at a time: read (:mod:`.ntu`), denoise into two actor slots
(:mod:`.denoise`), append to the store. Nothing but the current file is held in memory, so all
of NTU-120 converts in one pass. A file that fails to parse or denoise is skipped and listed in
``meta.json`` under ``skipped`` (``{"file", "error"}``), counted in ``skipped_count``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from streamtmr.data.denoise import NOISE_LEN_THRES, NOISE_SPR_THRES1, NOISE_SPR_THRES2, denoise
from streamtmr.data.ntu import NTUFormatError, parse_filename, read_skeleton
from streamtmr.data.store import StoreError, StoreWriter
from streamtmr.data.utkinect import ACTIONS, LABEL_FILE, read_utkinect

_NTU_COLUMNS = {
    "name": "sample name (file stem)",
    "setup": "S: setup number", "camera": "C: camera number (1-3)",
    "performer": "P: performer number", "replication": "R: replication (1-2)",
    "action": "A: NTU action class number as in the file name (A001 -> 1)",
    "subject": "= performer", "view": "= camera", "rep": "= replication",
    "frames_raw": "frames in the file before denoising",
    "bodies": "distinct body ids in the file",
    "n_actors": "non-empty actor slots after denoising (joints, joints2)",
    "dropped_length": "bodies dropped: tracked in <= 11 frames",
    "dropped_spread": "bodies dropped: too many frames wider than tall",
    "dropped_overlap": "bodies dropped: overlapping every actor slot",
}


@contextmanager
def _progress(enabled: bool, total: int, what: str) -> Iterator:
    if not enabled:
        yield lambda **_: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task(what, total=total, note="")
        yield lambda **kw: bar.update(task, advance=1, **kw)


def _refuse_existing(out_dir: Path, overwrite: bool) -> None:
    if (out_dir / "meta.json").exists() and not overwrite:
        raise StoreError(f"{out_dir}: a store already exists here (pass overwrite=True)")


def convert_ntu_folder(src_dir: str | Path, out_dir: str | Path, *, max_actors: int = 2,
                       window: int | None = None, progress: bool = True,
                       overwrite: bool = False) -> Path:
    """NTU RGB+D ``.skeleton`` folder → store with arrays ``joints`` (actor 1) and ``joints2``
    (actor 2, zeros when absent); further actors (``max_actors > 2``) go to ``joints3``, ...

    ``window``: when given, denoised sequences shorter than ``window`` frames are skipped (and
    listed as skipped) instead of being stored; by default every sequence is kept and the
    datasets pad short ones. Returns the store directory.
    """
    src, out = Path(src_dir), Path(out_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a directory")
    if max_actors < 1:
        raise ValueError(f"max_actors must be >= 1, got {max_actors}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    files = sorted(src.rglob("*.skeleton"), key=lambda p: (p.name, str(p)))
    if not files:
        raise FileNotFoundError(f"{src}: no .skeleton files found")
    _refuse_existing(out, overwrite)
    names = ["joints"] + [f"joints{k + 1}" for k in range(1, max_actors)]
    meta = {
        "name": "ntu_rgbd", "skeleton": "kinect_v2", "fps": 30, "units": "m",
        "source": str(src.resolve()),
        "denoise": {"max_actors": max_actors, "length_thres": NOISE_LEN_THRES,
                    "spread_thres1": NOISE_SPR_THRES1, "spread_thres2": NOISE_SPR_THRES2},
        "window": window, "columns": _NTU_COLUMNS,
    }
    skipped: list[dict[str, str]] = []
    with StoreWriter(out, {n: (25, 3) for n in names}, meta, overwrite=True) as writer, \
            _progress(progress, len(files), "NTU → store") as step:
        for path in files:
            try:
                ids = parse_filename(path.name)
                seq = read_skeleton(path)
                joints, info = denoise(seq, max_actors=max_actors)
                if window is not None and len(joints) < window:
                    raise ValueError(f"{path}: {len(joints)} frames after denoising, "
                                     f"shorter than the window ({window})")
            except (NTUFormatError, ValueError) as e:
                skipped.append({"file": str(path), "error": str(e)})
                step(note=f"skipped {len(skipped)}")
                continue
            reasons = list(info["dropped"].values())
            writer.append(
                {n: joints[:, k] for k, n in enumerate(names)},
                name=path.stem, **ids, subject=ids["performer"], view=ids["camera"],
                rep=ids["replication"], frames_raw=seq.num_frames, bodies=seq.num_bodies,
                n_actors=info["n_actors"], dropped_length=reasons.count("length"),
                dropped_spread=reasons.count("spread"), dropped_overlap=reasons.count("overlap"))
            step(note=f"skipped {len(skipped)}" if skipped else "")
        writer.meta.update(skipped=skipped, skipped_count=len(skipped), files=len(files))
    return out


def convert_utkinect(root: str | Path, out_dir: str | Path, *, label_file: str = LABEL_FILE,
                     overwrite: bool = False) -> Path:
    """UTKinect-Action3D folder → store with ``joints`` (Kinect v1 mapped to 25 joints) and
    columns ``name``, ``subject``, ``action`` (index into ``meta.labels.action``), ``rep``
    (= execution) and ``first_frame``/``last_frame`` (frame ids). Segments labelled NaN are
    absent and listed in ``meta.json`` ``missing``."""
    root, out = Path(root), Path(out_dir)
    _refuse_existing(out, overwrite)
    seqs = read_utkinect(root, label_file)
    present = {(s.subject, s.execution, s.action) for s in seqs}
    runs = sorted({(s.subject, s.execution) for s in seqs})
    missing = [f"s{s:02d}_e{e:02d} {a}" for s, e in runs for a in ACTIONS
               if (s, e, a) not in present]
    meta = {
        "name": "utkinect_action3d", "skeleton": "kinect_v2", "source_skeleton": "kinect_v1",
        "fps": None, "frame_clock_hz": 30, "units": "m", "source": str(root.resolve()),
        "sampling": "irregular: rows sit at recorded Kinect frame ids (30 Hz clock), mostly "
                    "2-6 ids apart", "label_file": label_file,
        "labels": {"action": list(ACTIONS)}, "missing": missing,
        "columns": {"subject": "subject number (sSS)", "rep": "execution number (eEE)",
                    "action": "index into labels.action"},
    }
    with StoreWriter(out, {"joints": (25, 3)}, meta, overwrite=True) as writer:
        for s in seqs:
            writer.append({"joints": s.joints}, name=s.name, subject=s.subject,
                          action=s.action_index, rep=s.execution,
                          first_frame=int(np.min(s.frame_ids)),
                          last_frame=int(np.max(s.frame_ids)))
    return out
