"""The DisentangledTMR curriculum: 3 stages with the design's λ table.

==========  =======================================  ===============================
stage       trains                                   λ (design table)
==========  =======================================  ===============================
encoders    action + identity encoders, RI heads     AR 1, RI 1, NCE .1, adv .5, orth .1, MI .1
decoder     decoder (encoders frozen, eval mode)     MSE 1, bone .5, smooth .1, vel .1
end_to_end  everything                               stage 1 × ½ + stage 2
==========  =======================================  ===============================

Stage names map to ``model.stage_modules(1|2|3)``; a config may leave out ``weights`` to use
``model.stage_weights(k)`` (:data:`streamtmr.models.tmr.STAGE_WEIGHTS`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from streamtmr import skeleton
from streamtmr.models.tmr import LOSS_NAMES
from streamtmr.train.augment import style_jitter
from streamtmr.train.config import ConfigError, ModelConfig
from streamtmr.train.curriculum import Curriculum, DataInfo, Stage

#: Config stage name → the model's stage number.
STAGES = {"encoders": 1, "decoder": 2, "end_to_end": 3}


class TMRCurriculum(Curriculum):
    stage_names = tuple(STAGES)
    loss_names = frozenset(LOSS_NAMES)

    @classmethod
    def model_config(cls, model: ModelConfig, data: DataInfo) -> dict[str, Any]:
        """Preset + overrides; class counts from the training labels; window from ``data``."""
        cfg = super().model_config(model, data)
        for col, key in (("subject", "num_subjects"), ("action", "num_actions")):
            if col not in data.labels:
                raise ConfigError(f"data: the store has no {col!r} column, which TMR's "
                                  f"{key} needs")
            if key in model.overrides and model.overrides[key] != len(data.labels[col]):
                raise ConfigError(f"model.overrides.{key}: {model.overrides[key]} but the "
                                  f"training data has {len(data.labels[col])} {col}s")
            cfg[key] = len(data.labels[col])
        cfg["window"] = data.window
        return cfg

    def default_weights(self, name: str) -> dict[str, float] | None:
        return self.model.stage_weights(STAGES[name])

    def trainable(self, stage: Stage) -> list[nn.Module]:
        return self.model.stage_modules(STAGES[stage.name])

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        d = self.config.data
        target = batch[d.target_array]
        return {"source": batch[d.source_array], "target": target,
                "target_lengths": skeleton.bone_lengths(target).median(dim=1).values,
                "action": batch["action"], "subject": batch["subject"]}

    def augment(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        d = self.config.data
        if not (d.augment_posture or d.augment_amplitude or d.augment_bones):
            return batch
        source = style_jitter(batch["source"], d.augment_posture, d.augment_amplitude,
                              d.augment_bones)
        return {**batch, "source": source}

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], stage: Stage,
               ) -> dict[str, torch.Tensor]:
        return model.training_losses(batch, stage.weights)
