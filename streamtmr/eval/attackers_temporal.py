"""A second attacker architecture: a temporal transformer over per-frame pose tokens.

The SGN-style network (:class:`streamtmr.eval.attackers.SkeletonNet`) reasons locally in time
(three temporal convolutions). An attacker that compares every frame of a window with every
other — gait phase against gait phase, the rhythm of a gesture — may find identity the
convolutions miss, so the evaluation reports the stronger of the two. Same inputs (root-centred,
face-aligned positions, velocities and bone vectors; body-shape statistics), same interface
(``set_input_stats``, ``forward(motion, static) → [N, dim]``), so every trainer of
:mod:`streamtmr.eval.attackers` runs it unchanged.

Per frame the 9 × 25 motion channels become one token (linear embedding), time is halved by
average pooling as in the SGN-style network, a learned classification token and sinusoidal
positions are added, and pre-norm transformer encoder layers (``2·width`` wide, 4 heads) attend
over the whole window. The classification token and the mean of the frame tokens are fused with
the body-shape stream into the embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from streamtmr import skeleton
from streamtmr.eval.features import MOTION_CHANNELS, STATIC_FEATURES

#: Encoder layers and attention heads of the transformer attacker.
LAYERS = 3
HEADS = 4


def sinusoidal_positions(t: int, dim: int, device: torch.device) -> torch.Tensor:
    """``[t, dim]`` sine/cosine positions (Vaswani et al.), any window length."""
    pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32)
                     * (-math.log(10_000.0) / dim))
    out = torch.zeros(t, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return out


class TemporalTransformerNet(nn.Module):
    """Temporal transformer attacker backbone → embedding ``[N, 2·width]``."""

    def __init__(self, width: int = 48, dropout: float = 0.2):
        super().__init__()
        d = 2 * width
        if d % HEADS:
            raise ValueError(f"width {width}: 2·width must be divisible by {HEADS} heads")
        self.register_buffer("motion_mean", torch.zeros(MOTION_CHANNELS, 1, skeleton.NUM_JOINTS))
        self.register_buffer("motion_std", torch.ones(MOTION_CHANNELS, 1, skeleton.NUM_JOINTS))
        self.register_buffer("static_mean", torch.zeros(STATIC_FEATURES))
        self.register_buffer("static_std", torch.ones(STATIC_FEATURES))
        self.embed = nn.Linear(MOTION_CHANNELS * skeleton.NUM_JOINTS, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        layer = nn.TransformerEncoderLayer(d, HEADS, 2 * d, dropout=0.1, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.shape = nn.Sequential(nn.Linear(STATIC_FEATURES, d), nn.ReLU(),
                                   nn.Linear(d, d), nn.ReLU())
        self.fuse = nn.Sequential(nn.Dropout(dropout), nn.Linear(3 * d, d), nn.ReLU())
        self.dim = d

    @torch.no_grad()
    def set_input_stats(self, motion: torch.Tensor, static: torch.Tensor) -> None:
        """Standardise inputs with the training features' statistics (as the SGN network)."""
        self.motion_mean.copy_(motion.mean(dim=(0, 2)).unsqueeze(1))
        self.motion_std.copy_(motion.std(dim=(0, 2)).unsqueeze(1).clamp_min(1e-4))
        self.static_mean.copy_(static.mean(0))
        self.static_std.copy_(static.std(0).clamp_min(1e-4))

    def forward(self, motion: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        motion = (motion - self.motion_mean) / self.motion_std      # [N, C, T, V]
        static = (static - self.static_mean) / self.static_std
        if motion.shape[2] >= 4:
            motion = F.avg_pool2d(motion, (2, 1), ceil_mode=True)
        n, c, t, v = motion.shape
        tokens = self.embed(motion.permute(0, 2, 1, 3).reshape(n, t, c * v))  # [N, T, d]
        tokens = tokens + sinusoidal_positions(t, self.dim, tokens.device)
        h = self.encoder(torch.cat([self.cls.expand(n, -1, -1), tokens], dim=1))
        h = self.norm(h)                                              # [N, 1 + T, d]
        pooled = torch.cat([h[:, 0], h[:, 1:].mean(1)], dim=-1)      # [N, 2d]
        return self.fuse(torch.cat([pooled, self.shape(static)], dim=-1))
