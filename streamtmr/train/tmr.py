"""The DisentangledTMR curriculum and objective: 3 stages with the design's λ table.

==========  =======================================  ===============================
stage       trains                                   λ (design table)
==========  =======================================  ===============================
encoders    action + identity encoders, RI heads     AR 1, RI 1, NCE .1, adv .5, orth .1, MI .1
decoder     decoder (encoders frozen, eval mode)     MSE 1, bone .5, smooth .1, vel .1
end_to_end  everything                               stage 1 × ½ + stage 2
==========  =======================================  ===============================

A config may leave out a stage's ``weights`` to use :func:`stage_weights` (:data:`STAGE_WEIGHTS`).
The objective, :func:`tmr_training_losses`, is a plain function of a model, a batch and the λ of
a stage, so that variants of the model (e.g. a streaming TMR) train with the same losses. How the
two subject-side terms work:

* ``ri`` — a subject classifier (``model.subject_head``) is trained by cross-entropy on *detached*
  pooled H_action, while the encoder is trained to maximise the entropy of that classifier's
  prediction through a copy of the head with detached parameters. The reported value is the
  sum of both terms (classifier CE + ``log C − H``).
* ``adv`` — a separate discriminator (``model.discriminator``) sees pooled H_action through a
  gradient-reversal layer: one cross-entropy trains the discriminator and, reversed, pushes the
  encoder to fool it.

The privacy terms of :mod:`streamtmr.train.privacy` (``ver``, ``inv_h``, ``inv_out``,
``pair_mse``, ``dyn``, ``ver_real``; λ 0 in every table, so recipes without them are unchanged)
use extra batch keys that :class:`TMRCurriculum` adds when ``data.pairs_per_batch`` /
``data.real_dir`` / ``data.real_utkinect`` are set: cross-identity pairs of fresh people rendered
each step, unlabelled real NTU windows, and triplets of the training half of UTKinect's people. The
verification head is the curriculum's, not the model's: it trains with the stage's optimiser but
is never saved, so checkpoints keep the model's exact layout.
"""

from __future__ import annotations

import multiprocessing
import weakref
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from streamtmr import losses as L
from streamtmr import skeleton
from streamtmr.data.pairs import pair_batch
from streamtmr.data.real_windows import ntu_windows, person_triplets, utkinect_people
from streamtmr.data.synth import ACTIONS
from streamtmr.models.checkpoint import resolve_model
from streamtmr.models.layers import grad_reverse
from streamtmr.models.tmr import DisentangledTMR
from streamtmr.models.tmr_encoders import rest_pose
from streamtmr.train import privacy as P
from streamtmr.train.augment import style_jitter
from streamtmr.train.config import Config, ConfigError, ModelConfig
from streamtmr.train.curriculum import Curriculum, DataInfo, Stage
from streamtmr.train.teacher import action_teacher_loss, load_teacher

#: Loss weights λ per curriculum stage (design table). Stage 1 trains the encoders, stage 2 the
#: decoder with frozen encoders, stage 3 everything.
STAGE_WEIGHTS: dict[int, dict[str, float]] = {
    1: {"ar": 1.0, "ri": 1.0, "nce": 0.1, "adv": 0.5, "orth": 0.1, "mi": 0.1,
        "mse": 0.0, "bone": 0.0, "smooth": 0.0, "vel": 0.0},
    2: {"ar": 0.0, "ri": 0.0, "nce": 0.0, "adv": 0.0, "orth": 0.0, "mi": 0.0,
        "mse": 1.0, "bone": 0.5, "smooth": 0.1, "vel": 0.1},
    3: {"ar": 0.5, "ri": 0.5, "nce": 0.05, "adv": 0.25, "orth": 0.05, "mi": 0.05,
        "mse": 1.0, "bone": 0.5, "smooth": 0.1, "vel": 0.1},
}
#: Iterations per stage.
STAGE_ITERATIONS: dict[int, int] = {1: 20_000, 2: 15_000, 3: 15_000}
#: Optimiser settings of the design.
TRAIN_DEFAULTS: dict[str, Any] = {"batch_size": 64, "lr": 1e-4, "optimizer": "adam"}

