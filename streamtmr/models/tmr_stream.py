"""StreamTMR: the streaming form of DisentangledTMR (method "tmr-stream", the shipped default).

Same boxes as :mod:`streamtmr.models.tmr`, every one of them causal, with two entry points that
compute the same function: ``forward(sequence)`` in parallel over time (training, offline) and
``step(frame, state) -> (frame_out, state)`` (serving, O(1) per frame)::

    frame x_t [B,25,3] ─▶ heading frame of x_t (hips → +X), root at the origin, ÷ track leg length
        ─▶ tokens: pose, velocity, acceleration (9 per joint) ─▶ embed
        ─▶ + multi-scale causal temporal conv k=3,5,7     (state: the last 6 embedded frames)
        ─▶ attention over the last W frames, ALiBi bias   (state: key/value ring of W frames)
        ─▶ + unidirectional LSTM                          (state: h, c)
        ─▶ gate with the causal ST-GCN backbone           (state: its temporal-conv caches)
        ─▶ H_action_t ─▶ per-frame decoder, styled by H_identity (baked for the dummy)
        ─▶ root offset + 24 unit bone directions in the heading frame
        ─▶ forward kinematics with the dummy's bone lengths ─▶ back to camera space at the
           source's root, standing on the source's lowest foot point of the frame

Reference. DisentangledTMR canonicalises each 64-frame window on the window's first frame, so the
same instant is computed from as many references as windows contain it. StreamTMR needs no
rotation or translation reference at all: every frame is expressed in its own heading frame
(rotation about the vertical that turns its hips to +X, origin at its root), velocities and
accelerations are rotated into that same frame, and the output is mapped back with the same
rotation and origin. The network therefore sees only translation- and heading-invariant features,
the output root follows the source's root plus a learned horizontal offset and a per-frame floor
contact, and nothing is ever re-anchored, so nothing can jump. The one per-track reference is the
scale: the source's leg length measured on the track's first frame (state ``ref_leg``); bone
lengths do not change within a track, so the first frame is as good a reference as any.

Publishing options (set on a trained model's copy, no retraining: ``python -m
streamtmr.models.pose_atoms --set``). ``root_motion: leash`` keeps the published body where it
stood until the source's root is ``leash_m`` away, then pulls it along: a person's root path is
biometric (docs/results.md: five points of re-ID on SynthKinect at full strength, none on
real people). ``follow`` averages the root and heading over time instead, ``atom_margin`` holds
a chosen pose atom, ``atom_sample`` draws it from the chooser's softmax (a fixed Gumbel noise
table read at the track's frame count, so every path draws the same; ``atom_sample_hold`` keeps
each draw's noise for k frames; docs/results.md, "The shipped default", measures them all).
Each adds its entry to the streaming state. ``atom_action`` conditions the choice on the action
the encoder's action head recognises in the frame (no state: the head reads H_action_t).
``atom_template`` replaces the choice: the atoms of the dummy's neutral performance of the
action the head recognises, played from its start (state: what plays, see
:func:`play_templates`), so the person's pose reaches the output only through that action.

Deviation from the design. The design's action encoder ends in a BiLSTM, its attention sees the
whole window and its decoder attends over the whole window of H_action. Here the LSTM is
unidirectional, attention sees the last W frames (``window``) with ALiBi position biases instead
of absolute positions (a frame's output does not depend on where a track or window started), and
the decoder is per frame (its temporal context comes from the encoder). The training objective is
DisentangledTMR's, unchanged: this class provides its hooks (``encode_action``, ``decode``,
the identity encoder and the two subject heads) for
:func:`streamtmr.train.tmr.tmr_training_losses` and the same 3-stage curriculum.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamtmr import skeleton
from streamtmr.models.base import Anonymizer
from streamtmr.models.classifier import STGCNBlock
from streamtmr.models.layers import MLP, AdaIN, FiLM, MultiScaleTemporalConv
from streamtmr.models.registry import register
from streamtmr.models.tmr import DisentangledTMR
from streamtmr.models.tmr_encoders import ActionCode, IdentityEncoder, rest_pose

J = skeleton.NUM_JOINTS
TOKEN_FEATURES = 9  # pose + velocity + acceleration per joint
KERNELS = (3, 5, 7)  # multi-scale temporal conv
BACKBONE_KERNEL = 5
FRAME_OUT = 2 + 3 * J  # horizontal root offset + bone directions (root entry unused)
#: Weights of the atoms chosen in this frame and the frames before, per ``atom_blend``: a jump
#: between two atoms becomes a ramp over the frames (bench/jitter.py)
ATOM_BLEND = {1: (1.0,), 2: (0.6, 0.4), 3: (0.5, 0.3, 0.2)}
#: The smallest normal float16: the lowest floor of ``atom_action`` (a TensorRT plan may run the
#: gate in fp16, where a smaller floor rounds to 0 and its log to -inf)
FLOAT16_TINY = float(np.finfo(np.float16).tiny)


@dataclass
class StreamTMRConfig:
    """Sizes of the streaming DisentangledTMR (defaults: the paper's sizes)."""

    method: str = "tmr-stream"
    window: int = 64  # W: frames in the attention ring (also the training window)
    num_actions: int = 60
    num_subjects: int = 40
    d_action: int = 256
    action_heads: int = 8
    action_layers: int = 1
    lstm_hidden: int = 256
    backbone_channels: int = 64
    backbone_blocks: int = 3
    d_identity: int = 128
    identity_hidden: int = 64
    d_model: int = 256
    decoder_layers: int = 6
    ffn_mult: int = 4
    style: str = "adain"  # or "film"
    dropout: float = 0.1
    # training objective (shared with DisentangledTMR)
    nce_tau: float = 0.07
    adv_scale: float = 1.0
    ee_weight: float = 5.0
    identity_mode: str = "static"  # or "full_sequence" (the ablation)
    decoding: str = "parallel"  # the streaming form decodes every frame on its own
    vq: bool = False  # no codebook in the streaming form
    # 0: the decoder predicts every bone's direction freely. K > 0: every published pose is one
    # of K pose atoms (the dummy's own neutral poses, :mod:`streamtmr.models.pose_atoms`), chosen
    # per frame by the decoder: a learned form of motion matching.
    pose_atoms: int = 0
    # with pose atoms: the published directions blend the atoms chosen in this frame and the
    # atom_blend - 1 frames before (weights ATOM_BLEND; 1: the chosen atom alone, exactly)
    atom_blend: int = 1
    # with pose atoms: the atom chosen in the frame before stays until another atom's logit beats
    # its by more than this margin (hysteresis; 0: the largest logit every frame). Inference only
    atom_margin: float = 0.0
    # with pose atoms: 0 takes the largest logit; T > 0 draws each frame's atom from
    # softmax(logits / T) by the Gumbel-max trick, with a fixed noise table read at each track's
    # frame count, so that step, forward and the exported graph draw the same. Inference only
    atom_sample: float = 0.0
    # with atom_sample: each noise row is kept for this many frames (1: a fresh draw every
    # frame), so near-ties are broken the same way for a while and the choice switches less
    atom_sample_hold: int = 1
    # with pose atoms: 0 chooses among all atoms; 0 < eps < 1 multiplies each atom's probability
    # by the probability that it belongs to the frame's action (the action head's posterior,
    # read per frame, over the table of each action's atoms, decoder.action_atoms), floored at
    # eps, so that a person's own way of moving seldom picks a pose that none of the action's
    # neutral performances takes (set with a table by pose_atoms --set atom_action=eps --data)
    atom_action: float = 0.0
    # with pose atoms: 0 publishes the chooser's atoms; N > 0 publishes instead the atoms of the
    # dummy's neutral performance of the action the action head recognises, played from its
    # start and looped (decoder.action_template), switching to another action once it has led
    # the head for N frames: the person's pose never chooses the atom (set with the
    # performances by pose_atoms --set atom_template=N --data). Inference only
    atom_template: int = 0
    # how closely the published body's root (horizontal) and heading follow the source's: 1
    # copies them every frame; alpha < 1 publishes their causal exponential average with weight
    # alpha on each new frame (a gait's sway and hip yaw are biometric; the pose is unchanged)
    follow: float = 1.0
    # where the published body stands: "source", at the source's root (plus the learned offset)
    # every frame; "leash", where it stood until the source's root is more than leash_m away,
    # then pulled along to leash_m (a person's root path, sway and walking speed are biometric)
    root_motion: str = "source"
    leash_m: float = 0.5

    @classmethod
    def from_dict(cls, config: dict[str, Any] | None) -> StreamTMRConfig:
        """Validated config (the message names the key); unknown keys are rejected."""
        config = dict(config or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise KeyError(f"tmr-stream config: unknown key(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**config)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        fixed = {"method": "tmr-stream", "decoding": "parallel", "vq": False}
        for key, value in fixed.items():
            if getattr(self, key) != value:
                raise ValueError(f"tmr-stream config: {key} must be {value!r}, "
                                 f"got {getattr(self, key)!r}")
        choices = {"style": ("adain", "film"), "identity_mode": ("static", "full_sequence"),
                   "root_motion": ("source", "leash")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"tmr-stream config: {key} must be one of {allowed}, "
                                 f"got {getattr(self, key)!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)
                                    or value < (0 if f.name in ("action_layers", "pose_atoms",
                                                                 "atom_template") else 1)):
                raise ValueError(f"tmr-stream config: {f.name} must be a positive integer, "
                                 f"got {value!r}")
        if self.d_action % self.action_heads:
            raise ValueError(f"tmr-stream config: d_action ({self.d_action}) must be divisible "
                             f"by action_heads ({self.action_heads})")
        if self.atom_blend not in ATOM_BLEND:
            raise ValueError(f"tmr-stream config: atom_blend must be one of {sorted(ATOM_BLEND)}, "
                             f"got {self.atom_blend!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "float" and (isinstance(value, bool)
                                      or not isinstance(value, numbers.Real)):
                raise ValueError(f"tmr-stream config: {f.name} must be a number, got {value!r}"
                                 " (YAML reads 5e-1 as text: write 0.5 or 5.0e-1)")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"tmr-stream config: dropout must be in [0, 1), got {self.dropout!r}")
        if not float(self.atom_margin) >= 0.0:
            raise ValueError(f"tmr-stream config: atom_margin must be >= 0, "
                             f"got {self.atom_margin!r}")
        if not float(self.atom_sample) >= 0.0:
            raise ValueError(f"tmr-stream config: atom_sample must be >= 0, "
                             f"got {self.atom_sample!r}")
        if self.atom_sample_hold != 1 and not self.atom_sample > 0:
            raise ValueError(f"tmr-stream config: atom_sample_hold ({self.atom_sample_hold}) "
                             "acts only with atom_sample > 0")
        if self.atom_sample_hold > MAX_HOLD:
            raise ValueError(f"tmr-stream config: atom_sample_hold must be <= {MAX_HOLD}, got "
                             f"{self.atom_sample_hold!r}")
        if not (self.atom_action == 0 or FLOAT16_TINY <= float(self.atom_action) < 1.0):
            raise ValueError(f"tmr-stream config: atom_action must be 0 or in [{FLOAT16_TINY:.3g}"
                             f", 1) (its log must stay finite in a float16 plan), "
                             f"got {self.atom_action!r}")
        if self.atom_action > 0 and not self.pose_atoms:
            raise ValueError("tmr-stream config: atom_action acts only with pose_atoms")
        if self.atom_template:
            if not self.pose_atoms:
                raise ValueError("tmr-stream config: atom_template acts only with pose_atoms")
            if self.atom_template >= MAX_HOLD:
                raise ValueError(f"tmr-stream config: atom_template must be < {MAX_HOLD}, "
                                 f"got {self.atom_template!r}")
            chooser = [k for k in ("atom_margin", "atom_sample", "atom_action")
                       if getattr(self, k)]
            if chooser:
                raise ValueError(f"tmr-stream config: atom_template replaces the chooser's "
                                 f"choice, so {chooser} cannot act with it")
        if not float(self.leash_m) > 0.0:
            raise ValueError(f"tmr-stream config: leash_m must be > 0, got {self.leash_m!r}")
        if not 0.0 < float(self.follow) <= 1.0:
            raise ValueError(f"tmr-stream config: follow must be in (0, 1], got {self.follow!r}")


# --------------------------------------------------------------------------------------------
# Per-frame geometry: heading frame, tokens, and the way back
# --------------------------------------------------------------------------------------------


def frame_inputs(x: torch.Tensor, prev1: torch.Tensor, prev2: torch.Tensor, leg: torch.Tensor):
    """Network inputs of frames ``x [B, T, 25, 3]`` given the frames one and two before them.

    Returns ``tokens [B, T, 225]``, the backbone's input ``[B, T, 25, 6]`` (pose + velocity) and
    the frame to map back: heading rotation ``[B, T, 3, 3]``, source root ``[B, T, 3]`` and the
    source's lowest foot height ``[B, T]``. ``leg [B]``: the track's leg length (scale).
    """
    rot = skeleton.rotation_y(skeleton.facing_angle(x))  # [B, T, 3, 3]
    root = x[..., skeleton.ROOT, :]
    scale = leg[:, None, None, None]
    zero = torch.zeros_like(root)
    pose = skeleton.to_frame_local(x, rot, root) / scale  # [B, T, 25, 3]
    vel = skeleton.to_frame_local(x - prev1, rot, zero) / scale
    acc = skeleton.to_frame_local(x - 2 * prev1 + prev2, rot, zero) / scale
    tokens = torch.cat([pose, vel, acc], -1).reshape(-1, int(x.shape[1]), J * TOKEN_FEATURES)
    floor = skeleton.floor_height(x[..., None, :, :])  # [B, T]
    return tokens, torch.cat([pose, vel], -1), (rot, root, floor)


def trajectory(x: torch.Tensor) -> torch.Tensor:
    """What the published body follows of frames ``[B, T, 25, 3]``: ``[B, T, 4]``, the unit
    heading vector (cos, sin of :func:`skeleton.facing_angle`) and the root's X, Z."""
    angle = skeleton.facing_angle(x)
    root = x[..., skeleton.ROOT, :]
    return torch.stack([torch.cos(angle), torch.sin(angle), root[..., 0], root[..., 2]], -1)


def follow_frame(frame, followed: torch.Tensor):
    """The frame to map back (rotation, root, floor) moved onto a followed trajectory ``[B, T,
    4]`` (heading vector, root X, Z; see :func:`trajectory`); the root's height is kept."""
    rot, root, floor = frame
    rot = skeleton.rotation_y(torch.atan2(followed[..., 1], followed[..., 0]))
    root = torch.stack([followed[..., 2], root[..., 1], followed[..., 3]], -1)
    return rot, root, floor


def leash_path(root: torch.Tensor, length: float, start: torch.Tensor) -> torch.Tensor:
    """Where a body on a leash stands ``[B, T, 3]`` while the source's root ``[B, T, 3]``
    moves: it stays put until the root is more than ``length`` away (horizontally), then is
    pulled along to ``length``; ``start [B, 3]``: where it stood before the first frame. Its
    height is the root's."""
    out, pos = [], start
    keep = torch.zeros(root.shape[0], dtype=torch.bool, device=root.device)
    for t in range(int(root.shape[1])):
        pos = skeleton.leashed(pos, root[:, t], length, keep)
        out.append(pos)
    path = torch.stack(out, 1)
    return torch.stack([path[..., 0], root[..., 1], path[..., 2]], -1)


def causal_average(x: torch.Tensor, alpha: float, start: torch.Tensor) -> torch.Tensor:
    """Exponential average over time of ``x [B, T, C]`` from ``start [B, C]`` (the value before
    the first frame): ``y_t = y_{t-1} + alpha (x_t - y_{t-1})``."""
    out, y = [], start
    for t in range(int(x.shape[1])):
        y = y + alpha * (x[:, t] - y)
        out.append(y)
    return torch.stack(out, 1)


def track_leg(frame: torch.Tensor) -> torch.Tensor:
    """Leg length ``[B]`` of frames ``[B, 25, 3]``: the per-track scale reference."""
    return skeleton.leg_length(skeleton.bone_lengths(frame)).clamp_min(0.1)


def shifted(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x [B, T, ...]`` delayed by ``n`` frames along time, the first frame repeated."""
    return torch.cat([x[:, :1].expand(-1, n, *x.shape[2:]), x[:, : int(x.shape[1]) - n]], 1)


# --------------------------------------------------------------------------------------------
# Action encoder: causal boxes with forward (parallel) and step (one frame, cached state)
# --------------------------------------------------------------------------------------------


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi slopes 2^(-8 i / heads), i = 1..heads (Press et al. 2022)."""
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / heads) for i in range(heads)])


