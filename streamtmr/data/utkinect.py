"""UTKinect-Action3D reader (Xia, Chen, Aggarwal, CVPR-W 2012): Kinect v1, 20 joints.

A dataset folder holds ``joints_sSS_eEE.txt`` (subject SS, execution EE; each run holds all ten
actions in a row) and ``actionLabel.txt``:

* joints file: one row per frame, ``frame_id`` followed by 20 × ``x y z`` (metres, Kinect v1
  camera space); rows may end in spaces. Some frame ids occur twice in a row (the recorder
  wrote a frame twice with near-identical values): the first row of each id is kept.
* label file: blocks of a ``sSS_eEE`` header line followed by ``action: start end`` lines giving
  the first and last frame id of each action. A segment holds every row whose frame id lies in
  ``[start, end]`` (the bounds themselves need not be recorded frame ids). ``NaN NaN`` marks an
  action that was not labelled (s10_e02 carry in the original release): such segments are
  reported by :func:`read_action_labels` as ``None`` and left out by :func:`read_utkinect`.

Malformed files raise :class:`UTKFormatError` with ``<file>:<line>: <reason>``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamtmr.skeleton import from_kinect_v1

ACTIONS: tuple[str, ...] = ("walk", "sitDown", "standUp", "pickUp", "carry", "throw", "push",
                            "pull", "waveHands", "clapHands")
LABEL_FILE = "actionLabel.txt"
_RUN = re.compile(r"s(\d+)_e(\d+)")
_FIELDS = 1 + 20 * 3


class UTKFormatError(ValueError):
    """A UTKinect-Action3D file does not follow the expected format."""


@dataclass
class UTKSequence:
    """One labelled action segment: ``joints20`` float32 [T, 20, 3] (Kinect v1 order) and
    ``joints`` float32 [T, 25, 3] (Kinect v2 order via :func:`skeleton.from_kinect_v1`)."""

    subject: int
    execution: int
    action: str
    action_index: int
    frame_ids: np.ndarray
    joints20: np.ndarray
    joints: np.ndarray

    @property
    def name(self) -> str:
        return f"s{self.subject:02d}_e{self.execution:02d}_{self.action}"


Labels = dict[tuple[int, int], dict[str, tuple[int, int] | None]]


def read_action_labels(path: str | Path) -> Labels:
    """``actionLabel.txt`` → {(subject, execution): {action: (start, end) or None if NaN}}."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise UTKFormatError(f"{path}: cannot read ({e.strerror or e})") from None
    labels: Labels = {}
    run: dict[str, tuple[int, int] | None] | None = None
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        m = _RUN.fullmatch(text)
        if m is not None:
            key = (int(m.group(1)), int(m.group(2)))
            if key in labels:
                raise UTKFormatError(f"{path}:{lineno}: run {text} appears twice")
            run = labels[key] = {}
            continue
        name, sep, rest = text.partition(":")
        name = name.strip()
        if not sep or name not in ACTIONS:
            raise UTKFormatError(f"{path}:{lineno}: expected 'sSS_eEE' or '<action>: start end' "
                                 f"with an action in {', '.join(ACTIONS)}, got {text!r}")
        if run is None:
            raise UTKFormatError(f"{path}:{lineno}: action line before the first sSS_eEE header")
        if name in run:
            raise UTKFormatError(f"{path}:{lineno}: action {name} appears twice in this run")
        bounds = rest.split()
        if len(bounds) != 2:
            raise UTKFormatError(f"{path}:{lineno}: expected two frame ids after '{name}:', "
                                 f"got {len(bounds)} fields")
        try:
            values = [float(b) for b in bounds]
        except ValueError:
            raise UTKFormatError(f"{path}:{lineno}: frame ids {rest.strip()!r} are not "
                                 "numbers") from None
        if any(math.isnan(v) for v in values):
            run[name] = None
            continue
        if not all(v.is_integer() for v in values) or values[0] > values[1]:
            raise UTKFormatError(f"{path}:{lineno}: frame ids {rest.strip()!r} are not two "
                                 "integers start <= end")
        run[name] = (int(values[0]), int(values[1]))
    if not labels:
        raise UTKFormatError(f"{path}: no sSS_eEE block found")
    return labels


