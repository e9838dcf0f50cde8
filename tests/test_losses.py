"""Loss library: each loss on a case with a known value, and a finite gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamtmr import losses as L
from streamtmr import skeleton
from streamtmr.dummy import default_dummy
from streamtmr.models.layers import GradientReversal, grad_reverse

torch.set_num_threads(1)
REST = torch.tensor(np.array(default_dummy().rest_pose()))  # [25, 3], feet at y ≈ -0.78


def finite_grad(loss: torch.Tensor, *inputs: torch.Tensor) -> None:
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    assert any(g is not None for g in grads)
    for g in grads:
        assert g is None or torch.isfinite(g).all()


def seq(t: int = 10, seed: int = 0, noise: float = 0.01) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = REST.expand(2, t, 25, 3) + noise * torch.randn(2, t, 25, 3, generator=gen)
    return x.clone().requires_grad_(True)


# ------------------------------------------------------------------ disentanglement


def test_gradient_reversal_flips_and_scales_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    y = grad_reverse(x, 0.5)
    torch.testing.assert_close(y, x)
    (g,) = torch.autograd.grad((y * 2).sum(), x)
    torch.testing.assert_close(g, torch.full_like(x, -1.0))
    layer = GradientReversal(2.0)
    (g,) = torch.autograd.grad(layer(x).sum(), x)
    torch.testing.assert_close(g, torch.full_like(x, -2.0))


def test_action_ce_takes_logits():
    logits = torch.zeros(3, 4, requires_grad=True)
    loss = L.action_ce(logits, torch.tensor([0, 1, 2]))
    assert loss.item() == pytest.approx(math.log(4))
    confident = torch.tensor([[10.0, 0, 0, 0]], requires_grad=True)
    ce = L.action_ce(confident, torch.tensor([0]))
    assert ce.item() == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 3)), abs=1e-6)
    finite_grad(loss, logits)


def test_entropy_gap_zero_at_uniform_logc_at_certain():
    uniform = torch.zeros(2, 5, requires_grad=True)
    assert L.entropy_gap(uniform).item() == pytest.approx(0.0, abs=1e-6)
    certain = torch.tensor([[100.0, 0, 0, 0, 0]])
    assert L.entropy_gap(certain).item() == pytest.approx(math.log(5), abs=1e-4)
    logits = torch.randn(3, 5, requires_grad=True)
    finite_grad(L.entropy_gap(logits), logits)


def test_info_nce_known_value():
    # three unit vectors: 0 and 1 share a label; anchor 2 has no positive and is skipped
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    tau = 0.5
    c = 1 / math.sqrt(2)
    # anchor 0: positive 1 (sim 0), negative 2 (sim c); anchor 1 is symmetric
    expected = -math.log(math.exp(0 / tau) / (math.exp(0 / tau) + math.exp(c / tau)))
    loss = L.info_nce(z, labels, tau=tau)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    finite_grad(loss, z)
    assert L.info_nce(z, torch.tensor([0, 1, 2])).item() == 0.0  # no positives at all


def test_orthogonality_measures():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    b = torch.tensor([[0.0, 3.0], [2.0, 2.0]], requires_grad=True)
    assert L.orthogonality(a, b).item() == pytest.approx(0.5)  # |cos| = 0 and 1
    finite_grad(L.orthogonality(a, b), a, b)
    # two samples whose centred features are parallel: |âᵀb̂|² = 4, / B² = 1
    pa = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    pb = torch.tensor([[2.0], [0.0]], requires_grad=True)
    assert L.subspace_orthogonality(pa, pb).item() == pytest.approx(1.0)
    finite_grad(L.subspace_orthogonality(pa + 0.1 * torch.randn(2, 2), pb), pa, pb)
    # orthogonal centred directions, and a constant second set (one body)
    qa = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    qb = torch.tensor([[0.0], [0.0], [1.0], [-1.0]])
    assert L.subspace_orthogonality(qa[:, :1], qb).item() == pytest.approx(0.0, abs=1e-7)
    assert L.subspace_orthogonality(qa, torch.ones(4, 3)).item() == 0.0
    wide = torch.randn(6, 5, requires_grad=True)
    narrow = torch.randn(6, 3, requires_grad=True)
    val = L.subspace_orthogonality(wide, narrow)
    assert 0 <= val.item() <= 1
    finite_grad(val, wide, narrow)


def test_cross_correlation_mi():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(256, 3, generator=gen, requires_grad=True)
    same = L.cross_correlation_mi(a[:, :1], 2 * a[:, :1] + 1)
    assert same.item() == pytest.approx(1.0, abs=1e-4)
    assert L.cross_correlation_mi(a[:, :1], -a[:, :1]).item() == pytest.approx(1.0, abs=1e-4)
    b = torch.randn(256, 4, generator=gen)
    indep = L.cross_correlation_mi(a, b)
    assert indep.item() < 0.02
    finite_grad(indep, a)


# ------------------------------------------------------------------ reconstruction


def test_mse_and_end_effector_mse():
    pred = torch.zeros(2, 3, 25, 3, requires_grad=True)
    target = torch.zeros(2, 3, 25, 3)
    target[..., skeleton.JOINT["HandLeft"], :] = 1.0  # one end effector off by 1 per axis
    assert L.mse(pred, target).item() == pytest.approx(1 / 25)
    ee = L.end_effector_mse(pred, target, weight=5.0)
    assert ee.item() == pytest.approx(5.0 / (20 + 5 * 5))
    assert L.end_effector_mse(pred, target, weight=None).item() == pytest.approx(1 / 5)
    finite_grad(ee, pred)


def test_cross_reconstruction_triplet_latent():
    p = torch.zeros(2, 4, requires_grad=True)
    t = torch.ones(2, 4)
    assert L.cross_reconstruction(p, t).item() == pytest.approx(1.0)
    both = L.cross_reconstruction(p, t, p, torch.zeros(2, 4))
    assert both.item() == pytest.approx(0.5)
    finite_grad(both, p)
    with pytest.raises(ValueError):
        L.cross_reconstruction(p, t, p)
    a = torch.zeros(1, 2, requires_grad=True)
    pos, neg = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    trip = L.triplet(a, pos, neg, margin=1.5)
    assert trip.item() == pytest.approx(1.0 - 2.0 + 1.5)
    finite_grad(trip, a)
    assert L.triplet(a, pos, neg, margin=0.5).item() == 0.0
    z = torch.zeros(3, 2, requires_grad=True)
    lat = L.latent_consistency(z, torch.full((3, 2), 2.0))
    assert lat.item() == pytest.approx(4.0)
    finite_grad(lat, z)


def test_bone_length_loss():
    lengths = torch.tensor(np.array(default_dummy().lengths))
    x = REST.expand(4, 25, 3).clone().requires_grad_(True)
    assert L.bone_length_loss(x, lengths).item() == pytest.approx(0.0, abs=1e-10)
    # second half of the frames uniformly scaled by 1.1: variance (0.05 l)², deviation (0.1 l)²/2
    scale = torch.tensor([1.0, 1.0, 1.1, 1.1])[:, None, None]
    y = x * scale
    l2 = lengths[1:].pow(2).mean().item()
    expected = 0.05 ** 2 * l2 + 0.5 * 0.1 ** 2 * l2
    loss = L.bone_length_loss(y, lengths)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    finite_grad(loss, x)


def test_smoothness_and_velocity_loss():
    t = torch.arange(6, dtype=torch.float32)
    lin = (t[:, None, None] * torch.ones(6, 25, 3)).requires_grad_(True)
    assert L.smoothness(lin).item() == pytest.approx(0.0)
    quad = (t[:, None, None] ** 2 * torch.ones(6, 25, 3)).requires_grad_(True)
    assert L.smoothness(quad).item() == pytest.approx(4.0)  # second difference of t² is 2
    finite_grad(L.smoothness(quad), quad)
    vel = L.velocity_loss(quad, lin)  # velocities 2t+1 vs 1 → (2t)², t = 0..4
    assert vel.item() == pytest.approx(np.mean([(2 * k) ** 2 for k in range(5)]))
    finite_grad(vel, quad)


# ------------------------------------------------------------------ physical


def test_joint_angle_limits():
    x = REST[None].clone().requires_grad_(True)  # straight limbs: angles ≈ π, all valid
    assert L.joint_angle_violation(x).item() == pytest.approx(0.0, abs=1e-8)
    assert L.joint_angle_validity(x).item() == 1.0
    # fold the left forearm (wrist, hand, hand tip) straight back up along the upper arm:
    # elbow angle 0 < 0.35 rad, every other limited angle unchanged
    dirs = skeleton.bone_directions(REST).clone()
    e = skeleton.JOINT["ElbowLeft"]
    for name in ("WristLeft", "HandLeft", "HandTipLeft"):
        dirs[skeleton.JOINT[name]] = -dirs[e]
    folded = skeleton.forward_kinematics(REST[0], dirs, skeleton.bone_lengths(REST))
    folded = folded[None].requires_grad_(True)
    angles = L.joint_angles(folded)
    assert angles.min().item() == pytest.approx(0.0, abs=1e-3)
    viol = L.joint_angle_violation(folded)
    n = len(L.JOINT_ANGLE_LIMITS)
    assert viol.item() == pytest.approx(0.35 ** 2 / n, rel=1e-2)
    assert L.joint_angle_validity(folded).item() == pytest.approx((n - 1) / n)
    finite_grad(L.joint_angle_violation(x * 1.0 + 0.01 * torch.randn_like(x)), x)


def test_acceleration():
    t = torch.arange(5, dtype=torch.float32)
    x = (0.5 * t[:, None, None] ** 2 * torch.tensor([1.0, 0, 0]) + torch.zeros(5, 25, 3))
    x.requires_grad_(True)
    # second difference 1 m per frame² → 1 · fps² m/s²
    assert L.acceleration(x, fps=30).item() == pytest.approx(900.0)
    finite_grad(L.acceleration(x), x)


def test_foot_contacts_and_skating():
    t = 5
    still = REST.expand(t, 25, 3).clone()
    assert L.foot_contacts(still).all()  # feet define the floor
    assert L.foot_skating(still).item() == pytest.approx(0.0)
    slide = still + torch.arange(t, dtype=torch.float32)[:, None, None] * torch.tensor(
        [0.01, 0.0, 0.0])
    slide.requires_grad_(True)
    skate = L.foot_skating(slide, fps=30)
    contacts = L.foot_contacts(slide)
    assert contacts.all()  # rest-pose feet are flat: ankles and feet at the floor
    assert skate.item() == pytest.approx(0.3)  # 1 cm per frame at 30 Hz
    finite_grad(skate, slide)
    lifted = still.clone()
    lifted[..., 1] += torch.linspace(0, 1, t)[:, None]  # jumps: only frame 0 touches
    assert L.foot_skating(lifted, floor=torch.tensor(REST[:, 1].min())).item() == 0.0


def test_angular_momentum():
    still = REST.expand(6, 25, 3).clone().requires_grad_(True)
    assert L.angular_momentum(still).item() == pytest.approx(0.0)
    # uniform spin about the vertical conserves L; spin-up does not
    ang = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    spin = torch.matmul(REST, skeleton.rotation_y(ang).transpose(-1, -2))
    uniform = L.angular_momentum(spin).item()
    accel = torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0, 1.5])
    spun = torch.matmul(REST, skeleton.rotation_y(accel).transpose(-1, -2)).requires_grad_(True)
    am = L.angular_momentum(spun)
    assert am.item() > 100 * uniform
    finite_grad(am, spun)


def test_velocity_frechet_and_mmd():
    a = seq(t=40, seed=1, noise=0.02)
    b = seq(t=40, seed=1, noise=0.02).detach()
    assert L.velocity_frechet(a, b).item() == pytest.approx(0.0, abs=1e-6)
    assert L.velocity_mmd(a, b).item() == pytest.approx(0.0, abs=1e-6)
    # a constant drift of d per frame on every coordinate shifts the velocity mean by d
    d = 0.01
    drift = b + d * torch.arange(40, dtype=torch.float32)[:, None, None]
    fd = L.velocity_frechet(drift, b)
    assert fd.item() == pytest.approx(75 * d * d, rel=1e-3)
    mmd = L.velocity_mmd(a, drift.detach())
    assert mmd.item() > 0.01
    finite_grad(L.velocity_frechet(a, drift.detach()), a)
    finite_grad(mmd, a)