class RingAttention(nn.Module):
    """Multi-head self-attention over the last ``window`` frames with an ALiBi bias.

    Position enters only as a penalty ``slope_h · age`` on each key, so where the ring starts
    does not matter. ``step`` keeps keys and values in a ring ``[B, W, C]`` whose last slot is
    the newest frame; slots older than the track are masked.
    """

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads, self.head_dim, self.window = heads, dim // heads, window
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.register_buffer("slopes", alibi_slopes(heads)[:, None, None], persistent=False)
        ages = torch.arange(window - 1, -1, -1, dtype=torch.float32)  # slot j holds age W-1-j
        self.register_buffer("ages", ages, persistent=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, int(x.shape[1]), self.heads, self.head_dim).transpose(1, 2)

    def _attend(self, q, k, v, bias) -> torch.Tensor:
        att = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim)) + bias
        y = torch.matmul(att.softmax(-1), v)  # (B, nh, Tq, hs)
        return self.out(y.transpose(1, 2).reshape(-1, int(q.shape[2]), self.heads * self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, T, C]``: frame i attends frames i-W+1 … i. Up to W frames in one masked
        product; longer tracks in blocks of W queries against their own and the previous block
        (:meth:`_banded`), so the cost grows as T·W, not T²."""
        t = int(x.shape[1])
        k, v = self.kv(x).chunk(2, -1)
        q, k, v = self._heads(self.q(x)), self._heads(k), self._heads(v)
        if t > self.window and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            return self._banded(q, k, v)
        idx = torch.arange(t, device=x.device, dtype=torch.float32)
        age = idx[:, None] - idx[None, :]  # (T, T): query i, key j
        bias = -self.slopes * age  # (nh, T, T)
        bias = bias.masked_fill((age < 0) | (age >= self.window), -1e9)
        return self._attend(q, k, v, bias)

    def _banded(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The same attention as the masked product, blockwise: queries in blocks of W, each
        block against the keys of itself and the block before (``[B, nh, T, hs]`` each)."""
        b, nh, t, hs = q.shape
        w = self.window
        n = -(-t // w)  # blocks
        pad = n * w - t  # padded keys sit after every real query: masked as the future

        def blocks(z):  # (B, nh, T, hs) -> (B, nh, n, W, hs)
            return F.pad(z, (0, 0, 0, pad)).reshape(b, nh, n, w, hs)

        def with_previous(z):  # (B, nh, n, W, hs) -> (B, nh, n, 2W, hs)
            return torch.cat([F.pad(z, (0, 0, 0, 0, 1, 0))[:, :, :n], z], 3)

        qb, kb, vb = blocks(q), with_previous(blocks(k)), with_previous(blocks(v))
        a = torch.arange(w, device=q.device, dtype=torch.float32)
        j = torch.arange(2 * w, device=q.device, dtype=torch.float32)
        age = w + a[:, None] - j[None, :]  # (W, 2W): query a of a block, key j of the pair
        bias = (-self.slopes * age)[:, None].expand(nh, n, w, 2 * w).clone()  # slopes (nh, 1, 1)
        bias = bias.masked_fill((age < 0) | (age >= w), -1e9)
        bias[:, 0, :, :w] = -1e9  # the first block has no block before it
        y = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=bias)  # one fused kernel
        y = y.reshape(b, nh, n * w, hs)[:, :, :t]
        return self.out(y.transpose(1, 2).reshape(b, t, nh * hs))

    def step(self, x: torch.Tensor, k_ring: torch.Tensor, v_ring: torch.Tensor,
             seen: torch.Tensor):
        """x ``[B, 1, C]``; rings ``[B, W, C]``; seen ``[B, 1]`` frames before this one."""
        k, v = self.kv(x).chunk(2, -1)
        k_ring = torch.cat([k_ring[:, 1:], k], 1)  # (B, W, C), oldest first
        v_ring = torch.cat([v_ring[:, 1:], v], 1)
        bias = -self.slopes * self.ages  # (nh, 1, W)
        empty = (self.ages > seen)[:, None, None, :]  # (B, 1, 1, W): before the track began
        bias = torch.where(empty, torch.full_like(bias, -1e9), bias)  # (B, nh, 1, W)
        y = self._attend(self._heads(self.q(x)), self._heads(k_ring), self._heads(v_ring), bias)
        return y, k_ring, v_ring


class Block(nn.Module):
    """Pre-norm ring attention + MLP on ``[B, T, C]``."""

    def __init__(self, dim: int, heads: int, window: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = RingAttention(dim, heads, window)
        self.mlp = MLP(dim, 2 * dim, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))

    def step(self, x, k_ring, v_ring, seen):
        y, k_ring, v_ring = self.attn.step(self.norm1(x), k_ring, v_ring, seen)
        x = x + y
        return x + self.mlp(self.norm2(x)), k_ring, v_ring


class Backbone(nn.Module):
    """Causal ST-GCN-lite action backbone on (pose, velocity) per joint → ``[B, T, C]``."""

    def __init__(self, channels: int, blocks: int):
        super().__init__()
        self.embed = nn.Linear(6, channels)
        self.blocks = nn.ModuleList(STGCNBlock(channels, channels, BACKBONE_KERNEL, causal=True)
                                    for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)  # (B, T, J, C)
        for block in self.blocks:
            h = block(h)
        return h.mean(2)

    def step(self, x: torch.Tensor, cache: torch.Tensor):
        """x ``[B, 1, J, 6]``; cache ``[B, blocks, k-1, J, C]`` (each block's last k-1 frames
        after its graph conv; zeros before the track, as the parallel form's zero padding)."""
        h, new = self.embed(x), []
        for i, block in enumerate(self.blocks):
            g = F.gelu(block.norm(block.gcn(h)))  # (B, 1, J, C)
            buf = torch.cat([cache[:, i], g], 1)  # (B, k, J, C)
            y = block.tcn(buf.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, 1, J, C)
            h = F.gelu(y + block.res(h))
            new.append(buf[:, 1:])
        return h.mean(2), torch.stack(new, 1)


def tconv_step(tconv: MultiScaleTemporalConv, buf: torch.Tensor) -> torch.Tensor:
    """One frame of a causal :class:`MultiScaleTemporalConv` from its last ``max(k)`` inputs
    ``buf [B, max_k, C]`` (newest last) → ``[B, 1, C]``."""
    n = int(buf.shape[1])
    ys = [b.conv(buf[:, n - b.conv.kernel_size[0]:].transpose(1, 2)).transpose(1, 2)
          for b in tconv.branches]
    return tconv.proj(F.gelu(torch.cat(ys, -1)))


def lstm_cell(lstm: nn.LSTM, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """One time step of a one-layer ``nn.LSTM`` with its own weights (gates i, f, g, o):
    x ``[B, C]``, h, c ``[B, H]`` → (h, c). Written out so that the exported step graph is plain
    MatMul/Sigmoid/Tanh with the state as ordinary inputs."""
    gates = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0) + \
        F.linear(h, lstm.weight_hh_l0, lstm.bias_hh_l0)  # (B, 4H)
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class StreamActionEncoder(nn.Module):
    """Tokens → embed → + causal multi-scale temporal conv → ring attention → + LSTM → norm,
    gated with the backbone → H_action ``[B, T, d_action]`` and action logits."""

    def __init__(self, cfg: StreamTMRConfig):
        super().__init__()
        d = cfg.d_action
        self.embed = nn.Linear(J * TOKEN_FEATURES, d)
        self.tconv = MultiScaleTemporalConv(d, KERNELS, causal=True)
        self.blocks = nn.ModuleList(Block(d, cfg.action_heads, cfg.window, cfg.dropout)
                                    for _ in range(cfg.action_layers))
        self.lstm = nn.LSTM(d, cfg.lstm_hidden, batch_first=True)
        self.lstm_proj = nn.Linear(cfg.lstm_hidden, d)
        self.norm = nn.LayerNorm(d)
        self.backbone = Backbone(cfg.backbone_channels, cfg.backbone_blocks)
        self.backbone_proj = nn.Linear(cfg.backbone_channels, d)
        self.gate = nn.Linear(2 * d, d)
        self.head = nn.Linear(d, cfg.num_actions)

    def _gated(self, h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        h, f = self.norm(h), self.backbone_proj(f)
        g = torch.sigmoid(self.gate(torch.cat([h, f], -1)))
        return g * h + (1 - g) * f

    def forward(self, tokens: torch.Tensor, joints: torch.Tensor) -> ActionCode:
        """tokens ``[B, T, 225]``, joints ``[B, T, 25, 6]`` (see :func:`frame_inputs`)."""
        h = self.embed(tokens)  # (B, T, d)
        h = h + self.tconv(h)
        for block in self.blocks:
            h = block(h)
        h = h + self.lstm_proj(self.lstm(h)[0])
        h = self._gated(h, self.backbone(joints))
        pooled = h.mean(1)
        return ActionCode(h, pooled, self.head(pooled))

    def step(self, tokens, joints, state: dict[str, torch.Tensor], first: torch.Tensor):
        """One frame (``tokens [B, 1, 225]``); ``first [B, 1]`` marks a track's first frame."""
        h = self.embed(tokens)  # (B, 1, d)
        n = max(KERNELS) - 1
        cache = torch.where(first[:, :, None], torch.cat([h] * n, 1), state["conv"])
        buf = torch.cat([cache, h], 1)  # (B, 7, d)
        h = h + tconv_step(self.tconv, buf)
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            h, k, v = block.step(h, state["kv_k"][:, i], state["kv_v"][:, i], state["t"])
            ks.append(k)
            vs.append(v)
        hn, cn = lstm_cell(self.lstm, h[:, 0], state["lstm_h"], state["lstm_c"])
        h = h + self.lstm_proj(hn[:, None])
        f, gcn = self.backbone.step(joints, state["gcn"])
        new = {"conv": buf[:, 1:], "lstm_h": hn, "lstm_c": cn, "gcn": gcn}
        if ks:
            new.update(kv_k=torch.stack(ks, 1), kv_v=torch.stack(vs, 1))
        else:
            new.update(kv_k=state["kv_k"], kv_v=state["kv_v"])
        return self._gated(h, f), new


# --------------------------------------------------------------------------------------------
# Decoder: per frame, styled by H_identity
# --------------------------------------------------------------------------------------------


class DecoderLayer(nn.Module):
    """Style transfer from H_identity, then a pre-norm FFN (per frame)."""

    def __init__(self, dim: int, ffn: int, d_identity: int, style: str, dropout: float):
        super().__init__()
        self.style = (AdaIN if style == "adain" else FiLM)(d_identity, dim)
        self.norm = nn.LayerNorm(dim)
        self.ffn = MLP(dim, ffn, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, h_identity: torch.Tensor) -> torch.Tensor:
        x = self.style(x, h_identity)
        return x + self.drop(self.ffn(self.norm(x)))


class FrameDecoder(nn.Module):
    """H_action ``[B, T, d_action]`` + H_identity ``[B or 1, d_identity]`` → horizontal root
    offset ``[B, T, 2]`` (target leg units) and unit bone directions ``[B, T, 25, 3]``, both in
    the source frame's heading frame."""

    def __init__(self, cfg: StreamTMRConfig):
        super().__init__()
        d = cfg.d_model
        self.memory = nn.Linear(cfg.d_action, d)
        self.layers = nn.ModuleList(
            DecoderLayer(d, cfg.ffn_mult * d, cfg.d_identity, cfg.style, cfg.dropout)
            for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, FRAME_OUT)
        if cfg.pose_atoms:  # the atoms (set by pose_atoms.init_chooser) and their chooser
            self.register_buffer("atoms", torch.zeros(cfg.pose_atoms, J, 3))
            self.choose = nn.Linear(d, cfg.pose_atoms)
            self.blend = ATOM_BLEND[cfg.atom_blend]
            self.margin = float(cfg.atom_margin)
            self.temperature = float(cfg.atom_sample)
            self.hold = int(cfg.atom_sample_hold)
            if self.temperature > 0:  # derived from a fixed seed, so not stored in the file
                self.register_buffer("gumbel", gumbel_table(NOISE_PERIOD, cfg.pose_atoms),
                                     persistent=False)
            self.action_floor = float(cfg.atom_action)
            if self.action_floor > 0:  # which atoms each action's neutral performance takes
                self.register_buffer("action_atoms", torch.zeros(cfg.num_actions,
                                                                 cfg.pose_atoms))
            self.template_switch = int(cfg.atom_template)
            if self.template_switch:  # each action's neutral performance, as atom indices
                self.register_buffer("action_template",
                                     torch.zeros(cfg.num_actions, TEMPLATE_FRAMES))
                self.register_buffer("template_length", torch.ones(cfg.num_actions))
        self.atom_logits: torch.Tensor | None = None  # the last forward's, for the atom loss

    def forward(self, h_action: torch.Tensor, h_identity: torch.Tensor, past=None, held=None,
                clock=None, actions=None, played=None):
        """Root offset and bone directions; with pose atoms also the atoms chosen ``[B, T, J,
        3]`` and their indices ``[B, T]``. The directions blend the atoms chosen with ``past``:
        None (every track starts at the first frame) or ``(atoms [B, atom_blend - 1, J, 3],
        fresh [B, 1])``, the atoms chosen in the frames before the first, oldest first, for the
        tracks that are not ``fresh``. ``held``: the index chosen in the frame before the first
        (see :func:`held_choice`). ``clock``: None (every track starts at its first frame) or
        ``(where [B, 2], fresh [B, 1])``, the first frame's place in the noise table
        (``atom_sample``; see :func:`noise_rows`). ``actions``: the action head's logits
        ``[B, T, num_actions]`` of each frame, which ``atom_action`` conditions the choice on.
        ``played``: with ``atom_template``, the action played and the frames into its
        performance ``[B, T, 2]`` (:func:`play_templates`), whose atoms replace the choice."""
        x = self.trunk(h_action, h_identity)
        out = self.head(x)
        if hasattr(self, "choose"):
            played_only = self.template_switch and not self.training  # no choice to score
            logits = None if played_only else self.choose(x)
            chosen, index = self._chosen(logits, held, clock, actions, played)
            return out[..., :2], blend_atoms(chosen, past, self.blend), chosen, index
        dirs = out[..., 2:].reshape(-1, int(out.shape[1]), J, 3)
        dirs = dirs / torch.linalg.vector_norm(dirs, dim=-1, keepdim=True).clamp_min(1e-6)
        return out[..., :2], dirs, None, None

    def trunk(self, h_action: torch.Tensor, h_identity: torch.Tensor) -> torch.Tensor:
        """The features ``[B, T, d_model]`` the heads read (the root offset and directions, and
        with pose atoms the chooser's logits, ``choose(trunk(...))``)."""
        x = self.memory(h_action)
        for layer in self.layers:
            x = layer(x, h_identity)
        return self.norm(x)

    def scores(self, logits: torch.Tensor, actions=None) -> torch.Tensor:
        """The chooser's ``logits [B, T, K]`` as the published choice weighs them, before the
        draw's noise: over ``atom_sample``'s temperature, plus ``atom_action``'s gate on the
        frame's ``actions`` (see :func:`action_gate`)."""
        if self.temperature > 0:
            logits = logits / self.temperature
        if self.action_floor > 0:
            if actions is None:
                raise ValueError("tmr-stream: atom_action chooses on the frame's action logits; "
                                 "decode through StreamTMR.decode_from")
            logits = logits + action_gate(actions, self.action_atoms, self.action_floor)
        return logits

    def _chosen(self, logits: torch.Tensor, held=None, clock=None, actions=None, played=None):
        """The pose atom of the largest logit ``[B, T, K]`` (in inference drawn by
        ``atom_sample``, conditioned on the frame's ``actions`` by ``atom_action`` (see
        :func:`action_gate`) and held by ``atom_margin``), exactly, and its index. In training the
        gradient reaches the logits through their softmax (straight through): the forward value
        stays the chosen atom. With ``atom_template`` (inference) the atoms are those of the
        ``played`` performances instead."""
        if not self.training and self.template_switch:
            if played is None:
                raise ValueError("tmr-stream: atom_template plays the recognised action's "
                                 "performance; decode through StreamTMR.decode_from")
            index = self.action_template[played[..., 0], played[..., 1]].long()
            return self.atoms[index], index
        if not self.training:
            scores = self.scores(logits, actions)
            if self.temperature > 0:
                scores = scores + self.gumbel[noise_rows(logits, clock, self.hold)]
            index = (held_choice(scores, self.margin, held) if self.margin > 0
                     else scores.argmax(-1))
            return self.atoms[index], index
        self.atom_logits = logits
        soft = logits.softmax(-1)
        index = logits.argmax(-1)
        hard = F.one_hot(index, soft.shape[-1]).to(soft.dtype)
        weights = hard + soft - soft.detach()
        return torch.einsum("btk,kjc->btjc", weights, self.atoms), index


#: Rows of the Gumbel noise table of ``atom_sample``: a track's draws repeat after this many
#: rows (34 s at 30 Hz with a fresh row every frame; ``atom_sample_hold`` k times longer), longer
#: than any window an attacker reads
NOISE_PERIOD = 1021
#: The longest ``atom_sample_hold``: the step's clock (row, frames into the row) then stays a
#: whole number below 2,048, which float16 holds exactly (a TensorRT plan may run it in fp16)
MAX_HOLD = 2048
#: Frames of each action's performance ``atom_template`` can play (the longest SynthKinect
#: recording is 150); the state's count of frames into it stays below, exact in float16
TEMPLATE_FRAMES = 256


def gumbel_table(rows: int, atoms: int, seed: int = 0) -> torch.Tensor:
    """Standard Gumbel noise ``[rows, atoms]`` from a fixed seed: adding it to logits / T and
    taking the argmax draws from softmax(logits / T) (the Gumbel-max trick)."""
    u = torch.rand(rows, atoms, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (-torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-12)))).to(torch.float32)


