"""What the attackers see of a window: motion channels per joint and frame, and body-shape
statistics (shared by every attacker backbone)."""

from __future__ import annotations

import numpy as np
import torch

from streamtmr import skeleton

MOTION_CHANNELS = 9
STATIC_FEATURES = 2 * skeleton.NUM_BONES


def window_features(x: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows ``[N, T, 25, 3]`` → (motion ``[N, 9, T, 25]``, static ``[N, 48]``).

    Motion: positions in the window's canonical frame (root of frame 0 at the origin, hips
    facing +X), their velocities and the bone vectors. Static: mean and standard deviation of
    the bone lengths over the window.
    """
    x = torch.as_tensor(np.asarray(x, np.float32) if not torch.is_tensor(x) else x).float()
    if x.ndim != 4 or x.shape[-2:] != (skeleton.NUM_JOINTS, 3):
        raise ValueError(f"expected windows [N, T, 25, 3], got {tuple(x.shape)}")
    canon, _, _ = skeleton.canonicalize(x)
    vel = torch.diff(canon, dim=1, prepend=canon[:, :1])
    bones = skeleton.bone_vectors(canon)
    motion = torch.cat([canon, vel * 10.0, bones], dim=-1).permute(0, 3, 1, 2).contiguous()
    lengths = skeleton.bone_lengths(x)[..., 1:]
    static = torch.cat([lengths.mean(1), lengths.std(1, unbiased=False)], dim=-1)
    return motion, static
