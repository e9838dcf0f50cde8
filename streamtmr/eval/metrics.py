"""Evaluation metrics: pure numpy functions over skeleton sequences and classifier scores.

Sequences are ``[..., T, 25, 3]`` arrays in metres (Kinect v2 camera space, Y up). Every
function returns a Python float averaged over all leading dimensions. The physical measures
(angles, acceleration, foot contacts, velocity MMD) wrap :mod:`streamtmr.losses.physical` so
training and evaluation share one definition.
"""

from __future__ import annotations

import numpy as np
import torch

from streamtmr import skeleton
from streamtmr.losses import physical

# --------------------------------------------------------------------------------------------
# Reconstruction
# --------------------------------------------------------------------------------------------


def _pair(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: {pred.shape} vs {ref.shape}")
    return pred, ref


def mse(pred, ref) -> float:
    """Mean squared error over every coordinate (m²)."""
    pred, ref = _pair(pred, ref)
    return float(np.mean((pred - ref) ** 2))


def mpjpe_mm(pred, ref) -> float:
    """Mean per-joint position error: mean Euclidean joint distance, in millimetres."""
    pred, ref = _pair(pred, ref)
    return float(np.linalg.norm(pred - ref, axis=-1).mean() * 1000.0)


def pose_mpjpe_mm(pred, ref, root: int = 0) -> float:
    """Root-aligned MPJPE (mm): joints relative to the root joint, so that only the pose is
    compared, not where the body is (``pred``/``ref`` ``[..., 25, 3]``)."""
    pred, ref = _pair(pred, ref)
    return mpjpe_mm(pred - pred[..., root:root + 1, :], ref - ref[..., root:root + 1, :])


# --------------------------------------------------------------------------------------------
# Physical plausibility
# --------------------------------------------------------------------------------------------


def bone_length_variance_mm2(seq) -> float:
    """Variance of each bone's length across frames (axis -3), mean over bones, in mm².

    0 for a rigid body (every retargeting method); positive for noise-like perturbations.
    """
    seq = np.asarray(seq, np.float64)
    lengths = skeleton.bone_lengths(seq)[..., 1:] * 1000.0  # [..., T, 24] mm
    return float(lengths.var(axis=-2).mean())


def _t(seq) -> torch.Tensor:
    return torch.as_tensor(np.asarray(seq, np.float64))


def joint_angle_validity(seq) -> float:
    """Percentage of (frame, joint) interior angles inside the anatomical limits of
    :data:`streamtmr.losses.JOINT_ANGLE_LIMITS` (elbows, knees, wrists, ankles)."""
    return float(physical.joint_angle_validity(_t(seq))) * 100.0


def mean_acceleration(seq, fps: float = 30.0) -> float:
    """Smoothness: mean joint acceleration magnitude (second difference along axis -3), m/s²."""
    seq = np.asarray(seq)
    if seq.shape[-3] < 3:
        raise ValueError("mean_acceleration needs at least 3 frames")
    return float(physical.acceleration(_t(seq), fps))


def velocity_mmd(pred, ref, sigma: float = 0.05, max_samples: int = 2000, seed: int = 0
                 ) -> float:
    """Squared MMD (Gaussian kernel, bandwidth ``sigma`` m/frame) between the per-frame joint
    velocity vectors of two sets of sequences ``[..., T, 25, 3]``.

    Frame steps are pooled over all leading dimensions and subsampled (same seed for both) to at
    most ``max_samples`` each, which bounds the kernel matrices.
    """
    def steps(seq):
        seq = np.asarray(seq, np.float64).reshape(-1, *np.shape(seq)[-3:])
        pairs = np.stack([seq[:, :-1], seq[:, 1:]], axis=2).reshape(-1, 2, skeleton.NUM_JOINTS, 3)
        keep = np.random.default_rng(seed).permutation(len(pairs))[:max_samples]
        return torch.as_tensor(pairs[np.sort(keep)])

    return float(physical.velocity_mmd(steps(pred), steps(ref), sigma))


def foot_skate(seq, height: float = 0.05, fps: float = 30.0) -> float:
    """Mean horizontal speed (m/s) of foot joints that stay within ``height`` m of the
    sequence's floor (its lowest foot joint) across a frame step; 0 without contacts."""
    return float(physical.foot_skating(_t(seq), height, fps))


def foot_contact_correlation(pred, ref, height: float = 0.05) -> float:
    """Pearson correlation between the foot-contact labels of ``pred`` and ``ref`` (pooled over
    every sequence, frame and foot joint). 1 when both agree everywhere (also when both are
    constant), 0 when one is constant and they differ."""
    a = physical.foot_contacts(_t(pred), height).numpy().ravel().astype(np.float64)
    b = physical.foot_contacts(_t(ref), height).numpy().ravel().astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------


def streamed_offline_gap_mm(streamed_newest, offline) -> float:
    """MPJPE (mm) between the newest frame of each streamed window ``[T, 25, 3]`` and the
    offline (whole-sequence) output of the same frames."""
    return mpjpe_mm(streamed_newest, offline)


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def topk_accuracy(scores, labels, k: int = 1) -> float:
    """Fraction of rows whose true label is among the ``k`` highest scores."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def balanced_accuracy(pred, labels) -> float:
    """Mean per-class recall over the classes present in ``labels``."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    return float(np.mean([(pred[labels == c] == c).mean() for c in np.unique(labels)]))


def _binary(scores, labels, what: str) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        raise ValueError(f"{what} needs both positive and negative labels")
    return scores, labels


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (probability a positive outscores a negative; ties count ½),
    scikit-learn's ``roc_auc_score``."""
    from sklearn.metrics import roc_auc_score

    scores, labels = _binary(scores, labels, "roc_auc")
    return float(roc_auc_score(labels, scores))


def equal_error_rate(scores, labels) -> float:
    """Error rate at the threshold where false-accept and false-reject rates are closest (their
    mean there; the lowest such threshold), from scikit-learn's ``roc_curve``."""
    from sklearn.metrics import roc_curve

    scores, labels = _binary(scores, labels, "equal_error_rate")
    n_pos, n_neg = labels.sum(), (~labels).sum()
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    # ascending thresholds; rates rebuilt from integer counts so that equal gaps compare equal
    far = np.rint(fpr[::-1] * n_neg) / n_neg
    frr = np.rint((1 - tpr[::-1]) * n_pos) / n_pos
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2)
