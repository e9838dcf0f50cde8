"""Unlabelled training windows from real NTU RGB+D recordings (the label-free ``dyn`` term).

Every ``*.skeleton`` file of a folder is read with :mod:`streamtmr.data.ntu`; each body's frames
in which it is present become one sequence, cut into ``window``-frame windows with a half-window
stride (a shorter sequence gives one window padded by holding its last pose). No label, person or
action is read: the term that uses these windows needs none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamtmr.data.ntu import read_skeleton
from streamtmr.data.windows import sliding_windows

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