def noise_rows(logits: torch.Tensor, clock=None, hold: int = 1) -> torch.Tensor:
    """The noise-table rows ``[B or 1, T]`` of each frame of ``logits [B, T, K]``: the frame's
    count in its track divided by ``hold`` (rounded down), modulo :data:`NOISE_PERIOD`.
    ``clock``: None (every track starts at its first frame) or ``(where [B, 2], fresh [B, 1])``,
    the first frame's row and how many frames of that row came before it (< ``hold``), for the
    tracks that are not fresh."""
    t = torch.arange(int(logits.shape[1]), device=logits.device)[None]
    if clock is None:
        return torch.remainder(torch.div(t, hold, rounding_mode="floor"), NOISE_PERIOD)
    where, fresh = clock
    where = torch.where(fresh, torch.zeros_like(where), where).long()
    row, phase = where[:, :1], where[:, 1:]
    return torch.remainder(row + torch.div(phase + t, hold, rounding_mode="floor"), NOISE_PERIOD)


def next_clock(where: torch.Tensor, fresh: torch.Tensor, hold: int) -> torch.Tensor:
    """The step's clock ``[B, 2]`` (row, frames into the row) after one frame, from the clock
    ``where`` of that frame (zeros for the ``fresh`` tracks). Every value stays a whole number
    below 2,048, exact in float16."""
    where = torch.where(fresh, torch.zeros_like(where), where)
    row, phase = where[:, :1], where[:, 1:] + 1
    turn = phase >= hold
    return torch.cat([torch.where(turn, torch.remainder(row + 1, NOISE_PERIOD), row),
                      torch.where(turn, torch.zeros_like(phase), phase)], 1)


