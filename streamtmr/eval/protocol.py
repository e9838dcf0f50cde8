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
from dataclasses import asdict, dataclass, field, replace
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
    #: Re-ID attacker backbones (``attackers.ARCHITECTURES``); the strongest is reported.
    reid_archs: tuple[str, ...] = ("sgn",)
    #: Which attacks to train (re-ID and action always; attributes and linkage optional).
    attacks: tuple[str, ...] = ("reid", "attributes", "linkage", "action")

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
    #: Source recordings by store row (every row a train or test window was cut from): what
    #: an anonymizer is played through the node's path.
    rows: dict[int, np.ndarray] = field(default_factory=dict)

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
    used = np.union1d(train["sequence"], test["sequence"])
    recordings = {int(k): np.array(store[int(k)].joints, np.float32) for k in used}
    sequences = [recordings[int(k)] for k in np.unique(test["sequence"])[: cfg.gap_sequences]]
    info = {"store": str(store.root), "eval_subjects": ev, "anonymizer_train_subjects": anon_train,
            "actions": store.meta.get("actions"), "views_deg": store.meta.get("views_deg"),
            "test_view": cfg.test_view, "test_rep": cfg.test_rep if use_rep else None,
            "split": cfg.split, "train_windows": int(len(train["subject"])),
            "test_windows": int(len(test["subject"])), "window": cfg.window}
    return EvalData(store.meta.get("name", store.root.name), train, test, sequences,
                    store_dummy(store), float(store.meta.get("fps", 30.0)), info, recordings)


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
    """One trained set: re-ID (one classifier per backbone of ``cfg.reid_archs``), attributes
    (sex + age group), linkage (None where not in ``cfg.attacks``), action recognizer."""

    reid: dict[str, SkeletonClassifier]
    attributes: SkeletonClassifier | None
    linkage: LinkageAttacker | None
    action: SkeletonClassifier


