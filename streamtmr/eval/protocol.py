"""The evaluation protocol: data splits, anonymization, attackers, utility and physical metrics.

Splits (SynthKinect store)
    * Anonymizers are evaluated only on the store's ``splits["eval"]`` subjects, which are
      disjoint from ``splits["anonymizer_train"]`` (checked; a violation raises).
    * Attackers and the action recognizer are trained and tested on those eval subjects, split
      by camera *and* repetition: trained on every view except ``test_view`` of every
      repetition except ``test_rep``, tested on ``test_view`` of ``test_rep``. SynthKinect
      views are indices into ``meta["views_deg"]`` = (-45°, 0°, +45°), so ``test_view = 0`` is
      NTU's camera 1 (train on cameras 2–3, test on camera 1). The repetition split keeps the
      very same performance (seen by another camera) out of the attacker's training set; a
      view-only split lets an attacker match a test window to its twin from another camera,
      which re-identifies even a perfect anonymizer (see ``docs/results.md``).

Modes
    * static: attackers trained on original data, tested on anonymized test data (the papers'
      protocol);
    * adaptive: attackers retrained on anonymized training data, tested on anonymized test data
      (the honest protocol).
    Utility: an action recognizer trained on original data (frozen) and one retrained on
    anonymized data.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from streamtmr.data.datasets import load_windows
from streamtmr.data.store import SkeletonStore
from streamtmr.data.windows import pad_to, trailing_windows, window_starts
from streamtmr.dummy import Dummy, default_dummy
from streamtmr.eval import metrics
from streamtmr.eval.attackers import (
    AttackerTraining,
    LinkageAttacker,
    SkeletonClassifier,
    make_pairs,
    probe_accuracy,
)

log = logging.getLogger(__name__)

#: Methods that take windows of any length (no learned window size).
VARIABLE_LENGTH = ("identity", "naive", "noise")
ATTRIBUTES = ("sex", "age_group")


class ProtocolError(ValueError):
    """The data cannot be evaluated under the protocol (the message says why)."""


@dataclass
class EvalConfig:
    window: int = 64
    train_stride: int = 32        # sliding windows for attacker training; tests: one per sequence
    test_view: int = 0            # view index held out for testing
    test_rep: int = 0             # repetition held out for testing (None: view split only)
    split: str = "view+rep"       # or "view"
    attacker: AttackerTraining = field(default_factory=AttackerTraining)
    linkage_epochs: int | None = None  # default: attacker.epochs
    linkage_pairs: int = 2000
    gap_sequences: int = 6        # sequences for the streamed-vs-offline gap
    batch: int = 64               # anonymizer batch size
    seed: int = 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["attacker"] = self.attacker.as_dict()
        return d


@dataclass
class EvalData:
    """Windows and labels of one evaluation set (train = attacker training, test = held out)."""

    name: str
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    sequences: list[np.ndarray]          # whole test sequences for the streaming gap
    dummy: Dummy
    fps: float = 30.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def has_target(self) -> bool:
        return "target" in self.test

    def chance(self) -> dict[str, float]:
        """Chance level of every reported number (what a label-blind attacker achieves)."""
        out = {}
        n_subj = len(np.unique(self.train["subject"]))
        out["reid_top1"] = 1.0 / n_subj
        out["reid_top5"] = min(5, n_subj) / n_subj
        n_act = len(np.unique(self.train["action"]))
        out["action_top1"] = 1.0 / n_act
        out["action_top5"] = min(5, n_act) / n_act
        for attr in ATTRIBUTES:
            if attr in self.test:
                _, counts = np.unique(self.test[attr], return_counts=True)
                out[f"{attr}_majority"] = float(counts.max() / counts.sum())
                out[f"{attr}_balanced"] = 1.0 / len(counts)
        out["linkage_auc"] = 0.5
        out["linkage_eer"] = 0.5
        return out


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def store_dummy(store: SkeletonStore) -> Dummy:
    """The dummy a store's ``target`` array was retargeted onto (``meta["dummy"]``)."""
    d = store.meta.get("dummy")
    if isinstance(d, dict) and "lengths" in d:
        return Dummy(str(d.get("name", "store")), np.asarray(d["lengths"], np.float32))
    return default_dummy()


