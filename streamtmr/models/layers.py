"""Building blocks shared by the learned anonymizers.

Everything here exports with the legacy TorchScript-based ONNX exporter (opset 17): attention is
written out with matmuls and a softmax, causal masks are constants, graph convolutions are a
constant matrix product over the joint axis. Exported graphs have a dynamic batch axis only, so
reshapes use ``-1`` for the batch and read the other sizes with ``int(...)``: they become
constants instead of chains of Shape/Gather/Concat nodes on the hot path.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamtmr import skeleton

# --------------------------------------------------------------------------------------------
# Gradient reversal
# --------------------------------------------------------------------------------------------


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-scale`` in the backward pass."""
    return _GradReverse.apply(x, float(scale))


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse`."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.scale)


# --------------------------------------------------------------------------------------------
# Graph convolution over the Kinect v2 joint graph
# --------------------------------------------------------------------------------------------


def normalized_adjacency(adjacency: np.ndarray = skeleton.ADJACENCY) -> np.ndarray:
    """Symmetric normalisation D^-1/2 A D^-1/2 of an adjacency matrix with self loops."""
    deg = adjacency.sum(-1)
    d = 1.0 / np.sqrt(np.maximum(deg, 1e-8))
    return (adjacency * d[:, None] * d[None, :]).astype(np.float32)


class GraphConv(nn.Module):
    """``x[..., 25, C_in] → Â x W  [..., 25, C_out]`` with Â the normalised Kinect adjacency:
    fixed (a buffer, the models) or, with ``learn_adjacency``, a parameter initialised from it
    (the evaluation's attackers)."""

    def __init__(self, in_dim: int, out_dim: int, adjacency: np.ndarray = skeleton.ADJACENCY,
                 learn_adjacency: bool = False):
        super().__init__()
        adj = torch.from_numpy(normalized_adjacency(adjacency))
        if learn_adjacency:
            self.adj = nn.Parameter(adj)
        else:
            self.register_buffer("adj", adj, persistent=False)
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.matmul(self.adj, x))


# --------------------------------------------------------------------------------------------
# Temporal convolution and attention with a causal switch
# --------------------------------------------------------------------------------------------


class TemporalConv(nn.Module):
    """1-D convolution over time on ``[B, T, C]`` that keeps length T.

    Causal: pads ``k - 1`` frames on the left only, so frame t sees frames ``t-k+1 … t``.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int, causal: bool):
        super().__init__()
        self.pad = (kernel - 1, 0) if causal else ((kernel - 1) // 2, kernel // 2)
        self.conv = nn.Conv1d(in_dim, out_dim, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pad(x.transpose(1, 2), self.pad, mode="replicate")
        return self.conv(y).transpose(1, 2)


class MultiScaleTemporalConv(nn.Module):
    """Parallel temporal convolutions (k = 3, 5, 7 by default), each ``dim / len(kernels)`` wide,
    concatenated and projected back to ``dim``."""

    def __init__(self, dim: int, kernels: tuple[int, ...] = (3, 5, 7), causal: bool = False):
        super().__init__()
        width = -(-dim // len(kernels))
        self.branches = nn.ModuleList(TemporalConv(dim, width, k, causal) for k in kernels)
        self.proj = nn.Linear(width * len(kernels), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(torch.cat([b(x) for b in self.branches], -1)))


def causal_mask(t_q: int, t_k: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean ``[t_q, t_k]`` mask, True where query frame i may NOT attend key frame j > i.

    Queries and keys are both indexed by frame from 0.
    """
    return _causal_mask(int(t_q), int(t_k), torch.device(device or "cpu"))


@functools.lru_cache(maxsize=64)
def _causal_mask(t_q: int, t_k: int, device: torch.device) -> torch.Tensor:
    # Built once per shape and device: no host→device copy per forward pass (CUDA graphs).
    mask = np.triu(np.ones((t_q, t_k), dtype=bool), 1)
    with torch.inference_mode(False):  # a normal tensor: autograd may save it later
        return torch.from_numpy(mask).to(device)


class Attention(nn.Module):
    """Multi-head (self or cross) attention; ``mask`` True blocks a query→key pair."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if ctx is None else ctx
        tq, tk = int(x.shape[1]), int(ctx.shape[1])
        q = self.q(x).reshape(-1, tq, self.heads, self.head_dim).transpose(1, 2)
        kv = self.kv(ctx).reshape(-1, tk, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        att = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        if mask is not None:
            att = att.masked_fill(mask, -1e9)
        y = torch.matmul(att.softmax(-1), v)
        return self.out(y.transpose(1, 2).reshape(-1, tq, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, out_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, out_dim or dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + FFN block on ``[B, T, C]``."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = MLP(dim, ffn, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask=mask))
        return x + self.drop(self.mlp(self.norm2(x)))


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """Fixed sinusoidal positional encodings ``[length, dim]``."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


# --------------------------------------------------------------------------------------------
# Style transfer: FiLM and AdaIN conditioned on a vector
# --------------------------------------------------------------------------------------------


class FiLM(nn.Module):
    """``x · (1 + γ(c)) + β(c)``; starts as the identity (γ = β = 0)."""

    def __init__(self, cond_dim: int, dim: int):
        super().__init__()
        self.to_scale_shift = nn.Linear(cond_dim, 2 * dim)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def modulate(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.to_scale_shift(cond).unsqueeze(1).chunk(2, -1)
        return x * (1 + gamma) + beta

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x ``[B, T, C]``, cond ``[B, C_cond]``."""
        return self.modulate(x, cond)


class AdaIN(FiLM):
    """Adaptive normalisation: per-frame feature normalisation, then the condition's γ, β.

    Statistics are taken over the channels of each frame (not over time) so that the layer
    stays causal.
    """

    def __init__(self, cond_dim: int, dim: int):
        super().__init__(cond_dim, dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.modulate(self.norm(x), cond)
