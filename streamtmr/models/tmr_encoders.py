"""DisentangledTMR encoders: action (what is done) and identity (whose body).

Both take skeletons already expressed in the canonical frame (``skeleton.canonicalize``); the
action encoder's input is also divided by the source's leg length (scale-free motion).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamtmr import skeleton
from streamtmr.dummy import Dummy
from streamtmr.models.classifier import STGCNClassifier, joint_velocity
from streamtmr.models.layers import (
    GraphConv,
    MultiScaleTemporalConv,
    TransformerBlock,
    causal_mask,
    sinusoidal_positions,
)
from streamtmr.models.vq import VectorQuantizer

J = skeleton.NUM_JOINTS

#: Unit bone directions of the neutral rest pose (arms down), taken from :meth:`Dummy.rest_pose`.
REST_DIRECTIONS = skeleton.bone_directions(
    Dummy("unit", np.ones(J, np.float32)).rest_pose()).astype(np.float32)


def rest_pose(lengths: torch.Tensor) -> torch.Tensor:
    """Rest pose ``[..., 25, 3]`` (root at the origin) of bodies with bone lengths ``[..., 25]``."""
    dirs = skeleton.device_constant(REST_DIRECTIONS, lengths)
    root = lengths.new_zeros(*lengths.shape[:-1], 3)
    return skeleton.forward_kinematics(root, dirs, lengths)


# --------------------------------------------------------------------------------------------
# Action encoder
# --------------------------------------------------------------------------------------------

#: Features per joint of each token type.
TOKEN_FEATURES = {"motion": 9, "position": 3, "dynamics": 10}


def motion_tokens(x: torch.Tensor, kind: str, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Per-frame input tokens ``[B, T, 25·F]`` from normalised canonical joints ``[B, T, 25, 3]``.

    "motion": position + velocity + acceleration (backward differences, causal);
    "position": position only; "dynamics": motion + per-frame bone lengths (``lengths``,
    ``[B, T, 25]``, in the same normalised units).
    """
    if kind == "position":
        feats = x
    else:
        vel = joint_velocity(x)
        feats = torch.cat([x, vel, joint_velocity(vel)], -1)
        if kind == "dynamics":
            feats = torch.cat([feats, lengths[..., None]], -1)
    return feats.reshape(-1, int(x.shape[1]), J * int(feats.shape[-1]))


@dataclass
class ActionCode:
    h: torch.Tensor  # [B, T, d_action] per-frame action features (quantised when vq)
    pooled: torch.Tensor  # [B, d_action] temporal mean, for the disentanglement heads
    logits: torch.Tensor  # [B, num_actions]
    vq_loss: torch.Tensor | None = None
    codes: torch.Tensor | None = None


class ActionEncoder(nn.Module):
    """Tokens → multi-scale temporal conv (k = 3, 5, 7) → self-attention → (Bi)LSTM, gated with
    the AR backbone's features → H_action ``[B, T, d_action]`` and action logits."""

    def __init__(self, cfg: dict):
        super().__init__()
        d, causal = cfg["d_action"], cfg["causal"]
        self.causal, self.tokens = causal, cfg["tokens"]
        self.embed = nn.Linear(J * TOKEN_FEATURES[self.tokens], d)
        self.register_buffer("pos", sinusoidal_positions(cfg["window"], d), persistent=False)
        self.tconv = MultiScaleTemporalConv(d, (3, 5, 7), causal) if cfg["temporal_conv"] else None
        self.attn = nn.ModuleList(TransformerBlock(d, cfg["action_heads"], 2 * d, cfg["dropout"])
                                  for _ in range(cfg["action_layers"]))
        if cfg["lstm"]:
            bi = not causal
            self.lstm = nn.LSTM(d, cfg["lstm_hidden"], batch_first=True, bidirectional=bi)
            self.lstm_proj = nn.Linear(cfg["lstm_hidden"] * (2 if bi else 1), d)
        else:
            self.lstm = None
        self.norm = nn.LayerNorm(d)
        self.backbone = STGCNClassifier(cfg["num_actions"], cfg["backbone_channels"],
                                           cfg["backbone_blocks"], causal=causal)
        self.backbone_proj = nn.Linear(self.backbone.out_dim, d)
        self.gate = nn.Linear(2 * d, d)
        self.vq = VectorQuantizer(cfg["vq_codes"], d, cfg["vq_beta"]) if cfg["vq"] else None
        self.head = nn.Linear(d, cfg["num_actions"])

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> ActionCode:
        """x: normalised canonical joints ``[B, T, 25, 3]``; lengths ``[B, T, 25]`` (dynamics)."""
        t = int(x.shape[1])
        h = self.embed(motion_tokens(x, self.tokens, lengths))
        if self.tconv is not None:
            h = h + self.tconv(h)
        h = h + self.pos[:t]
        mask = causal_mask(t, t, x.device) if self.causal else None
        for block in self.attn:
            h = block(h, mask)
        if self.lstm is not None:
            h = h + self.lstm_proj(self.lstm(h)[0])
        h = self.norm(h)
        f = self.backbone_proj(self.backbone.features(x))
        g = torch.sigmoid(self.gate(torch.cat([h, f], -1)))
        h = g * h + (1 - g) * f
        vq_loss = codes = None
        if self.vq is not None:
            h, vq_loss, codes = self.vq(h)
        pooled = h.mean(1)
        return ActionCode(h, pooled, self.head(pooled), vq_loss, codes)


# --------------------------------------------------------------------------------------------
# Identity encoder
# --------------------------------------------------------------------------------------------


class IdentityEncoder(nn.Module):
    """Static pose + bone vectors → 3 spatial GCN layers → spatial attention → average pool →
    H_identity ``[B, d_identity]``.

    Input: a canonical sequence ``[B, T, 25, 3]`` (metres). "static" mode encodes its temporal
    mean pose; "full_sequence" mode encodes every frame and pools over frames too.
    """

    def __init__(self, cfg: dict):
        super().__init__()
        hidden = cfg["identity_hidden"]
        self.full_sequence = cfg["identity_mode"] == "full_sequence"
        dims = [6, hidden, hidden, hidden]
        self.gcn = nn.ModuleList(GraphConv(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(3))
        self.attn = nn.Linear(hidden, 1)
        self.out = nn.Linear(hidden, cfg["d_identity"])

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        pose = seq if self.full_sequence else seq.mean(1, keepdim=True)  # [B, T', 25, 3]
        h = torch.cat([pose, skeleton.bone_vectors(pose)], -1)
        for gcn, norm in zip(self.gcn, self.norms):
            h = F.gelu(norm(gcn(h)))
        a = torch.softmax(self.attn(h), dim=-2)  # spatial attention over joints
        h = (h * a * J).mean((1, 2))  # re-weight joints, then global average pool
        return self.out(h)