def eval_subjects(store: SkeletonStore) -> tuple[list[int], list[int]]:
    """(eval subjects, anonymizer-train subjects) of a store; raises if they overlap or the
    store has no splits."""
    splits = store.meta.get("splits")
    if not isinstance(splits, dict) or "eval" not in splits:
        raise ProtocolError(f"{store.root}/meta.json: no splits.eval (the protocol evaluates "
                            "anonymizers on subjects they never saw)")
    ev = sorted(int(s) for s in splits["eval"])
    tr = sorted(int(s) for s in splits.get("anonymizer_train", []))
    both = set(ev) & set(tr)
    if both:
        raise ProtocolError(f"{store.root}/meta.json: subjects {sorted(both)} are in both "
                            "anonymizer_train and eval")
    return ev, tr


def load_store(store: SkeletonStore | str, config: EvalConfig | None = None) -> EvalData:
    """Attacker train/test windows of a store's eval subjects (see the module docstring)."""
    cfg = config or EvalConfig()
    store = store if isinstance(store, SkeletonStore) else SkeletonStore(store)
    ev, anon_train = eval_subjects(store)
    arrays = ("joints", *[a for a in ORACLE_ARRAYS if a in store.array_names])
    for col in ("subject", "action", "view"):
        if store.rows and col not in store.rows[0]:
            raise ProtocolError(f"{store.root}/index.csv: no {col!r} column")
    if cfg.split not in ("view", "view+rep"):
        raise ProtocolError(f"split must be 'view' or 'view+rep', got {cfg.split!r}")
    use_rep = cfg.split == "view+rep"
    if use_rep and "rep" not in store.rows[0]:
        raise ProtocolError(f"{store.root}/index.csv: no 'rep' column for the view+rep split")

    def in_test(w):
        m = w["view"] == cfg.test_view
        return m & (w["rep"] == cfg.test_rep) if use_rep else m

    def in_train(w):
        m = w["view"] != cfg.test_view
        return m & (w["rep"] != cfg.test_rep) if use_rep else m

    slid = load_windows(store, cfg.window, subjects=ev, arrays=arrays, stride=cfg.train_stride)
    center = load_windows(store, cfg.window, crop="center", subjects=ev, arrays=arrays)
    train = {k: v[in_train(slid)] for k, v in slid.items()}
    test = {k: v[in_test(center)] for k, v in center.items()}
    if not len(train["subject"]) or not len(test["subject"]):
        raise ProtocolError(f"{store.root}: empty attacker split (test view {cfg.test_view}, "
                            f"test rep {cfg.test_rep}); views {sorted(set(center['view']))}")
    for part in (train, test):
        leaked = set(np.unique(part["subject"]).tolist()) & set(anon_train)
        if leaked:  # cannot happen with load_windows(subjects=ev); guards the invariant
            raise ProtocolError(f"anonymizer-train subjects {sorted(leaked)} in evaluation data")
    rows = np.unique(test["sequence"])[: cfg.gap_sequences]
    sequences = [np.array(store[int(k)].joints, np.float32) for k in rows]
    info = {"store": str(store.root), "eval_subjects": ev, "anonymizer_train_subjects": anon_train,
            "actions": store.meta.get("actions"), "views_deg": store.meta.get("views_deg"),
            "test_view": cfg.test_view, "test_rep": cfg.test_rep if use_rep else None,
            "split": cfg.split, "train_windows": int(len(train["subject"])),
            "test_windows": int(len(test["subject"])), "window": cfg.window}
    return EvalData(store.meta.get("name", store.root.name), train, test, sequences,
                    store_dummy(store), float(store.meta.get("fps", 30.0)), info)