ENCODER_LOSSES = ("ar", "ri", "nce", "adv", "orth", "mi", "vq")
DECODER_LOSSES = ("mse", "bone", "smooth", "vel", "ee", "act_out", "atom")
LOSS_NAMES = ENCODER_LOSSES + DECODER_LOSSES + P.PRIVACY_LOSSES
PAIR_LOSSES = ("ver", "ver_out", "ver_dyn", "ver_dyn_pose", "inv_h", "inv_out", "pair_mse",
               "pair_atom", "pair_choice")
#: The verification heads learn this many times faster than the stage's learning rate: a fresh
#: adversary must keep up with an encoder that starts trained.
VERIFIER_LR_FACTOR = 5.0

#: Config stage name → stage number.
STAGES = {"encoders": 1, "decoder": 2, "end_to_end": 3}


def _check_stage(stage: int) -> None:
    if stage not in STAGE_WEIGHTS:
        raise ValueError(f"tmr: curriculum stage must be 1, 2 or 3, got {stage!r}")


def stage_modules(model: DisentangledTMR, stage: int) -> list[nn.Module]:
    """Modules trained in curriculum stage 1 (encoders + heads), 2 (decoder), 3 (all)."""
    _check_stage(stage)
    encoders = [model.action_encoder, model.identity_encoder, model.subject_head,
                model.discriminator]
    return {1: encoders, 2: [model.decoder], 3: [*encoders, model.decoder]}[stage]


def stage_weights(model: DisentangledTMR, stage: int) -> dict[str, float]:
    """:data:`STAGE_WEIGHTS` of ``stage``, plus the VQ commitment loss (1 in stages 1 and 3)
    for vq models."""
    _check_stage(stage)
    weights = dict(STAGE_WEIGHTS[stage])
    if model.config["vq"]:
        weights["vq"] = 0.0 if stage == 2 else 1.0
    return weights


def _active(model: DisentangledTMR, weights: dict[str, float]) -> list[str]:
    unknown = sorted(set(weights) - set(LOSS_NAMES))
    if unknown:
        raise KeyError(f"tmr: unknown loss name(s) {unknown}; known: {list(LOSS_NAMES)}")
    active = [k for k in LOSS_NAMES if float(weights.get(k, 0.0)) != 0.0]
    if "vq" in active and not model.config["vq"]:
        raise ValueError("tmr: loss 'vq' requested but the model has vq: false")
    return active


