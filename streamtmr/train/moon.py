"""Training the Moon et al. (AAAI 2023) anonymizers against action and privacy classifiers.

Stages (config ``train.stages[i].name``), run in the order given:

``pretrain_action``   the N action classifiers learn actions from original windows (CE).
``pretrain_privacy``  the M privacy (re-identification) classifiers learn subjects (CE).
``adversarial``       Alg. 1: the action classifier is frozen; ``min_steps`` minimisation steps of
                      the anonymizer, ``λ_action·CE(A(y), a) + λ_privacy·(log C − H(P(y))) +
                      λ_rec·MSE(y, x)``, per maximisation step of the privacy classifier
                      (``CE(P(y), s)`` on the detached output). The privacy side is entropy
                      maximisation, bounded by ``log C``, not a raw ``−CE``.
``ensemble``          Alg. 2: every classifier frozen; the anonymizer minimises the mean action CE
                      over the N action classifiers plus the mean entropy gap over the M privacy
                      classifiers plus the reconstruction term.

λ defaults (α = privacy, β = reconstruction) are those of Moon et al.'s published configs:
ResNet α 1, β 10; U-Net α 0.3, β 2; one minimisation step per maximisation step. The number of
classifiers (``action_classifiers`` N, ``privacy_classifiers`` M), their width and ``min_steps``
are model-config keys (presets in :mod:`streamtmr.models.moon`, overridable in
``model.overrides``) so the checkpoint records them.

Outputs in ``out_dir``: ``model.safetensors`` (the anonymizer, :func:`save_checkpoint`),
``stage<k>.safetensors`` after every stage, ``classifiers.safetensors`` (the classifiers, for
reuse and evaluation) and ``log.jsonl``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from streamtmr.data.datasets import WindowDataset
from streamtmr.data.store import SkeletonStore, StoreError
from streamtmr.losses.disentangle import action_ce, entropy_gap
from streamtmr.losses.reconstruction import mse
from streamtmr.models.base import Anonymizer
from streamtmr.models.checkpoint import save_checkpoint
from streamtmr.models.moon import CanonicalClassifier
from streamtmr.models.registry import build_model
from streamtmr.train.config import Config, ConfigError
from streamtmr.train.curriculum import (
    Curriculum,
    DataInfo,
    Stage,
    unique_parameters,
)

METHODS = ("moon-resnet", "moon-ae")
#: Training-side keys of the model config and their defaults.
TRAIN_DEFAULTS = {"action_classifiers": 1, "privacy_classifiers": 1, "classifier_channels": 64,
                  "classifier_blocks": 3, "min_steps": 1}
#: Moon et al.'s α (privacy) and β (reconstruction) per anonymizer.
PAPER_WEIGHTS = {"moon-resnet": {"action": 1.0, "privacy": 1.0, "rec": 10.0},
                 "moon-ae": {"action": 1.0, "privacy": 0.3, "rec": 2.0}}


# --------------------------------------------------------------------------------------------
# Data: labelled windows of the training subjects (shared with streamtmr.train.pmr)
# --------------------------------------------------------------------------------------------

def train_subjects(store: SkeletonStore, split: str) -> list[int]:
    splits = store.meta.get("splits")
    if not isinstance(splits, dict) or split not in splits:
        have = sorted(splits) if isinstance(splits, dict) else []
        raise StoreError(f"{store.root / 'meta.json'}: no split {split!r} in 'splits' "
                         f"(have {have}); set data.train_split")
    return sorted(int(s) for s in splits[split])


class StoreBatches:
    """Endless shuffled batches of labelled windows from a store's training subjects.

    Each batch is ``{"joints": [B, T, 25, 3], "action": [B], "subject": [B]}`` on ``device``,
    with labels as class indices (``info.labels[col][i]`` is the raw value of class ``i``).
    """

    def __init__(self, store: SkeletonStore | str | Path, window: int, batch_size: int,
                 split: str = "anonymizer_train", array: str = "joints", seed: int = 0,
                 device: torch.device | str = "cpu", num_workers: int = 0):
        self.store = store if isinstance(store, SkeletonStore) else SkeletonStore(store)
        subjects = train_subjects(self.store, split)
        self.dataset = WindowDataset(self.store, window, "random", subjects, (array,), seed)
        if len(self.dataset) == 0:
            raise StoreError(f"{self.store.root}: split {split!r} selects no sequence")
        for col in ("action", "subject"):
            if col not in self.dataset.labels:
                raise StoreError(f"{self.store.root / 'index.csv'}: needs a {col!r} column")
        rows = self.dataset.indices
        self.classes = {col: sorted({int(v) for v in self.dataset.labels[col][rows]})
                        for col in ("action", "subject")}
        self._lookup = {col: {v: i for i, v in enumerate(vals)}
                        for col, vals in self.classes.items()}
        self.info = DataInfo(labels=self.classes, window=window)
        self.array, self.device = array, torch.device(device)
        self.loader = DataLoader(self.dataset, batch_size=min(batch_size, len(self.dataset)),
                                 shuffle=True, drop_last=True, num_workers=num_workers,
                                 generator=torch.Generator().manual_seed(seed))
        self._it: Iterator | None = None
        self.epoch = 0

    def num_classes(self, col: str) -> int:
        return len(self.classes[col])

    def _encode(self, col: str, raw: torch.Tensor) -> torch.Tensor:
        lut = self._lookup[col]
        return torch.tensor([lut[int(v)] for v in raw], dtype=torch.long)

    def next(self) -> dict[str, torch.Tensor]:
        while True:
            if self._it is None:
                self.dataset.set_epoch(self.epoch)
                self._it = iter(self.loader)
            try:
                item = next(self._it)
                break
            except StopIteration:
                self._it, self.epoch = None, self.epoch + 1
        return {"joints": item[self.array].to(self.device),
                "action": self._encode("action", item["action"]).to(self.device),
                "subject": self._encode("subject", item["subject"]).to(self.device)}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    return torch.device(name)


class JsonLog:
    """Appends one JSON object per line to ``log.jsonl`` (and prints when ``echo``)."""

    def __init__(self, path: Path, echo: bool):
        self.path, self.echo = path, echo
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def write(self, **record: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.echo:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in record.items()), flush=True)


def set_trainable(modules: list[nn.Module], on: bool) -> None:
    for m in modules:
        m.train(on)
        for p in m.parameters():
            p.requires_grad_(on)


# --------------------------------------------------------------------------------------------
# The curriculum
# --------------------------------------------------------------------------------------------

class MoonCurriculum(Curriculum):
    """Moon et al.'s recipe (see the module docstring) on a store of labelled windows."""

    stage_names = ("pretrain_action", "pretrain_privacy", "adversarial", "ensemble")
    loss_names = frozenset({"action", "privacy", "rec"})
    own_loop = True

    @classmethod
    def run_own_loop(cls, config: Config, data_dir: str | Path,
                     out_dir: str | Path | None = None) -> Path:
        return train_moon(config, data_dir, out_dir)

    def __init__(self, model: Anonymizer, config: Config, num_actions: int, num_subjects: int):
        if model.method not in METHODS:
            raise ConfigError(f"model.method: the Moon curriculum trains {METHODS}, "
                              f"not {model.method!r}")
        self.opts = {k: model.config.get(k, v) for k, v in TRAIN_DEFAULTS.items()}
        for k, v in self.opts.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"model.overrides.{k}: expected an integer >= 1, got {v!r}")
        super().__init__(model, config)
        width, depth = self.opts["classifier_channels"], self.opts["classifier_blocks"]
        self.action_classifiers = nn.ModuleList(
            CanonicalClassifier(num_actions, width, depth)
            for _ in range(self.opts["action_classifiers"]))
        self.privacy_classifiers = nn.ModuleList(
            CanonicalClassifier(num_subjects, width, depth)
            for _ in range(self.opts["privacy_classifiers"]))
        self._step = 0

    def default_weights(self, name: str) -> dict[str, float] | None:
        if name == "pretrain_action":
            return {"action": 1.0}
        if name == "pretrain_privacy":
            return {"privacy": 1.0}
        return dict(PAPER_WEIGHTS[self.model.method])

    def classifiers(self) -> nn.ModuleDict:
        return nn.ModuleDict({"action": self.action_classifiers,
                              "privacy": self.privacy_classifiers})

    def trainable(self, stage: Stage) -> list[nn.Module]:
        return {"pretrain_action": [self.action_classifiers],
                "pretrain_privacy": [self.privacy_classifiers],
                "adversarial": [self.model, self.privacy_classifiers[0]],
                "ensemble": [self.model]}[stage.name]

    def optimizers(self, stage: Stage, params: list[nn.Parameter] | None = None,
                   ) -> dict[str, torch.optim.Optimizer]:
        t = self.config.train

        def adam(modules: list[nn.Module]) -> torch.optim.Optimizer:
            return torch.optim.Adam(unique_parameters(modules), lr=stage.lr,
                                    betas=tuple(t.betas), weight_decay=t.weight_decay)

        if stage.name == "adversarial":
            return {"anonymizer": adam([self.model]),
                    "privacy": adam([self.privacy_classifiers[0]])}
        return {"main": adam(self.trainable(stage))}

    def begin(self, stage: Stage) -> None:
        """Freeze everything the stage does not train (the action classifiers in Alg. 1/2)."""
        everything = [self.model, self.action_classifiers, self.privacy_classifiers]
        set_trainable(everything, False)
        set_trainable(self.trainable(stage), True)
        self._step = 0

    def anonymizer_terms(self, batch: dict[str, torch.Tensor], privacy: list[nn.Module],
                         ) -> dict[str, torch.Tensor]:
        x = batch["joints"]
        y = self.model.anonymize(x)
        return {
            "action": torch.stack([action_ce(a(y), batch["action"])
                                   for a in self.action_classifiers]).mean(),
            "privacy": torch.stack([entropy_gap(p(y)) for p in privacy]).mean(),
            "rec": mse(y, x),
        }

    def step(self, net: nn.Module | None, batch: dict[str, torch.Tensor], stage: Stage,
             optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        w = stage.weights
        self._step += 1
        if stage.name in ("pretrain_action", "pretrain_privacy"):
            col, clfs = (("action", self.action_classifiers) if stage.name == "pretrain_action"
                         else ("subject", self.privacy_classifiers))
            x = batch["joints"]
            losses = torch.stack([action_ce(c(x), batch[col]) for c in clfs])
            term = "action" if col == "action" else "privacy"
            loss = w.get(term, 0.0) * losses.mean()
            norm = self._opt_step(optimizers["main"], loss)
            return {"loss": float(loss.detach()), term: float(losses.mean().detach()),
                    "grad_norm": norm}
        if stage.name == "adversarial":
            k = int(self.opts["min_steps"])
            if self._step % (k + 1) == 0:  # maximisation step: the privacy classifier learns
                with torch.no_grad():
                    y = self.model.anonymize(batch["joints"])
                ce = action_ce(self.privacy_classifiers[0](y), batch["subject"])
                norm = self._opt_step(optimizers["privacy"], ce)
                return {"privacy_ce": float(ce.detach()), "grad_norm": norm}
            terms = self.anonymizer_terms(batch, [self.privacy_classifiers[0]])
            opt = optimizers["anonymizer"]
        else:  # ensemble
            terms = self.anonymizer_terms(batch, list(self.privacy_classifiers))
            opt = optimizers["main"]
        loss = sum(w[k] * terms[k] for k in stage.active)
        norm = self._opt_step(opt, loss)
        return {"loss": float(loss.detach()), "grad_norm": norm,
                **{k: float(v.detach()) for k, v in terms.items()}}


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def run_stages(cur: Curriculum, model: Anonymizer, next_batch, config: Config, out: Path,
               device: torch.device) -> None:
    """The multi-optimiser stage loop shared by PMR/DMR and Moon: every stage of ``cur`` for its
    iterations, ``next_batch(stage)`` feeding ``cur.step``; non-finite losses stop training;
    JSON-lines log and (optionally) a checkpoint after each stage."""
    t = config.train
    log = JsonLog(out / "log.jsonl", t.progress)
    for stage in cur.stages:
        cur.begin(stage)
        optimizers = cur.optimizers(stage)
        t0 = time.perf_counter()
        for it in range(1, stage.iterations + 1):
            logs = cur.step(None, next_batch(stage), stage, optimizers)
            bad = [k for k, v in logs.items() if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"stage {stage.name!r} iteration {it}: non-finite {bad}")
            if it % t.log_every == 0 or it == stage.iterations:
                log.write(stage=stage.name, it=it, s=round(time.perf_counter() - t0, 2), **logs)
        if config.output.keep_stage_checkpoints:
            save_checkpoint(out / f"stage{stage.position + 1}.safetensors", model.cpu(),
                            {"stage": stage.name})
            model.to(device)


def save_modules(path: Path, module: nn.Module, meta: dict[str, Any]) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})
    return path


