"""The checks every anonymized body passes before it may be published.

One gate, used by the live node (:class:`streamtmr.stream.node.Node`) and by the offline path
that writes what the node would publish (:func:`streamtmr.offline.publish_sequences`). Per body
of one engine call (output ``y [B, k, 25, 3]`` against the source frames it came from), in
order, each failure named by the reason it is counted under:

1. ``bad_output``: every coordinate finite and within the wire format's range (what a
   subscriber's decoder accepts);
2. ``bone_check``: the dummy's bone lengths, to ``bone_tol`` metres;
3. ``leak_guard``: the output does not track the source's bone directions
   (:mod:`streamtmr.leak_guard`), when the guard is on.

A body that fails is never published from this output: the node republishes its held frame or
nothing. Pure numpy; only the leak guard keeps per-slot history.
"""

from __future__ import annotations

import numpy as np

from streamtmr import skeleton
from streamtmr.leak_guard import MARGIN_DEG, LeakGuard, frame_angles, frame_margin, pooled_scores
from streamtmr.skeleton import NUM_JOINTS
from streamtmr.stream import wire

#: Why a body's output is refused, in the order the checks run.
REASONS = ("bad_output", "bone_check", "leak_guard")


def bone_errors(joints: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Max |bone length − dummy length| per body: ``joints [B, 25, 3]`` → ``[B]``."""
    return np.abs(skeleton.bone_lengths(joints)[:, 1:] - lengths[1:]).max(axis=-1)


def in_range(joints: np.ndarray) -> np.ndarray:
    """Per body: every coordinate finite and within the wire format's range (what a
    subscriber's decoder accepts): ``joints [B, 25, 3]`` → ``[B]`` bool."""
    with np.errstate(invalid="ignore"):
        flat = np.abs(joints).reshape(len(joints), NUM_JOINTS * 3)
        return flat.max(axis=-1, initial=0.0) <= wire.MAX_ABS_COORD


def finite_rows(y: np.ndarray) -> np.ndarray:
    """Per body: every value finite. ``y [B, ...]`` → ``[B]`` bool."""
    return np.isfinite(y).reshape(len(y), -1).all(axis=-1) if len(y) else np.ones(0, bool)


def frame_checks(y: np.ndarray, lengths: np.ndarray, bone_tol: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Checks 1 and 2 on every frame of ``y [B, k, 25, 3]`` → (in range ``[B, k]``, in range
    with the dummy's bone lengths ``[B, k]``)."""
    b, k = y.shape[:2]
    flat = y.reshape(b * k, NUM_JOINTS, 3)
    sane = in_range(flat).reshape(b, k)
    with np.errstate(invalid="ignore"):
        bones = (bone_errors(flat, lengths) <= bone_tol).reshape(b, k)
    return sane, bones & sane


class OutputGate:
    """The per-body checks on engine output for up to ``max_bodies`` body slots."""

    def __init__(self, lengths: np.ndarray, max_bodies: int, bone_tol: float,
                 leak_guard: bool = True, margin_deg: float = MARGIN_DEG):
        self.lengths = np.asarray(lengths, np.float32)
        self.bone_tol = float(bone_tol)
        self.guard = LeakGuard(max_bodies, margin_deg) if leak_guard else None

    def check(self, y: np.ndarray, src: np.ndarray, slots: list[int], generations: list[int]
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Output ``y [B, k, 25, 3]`` of the bodies in ``slots`` (their window
        ``generations``), computed from the source frames ``src [B, k, 25, 3]`` → (``[B]``
        bool: may be published, ``{reason: [B] bool}`` for the bodies refused, by the first
        check each failed)."""
        sane, bones = (c.all(axis=1) for c in frame_checks(y, self.lengths, self.bone_tol))
        ok = bones.copy()
        if self.guard is not None and ok.any():
            good = np.flatnonzero(ok)
            angles = frame_angles(y[good], src[good])  # (g, k)
            ok[good] = self.guard.update([slots[i] for i in good],
                                         [generations[i] for i in good], angles)
        return ok, {"bad_output": ~sane, "bone_check": sane & ~bones, "leak_guard": bones & ~ok}


def check_tracks(y: np.ndarray, src: np.ndarray, lengths: np.ndarray, dummy_lengths: np.ndarray,
                 bone_tol: float, leak_guard: bool = True, margin_deg: float = MARGIN_DEG
                 ) -> np.ndarray:
    """:meth:`OutputGate.check` on whole tracks at once, as the node applies it frame by frame
    to one body per track (one generation each): output ``y [B, L, 25, 3]`` of the sources
    ``src`` (``lengths [B]`` real frames each) → ``[B, L]`` bool, False past a track's end.
    The leak guard pools each track's scores over the frames that passed the first two checks,
    as :class:`~streamtmr.leak_guard.LeakGuard` does (``tests/test_gate.py``)."""
    b, length = y.shape[:2]
    _, ok = frame_checks(y, np.asarray(dummy_lengths, np.float32), bone_tol)
    ok &= np.arange(length) < np.asarray(lengths)[:, None]
    if not leak_guard:
        return ok
    frame = frame_margin(margin_deg)
    angles = frame_angles(y, src)  # (B, L)
    for i in range(b):
        checked = np.flatnonzero(ok[i])
        pooled = pooled_scores(angles[i, checked])
        ok[i, checked] = (pooled >= margin_deg) & (angles[i, checked] >= frame)
    return ok
