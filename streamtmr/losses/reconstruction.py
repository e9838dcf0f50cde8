"""Reconstruction losses on joint sequences ``[..., T, 25, 3]`` and on latent codes.

Pure functions on tensors; every one returns a scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamtmr import skeleton

__all__ = [
    "bone_length_loss", "cross_reconstruction", "end_effector_mse", "latent_consistency", "mse",
    "smoothness", "triplet", "velocity_loss",
]


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements."""
    return F.mse_loss(pred, target)


def end_effector_mse(pred: torch.Tensor, target: torch.Tensor, weight: float | None = 5.0,
                     joints: tuple[int, ...] = skeleton.END_EFFECTORS) -> torch.Tensor:
    """Joint-weighted MSE: the end effectors (head, hands, feet) weigh ``weight``, the other
    joints 1, normalised by the total weight. ``weight=None``: end effectors only."""
    err = (pred - target).pow(2).mean(-1)  # [..., 25]
    w = torch.ones(skeleton.NUM_JOINTS, dtype=err.dtype, device=err.device)
    if weight is None:
        w = torch.zeros_like(w)
        w[list(joints)] = 1.0
    else:
        w[list(joints)] = float(weight)
    return (err * w).sum(-1).mean() / w.sum()


def cross_reconstruction(pred_ab: torch.Tensor, target_ab: torch.Tensor,
                         pred_ba: torch.Tensor | None = None,
                         target_ba: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-reconstruction: motion of A decoded with B's body should match the ground-truth
    A-on-B (and, when given, B-on-A). Mean of the MSEs of the given pairs."""
    loss = F.mse_loss(pred_ab, target_ab)
    if pred_ba is not None:
        if target_ba is None:
            raise ValueError("cross_reconstruction: pred_ba given without target_ba")
        loss = 0.5 * (loss + F.mse_loss(pred_ba, target_ba))
    return loss


def triplet(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
            margin: float = 0.3) -> torch.Tensor:
    """Triplet margin loss on embeddings ``[B, D]`` (flattened if wider) with Euclidean distance:
    ``mean(max(0, |a − p| − |a − n| + margin))``."""
    a, p, n = (x.flatten(1) for x in (anchor, positive, negative))
    d_ap = torch.linalg.vector_norm(a - p, dim=-1)
    d_an = torch.linalg.vector_norm(a - n, dim=-1)
    return F.relu(d_ap - d_an + margin).mean()


def latent_consistency(z: torch.Tensor, z_ref: torch.Tensor) -> torch.Tensor:
    """Latent consistency: the code of a retargeted motion should equal the source's code (MSE)."""
    return F.mse_loss(z, z_ref)


def bone_length_loss(joints: torch.Tensor, target_lengths: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Bone-length consistency of ``joints [..., T, 25, 3]``: variance of every bone's length
    across frames, plus (with ``target_lengths [..., 25]``) the mean squared deviation from the
    target lengths. Root entry excluded."""
    lengths = skeleton.bone_lengths(joints)[..., 1:]  # [..., T, 24]
    loss = lengths.var(-2, unbiased=False).mean()
    if target_lengths is not None:
        loss = loss + (lengths - target_lengths[..., None, 1:]).pow(2).mean()
    return loss


def smoothness(joints: torch.Tensor) -> torch.Tensor:
    """Mean squared second difference over time (axis -3): penalises jitter."""
    acc = joints[..., 2:, :, :] - 2 * joints[..., 1:-1, :, :] + joints[..., :-2, :, :]
    return acc.pow(2).mean()


def velocity_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the frame-to-frame velocities of two sequences ``[..., T, 25, 3]``."""
    return F.mse_loss(pred[..., 1:, :, :] - pred[..., :-1, :, :],
                      target[..., 1:, :, :] - target[..., :-1, :, :])
