"""Physical-plausibility losses and measures on joint sequences ``[..., T, 25, 3]`` (metres,
Y up, time on axis -3). Pure functions on tensors; losses return scalars."""

from __future__ import annotations

import math

import torch

from streamtmr import skeleton

__all__ = [
    "JOINT_ANGLE_LIMITS", "acceleration", "angular_momentum", "foot_contacts", "foot_skating",
    "joint_angle_validity", "joint_angle_violation", "joint_angles", "velocity_frechet",
    "velocity_mmd",
]

_J = skeleton.JOINT
#: (parent, joint, child, min, max): interior angle at ``joint`` between the bones to ``parent``
#: and to ``child``, in radians. A straight limb is π; limits forbid folding the limb onto itself.
JOINT_ANGLE_LIMITS: tuple[tuple[int, int, int, float, float], ...] = tuple(
    (_J[a + s], _J[b + s], _J[c + s], lo, math.pi)
    for s in ("Left", "Right")
    for a, b, c, lo in (("Shoulder", "Elbow", "Wrist", 0.35), ("Hip", "Knee", "Ankle", 0.35),
                        ("Elbow", "Wrist", "Hand", 1.4), ("Knee", "Ankle", "Foot", 0.9))
)


def joint_angles(joints: torch.Tensor, limits=JOINT_ANGLE_LIMITS) -> torch.Tensor:
    """Interior angles ``[..., T, L]`` at the limited joints (``skeleton.angle_between``)."""
    p, j, c = (list(x) for x in zip(*[lim[:3] for lim in limits]))
    return skeleton.angle_between(joints[..., p, :] - joints[..., j, :],
                                  joints[..., c, :] - joints[..., j, :])


def joint_angle_violation(joints: torch.Tensor, limits=JOINT_ANGLE_LIMITS) -> torch.Tensor:
    """Mean squared excursion (rad²) of the interior angles outside their [min, max] limits."""
    ang = joint_angles(joints, limits)
    lo = ang.new_tensor([lim[3] for lim in limits])
    hi = ang.new_tensor([lim[4] for lim in limits])
    return (torch.relu(lo - ang) + torch.relu(ang - hi)).pow(2).mean()


def joint_angle_validity(joints: torch.Tensor, limits=JOINT_ANGLE_LIMITS) -> torch.Tensor:
    """Fraction of (frame, joint) angles inside their limits (a measure, not differentiable)."""
    ang = joint_angles(joints, limits)
    lo = ang.new_tensor([lim[3] for lim in limits])
    hi = ang.new_tensor([lim[4] for lim in limits])
    return ((ang >= lo) & (ang <= hi)).float().mean()


def acceleration(joints: torch.Tensor, fps: float = 30.0) -> torch.Tensor:
    """Mean joint acceleration magnitude (m/s²) from second differences."""
    acc = joints[..., 2:, :, :] - 2 * joints[..., 1:-1, :, :] + joints[..., :-2, :, :]
    return torch.linalg.vector_norm(acc, dim=-1).mean() * fps * fps


def foot_contacts(joints: torch.Tensor, height: float = 0.05, floor: torch.Tensor | None = None,
                  ) -> torch.Tensor:
    """Boolean contacts ``[..., T, 4]`` of ``skeleton.FEET``: a foot joint within ``height``
    metres of the floor. The floor defaults to the lowest foot joint of each sequence."""
    y = joints[..., list(skeleton.FEET), 1]  # [..., T, 4]
    if floor is None:
        floor = y.amin(dim=(-2, -1), keepdim=True)
    else:
        floor = torch.as_tensor(floor, dtype=y.dtype, device=y.device)[..., None, None]
    return (y - floor) < height


def foot_skating(joints: torch.Tensor, height: float = 0.05, fps: float = 30.0,
                 floor: torch.Tensor | None = None) -> torch.Tensor:
    """Foot skating: mean horizontal speed (m/s) of foot joints in contact with the floor in
    both frames of a step. 0 when no foot is ever in contact."""
    feet = joints[..., list(skeleton.FEET), :]
    contact = foot_contacts(joints, height, floor)
    both = (contact[..., 1:, :] & contact[..., :-1, :]).to(feet.dtype)
    step = feet[..., 1:, :, :] - feet[..., :-1, :, :]
    speed = torch.linalg.vector_norm(step[..., [0, 2]], dim=-1) * fps
    return (speed * both).sum() / both.sum().clamp_min(1.0)


def angular_momentum(joints: torch.Tensor, masses: torch.Tensor | None = None,
                     fps: float = 30.0) -> torch.Tensor:
    """Angular-momentum smoothness: mean squared frame-to-frame change of the whole-body angular
    momentum about the centre of mass, ``L = Σ m_j (r_j − c) × (v_j − v_c)`` (per unit mass;
    uniform joint masses unless ``masses [25]`` is given). Free bodies conserve L."""
    if masses is None:
        masses = joints.new_full((skeleton.NUM_JOINTS,), 1.0 / skeleton.NUM_JOINTS)
    else:
        masses = masses / masses.sum()
    w = masses[:, None]
    com = (joints * w).sum(-2, keepdim=True)
    rel = joints - com
    vel = (rel[..., 1:, :, :] - rel[..., :-1, :, :]) * fps
    mid = 0.5 * (rel[..., 1:, :, :] + rel[..., :-1, :, :])
    momentum = (torch.linalg.cross(mid, vel, dim=-1) * w).sum(-2)  # [..., T-1, 3]
    return (momentum[..., 1:, :] - momentum[..., :-1, :]).pow(2).sum(-1).mean()


def _velocity_samples(joints: torch.Tensor) -> torch.Tensor:
    """Velocity feature vectors ``[N, 75]`` (one per frame step) of ``[..., T, 25, 3]``."""
    vel = joints[..., 1:, :, :] - joints[..., :-1, :, :]
    return vel.reshape(-1, skeleton.NUM_JOINTS * 3)


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.transpose(-1, -2)


def velocity_frechet(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fréchet distance between Gaussians fitted to the per-frame velocity vectors of two sets of
    sequences: ``|μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½)``."""
    x, y = _velocity_samples(pred).double(), _velocity_samples(target).double()
    mu_x, mu_y = x.mean(0), y.mean(0)
    cx = torch.cov(x.t(), correction=0)
    cy = torch.cov(y.t(), correction=0)
    sx = _sqrtm_psd(cx)
    cross = torch.linalg.eigvalsh(sx @ cy @ sx).clamp_min(0).sqrt().sum()
    fd = (mu_x - mu_y).pow(2).sum() + torch.trace(cx) + torch.trace(cy) - 2 * cross
    return fd.clamp_min(0).to(pred.dtype)


def velocity_mmd(pred: torch.Tensor, target: torch.Tensor, sigma: float = 0.05) -> torch.Tensor:
    """Squared maximum mean discrepancy (biased estimator) with a Gaussian kernel of bandwidth
    ``sigma`` between the per-frame velocity vectors of two sets of sequences."""
    x, y = _velocity_samples(pred), _velocity_samples(target)

    def k(a, b):
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * sigma * sigma))

    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()
