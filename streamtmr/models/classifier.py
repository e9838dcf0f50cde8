"""A compact skeleton action classifier (ST-GCN-lite).

Used as the action-recognition backbone inside DisentangledTMR's action encoder and usable on its
own. Each block is a spatial graph convolution over the Kinect v2 joint graph followed by a
temporal convolution per joint, with a residual connection; joints are then pooled to one feature
vector per frame, and frames are pooled for the logits.

Input: joints ``[B, T, 25, 3]``, ideally in a canonical frame (``skeleton.canonicalize``) and
scale-normalised. With ``causal=True`` the per-frame features at t depend only on frames ≤ t.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from streamtmr import skeleton
from streamtmr.models.layers import GraphConv


def joint_velocity(x: torch.Tensor) -> torch.Tensor:
    """Backward difference over time axis 1 (``[B, T, ...]``), zero at frame 0 (causal)."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], 1)


class STGCNBlock(nn.Module):
    """Spatial graph conv → temporal conv (per joint), residual, on ``[B, T, 25, C]``."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int = 5, causal: bool = False):
        super().__init__()
        self.gcn = GraphConv(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)
        self.pad = (kernel - 1, 0) if causal else ((kernel - 1) // 2, kernel // 2)
        self.tcn = nn.Conv2d(out_dim, out_dim, (kernel, 1))
        self.res = nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.norm(self.gcn(x)))  # [B, T, J, C]
        h = F.pad(h.permute(0, 3, 1, 2), (0, 0) + self.pad)  # [B, C, T+k-1, J]
        h = self.tcn(h).permute(0, 2, 3, 1)
        return F.gelu(h + self.res(x))


class STGCNClassifier(nn.Module):
    """ST-GCN-lite action classifier: ``features(x) → [B, T, C]``, ``forward(x) → [B, classes]``."""

    def __init__(self, num_classes: int, channels: int = 64, blocks: int = 3, kernel: int = 5,
                 causal: bool = False):
        super().__init__()
        self.embed = nn.Linear(6, channels)  # position + velocity per joint
        self.blocks = nn.ModuleList(
            STGCNBlock(channels, channels, kernel, causal) for _ in range(blocks))
        self.head = nn.Linear(channels, num_classes)
        self.out_dim = channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and x.shape[-2:] != (skeleton.NUM_JOINTS, 3):
            raise ValueError(f"expected joints [B, T, 25, 3], got {tuple(x.shape)}")
        h = self.embed(torch.cat([x, joint_velocity(x)], -1))
        for block in self.blocks:
            h = block(h)
        return h.mean(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(1))
