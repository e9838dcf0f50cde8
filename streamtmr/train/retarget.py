"""The generic supervised curriculum: any retargeting model, one stage, reconstruction losses.

A model that maps source windows to the target body (``retarget(source, target_lengths)``) and
has no recipe of its own trains with this curriculum by naming it in its registry entry::

    trainer = "streamtmr.train.retarget:RetargetCurriculum"

Its one stage, ``retarget``, compares ``retarget(source, target bone lengths)`` with the store's
ground-truth retarget (``data.target_array``) in the generic loop (resume, DDP, validation).
"""

from __future__ import annotations

import torch
from torch import nn

from streamtmr import losses as L
from streamtmr import skeleton
from streamtmr.train.curriculum import Curriculum, Stage

#: λ of the stage when the config gives none.
DEFAULT_WEIGHTS: dict[str, float] = {"mse": 1.0, "bone": 0.5, "smooth": 0.1, "vel": 0.1}


class RetargetCurriculum(Curriculum):
    """One stage: reconstruction of the ground-truth retarget (see the module docstring)."""

    stage_names = ("retarget",)
    loss_names = frozenset({"mse", "bone", "smooth", "vel", "ee"})

    def default_weights(self, name: str) -> dict[str, float] | None:
        return dict(DEFAULT_WEIGHTS)

    def trainable(self, stage: Stage) -> list[nn.Module]:
        return [self.model]

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        d = self.config.data
        target = batch[d.target_array]
        return {"source": batch[d.source_array], "target": target,
                "target_lengths": skeleton.bone_lengths(target).median(dim=1).values}

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], stage: Stage,
               ) -> dict[str, torch.Tensor]:
        y = model.retarget(batch["source"], batch["target_lengths"])
        target, lengths = batch["target"], batch["target_lengths"]
        terms = {"mse": lambda: L.mse(y, target), "bone": lambda: L.bone_length_loss(y, lengths),
                 "smooth": lambda: L.smoothness(y), "vel": lambda: L.velocity_loss(y, target),
                 "ee": lambda: L.end_effector_mse(y, target)}
        return {k: terms[k]() for k in stage.active}
