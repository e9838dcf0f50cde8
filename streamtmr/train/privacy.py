"""Privacy terms that generalise to unseen people (issue 16): pure losses and the verifier.

* **Person verification adversary** (``ver``). A :class:`VerificationHead` scores whether two
  pooled H_action vectors come from the same person. Its pairs come from the cross-identity pair
  stream (:mod:`streamtmr.data.pairs`), whose people are new in every batch, so it cannot fit a
  fixed set of ids: it has to learn what makes a person recognisable in general. The encoder sees
  it through gradient reversal (:func:`streamtmr.models.layers.grad_reverse`): one balanced BCE
  trains the head and, reversed, pushes the encoder towards features on which same-person and
  different-person pairs score alike (verification AUC 0.5). Every pair the head sees shows two
  instances of *the same action* — positive: A and A again, negative: B (doing exactly what A
  did) and A again — so content can never stand in for identity. (A first design paired
  different actions; a probe trained that way on the default's output stayed at chance, AUC
  0.51, because style is compared most easily within one action, as the re-ID attacker does.)
* ``ver_out`` is the same adversary on the *output* (:func:`pose_statistics` of the decoded
  window), which is what attackers see; a probe of that kind re-identifies pairs of fresh people
  in the shipped default's output at AUC 0.73 (``ver`` on pooled H_action stays near 0.5).
* ``ver_dyn`` reads the output's *motion* as the re-ID attackers do: a
  :class:`MotionVerificationHead` (a small temporal CNN before the verifier) over
  :func:`motion_features` of the decoded window, the bone directions, their velocities and the
  root's velocity frame by frame. ``pose_statistics`` are blind to when and how a body moves;
  a pose-atom model publishes only the dummy's poses, so what it leaks is in the sequence.
  ``ver_dyn_pose`` reads the same without the root's velocity: the published root is the
  source's plus a small learned offset, so an adversary on the root keeps finding the person
  in what the decoder can barely change; this one reads the choice of poses only.
* ``ver_real`` is ``ver`` on windows of *real* people (UTKinect, :func:`streamtmr.data.
  real_windows.utkinect_people`): one half of the people for training, the other half for the
  evaluation, so the attack is still on people the anonymizer never saw. A few people repeat
  across a batch, so its labels come from the person ids (:func:`person_pair_targets`).
* **Cross-identity invariance** (``inv_h``): the same content rendered for two people must give
  the same H_action; :func:`invariance_loss` is the squared distance relative to the features'
  own size, so shrinking the features does not lower it. ``inv_out`` is the mean joint distance
  (m) between the two outputs; ``pair_mse`` supervises both with their one shared target, and
  ``pair_atom`` (pose-atom models) both choices of atom with the atom nearest that target's pose
  (:func:`streamtmr.train.tmr.atom_loss`). ``pair_choice`` asks the two people's *choices* to
  agree with each other, frame by frame, wherever the target's atom is: the
  :func:`choice_consistency` of their distributions over the atoms. ``pair_atom`` only rewards
  the right atom, so two people who both miss it may miss it each in their own way, and that
  way is what the re-ID attackers read.
* **Motion dynamics on unlabelled real recordings** (``dyn``): :func:`dynamics_loss` compares the
  per-bone angular speed (rad/frame) of the anonymized output with the source's. It needs no
  target, is blind to bone lengths, and keeps *when and how fast* each limb moves (the action's
  content) without asking for the source's posture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from streamtmr import skeleton
from streamtmr.models.layers import MLP, grad_reverse

#: Loss names of this module (λ keys of TMR's stages).
PRIVACY_LOSSES = ("ver", "ver_out", "ver_dyn", "ver_dyn_pose", "inv_h", "inv_out", "pair_mse",
                  "pair_atom", "pair_choice", "dyn", "ver_real")
#: Size of :func:`pose_statistics`: mean and std over time of 24 bone directions.
POSE_STATISTICS = 2 * 24 * 3
#: Per-frame size of :func:`motion_features`: 24 bone directions, their velocities, the root's
#: velocity (without it, ``root=False``: ``MOTION_FEATURES - 3``).
MOTION_FEATURES = 2 * 24 * 3 + 3


class VerificationHead(nn.Module):
    """Same-person logit of two feature vectors: embed each, compare ``[|z1 − z2|, z1 · z2]``."""

    def __init__(self, d_in: int, d_embed: int = 64):
        super().__init__()
        self.embed = MLP(d_in, d_in, d_embed)
        self.score = MLP(2 * d_embed, d_embed, 1)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """left ``[N, d]``, right ``[M, d]`` → logits ``[N, M]`` of every (left, right) pair."""
        zl, zr = self.embed(left)[:, None], self.embed(right)[None, :]
        zl, zr = torch.broadcast_tensors(zl, zr)
        return self.score(torch.cat([(zl - zr).abs(), zl * zr], -1))[..., 0]


class MotionVerificationHead(VerificationHead):
    """:class:`VerificationHead` behind a temporal CNN: windows of per-frame features ``[N, T,
    d_in]`` → two dilated convolutions → mean and max over time → the verifier. The adversary
    of a sequence, as the re-ID attackers are, where :class:`VerificationHead` reads a vector."""

    def __init__(self, d_in: int, d_hidden: int = 64, d_embed: int = 64):
        super().__init__(2 * d_hidden, d_embed)
        self.temporal = nn.Sequential(
            nn.Conv1d(d_in, d_hidden, 5, padding=2), nn.GELU(),
            nn.Conv1d(d_hidden, d_hidden, 5, padding=4, dilation=2), nn.GELU())

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, T, d_in]`` → ``[N, 2 d_hidden]``."""
        z = self.temporal(x.transpose(1, 2))
        return torch.cat([z.mean(-1), z.amax(-1)], -1)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """left ``[N, T, d_in]``, right ``[M, T, d_in]`` → logits ``[N, M]``."""
        return super().forward(self.pool(left), self.pool(right))


