"""DisentangledTMR factorised decoder and its forward-kinematics output head.

Each layer: self-attention → encoder–decoder attention over H_action → style transfer from
H_identity (FiLM or AdaIN) → FFN. Frames are decoded in parallel from learned frame queries, or
autoregressively (frame n → n+1: teacher forcing in training, a loop at inference).

The output of every frame is a root position (in units of the target's leg length) and 24 unit
bone directions; :func:`skeleton.forward_kinematics` with the target's bone lengths turns them
into joints, so every output frame has exactly the target's bone lengths.
"""

from __future__ import annotations

import torch
from torch import nn

from streamtmr import skeleton
from streamtmr.models.layers import (
    MLP,
    AdaIN,
    Attention,
    FiLM,
    causal_mask,
    sinusoidal_positions,
)

J = skeleton.NUM_JOINTS
FRAME_DIM = 3 + 3 * J  # root + bone directions (root entry unused)


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, d_identity: int, style: str,
                 dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim) for _ in range(3))
        self.self_attn = Attention(dim, heads)
        self.cross_attn = Attention(dim, heads)
        self.style = (AdaIN if style == "adain" else FiLM)(d_identity, dim)
        self.ffn = MLP(dim, ffn, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, memory, h_identity, self_mask=None, cross_mask=None):
        x = x + self.drop(self.self_attn(self.norm1(x), mask=self_mask))
        x = x + self.drop(self.cross_attn(self.norm2(x), memory, mask=cross_mask))
        x = self.style(x, h_identity)
        return x + self.drop(self.ffn(self.norm3(x)))


def frame_features(root: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Pack root ``[B, T, 3]`` and directions ``[B, T, 25, 3]`` into ``[B, T, FRAME_DIM]``."""
    return torch.cat([root, directions.reshape(-1, int(directions.shape[1]), 3 * J)], -1)


class MotionDecoder(nn.Module):
    """H_action ``[B, T, d_action]`` + H_identity ``[B, d_identity]`` → root ``[B, T, 3]`` (leg
    units) and unit bone directions ``[B, T, 25, 3]``."""

    def __init__(self, cfg: dict):
        super().__init__()
        d, self.window = cfg["d_model"], cfg["window"]
        self.causal, self.mode = cfg["causal"], cfg["decoding"]
        self.memory = nn.Linear(cfg["d_action"], d)
        self.register_buffer("pos", sinusoidal_positions(self.window, d), persistent=False)
        if self.mode == "parallel":
            self.queries = nn.Parameter(0.02 * torch.randn(self.window, d))
        else:
            self.start = nn.Parameter(0.02 * torch.randn(d))
            self.frame_embed = nn.Linear(FRAME_DIM, d)
        self.layers = nn.ModuleList(
            DecoderLayer(d, cfg["decoder_heads"], cfg["ffn_mult"] * d, cfg["d_identity"],
                         cfg["style"], cfg["dropout"]) for _ in range(cfg["decoder_layers"]))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, FRAME_DIM)

    def _run(self, x, memory, h_identity):
        tq, tk = int(x.shape[1]), int(memory.shape[1])
        self_mask = causal_mask(tq, tq, x.device) if (self.causal or self.mode != "parallel") \
            else None
        cross_mask = causal_mask(tq, tk, x.device) if self.causal else None
        for layer in self.layers:
            x = layer(x, memory, h_identity, self_mask, cross_mask)
        out = self.head(self.norm(x))
        root = out[..., :3]
        dirs = out[..., 3:].reshape(-1, tq, J, 3)
        dirs = dirs / torch.linalg.vector_norm(dirs, dim=-1, keepdim=True).clamp_min(1e-6)
        return root, dirs

    def forward(self, h_action: torch.Tensor, h_identity: torch.Tensor,
                teacher: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """teacher: ``[B, T, FRAME_DIM]`` ground-truth frames (autoregressive training only)."""
        b, t = h_action.shape[0], int(h_action.shape[1])
        memory = self.memory(h_action)
        if self.mode == "parallel":
            x = (self.queries[:t] + self.pos[:t]).expand(b, -1, -1)
            return self._run(x, memory, h_identity)
        start = self.start.expand(b, 1, -1)
        if teacher is not None:  # teacher forcing: frame n-1 (ground truth) predicts frame n
            x = torch.cat([start, self.frame_embed(teacher[:, :-1])], 1) + self.pos[:t]
            return self._run(x, memory, h_identity)
        tokens = start
        for n in range(t):
            root, dirs = self._run(tokens + self.pos[: n + 1], memory, h_identity)
            if n + 1 < t:
                prev = frame_features(root[:, -1:], dirs[:, -1:])
                tokens = torch.cat([tokens, self.frame_embed(prev)], 1)
        return root, dirs
