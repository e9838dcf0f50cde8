"""Training windows from real recordings: NTU RGB+D without labels, UTKinect by person.

* :func:`ntu_windows` (the label-free ``dyn`` term): every ``*.skeleton`` file of a folder is
  read with :mod:`streamtmr.data.ntu`; each body's frames in which it is present become one
  sequence, cut into ``window``-frame windows with a half-window stride (a shorter sequence gives
  one window padded by holding its last pose). No label, person or action is read.
* :func:`utkinect_people` (the real-person verification adversary ``ver_real``): the labelled
  action segments of *some* UTKinect-Action3D subjects, on the sensor's 30 Hz clock, cut into
  windows that keep their person, action and run. Training uses one half of the people and
  the evaluation the other half (``streamtmr evaluate --utk-subjects``), then the halves swap:
  no evaluated person was seen.
  :func:`person_triplets` draws the verifier's pairs from them: a window, the same person doing
  the same action in the other run, and another person doing that action.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamtmr.data.ntu import read_skeleton
from streamtmr.data.utkinect import of_subjects, on_sensor_clock, read_utkinect
from streamtmr.data.windows import sliding_windows

#: How a checkpoint names a UTKinect person it saw (``utkinect:s01``).
UTKINECT_PREFIX = "utkinect:s"
#: Bodies present in fewer frames than this are skipped (brief false detections).
MIN_FRAMES = 16


def ntu_windows(folder: str | Path, window: int = 64) -> np.ndarray:
    """float32 ``[N, window, 25, 3]`` windows of every body of every ``.skeleton`` in ``folder``.

    Raises ``FileNotFoundError`` naming the folder when it holds no ``.skeleton`` file or no body
    present in at least :data:`MIN_FRAMES` frames.
    """
    folder = Path(folder)
    paths = sorted(folder.glob("*.skeleton")) if folder.is_dir() else []
    out = []
    for path in paths:
        seq = read_skeleton(path)
        for k in range(seq.joints.shape[1]):
            frames = seq.joints[seq.present[:, k], k]
            if len(frames) >= MIN_FRAMES:
                out.append(sliding_windows(frames, window, max(window // 2, 1)))
    if not out:
        raise FileNotFoundError(f"{folder}: no NTU .skeleton recording with a body present in "
                                f">= {MIN_FRAMES} frames")
    return np.concatenate(out).astype(np.float32)


def ntu_people(folder: str | Path) -> list[str]:
    """The performers of a folder's NTU recordings, from the file names (``…P008…`` → ``ntu:P008``)."""
    names = sorted(Path(folder).glob("*.skeleton")) if Path(folder).is_dir() else []
    return sorted({f"ntu:{m.group(0)}" for p in names
                   if (m := re.search(r"P\d{3}", p.name)) is not None})


def real_people_names(ntu_dir: str | Path | None, utkinect_subjects: list[int] | None,
                      ) -> list[str]:
    """The real people a training run may show the model, as its checkpoint records them:
    ``ntu:P008`` per NTU performer of ``ntu_dir``, ``utkinect:s01`` per UTKinect subject."""
    ntu = ntu_people(ntu_dir) if ntu_dir else []
    return ntu + [f"{UTKINECT_PREFIX}{s:02d}" for s in sorted(utkinect_subjects or [])]


def utkinect_subjects_seen(names) -> set[int]:
    """The UTKinect subject ids among :func:`real_people_names`' names."""
    return {int(n[len(UTKINECT_PREFIX):]) for n in names if n.startswith(UTKINECT_PREFIX)}


@dataclass(frozen=True)
class RealPeople:
    """Windows of real people with their labels: ``joints`` float32 ``[N, T, 25, 3]``,
    ``subject``, ``action`` and ``execution`` (run) int64 ``[N]``."""

    joints: np.ndarray
    subject: np.ndarray
    action: np.ndarray
    execution: np.ndarray


def utkinect_people(root: str | Path, subjects: list[int], window: int = 32, stride: int = 4,
                    clock: str = "sensor") -> RealPeople:
    """Windows (stride ``stride``; a segment shorter than ``window`` gives one window held on its
    last pose) of every labelled segment of ``subjects`` in a UTKinect-Action3D folder, on the
    sensor's 30 Hz frame clock (``clock="sensor"``: the frames the recorder skipped
    interpolated, :func:`streamtmr.data.utkinect.on_sensor_clock`, so a window is ``window``
    frames of the rate the model runs at) or row by row (``clock="rows"``, before 2026-12-03).

    Raises ``ValueError`` naming the folder when a subject is not in it or fewer than two
    subjects are asked for (a verifier needs another person to compare with)."""
    if clock not in ("sensor", "rows"):
        raise ValueError(f"UTKinect clock {clock!r}: expected 'sensor' or 'rows'")
    joints, labels = [], []
    for s in of_subjects(read_utkinect(root), subjects, root):
        seq = (on_sensor_clock(s.joints, s.frame_ids) if clock == "sensor"
               else np.asarray(s.joints, np.float32))
        w = sliding_windows(seq, window, stride)
        joints.append(w)
        labels.append(np.tile([s.subject, s.action_index, s.execution], (len(w), 1)))
    lab = np.concatenate(labels).astype(np.int64)
    return RealPeople(np.concatenate(joints).astype(np.float32), lab[:, 0], lab[:, 1], lab[:, 2])


def person_triplets(people: RealPeople, k: int, rng: np.random.Generator,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``k`` index triplets ``(a, b, a2)`` into ``people``, as the synthetic pairs of
    :mod:`streamtmr.data.pairs` are laid out: ``a`` a window of person P doing action X in one
    run, ``a2`` P doing X in the other run, ``b`` another person doing X. Anchors are drawn among
    the windows for which both exist; raises ``ValueError`` when none does."""
    s, a, e = people.subject, people.action, people.execution
    same_act = a[:, None] == a[None, :]
    same_subj = s[:, None] == s[None, :]
    pos = same_act & same_subj & (e[:, None] != e[None, :])
    neg = same_act & ~same_subj
    valid = np.flatnonzero(pos.any(1) & neg.any(1))
    if len(valid) == 0:
        raise ValueError("person_triplets: no window has both a same-person other-run window "
                         "and another person's window of the same action")
    anchors = rng.choice(valid, size=k, replace=len(valid) < k)
    a2 = np.array([rng.choice(np.flatnonzero(pos[i])) for i in anchors])
    b = np.array([rng.choice(np.flatnonzero(neg[i])) for i in anchors])
    return anchors, b, a2
