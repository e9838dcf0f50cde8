"""The interface every anonymizer implements, and the fixed-dummy wrapper engines export.

An anonymizer maps a window of source motion ``[B, T, 25, 3]`` (metres, Kinect camera space) and
a target body (bone lengths ``[B, 25]`` or ``[25]``) to the same motion performed by the target,
``[B, T, 25, 3]`` in the same camera space. Retargeting methods produce the target's bone lengths
exactly; perturbation methods (noise, Moon et al.) do not, and :class:`FixedDummy` projects their
output onto the dummy's bones so that the streaming invariant (every published body has the
dummy's bone lengths) holds for every method.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from streamtmr import skeleton


class Anonymizer(nn.Module):
    """Base class. Subclasses set ``method`` and implement :meth:`retarget`."""

    method: ClassVar[str] = "base"
    #: True when :meth:`retarget` already yields exactly the target's bone lengths.
    exact_bones: ClassVar[bool] = True
    #: Named configurations: at least "tiny" (tests, seconds on CPU); learned models also
    #: "small" (CPU streaming default) and "paper" (the published sizes, for GPUs).
    presets: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {}}
    #: What kind of method it is (:data:`streamtmr.models.registry.TRAITS`).
    traits: ClassVar[frozenset[str]] = frozenset({"windowed"})
    #: ``"module:Class"`` of its training curriculum (under :mod:`streamtmr.train`), or None
    #: when there is nothing to train. Named, not imported: models know no training loop.
    trainer: ClassVar[str | None] = None

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__()
        self.config: dict[str, Any] = dict(config or {})

    @classmethod
    def from_preset(cls, preset: str = "tiny", **overrides: Any) -> Anonymizer:
        if preset not in cls.presets:
            raise KeyError(f"{cls.method}: no preset {preset!r} (have {sorted(cls.presets)})")
        return cls({"method": cls.method, **cls.presets[preset], **overrides})

    @property
    def window(self) -> int:
        return int(self.config.get("window", 64))

    def retarget(self, source: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement retarget()")

    def forward(self, source: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
        return self.retarget(source, target_lengths)

    def for_dummy(self, dummy_lengths: torch.Tensor) -> nn.Module:
        """A module ``x[B, T, 25, 3] → y[B, T, 25, 3]`` for one fixed dummy: what engines export.

        Subclasses whose target encoding is expensive override this to bake it in once
        (DisentangledTMR bakes H_identity).
        """
        return FixedDummy(self, dummy_lengths)


class FixedDummy(nn.Module):
    """Generic fixed-dummy wrapper: calls ``retarget`` with constant bone lengths."""

    def __init__(self, model: Anonymizer, dummy_lengths: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("lengths", torch.as_tensor(dummy_lengths, dtype=torch.float32))
        self.exact = model.exact_bones

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model.retarget(x, self.lengths.expand(x.shape[0], -1))
        if not self.exact:
            y = skeleton.set_bone_lengths(y, self.lengths)
        return y