def _attributes(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {a: d[a] for a in ATTRIBUTES if a in d and len(np.unique(d[a])) > 1}


def train_attackers(x: np.ndarray, labels: dict[str, np.ndarray], cfg: EvalConfig) -> Attackers:
    """Train every attacker of ``cfg.attacks`` and the action recognizer on windows ``x``."""
    ac = cfg.attacker
    t0 = time.time()
    reid = {arch: SkeletonClassifier(replace(ac, arch=arch)).fit(
        x, {"subject": labels["subject"]}) for arch in cfg.reid_archs}
    attrs = _attributes(labels) if "attributes" in cfg.attacks else {}
    attributes = SkeletonClassifier(ac).fit(x, attrs) if attrs else None
    linkage = None
    if "linkage" in cfg.attacks:
        lc = replace(ac, epochs=cfg.linkage_epochs or ac.epochs)
        linkage = LinkageAttacker(lc).fit(x, labels["subject"])
    action = SkeletonClassifier(ac).fit(x, {"action": labels["action"]})
    log.info("trained attackers on %d windows in %.0f s", len(x), time.time() - t0)
    return Attackers(reid, attributes, linkage, action)


def attack(att: Attackers, x: np.ndarray, labels: dict[str, np.ndarray], cfg: EvalConfig
           ) -> dict[str, Any]:
    """Every attacker's numbers on test windows ``x``. ``reid_top1``/``reid_top5`` are the
    strongest re-ID backbone's (by top-1; ``reid_arch`` names it, ``reid_by_arch`` has all)."""
    by_arch = {arch: c.evaluate(x, {"subject": labels["subject"]})["subject"]
               for arch, c in att.reid.items()}
    arch = max(by_arch, key=lambda a: by_arch[a]["top1"])
    out: dict[str, Any] = {"reid_top1": by_arch[arch]["top1"],
                           "reid_top5": by_arch[arch]["top5"], "reid_arch": arch,
                           "reid_by_arch": {a: {"top1": r["top1"], "top5": r["top5"]}
                                            for a, r in by_arch.items()}}
    if att.attributes is not None:
        for name, r in att.attributes.evaluate(x, _attributes(labels)).items():
            out[f"{name}_acc"] = r["top1"]
            out[f"{name}_balanced"] = r["balanced_accuracy"]
    if att.linkage is not None:
        out["linkage"] = att.linkage.evaluate(x, labels["subject"], cfg.linkage_pairs,
                                              cfg.seed + 1)
    act = att.action.evaluate(x, {"action": labels["action"]})["action"]
    out["action_top1"], out["action_top5"] = act["top1"], act["top5"]
    return out


# --------------------------------------------------------------------------------------------
# Metrics of one method
# --------------------------------------------------------------------------------------------


def quality(data: EvalData, anon_test: np.ndarray, gap_mm: float | None = None
            ) -> dict[str, float]:
    """Reconstruction and physical plausibility of the test windows, and the streamed-vs-
    offline gap ``gap_mm`` where one was measured (:func:`published_windows`)."""
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
    if gap_mm is not None:
        q["stream_gap_mm"] = float(gap_mm)
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
    #: The anonymizer the node's engine runs (:func:`published_windows`).
    anonymizer: Any = None
    #: The node's leak guard; off only for the baselines measured as such (:data:`GUARD_OFF`).
    leak_guard: bool = True


#: Baselines whose output tracks the source's bone directions by design: the node's leak guard
#: would refuse them, so they are played with it off to be measured (the tables say so).
GUARD_OFF = ("naive", "noise")


def method_from_model(name: str, model, dummy: Dummy, info: dict | None = None) -> Method:
    lengths = torch.as_tensor(np.array(dummy.lengths, np.float32))
    module = model.eval().for_dummy(lengths).eval()
    window = None if model.method in VARIABLE_LENGTH else int(model.window)
    guard = model.method not in GUARD_OFF
    return Method(name, module, window, model if hasattr(model, "embeddings") else None,
                  {"method": model.method, "leak_guard": guard, **(info or {})},
                  anonymizer=model, leak_guard=guard)


def published_windows(method: Method, data: EvalData, cfg: EvalConfig) -> dict[str, Any]:
    """``method``'s train and test windows as the node publishes them: every source recording
    played through the node's path (:func:`streamtmr.offline.publish_sequences`), the
    windows then cut where the source windows were. Also the streamed-vs-offline gap: MPJPE
    between what the node published and what ``streamtmr anonymize`` writes by default (the
    node's path for a streaming model, stitched windows for a windowed one) for the first
    ``cfg.gap_sequences`` test recordings, and the node's ledger (body-frames withheld, leak
    guard on or off)."""
    from engines import create_engine
    from streamtmr.eval.published import publish_sequences, windows_of
    from streamtmr.offline import anonymize_sequences
    from streamtmr.offline import publish_sequences as node_path

    if not data.rows:
        raise ProtocolError(f"{data.name}: no source recordings to play through the node")
    engine = create_engine("torch", model=method.anonymizer, dummy=data.dummy, window=None,
                           max_batch=64, threads=torch.get_num_threads())
    try:
        torch.manual_seed(cfg.seed)  # stochastic methods (noise) give reproducible outputs
        rows = sorted(data.rows)
        index = {r: i for i, r in enumerate(rows)}
        pub = publish_sequences(engine, [data.rows[r] for r in rows],
                                leak_guard=method.leak_guard, fps=data.fps)
        T = data.test["joints"].shape[1]
        out = {part: windows_of(pub.outputs, d["sequence"], d["start"], T, index)
               for part, d in (("train", data.train), ("test", data.test))}
        gap_rows = [int(r) for r in np.unique(data.test["sequence"])[: cfg.gap_sequences]]
        gap_src = [data.rows[r] for r in gap_rows]
        # what `streamtmr anonymize` writes by default: the node's path for a streaming model
        # (the gap is 0 by construction), stitched windows for a windowed one
        offline = (node_path(engine, gap_src) if engine.streaming else
                   anonymize_sequences(engine, gap_src))
    finally:
        engine.close()
    out["gap_mm"] = float(np.mean([metrics.streamed_offline_gap_mm(pub.outputs[index[r]], y)
                                   for r, y in zip(gap_rows, offline, strict=True)]))
    out["ledger"] = {"body_frames": pub.frames, "withheld": pub.withheld,
                     "withheld_pct": 100.0 * pub.withheld_fraction,
                     "leak_guard": method.leak_guard, "engine": "torch"}
    return out


def evaluate_method(method: Method, data: EvalData, static: Attackers, cfg: EvalConfig,
                    original_action_top1: float | None = None) -> dict[str, Any]:
    """Static and adaptive attacks, utility and physical metrics of one method."""
    t0 = time.time()
    res: dict[str, Any] = {"info": method.info}
    gap = None
    if method.oracle is not None:
        if method.oracle not in data.test:
            raise ProtocolError(f"{method.name}: the store has no {method.oracle!r} array")
        anon_train, anon_test = data.train[method.oracle], data.test[method.oracle]
    elif method.module is None:
        anon_train, anon_test, gap = data.train["joints"], data.test["joints"], 0.0
    else:
        pub = published_windows(method, data, cfg)
        anon_train, anon_test, gap = pub["train"], pub["test"], pub["gap_mm"]
        res["published"] = pub["ledger"]
    res["quality"] = quality(data, anon_test, gap)
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


def _output(method: Method, data: EvalData, cfg: EvalConfig) -> np.ndarray:
    """``method``'s test windows (as published by the node; an oracle's from the store)."""
    if method.oracle is not None:
        return data.test[method.oracle]
    if method.module is None:
        return data.test["joints"]
    return published_windows(method, data, cfg)["test"]


def goals(result: dict[str, Any], chance: dict[str, float], original_action_top1: float
          ) -> dict[str, Any]:
    """The product's aims on unseen subjects, each with the measured value."""
    a, s = result["adaptive"], result["static"]
    out = {
        "adaptive_reid<=1.5x_chance": a["reid_top1"] <= 1.5 * chance["reid_top1"],
        "static_reid<=chance+1pt": s["reid_top1"] <= chance["reid_top1"] + 0.01,
        "linkage_auc<=0.55": a["linkage"]["auc"] <= 0.55 if "linkage" in a else None,
        "action>=95%_of_original": s["action_top1"] >= 0.95 * original_action_top1,
    }
    return {k: v for k, v in out.items() if v is not None}


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
                    m, data, cfg))}
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