def train_moon(config: Config, data_dir: str | Path, out_dir: str | Path | None = None,
               classifiers: str | Path | None = None) -> Path:
    """Train a ``moon-resnet`` / ``moon-ae`` anonymizer; returns the final checkpoint path.

    ``classifiers``: a ``classifiers.safetensors`` of an earlier run (same sizes and label sets)
    to start from, e.g. to skip the pre-training stages.
    """
    out = Path(out_dir if out_dir is not None else config.output.dir)
    t = config.train
    torch.manual_seed(t.seed)
    device = pick_device(t.device)
    data = StoreBatches(data_dir, config.data.window, t.batch_size, config.data.train_split,
                        config.data.source_array, t.seed, device, t.num_workers)
    model_cfg = MoonCurriculum.model_config(config.model, data.info)
    model_cfg["window"] = config.data.window
    model = build_model(model_cfg)
    cur = MoonCurriculum(model, config, data.num_classes("action"), data.num_classes("subject"))
    if classifiers is not None:
        cur.classifiers().load_state_dict(load_file(str(classifiers)))
    model.to(device)
    cur.classifiers().to(device)
    run_stages(cur, model, lambda stage: data.next(), config, out, device)
    save_modules(out / "classifiers.safetensors", cur.classifiers().cpu(),
                 {"classes": data.classes, "method": model.method})
    return save_checkpoint(out / "model.safetensors", model.cpu().eval(),
                           {"classes": data.classes, "stages": [s.name for s in cur.stages]})
