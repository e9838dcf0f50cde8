"""PMR (Carr et al., ICCV 2025) and DMR (Aberman et al., 2020): conv motion retargeting.

Two temporal conv encoders split a window into a motion embedding ``E_M(x)`` and a privacy
(skeleton and style) embedding ``E_P(x)``, each ``[B, C_emb, T_emb]`` (256 × 32 in the paper).
A transposed-conv decoder ``D`` maps ``[E_M(source), E_P(target)]`` to the source's motion on the
target's body. Around them, PMR trains a motion classifier ``M`` and a privacy classifier ``P``
on the embeddings (each cooperative with one encoder and adversarial to the other) and a quality
controller ``Q`` (real/fake discriminator on sequences); DMR is the same model without them
(α_emb = 0). The critics live in :class:`PMRCritics`, outside the anonymizer, so a checkpoint
holds what inference needs and DMR has no classifier parameters at all.

Frames: every sequence is encoded in its own canonical frame (root at frame 0 at the origin,
hips facing +X, :func:`streamtmr.skeleton.canonicalize`). The decoder outputs the root path and 24
bone directions in the source's canonical frame; forward kinematics with the target's bone
lengths builds the joints, so every output frame has exactly the target's bones, and the result
is rotated back into the source's camera space.

Target bodies: :meth:`PMR.retarget` takes bone lengths (the streaming interface); it embeds the
target's rest pose (:meth:`streamtmr.dummy.Dummy.rest_pose` directions with the target's lengths)
repeated over the window. Training shows ``E_P`` such rest-pose targets (see
``streamtmr.train.pmr``), so this is in distribution. :meth:`PMR.retarget_to` embeds a recorded
target sequence instead.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamtmr import skeleton
from streamtmr.dummy import Dummy, default_dummy
from streamtmr.models.base import Anonymizer
from streamtmr.models.registry import register

J = skeleton.NUM_JOINTS
IN_FEATURES = J * 3
#: Decoder output per frame: root position (3) and one direction per real bone (24 × 3).
OUT_FEATURES = 3 + skeleton.NUM_BONES * 3


def _rest_directions() -> np.ndarray:
    """Unit bone directions ``[25, 3]`` of the dummy rest pose (independent of bone lengths)."""
    return skeleton.bone_directions(default_dummy().rest_pose())


REST_DIRECTIONS = _rest_directions()


def rest_pose_sequence(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """Rest pose of bodies with bone lengths ``[B, 25]`` repeated: ``[B, frames, 25, 3]``."""
    dirs = skeleton.device_constant(REST_DIRECTIONS, lengths)
    pose = skeleton.forward_kinematics(lengths.new_zeros(*lengths.shape[:-1], 3), dirs, lengths)
    return pose[..., None, :, :].expand(*lengths.shape[:-1], frames, J, 3)


def to_features(canon: torch.Tensor) -> torch.Tensor:
    """Canonical joints ``[B, T, 25, 3]`` → conv input ``[B, 75, T]``."""
    return canon.flatten(-2).transpose(1, 2)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)


class TemporalEncoder(nn.Module):
    """Conv1d stack over time: ``[B, 75, T] → [B, C_emb, T_emb]`` (E_M and E_P).

    The first ``log2(T / T_emb)`` layers halve the time axis (stride 2), the rest keep it.
    """

    def __init__(self, hidden: list[int], emb_channels: int, downsample: int, kernel: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = IN_FEATURES
        for i, c in enumerate(hidden):
            stride = 2 if i < downsample else 1
            layers += [nn.Conv1d(c_in, c, kernel, stride, kernel // 2, padding_mode="reflect"),
                       _act()]
            c_in = c
        layers.append(nn.Conv1d(c_in, emb_channels, kernel, 1, kernel // 2,
                                padding_mode="reflect"))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TemporalDecoder(nn.Module):
    """Transposed-conv decoder: ``[B, 2·C_emb, T_emb] → [B, 75, T]`` (root + bone directions)."""

    def __init__(self, hidden: list[int], emb_channels: int, upsample: int, kernel: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 2 * emb_channels
        n = len(hidden)
        for i, c in enumerate(hidden):
            if i >= n - upsample:  # the last `upsample` layers double the time axis
                layers.append(nn.ConvTranspose1d(c_in, c, 4, 2, 1))
            else:
                layers.append(nn.ConvTranspose1d(c_in, c, kernel, 1, kernel // 2))
            layers.append(_act())
            c_in = c
        layers.append(nn.Conv1d(c_in, OUT_FEATURES, kernel, 1, kernel // 2,
                                padding_mode="reflect"))
        self.net = nn.Sequential(*layers)

    def forward(self, motion: torch.Tensor, privacy: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([motion, privacy], dim=1))


def decode_joints(out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Decoder output ``[B, 75, T]`` and bone lengths ``[B, 25]`` → joints ``[B, T, 25, 3]``."""
    out = out.transpose(1, 2)  # [B, T, 75]
    root = out[..., :3]
    bones = out[..., 3:].unflatten(-1, (skeleton.NUM_BONES, 3))
    bones = bones / torch.linalg.vector_norm(bones, dim=-1, keepdim=True).clamp_min(1e-6)
    dirs = F.pad(bones, (0, 0, 1, 0))  # the root has no bone
    return skeleton.forward_kinematics(root, dirs, lengths[:, None, :])


