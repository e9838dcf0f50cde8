"""Moon et al. (AAAI 2023), "Anonymization for Skeleton Action Recognition": the anonymizers.

Two perturbation networks, trained against action and privacy classifiers
(``streamtmr.train.moon``):

* ``moon-resnet``: a residual MLP applied to every frame on its own, ``y = x + f(x - root)``
  (Moon's ResNet anonymizer: 10 residual linear blocks over the 75 coordinates of a frame). It
  sees one frame at a time, so it is causal by construction and streams without delay.
* ``moon-ae``: a temporal U-Net auto-encoder over the window (Moon's U-Net anonymizer, here a
  1-D conv U-Net over time with the 75 coordinates as channels), ``y = root + U(x - root)``.

Both act on root-relative coordinates (the perturbation does not depend on where the person
stands) and keep the root path. They are not retargeting methods: the output keeps roughly the
source's body, so ``exact_bones = False`` and :class:`streamtmr.models.base.FixedDummy` projects
every streamed frame onto the dummy's bone lengths.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from streamtmr import skeleton
from streamtmr.models.base import Anonymizer
from streamtmr.models.classifier import STGCNClassifier
from streamtmr.models.registry import register

J = skeleton.NUM_JOINTS
FEATURES = J * 3


def _root_relative(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    root = x[..., skeleton.ROOT:skeleton.ROOT + 1, :]
    return x - root, root


class _MoonBase(Anonymizer):
    exact_bones = False
    traits = frozenset({"learned", "windowed"})
    trainer = "streamtmr.train.moon:MoonCurriculum"

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[-2:] != (J, 3):
            raise ValueError(f"{self.method}: source must be [B, T, 25, 3], got {list(x.shape)}")

    def retarget(self, source: torch.Tensor, target_lengths: torch.Tensor | None = None,
                 ) -> torch.Tensor:
        """Anonymize ``source [B, T, 25, 3]``. The target body is ignored (not a retargeting
        method); :meth:`for_dummy` projects the output onto the dummy's bones."""
        self._check(source)
        return self.anonymize(source)

    def anonymize(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ResBlock(nn.Module):
    """``x + W2 · relu(W1 · x)``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))


@register
class MoonResNet(_MoonBase):
    """Per-frame residual MLP anonymizer (causal: frame t depends on frame t only)."""

    method = "moon-resnet"
    presets = {
        "tiny": {"window": 16, "blocks": 2, "hidden": 32},
        "small": {"window": 64, "blocks": 6, "hidden": 128},
        "paper": {"window": 64, "blocks": 10, "hidden": FEATURES},  # Moon: 10 blocks of 75
    }

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__({"method": self.method, **self.presets["tiny"], **(config or {})})
        hidden = int(self.config["hidden"])
        self.blocks = nn.Sequential(*(ResBlock(FEATURES, hidden)
                                      for _ in range(int(self.config["blocks"]))))
        self.out = nn.Linear(FEATURES, FEATURES)
        nn.init.zeros_(self.out.weight)  # starts as the identity anonymizer
        nn.init.zeros_(self.out.bias)

    def anonymize(self, x: torch.Tensor) -> torch.Tensor:
        rel, _ = _root_relative(x)
        h = self.blocks(rel.flatten(-2))
        return x + self.out(h).unflatten(-1, (J, 3))


class _Down(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(c_in, c_out, 3, 2, 1), nn.GELU(),
                                  nn.Conv1d(c_out, c_out, 3, 1, 1), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Up(nn.Module):
    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.up = nn.ConvTranspose1d(c_in, c_out, 4, 2, 1)
        self.conv = nn.Sequential(nn.Conv1d(c_out + c_skip, c_out, 3, 1, 1), nn.GELU())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([F.gelu(self.up(x)), skip], 1))


@register
class MoonAE(_MoonBase):
    """Temporal U-Net auto-encoder anonymizer over the whole window (not causal)."""

    method = "moon-ae"
    presets = {
        "tiny": {"window": 16, "channels": [32, 32]},
        "small": {"window": 64, "channels": [64, 128, 128]},
        "paper": {"window": 64, "channels": [64, 128, 256, 512]},  # U-Net widths, 1-D
    }

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__({"method": self.method, **self.presets["tiny"], **(config or {})})
        ch = [int(c) for c in self.config["channels"]]
        if self.window % (1 << len(ch)):
            raise ValueError(f"moon-ae: window {self.window} must be divisible by "
                             f"2^{len(ch)} (one halving per level of channels {ch})")
        self.inc = nn.Sequential(nn.Conv1d(FEATURES, ch[0], 3, 1, 1), nn.GELU())
        self.downs = nn.ModuleList(_Down(a, b) for a, b in zip(ch, ch[1:] + ch[-1:]))
        skips = ch
        ups_in = ch[-1:] + ch[:0:-1]
        self.ups = nn.ModuleList(_Up(c_in, c_skip, c_skip)
                                 for c_in, c_skip in zip(ups_in, skips[::-1]))
        self.out = nn.Conv1d(ch[0], FEATURES, 1)

    def anonymize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.window:
            raise ValueError(f"moon-ae: window must be {self.window} frames, got {x.shape[1]}")
        rel, root = _root_relative(x)
        h = self.inc(rel.flatten(-2).transpose(1, 2))  # [B, C0, T]
        skips = []
        for down in self.downs:
            skips.append(h)
            h = down(h)
        for up, skip in zip(self.ups, reversed(skips)):
            h = up(h, skip)
        y = self.out(h).transpose(1, 2).unflatten(-1, (J, 3))
        return root + y


# --------------------------------------------------------------------------------------------
# The classifiers the anonymizers are trained against (training and evaluation only)
# --------------------------------------------------------------------------------------------

class CanonicalClassifier(nn.Module):
    """:class:`STGCNClassifier` on canonicalised windows: ``[B, T, 25, 3] → logits``.

    Canonicalisation (root-centred, hips facing +X) makes the action and re-identification
    classifiers independent of where the camera stands, as in the usual NTU preprocessing.
    """

    def __init__(self, num_classes: int, channels: int = 64, blocks: int = 3):
        super().__init__()
        self.net = STGCNClassifier(num_classes, channels, blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        canon, _, _ = skeleton.canonicalize(x)
        return self.net(canon)