def action_gate(actions: torch.Tensor, table: torch.Tensor, floor: float) -> torch.Tensor:
    """Log-weights ``[B, T, K]`` of the atoms given each frame's action logits ``actions [B, T,
    A]``: the log of the probability that an atom is one of the frame's action's, under the
    posterior softmax(actions) and the 0/1 ``table [A, K]`` of each action's atoms, floored at
    ``floor``. Added to the chooser's logits (over the temperature, so after the Gumbel noise
    too), it multiplies the probability of every atom by that weight."""
    return torch.log((actions.softmax(-1) @ table).clamp_min(floor))


def play_templates(actions: torch.Tensor, lengths: torch.Tensor, switch: int, play=None):
    """What ``atom_template`` plays in each frame of action logits ``actions [B, T, A]``: the
    action played and the frames into its neutral performance ``[B, T, 2]`` (long), and the
    state after the last frame ``[B, 4]`` (float: the action played, the frames into its
    performance, the action leading the head and for how many frames in a row, at most
    ``switch``). The action leading the head (argmax) becomes the one played once it has led
    for ``switch`` frames; each played performance starts at its first frame and loops over its
    ``lengths [A]`` frames. ``play``: None (every track starts at its first frame, playing the
    action its first frame recognises) or ``(state [B, 4], fresh [B, 1])``, the state before
    the first frame for the tracks that are not ``fresh``."""
    best = actions.argmax(-1)                                      # [B, T]
    played, leader = best[:, 0], best[:, 0]
    frames, run = torch.full_like(played, -1), torch.zeros_like(played)
    if play is not None:
        state, fresh = play
        state, fresh = state.long(), fresh[:, 0]
        played = torch.where(fresh, played, state[:, 0])
        frames = torch.where(fresh, frames, state[:, 1])
        leader = torch.where(fresh, leader, state[:, 2])
        run = torch.where(fresh, run, state[:, 3])
    size = lengths.long()
    out = []
    for t in range(int(actions.shape[1])):
        now = best[:, t]
        run = torch.where(now == leader, run + 1, torch.ones_like(run)).clamp_max(switch)
        leader = now
        turn = (leader != played) & (run >= switch)
        played = torch.where(turn, leader, played)
        frames = torch.remainder(torch.where(turn, torch.zeros_like(frames), frames + 1),
                                 size[played])
        out.append(torch.stack([played, frames], -1))
    state = torch.stack([played, frames, leader, run], -1).to(actions.dtype)
    return torch.stack(out, 1), state