def _mean_tree(trees: list[Any]) -> tuple[Any, Any]:
    """(mean, std) of numeric leaves across structurally equal trees; other leaves (strings,
    flags, lists) from the first tree, with no std."""
    first = trees[0]
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(t, dict) and k in t for t in trees)]
        pairs = {k: _mean_tree([t[k] for t in trees]) for k in keys}
        mean = {**first, **{k: m for k, (m, _) in pairs.items()}}
        std = {k: sd for k, (_, sd) in pairs.items() if sd is not None}
        return mean, (std or None)
    if isinstance(first, int | float) and not isinstance(first, bool) and all(
            isinstance(t, int | float) and not isinstance(t, bool) for t in trees):
        v = np.asarray(trees, np.float64)
        return float(v.mean()), float(v.std())
    return first, None


def _strongest_mean(mean: dict[str, Any], std: dict[str, Any]) -> None:
    """In place: the reported re-ID attack is the backbone with the higher mean top-1 over the
    seeds (its mean and std), not the mean of each seed's maximum."""
    by = mean.get("reid_by_arch")
    if not by:
        return
    arch = max(by, key=lambda a: by[a]["top1"])
    mean["reid_arch"] = arch
    mean["reid_top1"], mean["reid_top5"] = by[arch]["top1"], by[arch]["top5"]
    sd = (std.get("reid_by_arch") or {}).get(arch, {})
    std["reid_top1"], std["reid_top5"] = sd.get("top1", 0.0), sd.get("top5", 0.0)


def aggregate_seeds(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """One result from runs of the protocol that differ only in the attacker seed: every
    number of every method (SynthKinect and UTKinect) the mean over the runs, its standard
    deviation (population, over seeds) under ``std`` beside it, the reported re-ID attack the
    backbone with the higher mean, ``per_seed`` the headline numbers of every run; the rest
    (data, chance, protocol with the first seed) from the first run, ``seeds`` the seeds."""
    out = {**runs[0], "seeds": list(seeds), "methods": _mean_methods(
        [r["methods"] for r in runs])}
    for name, m in out["methods"].items():
        m["per_seed"] = [
            {"seed": s, "static_reid_top1": r["methods"][name]["static"]["reid_top1"],
             "adaptive_reid_top1": r["methods"][name]["adaptive"]["reid_top1"],
             "adaptive_reid_arch": r["methods"][name]["adaptive"].get("reid_arch"),
             "action_top1_frozen": r["methods"][name]["static"]["action_top1"],
             "action_top1_retrained": r["methods"][name]["adaptive"]["action_top1"]}
            for s, r in zip(seeds, runs, strict=True)]
    if all("utkinect" in r for r in runs):
        out["utkinect"] = {**runs[0]["utkinect"], "methods": _mean_methods(
            [r["utkinect"]["methods"] for r in runs])}
    return out


def _mean_methods(per_run: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for name in per_run[0]:
        mean, std = _mean_tree([m[name] for m in per_run])
        mean["info"] = per_run[0][name].get("info", {})
        mean["std"] = std or {}
        mean["std"].pop("info", None)
        for mode in ("static", "adaptive"):
            _strongest_mean(mean.get(mode, {}), mean["std"].setdefault(mode, {}))
        out[name] = mean
    return out


__all__ = ["aggregate_seeds", "Attackers", "EvalConfig", "EvalData", "Method", "ProtocolError",
           "attack",
           "embedding_probes", "eval_subjects", "evaluate_method", "load_store",
           "make_anonymizer", "make_pairs", "method_from_model", "published_windows", "quality",
           "ResultCache",
           "ORACLE_ARRAYS", "run_protocol", "streamed_newest", "sync_quality", "train_attackers"]