def read_joints_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One ``joints_sSS_eEE.txt`` → (frame_ids int64 [N], joints float32 [N, 20, 3]).

    Rows are kept in file order; repeated frame ids keep their first row. Frame ids must not
    decrease.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise UTKFormatError(f"{path}: cannot read ({e.strerror or e})") from None
    rows: list[list[str]] = []
    linenos: list[int] = []
    for lineno, line in enumerate(lines, 1):
        tok = line.split()
        if not tok:
            continue
        if len(tok) != _FIELDS:
            raise UTKFormatError(f"{path}:{lineno}: {len(tok)} fields, expected {_FIELDS} "
                                 "(frame id + 20 × x y z)")
        rows.append(tok)
        linenos.append(lineno)
    if not rows:
        raise UTKFormatError(f"{path}: no joint rows")
    try:
        values = np.array(rows, dtype=np.float64)
    except ValueError:
        for tok, lineno in zip(rows, linenos, strict=True):
            for k, t in enumerate(tok):
                try:
                    float(t)
                except ValueError:
                    raise UTKFormatError(f"{path}:{lineno}: field {k + 1} {t!r} is not a "
                                         "number") from None
        raise
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1)
                         | (values[:, 0] != np.round(values[:, 0])))
    if len(bad):
        raise UTKFormatError(f"{path}:{linenos[bad[0]]}: non-finite value or non-integer "
                             "frame id")
    ids = values[:, 0].astype(np.int64)
    back = np.flatnonzero(np.diff(ids) < 0)
    if len(back):
        i = int(back[0]) + 1
        raise UTKFormatError(f"{path}:{linenos[i]}: frame id {ids[i]} after {ids[i - 1]} "
                             "(frame ids must not decrease)")
    first = np.concatenate([[True], np.diff(ids) != 0])
    return ids[first], values[first, 1:].reshape(-1, 20, 3).astype(np.float32)


def read_utkinect(root: str | Path, label_file: str = LABEL_FILE) -> list[UTKSequence]:
    """Every labelled action segment of a UTKinect-Action3D folder, ordered by subject,
    execution and action (``ACTIONS`` order). Segments labelled ``NaN`` are left out."""
    root = Path(root)
    label_path = root / label_file
    if not label_path.is_file():
        raise UTKFormatError(f"{label_path}: not found (is {root} a UTKinect-Action3D folder?)")
    labels = read_action_labels(label_path)
    for f in sorted(root.glob("joints_s*_e*.txt")):
        m = _RUN.fullmatch(f.stem[len("joints_"):])
        if m is not None and (int(m.group(1)), int(m.group(2))) not in labels:
            raise UTKFormatError(f"{f}: no s{m.group(1)}_e{m.group(2)} block in {label_path}")
    out: list[UTKSequence] = []
    for (subject, execution), run in sorted(labels.items()):
        path = root / f"joints_s{subject:02d}_e{execution:02d}.txt"
        if not path.is_file():
            raise UTKFormatError(f"{path}: not found (listed in {label_path})")
        ids, joints20 = read_joints_file(path)
        for index, action in enumerate(ACTIONS):
            bounds = run.get(action)
            if bounds is None:
                continue
            sel = (ids >= bounds[0]) & (ids <= bounds[1])
            if not sel.any():
                raise UTKFormatError(f"{label_path}: s{subject:02d}_e{execution:02d} {action} "
                                     f"[{bounds[0]}, {bounds[1]}] holds no frame of {path.name}")
            j20 = joints20[sel]
            out.append(UTKSequence(subject, execution, action, index, ids[sel], j20,
                                   np.asarray(from_kinect_v1(j20), dtype=np.float32)))
    return out


def on_sensor_clock(joints: np.ndarray, frame_ids: np.ndarray) -> np.ndarray:
    """A segment on the sensor's 30 Hz frame clock: ``joints [N, J, 3]`` recorded at strictly
    increasing ``frame_ids [N]`` → ``[frame_ids[-1] - frame_ids[0] + 1, J, 3]``, one frame per
    Kinect frame. UTKinect's recorder kept about one sensor frame in four (ids 2–8 apart); the
    frames it skipped are linearly interpolated between the recorded rows, which stay as they
    are: ``out[frame_ids - frame_ids[0]]`` gives them back exactly."""
    joints = np.asarray(joints, np.float32)
    ids = np.asarray(frame_ids, np.int64)
    if ids.ndim != 1 or len(ids) != len(joints) or len(ids) == 0:
        raise ValueError(f"on_sensor_clock: {len(ids)} frame ids for {len(joints)} rows")
    if (np.diff(ids) <= 0).any():
        raise ValueError("on_sensor_clock: frame ids must increase strictly")
    t = np.arange(ids[0], ids[-1] + 1)
    k = np.clip(np.searchsorted(ids, t, side="right") - 1, 0, max(len(ids) - 2, 0))
    nxt = np.minimum(k + 1, len(ids) - 1)
    w = ((t - ids[k]) / np.maximum(ids[nxt] - ids[k], 1)).astype(np.float32)[:, None, None]
    out = joints[k] * (1.0 - w) + joints[nxt] * w
    out[ids - ids[0]] = joints  # bit-exact rows (the lerp may round)
    return out


def of_subjects(seqs: list[UTKSequence], subjects, root: str | Path) -> list[UTKSequence]:
    """The segments of ``subjects`` (at least two of the folder's people: a re-ID attack or a
    verifier needs someone to compare with). Raises ``ValueError`` naming ``root`` and any
    subject it lacks."""
    have = sorted({s.subject for s in seqs})
    missing = sorted(set(subjects) - set(have))
    if missing or len(set(subjects)) < 2:
        raise ValueError(f"{root}: subjects {sorted(set(subjects))}: need >= 2 of the folder's "
                         f"subjects {have}" + (f"; no subject(s) {missing}" if missing else ""))
    return [s for s in seqs if s.subject in set(subjects)]