def tmr_training_losses(model: DisentangledTMR, batch: dict[str, torch.Tensor],
                        weights: dict[str, float], verifier: nn.ModuleDict | None = None,
                        teacher: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Unweighted scalar losses for every name in ``weights`` with a nonzero λ.

    The privacy terms need ``pair_a``/``pair_b``/``pair_a2``/``pair_target`` ``[K,T,25,3]``
    and ``pair_action`` ``[K]`` (``ver*``, ``inv_*``, ``pair_mse``; ``ver*`` also
    ``verifier``, a head per ``ver*`` term), ``real [R,T,25,3]`` and ``real_lengths [R,25]``
    (``dyn``), or ``real_a``/``real_b``/``real_a2`` ``[K,T,25,3]`` with ``real_person`` and
    ``real_action`` ``[3K]`` (``ver_real``). Each ``ver*`` term adds ``<name>_auc``, its head's
    same-person AUC on the batch (a diagnostic, never weighted).

    batch: ``source [B,T,25,3]``, ``target [B,T,25,3]`` (ground-truth retarget on the target
    body), ``target_lengths [B,25]``, ``action [B]``, ``subject [B]``; optional ``identity
    [B,T',25,3]`` (another recording of the target body for the identity encoder). Without
    it the identity encoder sees the target's rest pose ("static") or ``target``
    ("full_sequence", which lets target motion leak into H_identity — the ablation).
    """
    active = _active(model, weights)

    def need(key: str) -> torch.Tensor:
        if key not in batch:
            raise KeyError(f"tmr: batch lacks {key!r}, needed for losses {active}")
        return batch[key]

    out = _pair_losses(model, verifier, active, need) if set(PAIR_LOSSES) & set(active) else {}
    if "ver_real" in active:
        out.update(_real_person_losses(model, verifier, need))
    if "dyn" in active:
        real = need("real")
        out["dyn"] = P.dynamics_loss(model.retarget(real, need("real_lengths")), real)
    core = [k for k in active if k not in P.PRIVACY_LOSSES]
    return {**out, **_core_losses(model, batch, core, need, teacher)} if core else out


def _core_losses(model: DisentangledTMR, batch: dict[str, torch.Tensor], active: list[str],
                 need, teacher: nn.Module | None = None) -> dict[str, torch.Tensor]:
    code, frame = model.encode_action(need("source"))
    out = _encoder_losses(model, code, active, need)
    if not {"orth", "mi", *DECODER_LOSSES} & set(active):
        return out
    lengths = need("target_lengths")
    h_identity = model.identity_encoder(_identity_input(model, batch, need))
    if "orth" in active:
        out["orth"] = L.subspace_orthogonality(code.pooled, h_identity)
    if "mi" in active:
        out["mi"] = L.cross_correlation_mi(code.pooled, h_identity)
    if set(DECODER_LOSSES) & set(active):
        target = need("target")
        forcing = target if model.config["decoding"] == "autoregressive" else None
        y = model.decode(code.h, h_identity, lengths, frame, forcing)
        out.update(_decoder_losses(model, y, target, lengths, active))
        if "atom" in active:
            out["atom"] = atom_loss(model, target, frame)
        if "act_out" in active:
            if teacher is None:
                raise ValueError("tmr: loss 'act_out' needs the frozen action teacher "
                                 "(train.action_teacher)")
            out["act_out"] = action_teacher_loss(teacher, y, need("action"))
    return out


def _pair_losses(model: DisentangledTMR, verifier: nn.ModuleDict | None,
                 active: list[str], need) -> dict[str, torch.Tensor]:
    """``ver``, ``ver_out``, ``ver_dyn(_pose)``, ``inv_h``, ``inv_out``, ``pair_mse``,
    ``pair_atom``, ``pair_choice`` on one encoding of ``cat(a, b, a2)``; ``verifier`` holds a
    head per ``ver*`` term."""
    a = need("pair_a")
    k = a.shape[0]
    code, frame = model.encode_action(torch.cat([a, need("pair_b"), need("pair_a2")]))
    h, pooled = code.h.split(k), code.pooled.split(k)
    out: dict[str, torch.Tensor] = {}
    if "inv_h" in active:
        out["inv_h"] = P.invariance_loss(h[0], h[1])
    labels, mask = P.verification_targets(need("pair_action"))
    if "ver" in active:
        out.update(_verify(model, verifier, "ver", pooled, labels, mask))
    if (set(PAIR_LOSSES) - {"ver", "inv_h"}) & set(active):  # the terms on decoded pairs
        target = need("pair_target")
        lengths = skeleton.bone_lengths(target).median(dim=1).values
        h_id = model.identity_encoder(rest_pose(lengths)[:, None])
        y_a, y_b, y_a2 = model.decode(code.h, h_id.repeat(3, 1), lengths.repeat(3, 1),
                                   frame).split(k)
        if "inv_out" in active:
            out["inv_out"] = P.output_invariance(y_a, y_b)
        if "pair_mse" in active:
            out["pair_mse"] = 0.5 * (L.mse(y_a, target) + L.mse(y_b, target))
        logits = getattr(model.decoder, "atom_logits", None)
        if "pair_atom" in active:  # two fresh people, one neutral performance: one choice
            rot, root, _ = frame
            out["pair_atom"] = atom_loss(model, target.repeat(2, 1, 1, 1),
                                         (rot[:2 * k], root[:2 * k], None),
                                         None if logits is None else logits[:2 * k])
        if "pair_choice" in active:  # ... and the two choices alike, right or wrong
            if logits is None or not model.decoder.training:
                raise ValueError("tmr: loss 'pair_choice' needs a model with pose_atoms > 0, "
                                 "in training")
            out["pair_choice"] = P.choice_consistency(logits[:k], logits[k:2 * k])
        if "ver_out" in active:
            stats = P.pose_statistics(torch.cat([y_a, y_b, y_a2])).split(k)
            out.update(_verify(model, verifier, "ver_out", stats, labels, mask))
        for name in (n for n in ("ver_dyn", "ver_dyn_pose") if n in active):
            motion = P.motion_features(torch.cat([y_a, y_b, y_a2]), root=name == "ver_dyn")
            out.update(_verify(model, verifier, name, motion.split(k), labels, mask))
    return out


def _real_person_losses(model: DisentangledTMR, verifier: nn.ModuleDict | None, need,
                        ) -> dict[str, torch.Tensor]:
    """``ver_real``: the verification adversary on pooled H_action of real triplets
    ``real_a``/``real_b``/``real_a2`` ``[K,T,25,3]`` with ``real_person`` and ``real_action``
    ``[3K]`` (a, b, a2 in that order)."""
    a = need("real_a")
    k = a.shape[0]
    code, _ = model.encode_action(torch.cat([a, need("real_b"), need("real_a2")]))
    person, action = need("real_person"), need("real_action")
    labels, mask = P.person_pair_targets(person[:2 * k], person[2 * k:], action[:2 * k],
                                         action[2 * k:])
    return _verify(model, verifier, "ver_real", code.pooled.split(k), labels, mask)


def _verify(model: DisentangledTMR, verifier: nn.ModuleDict | None, name: str, feats,
            labels: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss ``name`` of its verification head on ``feats`` (a, b, a2), and ``<name>_auc``."""
    if verifier is None or name not in verifier:
        raise ValueError(f"tmr: loss {name!r} needs its verification head")
    loss, logits = P.verification_loss(verifier[name], *feats, labels, mask,
                                       float(model.config["adv_scale"]))
    return {name: loss, f"{name}_auc": P.verification_auc(logits[mask], labels[mask])}


def _encoder_losses(model: DisentangledTMR, code, active: list[str], need) -> dict[str, Any]:
    """The action-side terms: recognition, re-ID entropy, InfoNCE, adversary, VQ."""
    out: dict[str, torch.Tensor] = {}
    pooled = code.pooled
    if "ar" in active:
        out["ar"] = L.action_ce(code.logits, need("action"))
    if "ri" in active:
        out["ri"] = ri_loss(model, pooled, need("subject"))
    if "nce" in active:
        out["nce"] = L.info_nce(pooled, need("action"), float(model.config["nce_tau"]))
    if "adv" in active:
        logits = model.discriminator(grad_reverse(pooled, float(model.config["adv_scale"])))
        out["adv"] = F.cross_entropy(logits, need("subject"))
    if "vq" in active:
        out["vq"] = code.vq_loss
    return out


def atom_loss(model: DisentangledTMR, target: torch.Tensor, frame,
              logits: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the decoder's choice of pose atom (``pose_atoms`` > 0; ``logits``, by
    default those of its last training forward) against the atom nearest to the target's bone
    directions, both in the source frame's heading frame (:mod:`streamtmr.models.pose_atoms`).
    ``pair_atom`` is the same on cross-identity pairs: fresh people every step, so the choice
    learns to ignore whose motion it reads."""
    logits = getattr(model.decoder, "atom_logits", None) if logits is None else logits
    if logits is None or not model.decoder.training:
        raise ValueError("tmr: loss 'atom' needs a model with pose_atoms > 0, in training")
    rot, root, _ = frame
    dirs = skeleton.bone_directions(skeleton.to_frame_local(target, rot, root)).flatten(2)
    atoms = model.decoder.atoms.flatten(1)                                    # (K, 75)
    with torch.no_grad():
        nearest = torch.cdist(dirs.reshape(-1, dirs.shape[-1]), atoms).argmin(1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), nearest)


def _identity_input(model: DisentangledTMR, batch: dict[str, torch.Tensor], need
                    ) -> torch.Tensor:
    if "identity" in batch:
        return skeleton.canonicalize(batch["identity"], ref_frame=0)[0]
    if model.config["identity_mode"] == "full_sequence":
        return skeleton.canonicalize(need("target"), ref_frame=0)[0]
    return rest_pose(need("target_lengths"))[:, None]


def _decoder_losses(model: DisentangledTMR, y: torch.Tensor, target: torch.Tensor,
                    lengths: torch.Tensor, active: list[str]) -> dict[str, torch.Tensor]:
    terms = {"mse": lambda: L.mse(y, target), "bone": lambda: L.bone_length_loss(y, lengths),
             "smooth": lambda: L.smoothness(y), "vel": lambda: L.velocity_loss(y, target),
             "ee": lambda: L.end_effector_mse(y, target, float(model.config["ee_weight"]))}
    return {k: terms[k]() for k in DECODER_LOSSES if k in active and k in terms}


def ri_loss(model: DisentangledTMR, pooled: torch.Tensor, subject: torch.Tensor) -> torch.Tensor:
    """Classifier CE on detached features + entropy gap through detached classifier weights."""
    ce = F.cross_entropy(model.subject_head(pooled.detach()), subject)
    frozen = {n: p.detach() for n, p in model.subject_head.named_parameters()}
    logits = torch.func.functional_call(model.subject_head, frozen, (pooled,))
    return ce + L.entropy_gap(logits)


class TMRCurriculum(Curriculum):
    stage_names = tuple(STAGES)
    augments = True
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

    def __init__(self, model: nn.Module, config: Config):
        super().__init__(model, config)
        device = next(model.parameters()).device
        if config.train.init_from:
            _init_weights(model, config.train.init_from, device)
        used = {k for s in self.stages for k in s.active}
        d = config.data
        if set(PAIR_LOSSES) & used and not d.pairs_per_batch:
            raise ConfigError(f"{config.source}: data.pairs_per_batch: must be >= 2 for the "
                              f"losses {sorted(set(PAIR_LOSSES) & used)}")
        if "dyn" in used and not d.real_dir:
            raise ConfigError(f"{config.source}: data.real_dir: needed for the loss 'dyn'")
        if "ver_real" in used and not d.real_utkinect:
            raise ConfigError(f"{config.source}: data.real_utkinect: needed for the loss "
                              "'ver_real'")
        sizes = {"ver": int(model.config["d_action"]), "ver_out": P.POSE_STATISTICS,
                 "ver_real": int(model.config["d_action"])}
        heads = {k: P.VerificationHead(n) for k, n in sizes.items() if k in used}
        if "ver_dyn" in used:
            heads["ver_dyn"] = P.MotionVerificationHead(P.MOTION_FEATURES)
        if "ver_dyn_pose" in used:
            heads["ver_dyn_pose"] = P.MotionVerificationHead(P.MOTION_FEATURES - 3)
        self.verifier = nn.ModuleDict(heads).to(device) if heads else None
        self.real = (torch.from_numpy(ntu_windows(d.real_dir, d.window)).to(device)
                     if "dyn" in used else None)
        self._pair_pool: ProcessPoolExecutor | None = None  # data.pair_workers, when rendering
        self.teacher = None
        if "act_out" in used:
            if not config.train.action_teacher:
                raise ConfigError(f"{config.source}: train.action_teacher: needed for the loss "
                                  "'act_out' (python -m streamtmr.train.teacher)")
            try:
                self.teacher = load_teacher(config.train.action_teacher, device)
            except ValueError as e:
                raise ConfigError(f"{config.source}: train.action_teacher: {e}") from None
            n = int(model.config["num_actions"])
            if self.teacher.num_actions != n:
                raise ConfigError(f"{config.source}: train.action_teacher: knows "
                                  f"{self.teacher.num_actions} actions, the model {n}")
        self.stage = _source_stage(d.source_stage, device) if d.source_stage else None
        self.people = None
        if "ver_real" in used:
            try:
                self.people = utkinect_people(d.real_utkinect, list(d.real_utkinect_subjects),
                                              d.real_people_window)
            except (OSError, ValueError) as e:
                raise ConfigError(f"{config.source}: data.real_utkinect: {e}") from None

    def default_weights(self, name: str) -> dict[str, float] | None:
        return stage_weights(self.model, STAGES[name])

    def trainable(self, stage: Stage) -> list[nn.Module]:
        heads = self.verifier.items() if self.verifier is not None else ()
        return [*stage_modules(self.model, STAGES[stage.name]),
                *(h for k, h in heads if k in stage.active)]

    def optimizers(self, stage: Stage, params: list[nn.Parameter],
                   ) -> dict[str, torch.optim.Optimizer]:
        """One Adam; the verification heads' parameters learn :data:`VERIFIER_LR_FACTOR`×."""
        t = self.config.train
        own = {id(p) for p in self.verifier.parameters()} if self.verifier is not None else set()
        groups = [{"params": [p for p in params if id(p) not in own], "lr": stage.lr}]
        heads = [p for p in params if id(p) in own]
        if heads:
            groups.append({"params": heads, "lr": stage.lr * VERIFIER_LR_FACTOR})
        return {"adam": torch.optim.Adam(groups, lr=stage.lr, betas=tuple(t.betas),
                                         weight_decay=t.weight_decay)}

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        d = self.config.data
        target = batch[d.target_array]
        out = {"source": batch[d.source_array], "target": target,
               "target_lengths": skeleton.bone_lengths(target).median(dim=1).values,
               "action": batch["action"], "subject": batch["subject"]}
        if self.stage is not None:
            if self._jitters:  # augment() jitters the raw source, then stages it again
                out["raw_source"] = out["source"]
            out["source"] = self._staged(out["source"], out["target_lengths"])
        return out

    @property
    def _jitters(self) -> bool:
        d = self.config.data
        return bool(d.augment_posture or d.augment_amplitude or d.augment_bones
                    or d.augment_lag)

    def _staged(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` as the frozen ``data.source_stage`` publishes it (each window streamed from a
        fresh state; no gradient reaches that stage)."""
        dev = next(self.stage.parameters(), torch.empty(0)).device
        with torch.no_grad():
            return self.stage.retarget(x.to(dev), lengths.to(dev)).to(x.device)

    def augment(self, batch: dict[str, torch.Tensor], stage: Stage | None = None,
                ) -> dict[str, torch.Tensor]:
        """Style jitter of the source; then, when configured, the step's cross-identity pairs
        (only for a stage with a pair loss: rendering them costs about 0.1 s a batch on one
        core, five times a paper-size model's step on a GPU) and real windows (drawn with
        torch's generator, which the trainer seeds per step)."""
        d = self.config.data
        if self._jitters:
            raw = batch.get("raw_source", batch["source"])
            source = style_jitter(raw, d.augment_posture, d.augment_amplitude, d.augment_bones,
                                  d.augment_lag)
            if self.stage is not None:
                source = self._staged(source, batch["target_lengths"])
            batch = {**{k: v for k, v in batch.items() if k != "raw_source"}, "source": source}
        if d.pairs_per_batch:
            start = int(torch.randint(0, 2**62, (1,)))   # drawn either way: the same stream
            if stage is None or set(PAIR_LOSSES) & set(stage.active):
                batch = {**batch, **self._pairs(batch["target_lengths"][0],
                                                batch["source"].shape[1], start)}
        if self.real is not None:
            pick = torch.randint(len(self.real), (d.real_per_batch,)).to(self.real.device)
            lengths = batch["target_lengths"][:1].expand(d.real_per_batch, -1)
            batch = {**batch, "real": self.real[pick], "real_lengths": lengths}
        if self.people is not None:
            batch = {**batch, **self._real_triplets(batch["source"].device)}
        if self.stage is not None:
            batch = {**batch, **self._stage_extras(batch)}
        return batch

    def _stage_extras(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The pair items and real windows as the source stage publishes them."""
        dummy = batch["target_lengths"][:1]
        return {k: self._staged(batch[k], dummy.expand(len(batch[k]), -1))
                for k in ("pair_a", "pair_b", "pair_a2", "real", "real_a", "real_b", "real_a2")
                if k in batch}

    def _real_triplets(self, device: torch.device) -> dict[str, torch.Tensor]:
        """``real_people_per_batch`` triplets of the training half's real people."""
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,))))
        idx = np.concatenate(person_triplets(self.people, self.config.data.real_people_per_batch,
                                             rng))
        a, b, a2 = np.split(self.people.joints[idx], 3)
        return {"real_a": torch.from_numpy(a).to(device),
                "real_b": torch.from_numpy(b).to(device),
                "real_a2": torch.from_numpy(a2).to(device),
                "real_person": torch.from_numpy(self.people.subject[idx]).to(device),
                "real_action": torch.from_numpy(self.people.action[idx]).to(device)}

    def _pairs(self, dummy_lengths: torch.Tensor, window: int, start: int,
               ) -> dict[str, torch.Tensor]:
        """``pairs_per_batch`` pair items of fresh people: item indices from ``start``, a random
        point of the endless stream, so no person is drawn twice in practice (2^62 items)."""
        d = self.config.data
        n_actions = min(int(self.model.config["num_actions"]), len(ACTIONS))
        if d.pair_workers and self._pair_pool is None:  # started at the first use
            self._pair_pool = ProcessPoolExecutor(d.pair_workers,
                                                  mp_context=multiprocessing.get_context("spawn"))
            weakref.finalize(self, self._pair_pool.shutdown, wait=False)
        raw = pair_batch(d.pairs_seed, np.arange(start, start + d.pairs_per_batch),
                         dummy_lengths.detach().cpu().numpy(), window, n_actions,
                         self._pair_pool)
        dev = dummy_lengths.device
        return {"pair_a": torch.from_numpy(raw["a"]).to(dev),
                "pair_b": torch.from_numpy(raw["b"]).to(dev),
                "pair_a2": torch.from_numpy(raw["a2"]).to(dev),
                "pair_target": torch.from_numpy(raw["target"]).to(dev),
                "pair_action": torch.from_numpy(raw["action"]).long().to(dev)}

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], stage: Stage,
               ) -> dict[str, torch.Tensor]:
        return tmr_training_losses(model, batch, stage.weights, self.verifier, self.teacher)


def _source_stage(spec: str, device: torch.device) -> nn.Module:
    """The frozen streaming anonymizer of ``data.source_stage`` (ConfigError naming it)."""
    try:
        stage = resolve_model(spec)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"data.source_stage: cannot load {spec} ({e})") from None
    if "streaming" not in type(stage).traits:
        raise ConfigError(f"data.source_stage: {spec} is a {stage.method} model, not a "
                          "streaming one (a cascade stage must stream)")
    return stage.eval().requires_grad_(False).to(device)


def _init_weights(model: nn.Module, path: str, device: torch.device) -> None:
    """Load ``path``'s weights into ``model`` (strict: a fine-tune of the same architecture)."""
    try:
        state = load_file(path, device=str(device))
    except (OSError, ValueError) as e:
        raise ConfigError(f"train.init_from: cannot read {path} ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"train.init_from: {path} does not fit the model "
                          f"({str(e).splitlines()[0]})") from None