def verification_targets(action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and mask of the pair matrix ``[2K, K]`` of lefts ``cat(a, b)`` × rights ``a2``.

    Row ``i < K`` is person A_i, row ``K + i`` person B_i, column ``j`` person A_j in another
    instance of the same action ``action[j]``. Label 1 only at ``(i, i)`` (A_i with itself).
    A pair is used when both show the same action (``(i, i)`` and ``(K + i, i)`` always).
    """
    k = action.shape[0]
    labels = torch.zeros(2 * k, k, device=action.device)
    labels[torch.arange(k), torch.arange(k)] = 1.0
    mask = torch.cat([action, action])[:, None] == action[None, :]
    return labels, mask


def person_pair_targets(left_person: torch.Tensor, right_person: torch.Tensor,
                        left_action: torch.Tensor, right_action: torch.Tensor,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and mask of the pair matrix ``[N, M]`` when people may repeat across items (a
    few real people): label 1 where the two windows show the same person, a pair used where
    they show the same action. With every item a new person this is
    :func:`verification_targets`."""
    labels = (left_person[:, None] == right_person[None, :]).float()
    return labels, left_action[:, None] == right_action[None, :]


def verification_loss(head: VerificationHead, pooled_a: torch.Tensor, pooled_b: torch.Tensor,
                      pooled_a2: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                      scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced BCE of the head on the pairs of :func:`verification_targets`, with features
    behind gradient reversal (``scale``); returns ``(loss, logits)``. Mean BCE over positives
    plus mean over negatives, halved: 0.693 (ln 2) for a head that outputs 0 everywhere."""
    left = grad_reverse(torch.cat([pooled_a, pooled_b]), scale)
    logits = head(left, grad_reverse(pooled_a2, scale))
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    pos, neg = mask & (labels > 0.5), mask & (labels < 0.5)
    if not bool(pos.any()) or not bool(neg.any()):
        raise ValueError("verification_loss: needs at least one positive and one negative pair")
    return 0.5 * (bce[pos].mean() + bce[neg].mean()), logits


def verification_auc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ROC AUC of ``scores`` for binary ``labels`` (Mann–Whitney, ties count ½); 0.5 = chance."""
    scores, labels = scores.detach().flatten().float(), labels.flatten() > 0.5
    pos, neg = scores[labels], scores[~labels]
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("verification_auc: needs both positive and negative pairs")
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean()


def _window_directions(joints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 24 bone directions ``[B, T, 72]`` of a window ``[B, T, 25, 3]`` in its canonical
    frame (first frame: hips → +X, root at the origin), and the canonical window itself."""
    canon = skeleton.canonicalize(joints, ref_frame=0)[0]
    return skeleton.bone_directions(canon)[:, :, 1:].flatten(2), canon


def pose_statistics(joints: torch.Tensor) -> torch.Tensor:
    """What a style attacker reads off a window ``[B, T, 25, 3]``: the mean and the standard
    deviation over time of the 24 bone directions in the window's canonical frame (first frame:
    hips → +X, root at the origin) → ``[B, 144]``. Differentiable; blind to bone lengths."""
    d = _window_directions(joints)[0]
    return torch.cat([d.mean(1), d.std(1)], -1)


def motion_features(joints: torch.Tensor, root: bool = True) -> torch.Tensor:
    """What a re-ID attacker reads off a window ``[B, T, 25, 3]``, frame by frame, in the
    window's canonical frame (first frame: hips → +X, root at the origin): the 24 bone
    directions, their change from the frame before and the root's displacement (m) →
    ``[B, T, MOTION_FEATURES]`` (the first frame's changes are zero; ``root=False`` leaves the
    root's displacement out). Differentiable; blind to bone lengths and to where the window is
    in the room."""
    d, canon = _window_directions(joints)

    def change(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], 1)

    parts = [d, change(d)] + ([change(canon[:, :, skeleton.ROOT])] if root else [])
    return torch.cat(parts, -1)


def invariance_loss(h_a: torch.Tensor, h_b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``mean ‖h_a − h_b‖² / mean ½(‖h_a‖² + ‖h_b‖²)`` with a detached denominator, over every
    leading index (e.g. ``[B, T, d]`` per frame): 0 when equal, 2 for opposite features."""
    num = (h_a - h_b).pow(2).sum(-1).mean()
    den = 0.5 * (h_a.pow(2).sum(-1) + h_b.pow(2).sum(-1)).mean().detach()
    return num / (den + eps)


def output_invariance(y_a: torch.Tensor, y_b: torch.Tensor) -> torch.Tensor:
    """Mean per-joint distance (m) between two outputs ``[..., 25, 3]``."""
    return (y_a - y_b).norm(dim=-1).mean()


def choice_consistency(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Symmetric KL divergence (nats) between two choices ``softmax(logits)`` ``[..., K]``,
    ``KL(p_a‖p_b) + KL(p_b‖p_a) = Σ (p_a − p_b)(log p_a − log p_b)``, averaged over every
    leading index (e.g. ``[B, T]`` frames): 0 when the two distributions are equal, whichever
    atom they favour."""
    log_a, log_b = F.log_softmax(logits_a, -1), F.log_softmax(logits_b, -1)
    return ((log_a.exp() - log_b.exp()) * (log_a - log_b)).sum(-1).mean()


def angular_speed(joints: torch.Tensor, lag: int = 1, eps: float = 1e-12) -> torch.Tensor:
    """Angle (rad) each bone turns over ``lag`` frames: ``[B, T, 25, 3] → [B, T−lag, 24]``
    (bones in :data:`skeleton` order, the root's empty bone left out). ``atan2(|u × v|, u · v)``
    with ``eps`` under the root keeps the gradient finite where a bone does not turn."""
    if not 1 <= lag < joints.shape[1]:
        raise ValueError(f"angular_speed: lag must be in 1..{joints.shape[1] - 1}, got {lag}")
    d = skeleton.bone_directions(joints)[..., 1:, :]
    u, v = d[:, :-lag], d[:, lag:]
    sin = (torch.linalg.cross(u, v).pow(2).sum(-1) + eps).sqrt()
    return torch.atan2(sin, (u * v).sum(-1))


#: Frames over which :func:`dynamics_loss` measures turning: the Kinect's frame-to-frame jitter
#: stays the same size while real motion over 4 frames (133 ms) is 4× larger than over one.
DYNAMICS_LAG = 4


def dynamics_loss(output: torch.Tensor, source: torch.Tensor, lag: int = DYNAMICS_LAG,
                  ) -> torch.Tensor:
    """Mean ``|ω_output − ω_source|`` of :func:`angular_speed` over ``lag`` frames (rad): the
    output must move each limb when and as fast as the source does, whatever its posture and
    bone lengths."""
    return (angular_speed(output, lag) - angular_speed(source, lag)).abs().mean()
