"""Disentanglement losses: keep action features free of identity, and identity free of action.

Pure functions on tensors; every one returns a scalar. The gradient-reversal layer that turns a
classifier into an adversary is a layer: :func:`streamtmr.models.layers.grad_reverse`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "action_ce", "cross_correlation_mi", "entropy_gap", "info_nce", "orthogonality",
    "subspace_orthogonality",
]


def action_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Action-recognition cross-entropy on raw logits ``[B, C]`` (no softmax before)."""
    return F.cross_entropy(logits, labels)


def entropy_gap(logits: torch.Tensor) -> torch.Tensor:
    """Re-identification entropy maximisation: ``log C − H(softmax(logits))`` averaged over B.

    0 when the classifier's prediction is uniform over its C classes, ``log C`` when it is
    certain. Minimising it pushes features towards carrying no subject information.
    """
    logp = F.log_softmax(logits, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    return (math.log(logits.shape[-1]) - entropy).mean()


def info_nce(z: torch.Tensor, labels: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """Supervised InfoNCE with cosine similarity: positives are the other samples with the same
    label. For each anchor with at least one positive, the loss is the mean over its positives of
    ``−log(exp(s⁺/τ) / Σ_{k≠anchor} exp(s_k/τ))``; anchors without a positive are skipped (a
    batch with none gives 0)."""
    z = F.normalize(z, dim=-1)
    sim = z @ z.t() / tau
    b = z.shape[0]
    self_mask = torch.eye(b, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=-1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(-1)
    has = n_pos > 0
    if not bool(has.any()):
        return z.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(-1)[has] / n_pos[has]
    return per_anchor.mean()


def orthogonality(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean ``|cos(a_i, b_i)|`` of paired vectors ``[B, D]`` (0 when orthogonal)."""
    return F.cosine_similarity(a, b, dim=-1, eps=1e-8).abs().mean()


def subspace_orthogonality(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Soft subspace orthogonality of two feature sets of any widths, ``a [B, Da]`` and
    ``b [B, Db]`` (the difference loss of Domain Separation Networks, Bousmalis et al. 2016):
    features are centred over the batch, rows L2-normalised, and the loss is
    ``‖âᵀ b̂‖²_F / B²`` (in [0, 1]). 0 when the two centred feature sets span orthogonal
    directions across the batch; a constant ``b`` (one body) gives 0."""
    a = F.normalize(a - a.mean(0), dim=-1)
    b = F.normalize(b - b.mean(0), dim=-1)
    return (a.t() @ b).pow(2).sum() / a.shape[0] ** 2


def _standardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-6)


def cross_correlation_mi(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mutual-information proxy: mean squared cross-correlation between the features of ``a``
    ``[B, Da]`` and ``b`` ``[B, Db]`` over the batch — the off-diagonal block of the correlation
    matrix of ``[a, b]``. 0 for uncorrelated features, 1 for perfectly (anti-)correlated ones."""
    c = _standardize(a).t() @ _standardize(b) / a.shape[0]
    return c.pow(2).mean()