def held_choice(logits: torch.Tensor, margin: float, held=None) -> torch.Tensor:
    """Indices ``[B, T]`` of the atoms chosen by ``logits [B, T, K]`` with hysteresis: the atom
    chosen in the frame before stays until the largest logit beats its own by more than
    ``margin``, so that small differences between people's postures do not flip the choice
    between neighbouring atoms. ``held``: None (every track starts at its first frame, with its
    largest logit) or ``(index [B, 1], fresh [B, 1])``, the index chosen in the frame before
    the first for the tracks that are not ``fresh``."""
    best = logits.argmax(-1)
    current = best[:, 0]
    if held is not None:
        index, fresh = held
        current = torch.where(fresh[:, 0], current, index[:, 0].long())
    out = []
    for t in range(int(logits.shape[1])):
        step = logits[:, t]
        gain = step.gather(1, best[:, t, None]) - step.gather(1, current[:, None])
        current = torch.where(gain[:, 0] > margin, best[:, t], current)
        out.append(current)
    return torch.stack(out, 1)


def blend_atoms(chosen: torch.Tensor, past, weights: tuple[float, ...]) -> torch.Tensor:
    """Unit bone directions ``[B, T, J, 3]``: the weighted sum of the atoms chosen in each frame
    and the ``n - 1 = len(weights) - 1`` frames before, each bone renormalised. ``past``: None
    (before the first frame, its atom repeated: a fresh track) or ``(atoms [B, n - 1, J, 3],
    fresh [B, 1])``, the atoms before the first frame for the tracks that are not fresh."""
    n, t = len(weights), int(chosen.shape[1])
    if n == 1:
        return chosen
    first = chosen[:, :1].expand(-1, n - 1, -1, -1)
    if past is not None:
        atoms, fresh = past
        first = torch.where(fresh[:, :, None, None], first, atoms)
    seq = torch.cat([first, chosen], 1)                      # [B, n - 1 + T, J, 3]
    d = sum(w * seq[:, n - 1 - i: n - 1 - i + t] for i, w in enumerate(weights))
    norm = torch.linalg.vector_norm(d, dim=-1, keepdim=True)
    return torch.where(norm > 1e-6, d / norm.clamp_min(1e-6), torch.zeros_like(d))


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@register
class StreamTMR(DisentangledTMR):
    """Streaming DisentangledTMR (see the module docstring). Trains with DisentangledTMR's
    objective and curriculum; serves through :meth:`for_dummy` (``forward``/``step``)."""

    method = "tmr-stream"
    exact_bones = True
    traits = frozenset({"learned", "streaming"})
    trainer = "streamtmr.train.tmr:TMRCurriculum"
    presets = {
        "tiny": {"window": 16, "num_actions": 8, "num_subjects": 6, "d_action": 32,
                 "action_heads": 2, "lstm_hidden": 16, "backbone_channels": 8,
                 "backbone_blocks": 1, "d_identity": 16, "identity_hidden": 16, "d_model": 32,
                 "decoder_layers": 1, "ffn_mult": 2, "dropout": 0.0},
        "small": {"window": 64, "d_action": 64, "action_heads": 4, "lstm_hidden": 64,
                  "backbone_channels": 16, "backbone_blocks": 1, "d_identity": 64,
                  "identity_hidden": 32, "d_model": 64, "decoder_layers": 2, "ffn_mult": 2},
        # between small and paper: trains on the 2-core CPU in <= 1 hour (issue 16, item 4;
        # configs/tmr_stream_medium.yaml), 2.3x small's parameters
        "medium": {"window": 64, "d_action": 96, "action_heads": 4, "lstm_hidden": 96,
                   "backbone_channels": 24, "backbone_blocks": 2, "d_identity": 64,
                   "identity_hidden": 32, "d_model": 96, "decoder_layers": 3, "ffn_mult": 2},
        "paper": {},
    }

    def __init__(self, config: dict[str, Any] | None = None):
        cfg = StreamTMRConfig.from_dict(config)
        Anonymizer.__init__(self, asdict(cfg))
        d = cfg.d_action
        self.action_encoder = StreamActionEncoder(cfg)
        self.identity_encoder = IdentityEncoder(self.config)
        self.decoder = FrameDecoder(cfg)
        self.subject_head = MLP(d, d, cfg.num_subjects)  # RI classifier (entropy side)
        self.discriminator = MLP(d, d, cfg.num_subjects)  # adversary behind grad reversal
        self._last_codes = None

    # ------------------------------------------------- hooks of DisentangledTMR's objective

    def _check_source(self, source: torch.Tensor) -> None:
        if torch.jit.is_tracing():
            return
        if source.dim() != 4 or source.shape[-2:] != (J, 3) or source.shape[1] < 1:
            raise ValueError(f"tmr-stream: source must be [B, T, 25, 3] with T >= 1, "
                             f"got {tuple(source.shape)}")

    def encode_action(self, source: torch.Tensor):
        """source ``[B, T, 25, 3]`` (a track from its first frame) → (ActionCode, frame)."""
        self._check_source(source)
        leg = track_leg(source[:, 0])
        tokens, joints, frame = frame_inputs(source, shifted(source, 1), shifted(source, 2), leg)
        return self.action_encoder(tokens, joints), frame

    def decode(self, h_action: torch.Tensor, h_identity: torch.Tensor, lengths: torch.Tensor,
                frame, teacher: torch.Tensor | None = None) -> torch.Tensor:
        """Joints ``[B, T, 25, 3]`` in camera space with exactly ``lengths`` ``[B, 25]``."""
        return self.decode_from(h_action, h_identity, lengths, frame)[0]

    def decode_from(self, h_action: torch.Tensor, h_identity: torch.Tensor,
                    lengths: torch.Tensor, frame, past=None, held=None, clock=None,
                    played=None):
        """:meth:`decode` given the pose atoms chosen before the first frame (``past``,
        ``held`` and ``clock``, see :class:`FrameDecoder`) and, with ``atom_template``, what
        each frame plays (``played``; None: every track plays from its first frame, see
        :func:`play_templates`); returns the joints, the atoms chosen and their indices (None,
        None without atoms)."""
        rot, root, floor = frame
        dec = self.decoder
        plays = bool(getattr(dec, "template_switch", 0)) and not self.training
        if plays and played is None and any(v is not None for v in (past, held, clock)):
            raise ValueError("tmr-stream: atom_template continues a track only with what it "
                             "played (played=, see StreamingDummy.step)")
        actions = None
        if getattr(dec, "action_floor", 0.0) > 0 or (plays and played is None):
            actions = self.action_encoder.head(h_action)
        if plays and played is None:
            played = play_templates(actions, dec.template_length, dec.template_switch)[0]
        offset, dirs, chosen, index = self.decoder(h_action, h_identity, past, held, clock,
                                                   actions, played)
        leg = skeleton.leg_length(lengths)[:, None, None]  # (B, 1, 1)
        offset = torch.stack([offset[..., 0], torch.zeros_like(offset[..., 0]),
                              offset[..., 1]], -1) * leg  # (B, T, 3), metres
        y = skeleton.forward_kinematics(offset, dirs, lengths[:, None, :])  # heading frame
        y = skeleton.from_canonical(y[..., None, :, :], rot, root)  # (B, T, 1, 25, 3)
        return skeleton.place_on_floor(y, floor)[..., 0, :, :], chosen, index

    def for_dummy(self, dummy_lengths) -> StreamingDummy:
        return StreamingDummy(self, dummy_lengths)


