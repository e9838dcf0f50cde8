"""Baselines without learning: Gaussian noise and the naive retarget."""

from __future__ import annotations

import torch

from streamtmr import skeleton
from streamtmr.models.base import Anonymizer
from streamtmr.models.registry import register


@register
class NaiveRetarget(Anonymizer):
    """Keep every bone's direction and the root trajectory; swap bone lengths to the target's.

    Root motion is rescaled by the ratio of leg lengths (target / source).
    """

    method = "naive"

    def retarget(self, source: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
        src_len = skeleton.bone_lengths(source).median(dim=-2).values  # [B, 25]
        target_lengths = target_lengths.expand_as(src_len)
        scale = skeleton.leg_length(target_lengths) / skeleton.leg_length(src_len).clamp_min(1e-3)
        y = skeleton.forward_kinematics(source[..., skeleton.ROOT, :],
                                        skeleton.bone_directions(source),
                                        target_lengths[..., None, :])
        return skeleton.rescale_root(y, scale)


@register
class GaussianNoise(Anonymizer):
    """Add i.i.d. Gaussian noise of standard deviation ``sigma`` metres to every joint.

    """

    method = "noise"
    exact_bones = False
    traits = frozenset({"windowed", "stochastic"})

    def __init__(self, config=None):
        super().__init__({"sigma": 0.05, **(config or {})})
        self.sigma = float(self.config["sigma"])

    def retarget(self, source: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
        return source + self.sigma * torch.randn_like(source)