# --------------------------------------------------------------------------------------------
# Anonymizing windows
# --------------------------------------------------------------------------------------------

Anonymize = Callable[[np.ndarray], np.ndarray]
#: Ground-truth arrays of a SynthKinect store that can stand in for an anonymizer's output
#: ("oracle" rows): the dummy performing the same content in the neutral style, at neutral
#: tempo (``target``) or at the person's own tempo (``target_sync``, frame-aligned).
ORACLE_ARRAYS = ("target", "target_sync")


def make_anonymizer(module: torch.nn.Module | None, model_window: int | None = None,
                    batch: int = 64, seed: int = 0) -> Anonymize:
    """Wrap an ``x → y`` module (e.g. ``model.for_dummy(lengths)``; ``None`` = identity) into a
    numpy function over windows ``[N, T, 25, 3]``.

    With ``model_window`` the module only ever sees windows of exactly that many frames:
    longer windows are cut into consecutive chunks (the last aligned to the end), shorter ones
    padded by repeating the last frame, and the outputs stitched back.
    """
    def run(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if module is None:
            return x.copy()
        torch.manual_seed(seed)  # stochastic methods (noise) give reproducible outputs
        out = np.empty_like(x)
        T = x.shape[1]
        if model_window is None or model_window == T:
            chunks = [(0, T)]
        elif T < model_window:
            chunks = [(0, T)]
        else:
            starts = window_starts(T, model_window, model_window)
            chunks = [(int(s), int(s) + model_window) for s in starts]
        with torch.no_grad():
            for i in range(0, len(x), batch):
                xb = x[i : i + batch]
                for s, e in chunks:
                    piece = xb[:, s:e]
                    if model_window is not None:
                        piece = pad_to(piece, model_window, axis=1)
                    y = module(torch.as_tensor(piece)).numpy()
                    out[i : i + batch, s:e] = y[:, : e - s]
        if not np.isfinite(out).all():
            raise ProtocolError("the anonymizer produced NaN/Inf")
        return out

    return run


def streamed_newest(anonymize: Anonymize, seq: np.ndarray, window: int) -> np.ndarray:
    """Newest output frame of the window a streaming node sees at every frame: ``[T, 25, 3]``."""
    wins = trailing_windows(np.asarray(seq), window)
    return anonymize(wins)[:, -1]


# --------------------------------------------------------------------------------------------
# Attackers
# --------------------------------------------------------------------------------------------


@dataclass
class Attackers:
    """One trained set: re-ID, attributes (sex + age group), linkage, action recognizer."""

    reid: SkeletonClassifier
    attributes: SkeletonClassifier | None
    linkage: LinkageAttacker
    action: SkeletonClassifier


def _attributes(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {a: d[a] for a in ATTRIBUTES if a in d and len(np.unique(d[a])) > 1}


def train_attackers(x: np.ndarray, labels: dict[str, np.ndarray], cfg: EvalConfig) -> Attackers:
    """Train every attacker and the action recognizer on windows ``x`` with ``labels``."""
    ac = cfg.attacker
    t0 = time.time()
    reid = SkeletonClassifier(ac).fit(x, {"subject": labels["subject"]})
    attrs = _attributes(labels)
    attributes = SkeletonClassifier(ac).fit(x, attrs) if attrs else None
    lc = AttackerTraining(**{**ac.as_dict(), "epochs": cfg.linkage_epochs or ac.epochs})
    linkage = LinkageAttacker(lc).fit(x, labels["subject"])
    action = SkeletonClassifier(ac).fit(x, {"action": labels["action"]})
    log.info("trained attackers on %d windows in %.0f s", len(x), time.time() - t0)
    return Attackers(reid, attributes, linkage, action)


def attack(att: Attackers, x: np.ndarray, labels: dict[str, np.ndarray], cfg: EvalConfig
           ) -> dict[str, Any]:
    """Every attacker's numbers on test windows ``x``."""
    reid = att.reid.evaluate(x, {"subject": labels["subject"]})["subject"]
    out: dict[str, Any] = {"reid_top1": reid["top1"], "reid_top5": reid["top5"]}
    if att.attributes is not None:
        for name, r in att.attributes.evaluate(x, _attributes(labels)).items():
            out[f"{name}_acc"] = r["top1"]
            out[f"{name}_balanced"] = r["balanced_accuracy"]
    out["linkage"] = att.linkage.evaluate(x, labels["subject"], cfg.linkage_pairs, cfg.seed + 1)
    act = att.action.evaluate(x, {"action": labels["action"]})["action"]
    out["action_top1"], out["action_top5"] = act["top1"], act["top5"]
    return out


# --------------------------------------------------------------------------------------------
# Metrics of one method
# --------------------------------------------------------------------------------------------


def quality(data: EvalData, anon_test: np.ndarray, anonymize: Anonymize | None,
            stream_window: int) -> dict[str, float]:
    """Reconstruction, physical plausibility and the streamed-vs-offline gap (not for an
    oracle, ``anonymize=None``)."""
    src = data.test["joints"]
    q: dict[str, float] = {}
    if data.has_target:
        q["mse_target"] = metrics.mse(anon_test, data.test["target"])
        q["mpjpe_target_mm"] = metrics.mpjpe_mm(anon_test, data.test["target"])
    q.update(sync_quality(data, anon_test))
    q["mse_source"] = metrics.mse(anon_test, src)
    q["mpjpe_source_mm"] = metrics.mpjpe_mm(anon_test, src)
    ref = data.test["target"] if data.has_target else src
    q["bone_var_mm2"] = metrics.bone_length_variance_mm2(anon_test)
    q["angle_valid_pct"] = metrics.joint_angle_validity(anon_test)
    q["accel_m_s2"] = metrics.mean_acceleration(anon_test, data.fps)
    q["velocity_mmd"] = metrics.velocity_mmd(anon_test, ref)
    q["foot_skate_m_s"] = metrics.foot_skate(anon_test, fps=data.fps)
    q["foot_contact_corr"] = metrics.foot_contact_correlation(anon_test, ref)
    if data.sequences and anonymize is not None:
        gaps = []
        for seq in data.sequences:
            offline = anonymize(seq[None])[0]
            gaps.append(metrics.streamed_offline_gap_mm(
                streamed_newest(anonymize, seq, stream_window), offline))
        q["stream_gap_mm"] = float(np.mean(gaps))
    return q


def sync_quality(data: EvalData, anon_test: np.ndarray) -> dict[str, float]:
    """MPJPE to the frame-aligned ground truth (``target_sync``: neutral style at the person's
    own tempo), where the store has it: of the whole body and of the pose (root-aligned)."""
    if "target_sync" not in data.test:
        return {}
    ref = data.test["target_sync"]
    return {"mpjpe_sync_mm": metrics.mpjpe_mm(anon_test, ref),
            "pose_mpjpe_sync_mm": metrics.pose_mpjpe_mm(anon_test, ref)}


def _pooled(h: torch.Tensor) -> np.ndarray:
    h = h.detach().float()
    if h.dim() == 3:
        h = h.flatten(1) if h[0].numel() <= 4096 else h.mean(1)
    return h.reshape(len(h), -1).numpy()


EMBEDDING_KEYS = {"action": ("action_pooled", "h_action", "motion"),
                  "identity": ("h_identity", "privacy")}


def embeddings_of(model: torch.nn.Module, x: np.ndarray, window: int, batch: int = 64
                  ) -> dict[str, np.ndarray]:
    """Pooled action and identity embeddings ``[N, D]`` of windows (first ``window`` frames)."""
    x = pad_to(np.asarray(x, np.float32), window, axis=1)[:, :window]
    parts: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for i in range(0, len(x), batch):
            emb = model.embeddings(torch.as_tensor(x[i : i + batch]))
            for role, keys in EMBEDDING_KEYS.items():
                key = next((k for k in keys if k in emb), None)
                if key is not None:
                    parts.setdefault(role, []).append(_pooled(emb[key]))
    return {role: np.concatenate(v) for role, v in parts.items()}


def embedding_probes(model: torch.nn.Module, data: EvalData, window: int) -> dict[str, float]:
    """Probes on frozen embeddings of the source windows: re-ID from H_action by a linear probe
    and by an MLP discriminator retrained on the eval subjects (the model's own discriminator
    knows only anonymizer-train subjects), action from H_action, re-ID from H_identity."""
    tr = embeddings_of(model, data.train["joints"], window)
    te = embeddings_of(model, data.test["joints"], window)
    out = {}
    ytr, yte = data.train["subject"], data.test["subject"]
    if "action" in tr:
        out["probe_action_reid_linear"] = probe_accuracy(tr["action"], ytr, te["action"], yte)
        out["probe_action_reid_mlp"] = probe_accuracy(tr["action"], ytr, te["action"], yte, "mlp")
        out["probe_action_action_linear"] = probe_accuracy(
            tr["action"], data.train["action"], te["action"], data.test["action"])
    if "identity" in tr:
        out["probe_identity_reid_linear"] = probe_accuracy(tr["identity"], ytr, te["identity"],
                                                           yte)
    return out


# --------------------------------------------------------------------------------------------
# The whole protocol
# --------------------------------------------------------------------------------------------


@dataclass
class Method:
    """A method to evaluate: a name, an ``x → y`` module for the dummy (None = original data),
    the model's window (None = any length) and the model itself (for embedding probes)."""

    name: str
    module: torch.nn.Module | None
    window: int | None = None
    model: torch.nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: An oracle reads its output from this store array (see :data:`ORACLE_ARRAYS`).
    oracle: str | None = None


def method_from_model(name: str, model, dummy: Dummy, info: dict | None = None) -> Method:
    lengths = torch.as_tensor(np.array(dummy.lengths, np.float32))
    module = model.eval().for_dummy(lengths).eval()
    window = None if model.method in VARIABLE_LENGTH else int(model.window)
    return Method(name, module, window, model if hasattr(model, "embeddings") else None,
                  {"method": model.method, **(info or {})})


def evaluate_method(method: Method, data: EvalData, static: Attackers, cfg: EvalConfig,
                    original_action_top1: float | None = None) -> dict[str, Any]:
    """Static and adaptive attacks, utility and physical metrics of one method."""
    t0 = time.time()
    if method.oracle is not None:
        if method.oracle not in data.test:
            raise ProtocolError(f"{method.name}: the store has no {method.oracle!r} array")
        anonymize = None
        anon_train, anon_test = data.train[method.oracle], data.test[method.oracle]
    else:
        anonymize = make_anonymizer(method.module, method.window, cfg.batch, cfg.seed)
        anon_train = anonymize(data.train["joints"])
        anon_test = anonymize(data.test["joints"])
    stream_window = method.window or cfg.window
    res: dict[str, Any] = {"info": method.info}
    res["quality"] = quality(data, anon_test, anonymize, stream_window)
    res["static"] = attack(static, anon_test, data.test, cfg)
    if method.module is None and method.oracle is None:
        res["adaptive"] = dict(res["static"])
    else:
        adaptive = train_attackers(anon_train, data.train, cfg)
        res["adaptive"] = attack(adaptive, anon_test, data.test, cfg)
    if method.model is not None:
        res["embedding"] = embedding_probes(method.model, data, method.window or cfg.window)
    res["seconds"] = round(time.time() - t0, 1)
    log.info("%s: %s s", method.name, res["seconds"])
    return res


def _output(method: Method, part: dict[str, np.ndarray], cfg: EvalConfig) -> np.ndarray:
    """``method``'s output for the windows of ``part`` (train or test)."""
    if method.oracle is not None:
        return part[method.oracle]
    return make_anonymizer(method.module, method.window, cfg.batch, cfg.seed)(part["joints"])


def goals(result: dict[str, Any], chance: dict[str, float], original_action_top1: float
          ) -> dict[str, Any]:
    """The product's aims on unseen subjects, each with the measured value."""
    a, s = result["adaptive"], result["static"]
    link = a["linkage"]
    return {
        "adaptive_reid<=1.5x_chance": a["reid_top1"] <= 1.5 * chance["reid_top1"],
        "static_reid<=chance+1pt": s["reid_top1"] <= chance["reid_top1"] + 0.01,
        "linkage_auc<=0.55": link["auc"] <= 0.55,
        "action>=95%_of_original": s["action_top1"] >= 0.95 * original_action_top1,
    }


class ResultCache(Protocol):
    """Stores one method's results between runs (see :class:`streamtmr.eval.suite.ResultCache`).
    ``get`` returns ``None`` when the method is not cached (or cannot be)."""

    def get(self, method: Method) -> dict[str, Any] | None: ...

    def put(self, method: Method, result: dict[str, Any]) -> None: ...


def run_protocol(data: EvalData, methods: list[Method], cfg: EvalConfig,
                 cache: ResultCache | None = None) -> dict[str, Any]:
    """Evaluate every method on the same data, attackers and protocol. The static attackers
    are trained once on original data; "original" is always evaluated first.

    With ``cache``, a method found there is not evaluated again, and the static attackers are
    not trained at all when every method (with "original") is cached. Every step is seeded
    (attackers, probes, linkage pairs, stochastic anonymizers) and no method's evaluation
    depends on another's, so a cached result equals a recomputed one (for the same data,
    ``cfg`` and model). Goals and action retention are derived afterwards for every method.
    """
    chance = data.chance()
    names = [m.name for m in methods]
    if "original" not in names:
        methods = [Method("original", None, None, None, {"method": "original"}), *methods]
    results: dict[str, Any] = {}
    todo = []
    for m in methods:
        hit = cache.get(m) if cache is not None else None
        if hit is None:
            todo.append(m)
        else:
            results[m.name] = {**hit, "info": m.info}
            if "target_sync" in data.test and not {"mpjpe_sync_mm", "pose_mpjpe_sync_mm"
                                                   } <= set(hit["quality"]):
                # Entry from before the store had target_sync (or before the pose metric):
                # add the cheap metrics now.
                results[m.name]["quality"] = {**hit["quality"], **sync_quality(data, _output(
                    m, data.test, cfg))}
                if cache is not None:
                    cache.put(m, results[m.name])
    if todo:
        static = train_attackers(data.train["joints"], data.train, cfg)
        for m in todo:
            results[m.name] = evaluate_method(m, data, static, cfg)
            if cache is not None:
                cache.put(m, results[m.name])
    results = {m.name: results[m.name] for m in methods}
    orig = results["original"]["static"]["action_top1"]
    for name, r in results.items():
        if name != "original":
            r["goals"] = goals(r, chance, orig)
        r["action_retention"] = (r["static"]["action_top1"] / orig) if orig > 0 else math.nan
    return {"dataset": data.name, "protocol": cfg.as_dict(), "data": data.info,
            "chance": chance, "methods": results}


__all__ = ["Attackers", "EvalConfig", "EvalData", "Method", "ProtocolError", "attack",
           "embedding_probes", "eval_subjects", "evaluate_method", "load_store",
           "make_anonymizer", "make_pairs", "method_from_model", "quality", "ResultCache",
           "ORACLE_ARRAYS", "run_protocol", "streamed_newest", "sync_quality", "train_attackers"]
