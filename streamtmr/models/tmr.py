"""DisentangledTMR: the flagship retargeting anonymizer.

    source [B,T,25,3] ──canonicalise (frame 0), ÷ source leg length──▶ action encoder ─▶ H_action
    target bone lengths ──rest pose──▶ identity encoder ─▶ H_identity (once per dummy)
    decoder(H_action, H_identity) ─▶ root (× target leg length) + unit bone directions
        ─▶ forward kinematics with the target's bone lengths ─▶ back to camera space

Normalisation. Each window is expressed in the canonical frame of its FIRST frame
(``skeleton.canonicalize(ref_frame=0)``) and divided by the source's leg length measured on that
frame. Using the newest (last) frame as reference would make every output frame depend on the
newest input, so a causal model could not be causal; since the output is mapped back to camera
space with ``skeleton.from_canonical``, the reference only changes what the network sees. Root
motion is predicted in leg-length units and multiplied by the target's leg length, which is the
leg-length-ratio rescaling of ``skeleton.rescale_root``.

Training lives in :mod:`streamtmr.train.tmr` (the curriculum, its λ tables and
:func:`~streamtmr.train.tmr.tmr_training_losses`); the model offers the steps it needs:
:meth:`DisentangledTMR.encode_action`, :meth:`DisentangledTMR.decode` and the two training heads
``subject_head`` (re-identification) and ``discriminator`` (behind gradient reversal).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from streamtmr import skeleton
from streamtmr.models.base import Anonymizer
from streamtmr.models.layers import MLP
from streamtmr.models.registry import register
from streamtmr.models.tmr_decoder import MotionDecoder, frame_features
from streamtmr.models.tmr_encoders import ActionCode, ActionEncoder, IdentityEncoder, rest_pose

J = skeleton.NUM_JOINTS

DEFAULT_CONFIG: dict[str, Any] = {
    "method": "tmr",
    "window": 64,
    "num_actions": 60,
    "num_subjects": 40,
    "causal": False,
    "decoding": "parallel",  # or "autoregressive"
    # ablations
    "temporal_conv": True,
    "lstm": True,
    "identity_mode": "static",  # or "full_sequence"
    "tokens": "motion",  # pos+vel+acc; "position"; "dynamics" (= motion + bone lengths)
    "vq": False,
    # place the output on the source's floor (lowest foot point of the window): the dummy's
    # pelvis height is its own, which the leg-normalised decoder cannot know
    "floor_align": False,
    "vq_codes": 512,
    "vq_beta": 0.25,
    # sizes
    "d_action": 256,
    "action_heads": 8,
    "action_layers": 1,
    "lstm_hidden": 256,
    "backbone_channels": 64,
    "backbone_blocks": 3,
    "d_identity": 128,
    "identity_hidden": 64,
    "d_model": 256,
    "decoder_layers": 6,
    "decoder_heads": 8,
    "ffn_mult": 4,
    "style": "adain",  # or "film"
    "dropout": 0.1,
    # loss settings
    "nce_tau": 0.07,
    "adv_scale": 1.0,
    "ee_weight": 5.0,
}

_CHOICES = {
    "decoding": ("parallel", "autoregressive"),
    "identity_mode": ("static", "full_sequence"),
    "tokens": ("motion", "position", "dynamics"),
    "style": ("adain", "film"),
}
_BOOLS = ("causal", "temporal_conv", "lstm", "vq", "floor_align")
_POSITIVE_INTS = ("window", "num_actions", "num_subjects", "vq_codes", "d_action", "action_heads",
                  "lstm_hidden", "backbone_channels", "backbone_blocks", "d_identity",
                  "identity_hidden", "d_model", "decoder_layers", "decoder_heads", "ffn_mult")


def validate_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults filled in, unknown keys and bad values rejected (the message names the key)."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise KeyError(f"tmr config: unknown key(s) {unknown}; known: {sorted(DEFAULT_CONFIG)}")
    cfg = {**DEFAULT_CONFIG, **config}
    if cfg["method"] != "tmr":
        raise ValueError(f"tmr config: method must be 'tmr', got {cfg['method']!r}")
    for key, choices in _CHOICES.items():
        if cfg[key] not in choices:
            raise ValueError(f"tmr config: {key} must be one of {choices}, got {cfg[key]!r}")
    for key in _BOOLS:
        if not isinstance(cfg[key], bool):
            raise ValueError(f"tmr config: {key} must be true or false, got {cfg[key]!r}")
    for key in _POSITIVE_INTS:
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"tmr config: {key} must be a positive integer, got {cfg[key]!r}")
    if cfg["action_layers"] < 0 or not isinstance(cfg["action_layers"], int):
        raise ValueError(f"tmr config: action_layers must be an integer ≥ 0, "
                         f"got {cfg['action_layers']!r}")
    for key, heads in (("d_action", "action_heads"), ("d_model", "decoder_heads")):
        if cfg[key] % cfg[heads]:
            raise ValueError(f"tmr config: {key} ({cfg[key]}) must be divisible by "
                             f"{heads} ({cfg[heads]})")
    if not 0.0 <= float(cfg["dropout"]) < 1.0:
        raise ValueError(f"tmr config: dropout must be in [0, 1), got {cfg['dropout']!r}")
    if float(cfg["nce_tau"]) <= 0:
        raise ValueError(f"tmr config: nce_tau must be > 0, got {cfg['nce_tau']!r}")
    return cfg


@register
class DisentangledTMR(Anonymizer):
    """Action/identity-disentangled transformer motion retargeting (see the module docstring)."""

    method = "tmr"
    exact_bones = True
    traits = frozenset({"learned", "windowed"})
    trainer = "streamtmr.train.tmr:TMRCurriculum"
    presets = {
        "tiny": {"window": 32, "num_actions": 8, "num_subjects": 6, "d_action": 32,
                 "action_heads": 2, "lstm_hidden": 16, "backbone_channels": 16,
                 "backbone_blocks": 1, "d_identity": 16, "identity_hidden": 16, "d_model": 32,
                 "decoder_layers": 1, "decoder_heads": 2, "ffn_mult": 2, "vq_codes": 32,
                 "dropout": 0.0},
        "small": {"window": 64, "causal": True, "d_action": 64, "action_heads": 4,
                  "lstm_hidden": 64, "backbone_channels": 16, "backbone_blocks": 1,
                  "d_identity": 64, "identity_hidden": 32, "d_model": 64, "decoder_layers": 2,
                  "decoder_heads": 4, "ffn_mult": 2, "vq_codes": 256},
        "paper": {},
    }

    def __init__(self, config: dict[str, Any] | None = None):
        cfg = validate_config(config)
        super().__init__(cfg)
        d = cfg["d_action"]
        self.action_encoder = ActionEncoder(cfg)
        self.identity_encoder = IdentityEncoder(cfg)
        self.decoder = MotionDecoder(cfg)
        self.subject_head = MLP(d, d, cfg["num_subjects"])  # RI classifier (entropy side)
        self.discriminator = MLP(d, d, cfg["num_subjects"])  # adversary behind grad reversal
        self._last_codes: torch.Tensor | None = None

    # ---------------------------------------------------------------- normalisation, encoding

    def _check_source(self, source: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # shapes are fixed while exporting
            return
        if source.dim() != 4 or source.shape[-2:] != (J, 3):
            raise ValueError(f"tmr: source must be [B, T, 25, 3], got {tuple(source.shape)}")
        if not 1 <= source.shape[1] <= self.window:
            raise ValueError(f"tmr: window has {source.shape[1]} frames; this model takes "
                             f"1..{self.window}")

    def _normalize(self, source: torch.Tensor):
        """Canonical (frame 0) joints ÷ source leg length, plus the frame to map back: rotation,
        origin and the floor height (lowest foot point of the window, canonical metres)."""
        self._check_source(source)
        canon, rot, origin = skeleton.canonicalize(source, ref_frame=0)
        leg = skeleton.leg_length(skeleton.bone_lengths(source[:, 0])).clamp_min(0.1)
        x = canon / leg[:, None, None, None]
        lengths = skeleton.bone_lengths(x) if self.config["tokens"] == "dynamics" else None
        return x, lengths, (rot, origin, skeleton.floor_height(canon))

    def encode_action(self, source: torch.Tensor):
        """(action code, frame to map back) of a source window ``[B, T, 25, 3]``."""
        x, lengths, frame = self._normalize(source)
        code = self.action_encoder(x, lengths)
        if code.codes is not None:
            self._last_codes = code.codes.detach()
        return code, frame

    def _target(self, target: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(bone lengths [B, 25], identity-encoder input [B, T', 25, 3]) from bone lengths
        ``[25]``/``[B, 25]`` or a target sequence ``[B, T', 25, 3]``."""
        if target.dim() in (1, 2) and target.shape[-1] == J:
            lengths = target.expand(batch, J) if target.dim() == 1 else target
            return lengths, rest_pose(lengths)[:, None]
        if target.dim() == 4 and target.shape[-2:] == (J, 3):
            lengths = skeleton.bone_lengths(target).median(dim=1).values
            return lengths, skeleton.canonicalize(target, ref_frame=0)[0]
        raise ValueError(f"tmr: target must be bone lengths [25] / [B, 25] or a sequence "
                         f"[B, T, 25, 3], got {tuple(target.shape)}")

    def decode(self, h_action: torch.Tensor, h_identity: torch.Tensor, lengths: torch.Tensor,
               frame: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
               teacher: torch.Tensor | None = None) -> torch.Tensor:
        """Joints ``[B, T, 25, 3]`` in camera space on bones ``lengths [B, 25]``; ``teacher``
        (the target motion) feeds an autoregressive decoder its ground-truth previous frames."""
        rot, origin, floor = frame
        leg = skeleton.leg_length(lengths)[:, None, None]
        if teacher is not None:
            canon = skeleton.to_canonical(teacher, rot, origin)
            teacher = frame_features(canon[..., skeleton.ROOT, :] / leg,
                                     skeleton.bone_directions(canon))
        root, dirs = self.decoder(h_action, h_identity, teacher)
        y = skeleton.forward_kinematics(root * leg, dirs, lengths[:, None, :])
        if self.config["floor_align"]:
            y = skeleton.place_on_floor(y, floor)
        return skeleton.from_canonical(y, rot, origin)

    def retarget_encoded(self, source: torch.Tensor, lengths: torch.Tensor,
                         h_identity: torch.Tensor) -> torch.Tensor:
        """Retarget with a precomputed H_identity ``[B, d_identity]`` and lengths ``[B, 25]``."""
        code, frame = self.encode_action(source)
        return self.decode(code.h, h_identity, lengths, frame)

    # ---------------------------------------------------------------- public API

    def retarget(self, source: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
        """source ``[B, T, 25, 3]`` → ``[B, T, 25, 3]`` on the target body (camera space).

        ``target_lengths``: bone lengths ``[25]``/``[B, 25]`` (identity from the rest pose) or a
        target sequence ``[B, T', 25, 3]`` (identity from that sequence, lengths its median).
        """
        self._check_source(source)
        lengths, id_input = self._target(target_lengths, source.shape[0])
        return self.retarget_encoded(source, lengths, self.identity_encoder(id_input))

    def for_dummy(self, dummy_lengths: torch.Tensor) -> nn.Module:
        return DummyTMR(self, dummy_lengths)

    def embeddings(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Action and identity codes of one sequence ``[B, T, 25, 3]``: ``h_action [B, T, d]``,
        ``action_pooled [B, d]``, ``action_logits [B, classes]``, ``h_identity [B, d_id]``."""
        code, _ = self.encode_action(x)
        h_identity = self.identity_encoder(skeleton.canonicalize(x, ref_frame=0)[0])
        return {"h_action": code.h, "action_pooled": code.pooled, "action_logits": code.logits,
                "h_identity": h_identity}

    def codebook_stats(self) -> dict[str, float]:
        """Perplexity and fraction of codes used in the last forward pass (vq models only)."""
        if self.action_encoder.vq is None:
            raise ValueError("tmr: codebook_stats() needs a model built with vq: true")
        if self._last_codes is None:
            return {"perplexity": 0.0, "usage": 0.0}
        return self.action_encoder.vq.stats(self._last_codes)


class DummyTMR(nn.Module):
    """``x[B, T, 25, 3] → y[B, T, 25, 3]`` for one fixed dummy.

    H_identity is computed once, at construction, and stored as a buffer: a call runs only the
    action encoder, the decoder and forward kinematics. Rebuild it after changing the weights.
    """

    def __init__(self, model: DisentangledTMR, dummy_lengths: torch.Tensor):
        super().__init__()
        if isinstance(dummy_lengths, torch.Tensor):
            lengths = dummy_lengths.detach().to(torch.float32).reshape(-1).clone()
        else:
            lengths = torch.tensor(np.asarray(dummy_lengths, dtype=np.float32).reshape(-1))
        if lengths.shape != (J,):
            raise ValueError(f"tmr: dummy lengths must be [25], got {tuple(lengths.shape)}")
        self.model = model
        self.register_buffer("lengths", lengths)
        with torch.no_grad():
            h = model.identity_encoder(rest_pose(lengths)[None, None])
        self.register_buffer("h_identity", h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return self.model.retarget_encoded(x, self.lengths.expand(b, J),
                                           self.h_identity.expand(b, -1))


__all__ = ["DEFAULT_CONFIG", "ActionCode", "DisentangledTMR", "DummyTMR", "validate_config"]