def _pow2_factor(window: int, emb_len: int) -> int:
    if window % emb_len or (window // emb_len) & (window // emb_len - 1):
        raise ValueError(f"pmr: window {window} must be emb_len {emb_len} times a power of 2")
    return int(math.log2(window // emb_len))


@register
class PMR(Anonymizer):
    """PMR anonymizer: ``E_M``, ``E_P`` and ``D`` (see the module docstring)."""

    method = "pmr"
    exact_bones = True
    traits = frozenset({"learned", "windowed"})
    trainer = "streamtmr.train.pmr:PMRCurriculum"
    #: tiny: tests; small: CPU streaming; paper: Table 5 sizes (embedding 256 × 32).
    presets = {
        "tiny": {"window": 16, "emb_channels": 32, "emb_len": 8, "hidden": [32, 32],
                 "critic_hidden": 32},
        "small": {"window": 64, "emb_channels": 128, "emb_len": 32, "hidden": [128, 128, 128],
                  "critic_hidden": 128},
        "paper": {"window": 64, "emb_channels": 256, "emb_len": 32, "hidden": [128, 256, 512],
                  "critic_hidden": 256},
    }

    def __init__(self, config: dict[str, Any] | None = None):
        defaults = {"method": self.method, **self.presets["tiny"]}
        super().__init__({**defaults, **(config or {})})
        c = self.config
        hidden = [int(h) for h in c["hidden"]]
        self.emb_channels, self.emb_len = int(c["emb_channels"]), int(c["emb_len"])
        factor = _pow2_factor(self.window, self.emb_len)
        if factor > len(hidden):
            raise ValueError(f"pmr: {factor} halvings need at least {factor} hidden layers")
        self.motion_encoder = TemporalEncoder(hidden, self.emb_channels, factor)
        self.privacy_encoder = TemporalEncoder(hidden, self.emb_channels, factor)
        self.decoder = TemporalDecoder(hidden[::-1], self.emb_channels, factor)

    # -- the parts, on canonical sequences -------------------------------------------------
    def _check(self, x: torch.Tensor, name: str) -> None:
        if x.dim() != 4 or x.shape[-2:] != (J, 3) or x.shape[1] != self.window:
            raise ValueError(f"{self.method}: {name} must be [B, {self.window}, 25, 3], "
                             f"got {list(x.shape)}")

    def encode_motion(self, canon: torch.Tensor) -> torch.Tensor:
        return self.motion_encoder(to_features(canon))

    def encode_privacy(self, canon: torch.Tensor) -> torch.Tensor:
        return self.privacy_encoder(to_features(canon))

    def decode(self, motion: torch.Tensor, privacy: torch.Tensor, lengths: torch.Tensor,
               ) -> torch.Tensor:
        """Embeddings and target bone lengths → canonical joints ``[B, T, 25, 3]``."""
        return decode_joints(self.decoder(motion, privacy), lengths)

    # -- the public API --------------------------------------------------------------------
    def embeddings(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"motion": E_M(x), "privacy": E_P(x)}`` of camera-space windows ``[B, T, 25, 3]``."""
        self._check(x, "x")
        canon, _, _ = skeleton.canonicalize(x)
        return {"motion": self.encode_motion(canon), "privacy": self.encode_privacy(canon)}

    def _lengths(self, target: torch.Tensor | Dummy, batch: int, like: torch.Tensor):
        if isinstance(target, Dummy):
            target = torch.tensor(target.lengths.copy())
        target = torch.as_tensor(target, dtype=like.dtype, device=like.device)
        if target.shape[-1] != J or target.dim() > 2:
            raise ValueError(f"{self.method}: target lengths must be [25] or [B, 25], "
                             f"got {list(target.shape)}")
        return target.expand(batch, J)

    def retarget(self, source: torch.Tensor, target_lengths: torch.Tensor | Dummy,
                 ) -> torch.Tensor:
        """Source motion on a body given by bone lengths ``[B, 25]``/``[25]`` or a Dummy."""
        self._check(source, "source")
        lengths = self._lengths(target_lengths, source.shape[0], source)
        privacy = self.encode_privacy(rest_pose_sequence(lengths, self.window))
        return self._retarget(source, privacy, lengths)

    def retarget_to(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Source motion on the body (and style) of a recorded target window ``[B, T, 25, 3]``;
        the output has the target's median bone lengths."""
        self._check(source, "source")
        self._check(target, "target")
        canon_t, _, _ = skeleton.canonicalize(target)
        lengths = skeleton.bone_lengths(target).median(dim=1).values
        return self._retarget(source, self.encode_privacy(canon_t), lengths)

    def _retarget(self, source: torch.Tensor, privacy: torch.Tensor, lengths: torch.Tensor,
                  ) -> torch.Tensor:
        canon, rot, origin = skeleton.canonicalize(source)
        y = self.decode(self.encode_motion(canon), privacy, lengths)
        return skeleton.from_canonical(y, rot, origin)

    def for_dummy(self, dummy_lengths: torch.Tensor) -> nn.Module:
        return PMRFixedDummy(self, dummy_lengths)


class PMRFixedDummy(nn.Module):
    """``x → D(E_M(x), e_P)`` with the dummy's privacy embedding baked in as a buffer: the exported
    graph is canonicalisation, E_M, D and forward kinematics."""

    def __init__(self, model: PMR, dummy_lengths: torch.Tensor):
        super().__init__()
        self.motion_encoder = model.motion_encoder
        self.decoder = model.decoder
        lengths = torch.as_tensor(dummy_lengths, dtype=torch.float32).reshape(1, J)
        with torch.no_grad():
            privacy = model.encode_privacy(rest_pose_sequence(lengths, model.window))
        self.register_buffer("privacy", privacy)
        self.register_buffer("lengths", lengths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        canon, rot, origin = skeleton.canonicalize(x)
        b = x.shape[0]
        out = self.decoder(self.motion_encoder(to_features(canon)),
                           self.privacy.expand(b, -1, -1))
        y = decode_joints(out, self.lengths.expand(b, -1))
        return skeleton.from_canonical(y, rot, origin)


@register
class DMR(PMR):
    """DMR (Aberman et al., 2020): PMR's networks trained without classifiers (α_emb = 0)."""

    method = "dmr"
    trainer = "streamtmr.train.pmr:DMRCurriculum"


# --------------------------------------------------------------------------------------------
# Critics (training only): embedding classifiers M, P and quality controller Q
# --------------------------------------------------------------------------------------------

class EmbeddingClassifier(nn.Module):
    """Logits over classes from an embedding ``[B, C_emb, T_emb]`` (conv, mean over time, linear).

    Outputs raw logits: losses apply cross-entropy / entropy themselves.
    """

    def __init__(self, emb_channels: int, hidden: int, classes: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(emb_channels, hidden, 3, 1, 1), _act(),
                                  nn.Conv1d(hidden, hidden, 3, 1, 1), _act())
        self.head = nn.Linear(hidden, classes)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(emb).mean(-1))


class QualityController(nn.Module):
    """Real/fake logit of a canonical sequence ``[B, T, 25, 3]`` from its poses and velocities."""

    def __init__(self, hidden: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(2 * IN_FEATURES, hidden, 3, 1, 1), _act(),
                                  nn.Conv1d(hidden, hidden, 3, 2, 1), _act())
        self.head = nn.Linear(hidden, 1)

    def forward(self, canon: torch.Tensor) -> torch.Tensor:
        x = to_features(canon)
        vel = F.pad(x[..., 1:] - x[..., :-1], (1, 0))
        return self.head(self.conv(torch.cat([x, vel], 1)).mean(-1)).squeeze(-1)


class PMRCritics(nn.Module):
    """M (actions), P (subjects) and Q, sized from a PMR model's config."""

    def __init__(self, model: PMR, num_actions: int, num_subjects: int):
        super().__init__()
        h = int(model.config.get("critic_hidden", 64))
        self.motion_classifier = EmbeddingClassifier(model.emb_channels, h, num_actions)
        self.privacy_classifier = EmbeddingClassifier(model.emb_channels, h, num_subjects)
        self.quality = QualityController(h)