class StreamingDummy(nn.Module):
    """StreamTMR for one fixed dummy: H_identity baked in; what engines run and export.

    ``forward(x [B, T, 25, 3]) -> [B, T, 25, 3]`` (each sequence a track from its first frame)
    and ``step(frame [B, 25, 3], state) -> (out [B, 25, 3], state)`` compute the same function;
    ``init_state(batch)`` is a fresh track, ``state_spec()`` the per-body state shapes.
    """

    streaming = True

    def __init__(self, model: StreamTMR, dummy_lengths):
        super().__init__()
        if isinstance(dummy_lengths, torch.Tensor):
            lengths = dummy_lengths.detach().to(torch.float32).reshape(-1).clone()
        else:
            lengths = torch.tensor(np.array(dummy_lengths, np.float32).reshape(-1))
        if lengths.shape != (J,):
            raise ValueError(f"tmr-stream: dummy lengths must be [25], got {tuple(lengths.shape)}")
        self.model = model
        self.register_buffer("lengths", lengths)
        with torch.no_grad():
            h = model.identity_encoder(rest_pose(lengths)[None, None])  # (1, d_identity)
        self.register_buffer("h_identity", h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code, frame = self.model.encode_action(x)
        alpha = float(self.model.config.get("follow", 1.0))
        if alpha < 1.0:  # a fresh track starts where the source stands
            path = trajectory(x)
            frame = follow_frame(frame, causal_average(path, alpha, path[:, 0]))
        if self.model.config.get("root_motion", "source") == "leash":
            rot, root, floor = frame
            frame = (rot, leash_path(root, self.model.config["leash_m"], root[:, 0]), floor)
        return self.model.decode(code.h, self.h_identity, self.lengths.expand(x.shape[0], J),
                                  frame)

    def state_spec(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Per-body state shapes (all float32), in the order of the exported graph's inputs."""
        cfg = self.model.config
        d, c = cfg["d_action"], cfg["backbone_channels"]
        layers, w = cfg["action_layers"], cfg["window"]
        shapes = {
            "t": (1,),  # frames seen so far (capped at W); 0 = the next frame starts the track
            "ref_leg": (1,),  # the track's leg length (scale reference)
            "prev": (2, J, 3),  # the two frames before the next one (camera space)
            "conv": (max(KERNELS) - 1, d),  # temporal conv: last 6 embedded frames
            "kv_k": (layers, w, d),  # attention key ring, oldest first
            "kv_v": (layers, w, d),  # attention value ring
            "lstm_h": (cfg["lstm_hidden"],),
            "lstm_c": (cfg["lstm_hidden"],),
            "gcn": (cfg["backbone_blocks"], BACKBONE_KERNEL - 1, J, c),  # backbone caches
        }
        if cfg.get("pose_atoms") and cfg.get("atom_blend", 1) > 1:  # atoms chosen before
            shapes["atoms"] = (cfg["atom_blend"] - 1, J, 3)
        if cfg.get("pose_atoms") and cfg.get("atom_margin", 0.0) > 0:  # the atom held
            shapes["atom_index"] = (1,)
        if cfg.get("pose_atoms") and cfg.get("atom_sample", 0.0) > 0:  # the next frame's noise
            shapes["atom_clock"] = (2,)  # row and frames into it (see noise_rows)
        if cfg.get("pose_atoms") and cfg.get("atom_template", 0):  # what plays (play_templates)
            shapes["atom_play"] = (4,)
        if cfg.get("follow", 1.0) < 1.0:  # the followed heading vector and root X, Z
            shapes["follow"] = (4,)
        if cfg.get("root_motion", "source") == "leash":  # where the body stands
            shapes["leash"] = (3,)
        return {k: (v, torch.float32) for k, v in shapes.items()}

    def init_state(self, batch: int) -> dict[str, torch.Tensor]:
        like = self.lengths
        return {k: like.new_zeros((batch, *shape)) for k, (shape, _) in self.state_spec().items()}

    def step(self, frame: torch.Tensor, state: dict[str, torch.Tensor]):
        """One frame ``[B, 25, 3]`` of B tracks → (output ``[B, 25, 3]``, the new state)."""
        first = state["t"] < 0.5  # (B, 1)
        ref_leg = torch.where(first, track_leg(frame)[:, None], state["ref_leg"])
        x = frame[:, None]  # (B, 1, 25, 3)
        prev = torch.where(first[:, :, None, None], torch.cat([x, x], 1), state["prev"])
        tokens, joints, geo = frame_inputs(x, prev[:, 1:], prev[:, :1], ref_leg[:, 0])
        h, new = self.model.action_encoder.step(tokens, joints, state, first)
        lengths = self.lengths.expand(frame.shape[0], J)
        spec = self.state_spec()
        if "follow" in spec:
            path = trajectory(x)[:, 0]
            start = torch.where(first, path, state["follow"])
            new["follow"] = causal_average(path[:, None], self.model.config["follow"], start)[:, 0]
            geo = follow_frame(geo, new["follow"][:, None])
        if "leash" in spec:
            rot, root, floor = geo
            start = torch.where(first, root[:, 0], state["leash"])
            root = leash_path(root, self.model.config["leash_m"], start)
            new["leash"] = root[:, 0]
            geo = (rot, root, floor)
        past = (state["atoms"], first) if "atoms" in spec else None
        held = (state["atom_index"], first) if "atom_index" in spec else None
        clock = (state["atom_clock"], first) if "atom_clock" in spec else None
        played = None
        if "atom_play" in spec:
            dec = self.model.decoder
            played, new["atom_play"] = play_templates(
                self.model.action_encoder.head(h), dec.template_length, dec.template_switch,
                (state["atom_play"], first))
        y, chosen, index = self.model.decode_from(h, self.h_identity, lengths, geo, past, held,
                                                  clock, played)
        if past is not None:  # a fresh track's past is its first atom, repeated (as in forward)
            before = torch.where(first[:, :, None, None], chosen, state["atoms"])
            new["atoms"] = torch.cat([before[:, 1:], chosen], 1)
        if held is not None:
            new["atom_index"] = index.to(frame.dtype)
        if clock is not None:
            new["atom_clock"] = next_clock(state["atom_clock"], first, self.model.decoder.hold)
        window = float(self.model.config["window"])
        new.update(t=(state["t"] + 1).clamp_max(window), ref_leg=ref_leg,
                   prev=torch.cat([prev[:, 1:], x], 1))
        return y[:, 0], {k: new[k] for k in spec}


__all__ = ["StreamTMR", "StreamTMRConfig", "StreamingDummy", "frame_inputs"]
