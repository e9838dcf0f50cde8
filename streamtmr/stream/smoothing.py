"""Smoothing of the published frames across hops, keeping the dummy's bone lengths exactly.

The filter runs on the root position and the unit bone directions (never on joint positions),
and the smoothed pose is rebuilt by forward kinematics with the dummy's bone lengths, so
smoothing cannot change a bone length. Filters: One-Euro (Casiez et al., CHI 2012: a low-pass
whose cutoff rises with speed, little lag on fast motion, little jitter at rest), EMA, none.
State is preallocated per body slot and restarts when the slot's window generation changes.
"""

from __future__ import annotations

import math

import numpy as np

from streamtmr import skeleton
from streamtmr.skeleton import NUM_JOINTS

KINDS = ("one_euro", "ema", "none")


def _alpha(cutoff_hz, dt_s):
    """Smoothing factor of a first-order low-pass with the given cutoff and step."""
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt_s)


class Smoother:
    """Per-slot filter over ``[root, 25 bone directions]``; :meth:`apply` writes into ``out``."""

    def __init__(self, lengths: np.ndarray, max_bodies: int = 6, kind: str = "one_euro",
                 min_cutoff: float = 2.0, beta: float = 0.3, d_cutoff: float = 1.0,
                 ema_alpha: float = 0.5):
        if kind not in KINDS:
            raise ValueError(f"smoothing must be one of {KINDS}, got {kind!r}")
        if min(min_cutoff, d_cutoff) <= 0 or beta < 0 or not 0 < ema_alpha <= 1:
            raise ValueError("smoothing: cutoffs must be > 0, beta >= 0, ema_alpha in (0, 1]")
        self.kind = kind
        self.lengths = np.asarray(lengths, np.float32)
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.ema_alpha = ema_alpha
        n = NUM_JOINTS + 1  # the root position, then one direction per joint (entry 1 unused)
        self._x = np.zeros((max_bodies, n, 3), np.float32)
        self._dx = np.zeros((max_bodies, n, 3), np.float32)
        self._t = np.zeros(max_bodies, np.float64)
        self._gen = np.full(max_bodies, -1, np.int64)  # the window generation a slot holds

    def apply(self, slots: list[int], generations: list[int], joints: np.ndarray, t_s: float,
              out: np.ndarray) -> np.ndarray:
        """Filter the frames ``joints [B, 25, 3]`` of ``slots`` taken at time ``t_s``; the result
        (dummy bone lengths) goes to ``out[:B]``, which is returned."""
        b = len(slots)
        res = out[:b]
        if self.kind == "none" or b == 0:
            np.copyto(res, joints)
            return res
        x = np.empty((b, NUM_JOINTS + 1, 3), np.float32)
        x[:, 0] = joints[:, skeleton.ROOT]
        x[:, 1:] = skeleton.bone_directions(joints)
        idx = np.asarray(slots, np.int64)
        gens = np.asarray(generations, np.int64)
        fresh = self._gen[idx] != gens
        prev_x, prev_dx = self._x[idx], self._dx[idx]
        dt = np.maximum(t_s - self._t[idx], 1e-3)[:, None, None].astype(np.float32)
        if self.kind == "ema":
            new_x = prev_x + self.ema_alpha * (x - prev_x)
            new_dx = prev_dx
        else:
            dx = (x - prev_x) / dt
            new_dx = prev_dx + _alpha(self.d_cutoff, dt) * (dx - prev_dx)
            speed = np.linalg.norm(new_dx, axis=-1, keepdims=True)
            new_x = prev_x + _alpha(self.min_cutoff + self.beta * speed, dt) * (x - prev_x)
        new_x[fresh] = x[fresh]
        new_dx[fresh] = 0.0
        self._x[idx], self._dx[idx], self._t[idx] = new_x, new_dx, t_s
        self._gen[idx] = gens
        res[:] = skeleton.forward_kinematics(new_x[:, 0], new_x[:, 1:] / np.maximum(
            np.linalg.norm(new_x[:, 1:], axis=-1, keepdims=True), skeleton.EPS), self.lengths)
        return res
