"""Training PMR (Carr et al., ICCV 2025) and DMR (Aberman et al.): the four-stage recipe.

Stages (config ``train.stages[i].name``; the paper's epochs become iteration budgets):

``ae_paired`` / ``ae_unpaired``     1. auto-encoder pre-training (5 paired + 20 unpaired epochs):
                                    self-reconstruction and smoothness; E_M, E_P, D train.
``clf_paired`` / ``clf_unpaired``   2. classifier pre-training (20 + 50): M and P learn actions
                                    and subjects from both (frozen) embeddings.
``adversarial``                     3. unpaired cooperative/adversarial training (100): the
                                    auto-encoder with ``α_emb`` (cooperative CE + adversarial
                                    entropy gap) and ``α_qc`` (quality controller), alternating
                                    with updates of M, P and Q.
``retarget``                        4. paired retargeting (80): reconstruction, cross-
                                    reconstruction, triplet (margin γ), latent consistency,
                                    end-effector and smoothness terms (+ α_emb, α_qc for PMR).

DMR trains stages 1 and 4 only, with no classifiers and no quality controller.

Paired data are SynthKinect quadruples rendered on the fly (:class:`SynthQuadruples`): the same
content on persons p and p' and a different content, so ``(p,a), (p,a'), (p',a), (p',a')`` come
with exact ground truth for cross-reconstruction. Unpaired data are windows of the store's
training subjects (:class:`streamtmr.train.moon.StoreBatches`).

Unlike the public PMR code: pair labels follow the quadruple; M and P output logits into
cross-entropy; the adversarial terms are bounded entropy gaps ``log C − H`` (not ``−CE``); the
dummy is the fixed default dummy, never chosen from the source's labels. Paired persons are
the store's training subjects when the store is SynthKinect (never its eval subjects), else a
fresh population whose persons and actions get classes after the store's, so M and P see one
consistent label space.

Hyper-parameters that are not λ weights are model-config keys (recorded in the checkpoint):
``triplet_margin`` (γ, default 0.3), ``rest_target_prob`` (share of cross-reconstructions whose
target body is given as a rest pose, as :meth:`PMR.retarget` does for the dummy; default 0.5),
``paired_persons`` (population size when the store is not SynthKinect, default 32),
``paired_pool`` (persons × contents rendered per refresh, default 6), ``paired_refresh``
(iterations between refreshes, default 25), ``critic_lr_scale`` (default 1).

Outputs in ``out_dir``: ``model.safetensors`` (:func:`save_checkpoint`), ``stage<k>.safetensors``,
``critics.safetensors`` (PMR: M, P, Q) and ``log.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from streamtmr import skeleton
from streamtmr.losses.disentangle import action_ce, entropy_gap
from streamtmr.losses.reconstruction import (
    cross_reconstruction,
    end_effector_mse,
    latent_consistency,
    mse,
    smoothness,
    triplet,
)
from streamtmr.models.checkpoint import save_checkpoint
from streamtmr.models.pmr import PMR, PMRCritics, rest_pose_sequence
from streamtmr.models.registry import build_model
from streamtmr.train.config import Config, ConfigError
from streamtmr.train.curriculum import Curriculum, Stage, curriculum_class, unique_parameters
from streamtmr.train.moon import (
    StoreBatches,
    pick_device,
    run_stages,
    save_modules,
    set_trainable,
)

PAIRED_STAGES = ("ae_paired", "clf_paired", "retarget")
TRAIN_DEFAULTS: dict[str, Any] = {"triplet_margin": 0.3, "rest_target_prob": 0.5,
                                  "paired_persons": 32, "paired_pool": 6, "paired_refresh": 25,
                                  "critic_lr_scale": 1.0}
#: The paper's λ (α_rec 2, α_cross 0.1, α_ee 1, α_trip 1, α_smooth 3, α_latent 10, α_emb 10)
#: and the public code's α_qc 0.5.
PAPER_WEIGHTS: dict[str, dict[str, float]] = {
    "ae_paired": {"rec": 2.0, "smooth": 3.0},
    "ae_unpaired": {"rec": 2.0, "smooth": 3.0},
    "clf_paired": {"clf": 1.0},
    "clf_unpaired": {"clf": 1.0},
    "adversarial": {"rec": 2.0, "smooth": 3.0, "emb": 10.0, "qc": 0.5},
    "retarget": {"rec": 2.0, "cross": 0.1, "trip": 1.0, "latent": 10.0, "ee": 1.0,
                 "smooth": 3.0, "emb": 10.0, "qc": 0.5},
}
QUAD = ("pa", "pa_", "p_a", "p_a_")  # (p,a), (p,a'), (p',a), (p',a')


# --------------------------------------------------------------------------------------------
# Paired data: SynthKinect quadruples
# --------------------------------------------------------------------------------------------

class SynthQuadruples:
    """Quadruples ``(p,a), (p,a'), (p',a), (p',a')`` rendered by SynthKinect.

    A pool of ``pool`` persons × ``pool`` contents (distinct actions) is rendered from one view
    and re-drawn every ``refresh`` calls; batches pick p ≠ p' and a ≠ a' from the pool, so one
    refresh serves many quadruples. The same content is cropped at the same frames for every
    person, so the ground truth of "a on p'" is exactly the render of (p', a).

    :meth:`sample` returns ``x`` (sensor-noise input) and ``clean`` (ground truth), both
    ``[4, B, T, 25, 3]`` in :data:`QUAD` order, ``lengths [4, B, 25]`` (the clean renders' bone
    lengths), ``person [4, B]`` (the identities' subject ids) and ``action [4, B]`` (index in
    ``synth.ACTIONS``).
    """

    def __init__(self, window: int, population: list, pool: int = 6, refresh: int = 25,
                 seed: int = 0, sensor_noise: bool = True, views: tuple[float, float] = (-45, 45)):
        from streamtmr.data import synth
        self.synth = synth
        if pool < 2 or len(population) < 2:
            raise ValueError("paired sampling needs at least 2 persons and a pool of 2")
        self.window, self.pool, self.refresh = int(window), int(pool), int(refresh)
        self.population = list(population)
        self.actions = list(synth.ACTIONS)
        self.rng = np.random.default_rng(seed)
        self.sensor_noise, self.views = sensor_noise, views
        self._calls = 0
        self._grid: dict[str, np.ndarray] | None = None

    @property
    def num_persons(self) -> int:
        return len(self.population)

    @property
    def num_actions(self) -> int:
        return len(self.actions)

    def _crop(self, seq: np.ndarray, start: int) -> np.ndarray:
        seq = seq[start:start + self.window]
        if len(seq) < self.window:
            seq = np.concatenate([seq, np.repeat(seq[-1:], self.window - len(seq), 0)])
        return seq

    def _render_pool(self) -> dict[str, np.ndarray]:
        rng, k = self.rng, self.pool
        persons = rng.choice(self.num_persons, size=k, replace=False)
        actions = rng.choice(self.num_actions, size=k, replace=k > self.num_actions)
        view = float(rng.uniform(*self.views))
        x = np.empty((k, k, self.window, skeleton.NUM_JOINTS, 3), np.float32)
        clean = np.empty_like(x)
        for c, a in enumerate(actions):
            content = self.synth.sample_content(self.actions[a], rng)
            start = None
            for i, p in enumerate(persons):
                ident = self.population[p]
                noisy, _ = self.synth.render(content, ident, view_deg=view, rng=rng,
                                             sensor_noise=self.sensor_noise)
                ref, _ = self.synth.render(content, ident, view_deg=view, sensor_noise=False)
                if start is None:
                    start = int(rng.integers(0, max(len(ref) - self.window, 0) + 1))
                x[i, c], clean[i, c] = self._crop(noisy, start), self._crop(ref, start)
        subjects = np.array([self.population[p].subject for p in persons])
        return {"x": x, "clean": clean, "persons": subjects, "actions": actions}

    def sample(self, batch: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        if self._grid is None or self._calls % self.refresh == 0:
            self._grid = self._render_pool()
        self._calls += 1
        g, k, rng = self._grid, self.pool, self.rng
        p = rng.integers(0, k, batch)
        p_ = (p + rng.integers(1, k, batch)) % k  # p' ≠ p
        a = rng.integers(0, k, batch)
        a_ = (a + rng.integers(1, k, batch)) % k  # a' ≠ a
        idx = [(p, a), (p, a_), (p_, a), (p_, a_)]  # QUAD order
        x = np.stack([g["x"][i, c] for i, c in idx])
        clean = np.stack([g["clean"][i, c] for i, c in idx])
        out = {"x": torch.from_numpy(x), "clean": torch.from_numpy(clean),
               "person": torch.from_numpy(np.stack([g["persons"][i] for i, _ in idx])),
               "action": torch.from_numpy(np.stack([g["actions"][c] for _, c in idx]))}
        out["lengths"] = skeleton.bone_lengths(out["clean"]).median(dim=2).values
        return {k: v.to(device) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# The curriculum
# --------------------------------------------------------------------------------------------

def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


class PMRCurriculum(Curriculum):
    """PMR's four stages (see the module docstring). DMR: :class:`DMRCurriculum`."""

    stage_names = ("ae_paired", "ae_unpaired", "clf_paired", "clf_unpaired", "adversarial",
                   "retarget")
    loss_names = frozenset({"rec", "smooth", "cross", "trip", "latent", "ee", "emb", "qc",
                            "clf"})
    uses_critics = True
    own_loop = True

    @classmethod
    def run_own_loop(cls, config: Config, data_dir: str | Path,
                     out_dir: str | Path | None = None) -> Path:
        return train_pmr(config, data_dir, out_dir)

    def __init__(self, model: PMR, config: Config, num_actions: int = 0, num_subjects: int = 0,
                 paired: SynthQuadruples | None = None, unpaired: StoreBatches | None = None,
                 paired_labels: dict[str, dict[int, int]] | None = None):
        if not isinstance(model, PMR):
            raise ConfigError(f"model.method: the PMR curriculum trains pmr/dmr, not "
                              f"{model.method!r}")
        super().__init__(model, config)
        self.opts = {k: model.config.get(k, v) for k, v in TRAIN_DEFAULTS.items()}
        self.paired, self.unpaired = paired, unpaired
        #: raw paired label (subject id, ACTIONS index) → class index, per column
        self.paired_labels = paired_labels or {}
        self.critics = PMRCritics(model, num_actions, num_subjects) if self.uses_critics else None
        names = {s.name for s in self.stages}
        if any(n in PAIRED_STAGES for n in names) and paired is None:
            raise ConfigError(f"{config.source}: stages {sorted(names & set(PAIRED_STAGES))} "
                              "need paired SynthKinect data")
        if any(n not in PAIRED_STAGES for n in names) and unpaired is None:
            raise ConfigError(f"{config.source}: unpaired stages need a store")

    # -- configuration ---------------------------------------------------------------------
    def default_weights(self, name: str) -> dict[str, float] | None:
        return dict(PAPER_WEIGHTS[name])

    def trainable(self, stage: Stage) -> list[nn.Module]:
        ae = [self.model]
        if stage.name.startswith("ae_"):
            return ae
        c = self.critics
        clf = [c.motion_classifier, c.privacy_classifier] if c is not None else []
        if stage.name.startswith("clf_"):
            return clf
        return ae + self._critic_modules(stage)

    def _critic_modules(self, stage: Stage) -> list[nn.Module]:
        if self.critics is None:
            return []
        out: list[nn.Module] = []
        if stage.weights.get("emb", 0):
            out += [self.critics.motion_classifier, self.critics.privacy_classifier]
        if stage.weights.get("qc", 0):
            out.append(self.critics.quality)
        return out

    def optimizers(self, stage: Stage, params: list[nn.Parameter] | None = None,
                   ) -> dict[str, torch.optim.Optimizer]:
        t = self.config.train

        def adam(modules: list[nn.Module], scale: float = 1.0) -> torch.optim.Optimizer:
            return torch.optim.Adam(unique_parameters(modules), lr=stage.lr * scale,
                                    betas=tuple(t.betas), weight_decay=t.weight_decay)

        if stage.name.startswith("clf_"):
            return {"critics": adam(self.trainable(stage))}
        opts = {"generator": adam([self.model])}
        critics = self._critic_modules(stage)
        if critics:
            opts["critics"] = adam(critics, float(self.opts["critic_lr_scale"]))
        return opts

    def begin(self, stage: Stage) -> None:
        """Freeze everything, then unfreeze the stage's modules (frozen ones in eval mode)."""
        everything: list[nn.Module] = [self.model]
        if self.critics is not None:
            everything.append(self.critics)
        set_trainable(everything, False)
        set_trainable(self.trainable(stage), True)

    # -- batches ---------------------------------------------------------------------------
    def next_batch(self, stage: Stage, batch_size: int, device: torch.device,
                   ) -> dict[str, torch.Tensor]:
        """A paired quadruple batch (``batch_size`` windows in 4 groups) or an unpaired one,
        labels as class indices (see :func:`paired_population`)."""
        if stage.name in PAIRED_STAGES:
            q = self.paired.sample(max(batch_size // 4, 1), device)
            for col in ("action", "person"):
                lut = self.paired_labels.get(col)
                if lut is not None:
                    q[col] = torch.tensor([lut[int(v)] for v in q[col].flatten()],
                                          device=device).view_as(q[col])
            return q
        b = self.unpaired.next()
        return {"x": b["joints"], "action": b["action"], "person": b["subject"]}

    # -- loss terms ------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        canon, rot, origin = skeleton.canonicalize(x)
        m: PMR = self.model
        return {"canon": canon, "rot": rot, "origin": origin,
                "motion": m.encode_motion(canon), "privacy": m.encode_privacy(canon)}

    def _classifier_terms(self, e: dict[str, torch.Tensor], action: torch.Tensor,
                          person: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cooperative CE + adversarial entropy gap of the encoders (classifiers are fixed)."""
        M, P = self.critics.motion_classifier, self.critics.privacy_classifier
        coop = action_ce(M(e["motion"]), action) + action_ce(P(e["privacy"]), person)
        adv = entropy_gap(P(e["motion"])) + entropy_gap(M(e["privacy"]))
        return {"emb": coop + adv, "emb_coop": coop.detach(), "emb_adv": adv.detach()}

    def _classifier_loss(self, e: dict[str, torch.Tensor], action: torch.Tensor,
                         person: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """M and P learn actions and subjects from both (detached) embeddings."""
        M, P = self.critics.motion_classifier, self.critics.privacy_classifier
        zm, zp = e["motion"].detach(), e["privacy"].detach()
        loss = (action_ce(M(zm), action) + action_ce(M(zp), action)
                + action_ce(P(zp), person) + action_ce(P(zm), person))
        with torch.no_grad():
            acc = {"acc_M_motion": (M(zm).argmax(-1) == action).float().mean(),
                   "acc_M_privacy": (M(zp).argmax(-1) == action).float().mean(),
                   "acc_P_privacy": (P(zp).argmax(-1) == person).float().mean(),
                   "acc_P_motion": (P(zm).argmax(-1) == person).float().mean()}
        return loss, {k: float(v) for k, v in acc.items()}

    def generator_terms(self, batch: dict[str, torch.Tensor], stage: Stage,
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Unweighted loss terms of the auto-encoder and the fakes shown to Q."""
        w = stage.weights
        m: PMR = self.model
        paired = "clean" in batch
        x = batch["x"].flatten(0, 1) if paired else batch["x"]
        action = batch["action"].flatten() if paired else batch["action"]
        person = batch["person"].flatten() if paired else batch["person"]
        e = self._embed(x)
        if paired:
            clean = batch["clean"].flatten(0, 1)
            lengths = batch["lengths"].flatten(0, 1)
        else:
            clean = x
            lengths = skeleton.bone_lengths(x).median(dim=1).values
        target = skeleton.to_canonical(clean, e["rot"], e["origin"])
        recon = m.decode(e["motion"], e["privacy"], lengths)
        terms: dict[str, torch.Tensor] = {"rec": mse(recon, target)}
        fakes = recon
        if w.get("emb", 0) and self.critics is not None:
            terms.update(self._classifier_terms(e, action, person))
        if paired and any(w.get(k, 0) for k in ("cross", "trip", "latent", "ee", "qc")):
            cross_terms, fakes = self._paired_terms(batch, e, target, stage)
            terms.update(cross_terms)
        elif w.get("qc", 0):
            perm = torch.roll(torch.arange(x.shape[0], device=x.device), 1)
            fakes = m.decode(e["motion"], e["privacy"][perm], lengths[perm])
        terms["smooth"] = smoothness(torch.cat([recon, fakes]) if fakes is not recon else recon)
        if w.get("qc", 0) and self.critics is not None:
            terms["qc"] = _bce(self.critics.quality(fakes), real=True)
        return terms, {"real": e["canon"].detach(), "fake": fakes.detach(), "embed": e,
                       "action": action, "person": person}

    def _paired_terms(self, batch: dict[str, torch.Tensor], e: dict[str, torch.Tensor],
                      target: torch.Tensor, stage: Stage,
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        m: PMR = self.model
        n = batch["x"].shape[1]
        g = {k: e[k].unflatten(0, (4, n)) for k in ("motion", "privacy", "rot", "origin")}
        clean = batch["clean"]
        lengths = batch["lengths"]
        pa, pa_, p_a, p_a_ = range(4)
        # privacy codes of the target bodies: a recorded window, or (rest_target_prob) the
        # rest pose with the same bone lengths, as retarget() does for the dummy
        rest = m.encode_privacy(rest_pose_sequence(lengths.flatten(0, 1), m.window))
        rest = rest.unflatten(0, (4, n))
        use_rest = (torch.rand(n, device=rest.device) < float(self.opts["rest_target_prob"]))
        target_code = torch.where(use_rest[None, :, None, None], rest, g["privacy"])

        def cross(src: int, body: int, truth: int) -> tuple[torch.Tensor, torch.Tensor]:
            pred = m.decode(g["motion"][src], target_code[body], lengths[body])
            gt = skeleton.to_canonical(clean[truth], g["rot"][src], g["origin"][src])
            return pred, gt

        ab, ab_gt = cross(pa, p_a_, p_a)  # motion of (p,a) on p' → (p',a)
        ba, ba_gt = cross(p_a_, pa, pa_)  # motion of (p',a') on p → (p,a')
        terms = {"cross": cross_reconstruction(ab, ab_gt, ba, ba_gt),
                 "ee": 0.5 * (end_effector_mse(ab, ab_gt, weight=None)
                              + end_effector_mse(ba, ba_gt, weight=None))}
        margin = float(self.opts["triplet_margin"])
        # motion: same action, other person is closer than same person, other action
        terms["trip"] = (triplet(g["motion"][pa], g["motion"][p_a], g["motion"][pa_], margin)
                         + triplet(g["privacy"][pa], g["privacy"][pa_], g["privacy"][p_a],
                                   margin))
        # latent consistency: re-encoding a retargeted motion gives back both codes
        lat_m = m.encode_motion(ab)
        lat_p = m.encode_privacy(ab)
        terms["latent"] = (latent_consistency(lat_m, g["motion"][pa].detach())
                           + latent_consistency(lat_p, target_code[p_a_].detach()))
        return terms, torch.cat([ab, ba])

    # -- one update ------------------------------------------------------------------------
    def step(self, net: nn.Module | None, batch: dict[str, torch.Tensor], stage: Stage,
             optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        if stage.name.startswith("clf_"):
            paired = "clean" in batch
            x = batch["x"].flatten(0, 1) if paired else batch["x"]
            with torch.no_grad():
                e = self._embed(x)
            loss, acc = self._classifier_loss(e, batch["action"].flatten(),
                                              batch["person"].flatten())
            loss = stage.weights["clf"] * loss
            norm = self._opt_step(optimizers["critics"], loss)
            return {"clf": float(loss.detach()), "grad_norm": norm, **acc}
        terms, aux = self.generator_terms(batch, stage)
        missing = set(stage.active) - set(terms)
        if missing:
            raise ConfigError(f"stage {stage.name!r}: λ for {sorted(missing)}, which "
                              f"{self.model.method} does not compute")
        loss = sum(stage.weights[k] * terms[k] for k in stage.active)
        logs = {"loss": float(loss.detach()),
                "grad_norm": self._opt_step(optimizers["generator"], loss)}
        logs.update({k: float(v.detach()) for k, v in terms.items()})
        if "critics" in optimizers:  # then M, P (on the same batch) and Q learn
            critic_loss = torch.zeros((), device=loss.device)
            if stage.weights.get("emb", 0):
                e = {k: aux["embed"][k].detach() for k in ("motion", "privacy")}
                clf, acc = self._classifier_loss(e, aux["action"], aux["person"])
                critic_loss = critic_loss + clf
                logs.update(acc)
            if stage.weights.get("qc", 0):
                q = self.critics.quality
                qc = _bce(q(aux["real"]), True) + _bce(q(aux["fake"]), False)
                critic_loss = critic_loss + qc
                logs["qc_critic"] = float(qc.detach())
            self._opt_step(optimizers["critics"], critic_loss)
        return logs


class DMRCurriculum(PMRCurriculum):
    """DMR: stages 1 and 4 only, α_emb = 0, no classifiers, no quality controller."""

    stage_names = ("ae_paired", "ae_unpaired", "retarget")
    loss_names = frozenset({"rec", "smooth", "cross", "trip", "latent", "ee"})
    uses_critics = False

    def default_weights(self, name: str) -> dict[str, float] | None:
        w = dict(PAPER_WEIGHTS[name])
        w.pop("emb", None)
        w.pop("qc", None)
        return w


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

#: Seed offset of the paired population drawn for non-SynthKinect stores, so that it is never
#: the population of a SynthKinect store generated with a small seed (its eval subjects).
PAIRED_SEED_OFFSET = 7_919_000


def paired_population(store, split: str, persons: int, seed: int) -> tuple[list, bool]:
    """Identities for paired quadruples and whether their ids are the store's subject ids.

    A SynthKinect store (``meta.info.generator``) is re-created person by person: the paired
    persons are exactly its ``split`` subjects, never its eval subjects. Otherwise a fresh
    population of ``persons`` people (other people than the store's) is drawn.
    """
    from streamtmr.data import synth
    info = store.meta.get("info", {}) if store is not None else {}
    if isinstance(info, dict) and info.get("generator") == "streamtmr.data.synth":
        everyone = synth.sample_population(int(info["subjects"]), int(info["seed"]))
        wanted = set(store.meta["splits"][split])
        return [p for p in everyone if p.subject in wanted], True
    return synth.sample_population(persons, seed + PAIRED_SEED_OFFSET), False


def paired_label_maps(unpaired: StoreBatches | None, subjects: list[int], n_actions: int,
                      shared: bool) -> tuple[dict[str, dict[int, int]], int, int]:
    """Class indices of paired labels: the store's class where ``shared`` (a SynthKinect store:
    same subject ids, action = ``ACTIONS`` index), new classes after the store's otherwise.
    Returns ``(maps, num_actions, num_subjects)``."""
    maps: dict[str, dict[int, int]] = {}
    sizes = []
    for col, store_col, raw in (("action", "action", range(n_actions)),
                                ("person", "subject", subjects)):
        base = ({v: i for i, v in enumerate(unpaired.classes[store_col])}
                if unpaired is not None else {})
        lut, n = {}, len(base)
        for v in raw:
            if shared and v in base:
                lut[int(v)] = base[v]
            else:
                lut[int(v)], n = n, n + 1
        maps[col] = lut
        sizes.append(n)
    return maps, sizes[0], sizes[1]


def train_pmr(config: Config, data_dir: str | Path, out_dir: str | Path | None = None,
              critics: str | Path | None = None) -> Path:
    """Train ``pmr`` or ``dmr`` on a store (unpaired stages) and SynthKinect (paired stages);
    returns the final checkpoint path. ``critics``: a ``critics.safetensors`` to start from."""
    out = Path(out_dir if out_dir is not None else config.output.dir)
    t = config.train
    cls = curriculum_class(config.model.method)
    if not issubclass(cls, PMRCurriculum):
        raise ConfigError(f"model.method: train_pmr trains pmr or dmr, not "
                          f"{config.model.method!r}")
    torch.manual_seed(t.seed)
    device = pick_device(t.device)
    names = {s.name for s in t.stages}
    unpaired = (StoreBatches(data_dir, config.data.window, t.batch_size,
                             config.data.train_split, config.data.source_array, t.seed, device,
                             t.num_workers)
                if names - set(PAIRED_STAGES) or cls.uses_critics else None)
    info = unpaired.info if unpaired is not None else None
    model_cfg = cls.model_config(config.model, info)
    model_cfg["window"] = config.data.window
    model = build_model(model_cfg)
    opts = {k: model.config.get(k, v) for k, v in TRAIN_DEFAULTS.items()}
    paired, maps = None, {}
    n_act = unpaired.num_classes("action") if unpaired else 0
    n_sub = unpaired.num_classes("subject") if unpaired else 0
    if names & set(PAIRED_STAGES):
        population, shared = paired_population(unpaired.store if unpaired else None,
                                                config.data.train_split,
                                                int(opts["paired_persons"]), t.seed)
        paired = SynthQuadruples(config.data.window, population, int(opts["paired_pool"]),
                                 int(opts["paired_refresh"]), t.seed)
        maps, n_act, n_sub = paired_label_maps(
            unpaired, [p.subject for p in population], len(paired.actions), shared)
    cur = cls(model, config, n_act, n_sub, paired, unpaired, maps)
    if critics is not None and cur.critics is not None:
        cur.critics.load_state_dict(load_file(str(critics)))
    model.to(device)
    if cur.critics is not None:
        cur.critics.to(device)
    run_stages(cur, model, lambda stage: cur.next_batch(stage, t.batch_size, device), config,
               out, device)
    extra = {"stages": [s.name for s in cur.stages],
             "classes": unpaired.classes if unpaired is not None else {}}
    if cur.critics is not None:
        save_modules(out / "critics.safetensors", cur.critics.cpu(),
                     {"method": model.method, "num_actions": n_act, "num_subjects": n_sub})
    return save_checkpoint(out / "model.safetensors", model.cpu().eval(), extra)
