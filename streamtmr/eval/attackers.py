"""Attackers and the action recognizer: one skeleton network, several heads and trainers.

:class:`SkeletonNet` is a compact SGN-style network (graph convolutions over the joints with a
learned adjacency initialised from the Kinect v2 bone graph, then temporal convolutions over
frame features) on root-centred, face-aligned joint positions, velocities and bone vectors,
fused with a body-shape stream (per-window mean and standard deviation of the 24 bone
lengths) — the biometric an attacker would use first. The same network serves as

* :class:`SkeletonClassifier` — re-identification (subject), attributes (sex and age group, one
  head each) and action recognition;
* :class:`LinkageAttacker` — Siamese verification: are two windows the same person?

plus :func:`probe_accuracy`, a linear or MLP probe on frozen embeddings (H_action).
Inputs are windows ``[N, T, 25, 3]`` in metres; everything trains in a few epochs on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamtmr import skeleton
from streamtmr.eval import metrics
from streamtmr.eval.features import MOTION_CHANNELS, STATIC_FEATURES, window_features
from streamtmr.models.layers import GraphConv


@dataclass
class AttackerTraining:
    """Size and schedule of an attacker (defaults: a strong attacker; tests shrink them)."""

    width: int = 48
    epochs: int = 30
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    dropout: float = 0.2
    seed: int = 0
    device: str = "cpu"
    arch: str = "sgn"             # backbone: one of ARCHITECTURES

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


class GraphBlock(nn.Module):
    """The models' graph convolution with a learned adjacency (initialised from the normalised
    Kinect v2 bone graph), then batch norm and ReLU, on channel-first ``[N, C, T, V]``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.gcn = GraphConv(cin, cout, learn_adjacency=True)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, T, V]
        y = self.gcn(x.permute(0, 2, 3, 1))  # [N, T, V, C']
        return F.relu(self.bn(y.permute(0, 3, 1, 2)))


class TemporalBlock(nn.Module):
    """Residual temporal convolution over frame features ``[N, C, T]``."""

    def __init__(self, channels: int, stride: int = 1, kernel: int = 3):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(channels, channels, kernel, stride, kernel // 2), nn.BatchNorm1d(channels))
        self.skip = nn.AvgPool1d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return F.relu(y + self.skip(x)[..., : y.shape[-1]])


class SkeletonNet(nn.Module):
    """SGN-style attacker backbone → embedding ``[N, 2·width]``.

    Motion stream: time halved by average pooling, two graph convolutions over the joints
    (joint-level reasoning), joints flattened into a frame feature, three residual temporal
    convolutions (frame-level dynamics), global average pool. Body-shape stream: an MLP on bone
    length statistics. The two are fused by a linear layer.
    """

    def __init__(self, width: int = 48, dropout: float = 0.2):
        super().__init__()
        w = width
        # input standardisation with fixed training-set statistics (see set_input_stats)
        self.register_buffer("motion_mean", torch.zeros(MOTION_CHANNELS, 1, skeleton.NUM_JOINTS))
        self.register_buffer("motion_std", torch.ones(MOTION_CHANNELS, 1, skeleton.NUM_JOINTS))
        self.register_buffer("static_mean", torch.zeros(STATIC_FEATURES))
        self.register_buffer("static_std", torch.ones(STATIC_FEATURES))
        self.graph = nn.Sequential(GraphBlock(MOTION_CHANNELS, w // 2), GraphBlock(w // 2, w))
        self.frame = nn.Sequential(nn.Conv1d(w * skeleton.NUM_JOINTS, 4 * w, 1),
                                   nn.BatchNorm1d(4 * w), nn.ReLU())
        self.temporal = nn.Sequential(TemporalBlock(4 * w), TemporalBlock(4 * w, stride=2),
                                      TemporalBlock(4 * w))
        self.shape = nn.Sequential(nn.Linear(STATIC_FEATURES, 2 * w), nn.ReLU(),
                                   nn.Linear(2 * w, 2 * w), nn.ReLU())
        self.fuse = nn.Sequential(nn.Dropout(dropout), nn.Linear(6 * w, 2 * w), nn.ReLU())
        self.dim = 2 * w

    @torch.no_grad()
    def set_input_stats(self, motion: torch.Tensor, static: torch.Tensor) -> None:
        """Standardise inputs with the mean and std of the training features (per channel and
        joint; per static feature). Constant features (e.g. a dummy's bone lengths) map to 0."""
        self.motion_mean.copy_(motion.mean(dim=(0, 2)).unsqueeze(1))
        self.motion_std.copy_(motion.std(dim=(0, 2)).unsqueeze(1).clamp_min(1e-4))
        self.static_mean.copy_(static.mean(0))
        self.static_std.copy_(static.std(0).clamp_min(1e-4))

    def forward(self, motion: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        n, c, t, v = motion.shape
        motion = (motion - self.motion_mean) / self.motion_std
        static = (static - self.static_mean) / self.static_std
        if t >= 4:
            motion = F.avg_pool2d(motion, (2, 1), ceil_mode=True)
            t = motion.shape[2]
        m = self.graph(motion)  # [N, w, T, V]
        m = self.frame(m.permute(0, 1, 3, 2).reshape(n, -1, t))   # [N, 4w, T]
        m = self.temporal(m).mean(-1)
        return self.fuse(torch.cat([m, self.shape(static)], dim=-1))


#: Attacker backbones by name: the SGN-style network and the temporal transformer
#: (:mod:`streamtmr.eval.attackers_temporal`).
ARCHITECTURES = ("sgn", "transformer")


def backbone(cfg) -> nn.Module:
    """The backbone ``cfg.arch`` names, of ``cfg.width`` and ``cfg.dropout``."""
    from streamtmr.eval.attackers_temporal import TemporalTransformerNet

    nets = dict(zip(ARCHITECTURES, (SkeletonNet, TemporalTransformerNet), strict=True))
    if cfg.arch not in nets:
        raise ValueError(f"attacker arch {cfg.arch!r}: choose from {', '.join(ARCHITECTURES)}")
    return nets[cfg.arch](cfg.width, cfg.dropout)


def _batches(n: int, batch: int, gen: torch.Generator | None):
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for i in range(0, n, batch):
        idx = order[i : i + batch]
        if gen is not None and len(idx) < 2:  # BatchNorm needs two samples in training
            continue
        yield idx


def _schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))


class _Features:
    """Precomputed features of a window set, on a device."""

    def __init__(self, x, device: str):
        motion, static = window_features(x)
        self.motion, self.static = motion.to(device), static.to(device)

    def __len__(self) -> int:
        return len(self.motion)

    def __getitem__(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        return self.motion[idx], self.static[idx]


# --------------------------------------------------------------------------------------------
# Classifier (re-ID, attributes, action)
# --------------------------------------------------------------------------------------------


class SkeletonClassifier:
    """Multi-head window classifier. ``fit(x, {"subject": labels})`` or several heads at once
    (e.g. ``{"sex": ..., "age_group": ...}``). Labels may be any hashable values."""

    def __init__(self, config: AttackerTraining | None = None):
        self.config = config or AttackerTraining()
        self.net: SkeletonNet | None = None
        self.heads: nn.ModuleDict | None = None
        self.classes: dict[str, np.ndarray] = {}

    def fit(self, x: np.ndarray, labels: Mapping[str, np.ndarray]) -> SkeletonClassifier:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        feats = _Features(x, cfg.device)
        targets = {}
        for name, y in labels.items():
            y = np.asarray(y)
            if len(y) != len(feats):
                raise ValueError(f"head {name!r}: {len(y)} labels for {len(feats)} windows")
            self.classes[name], inv = np.unique(y, return_inverse=True)
            targets[name] = torch.as_tensor(inv, dtype=torch.long, device=cfg.device)
        self.net = backbone(cfg).to(cfg.device)
        self.net.set_input_stats(feats.motion, feats.static)
        self.heads = nn.ModuleDict({n: nn.Linear(self.net.dim, len(c))
                                    for n, c in self.classes.items()}).to(cfg.device)
        params = list(self.net.parameters()) + list(self.heads.parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * math.ceil(len(feats) / cfg.batch)
        sched = _schedule(opt, steps)
        gen = torch.Generator().manual_seed(cfg.seed)
        self.net.train()
        self.heads.train()
        for _ in range(cfg.epochs):
            for idx in _batches(len(feats), cfg.batch, gen):
                idx = idx.to(cfg.device)
                z = self.net(*feats[idx])
                loss = sum(F.cross_entropy(self.heads[n](z), t[idx],
                                           label_smoothing=cfg.label_smoothing)
                           for n, t in targets.items())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        self.net.eval()
        self.heads.eval()
        return self

    @torch.no_grad()
    def embed(self, x: np.ndarray) -> np.ndarray:
        """Penultimate features ``[N, 2·width]``."""
        if self.net is None:
            raise RuntimeError("classifier is not trained")
        feats = _Features(x, self.config.device)
        out = [self.net(*feats[idx]) for idx in _batches(len(feats), 256, None)]
        return torch.cat(out).cpu().numpy()

    @torch.no_grad()
    def scores(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Softmax scores per head ``[N, n_classes]`` (columns follow ``classes[head]``)."""
        z = torch.as_tensor(self.embed(x), device=self.config.device)
        return {n: F.softmax(h(z), -1).cpu().numpy() for n, h in self.heads.items()}

    def evaluate(self, x: np.ndarray, labels: Mapping[str, np.ndarray]) -> dict[str, dict]:
        """Per head: top-1, top-5 and balanced accuracy. Labels unseen in training count wrong."""
        out = {}
        scores = self.scores(x)
        for name, y in labels.items():
            classes = self.classes[name]
            y = np.asarray(y)
            lookup = {c: i for i, c in enumerate(classes.tolist())}
            idx = np.array([lookup.get(v, -1) for v in y.tolist()])
            s = scores[name]
            pred = classes[s.argmax(1)]
            out[name] = {"top1": metrics.topk_accuracy(s, idx, 1),
                         "top5": metrics.topk_accuracy(s, idx, 5),
                         "balanced_accuracy": metrics.balanced_accuracy(pred, y),
                         "n": int(len(y))}
        return out


# --------------------------------------------------------------------------------------------
# Linkage (Siamese verification)
# --------------------------------------------------------------------------------------------


def make_pairs(groups: np.ndarray, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced pairs of window indices: half from the same group, half from different groups.

    Returns ``(pairs [n, 2], same [n] bool)``. Same-group pairs never pair a window with itself.
    """
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    by = {g: np.flatnonzero(groups == g) for g in np.unique(groups)}
    multi = [g for g, idx in by.items() if len(idx) >= 2]
    if not multi or len(by) < 2:
        raise ValueError("pairs need two groups and a group with two windows")
    pairs, same = [], []
    for k in range(n_pairs):
        if k % 2 == 0:
            g = multi[rng.integers(len(multi))]
            i, j = rng.choice(by[g], 2, replace=False)
            same.append(True)
        else:
            i = rng.integers(len(groups))
            others = np.flatnonzero(groups != groups[i])
            j = others[rng.integers(len(others))]
            same.append(False)
        pairs.append((i, j))
    return np.asarray(pairs, np.int64), np.asarray(same, bool)


class PairHead(nn.Module):
    """Same-person logit from two embeddings (symmetric in its inputs)."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([(a - b).abs(), a * b], -1)).squeeze(-1)


#: Predicted-"same" fractions outside [DEGENERATE_FRACTION, 1 - DEGENERATE_FRACTION] (on
#: balanced pairs) flag a degenerate linkage attacker.
DEGENERATE_FRACTION = 0.02


def linkage_report(scores: np.ndarray, same: np.ndarray, threshold: float = 0.5) -> dict:
    """ROC AUC, EER, fraction predicted "same", balanced accuracy and a degeneracy flag.

    An attacker is *degenerate* when it (almost) always answers the same way or its scores are
    constant: its AUC near 0.5 then says nothing about privacy, only that the attacker failed.
    """
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    pred = scores >= threshold
    frac = float(pred.mean())
    degenerate = bool(frac < DEGENERATE_FRACTION or frac > 1 - DEGENERATE_FRACTION
                      or scores.std() < 1e-6)
    return {"auc": metrics.roc_auc(scores, same), "eer": metrics.equal_error_rate(scores, same),
            "frac_pred_same": frac, "balanced_accuracy": metrics.balanced_accuracy(pred, same),
            "degenerate": degenerate, "n_pairs": int(len(same))}


class LinkageAttacker:
    """Siamese verifier trained on balanced same/different-subject pairs of windows."""

    def __init__(self, config: AttackerTraining | None = None, pairs_per_epoch: int | None = None):
        self.config = config or AttackerTraining()
        self.pairs_per_epoch = pairs_per_epoch
        self.net: SkeletonNet | None = None
        self.head: PairHead | None = None

    def fit(self, x: np.ndarray, subjects: np.ndarray) -> LinkageAttacker:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        feats = _Features(x, cfg.device)
        subjects = np.asarray(subjects)
        self.net = SkeletonNet(cfg.width, cfg.dropout).to(cfg.device)
        self.net.set_input_stats(feats.motion, feats.static)
        self.head = PairHead(self.net.dim).to(cfg.device)
        params = list(self.net.parameters()) + list(self.head.parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        n_pairs = self.pairs_per_epoch or len(feats)
        steps = cfg.epochs * math.ceil(n_pairs / cfg.batch)
        sched = _schedule(opt, steps)
        self.net.train()
        self.head.train()
        for epoch in range(cfg.epochs):
            pairs, same = make_pairs(subjects, n_pairs, seed=cfg.seed * 1000 + epoch)
            pairs_t = torch.as_tensor(pairs, device=cfg.device)
            same_t = torch.as_tensor(same, dtype=torch.float32, device=cfg.device)
            for idx in _batches(n_pairs, cfg.batch, torch.Generator().manual_seed(epoch)):
                p = pairs_t[idx.to(cfg.device)]
                z = self.net(*feats[torch.cat([p[:, 0], p[:, 1]])])
                a, b = z.split(len(p))
                loss = F.binary_cross_entropy_with_logits(self.head(a, b), same_t[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        self.net.eval()
        self.head.eval()
        return self

    @torch.no_grad()
    def score(self, x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """Probability "same person" for index pairs ``[n, 2]`` into ``x``."""
        if self.net is None:
            raise RuntimeError("linkage attacker is not trained")
        feats = _Features(x, self.config.device)
        z = torch.cat([self.net(*feats[i]) for i in _batches(len(feats), 256, None)])
        p = torch.as_tensor(pairs, device=z.device)
        return torch.sigmoid(self.head(z[p[:, 0]], z[p[:, 1]])).cpu().numpy()

    def evaluate(self, x: np.ndarray, subjects: np.ndarray, n_pairs: int = 2000,
                 seed: int = 12345) -> dict:
        pairs, same = make_pairs(subjects, n_pairs, seed)
        return linkage_report(self.score(x, pairs), same)


# --------------------------------------------------------------------------------------------
# Probes on frozen embeddings
# --------------------------------------------------------------------------------------------


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, kind: str = "linear", epochs: int = 300,
                   seed: int = 0) -> float:
    """Top-1 accuracy of a linear or one-hidden-layer MLP probe trained on frozen embeddings
    ``[N, D]`` (standardised with the training statistics; full-batch Adam)."""
    if kind not in ("linear", "mlp"):
        raise ValueError(f"probe kind must be 'linear' or 'mlp', got {kind!r}")
    torch.manual_seed(seed)
    classes, y = np.unique(np.asarray(train_y), return_inverse=True)
    xtr = torch.as_tensor(np.asarray(train_x, np.float32))
    xte = torch.as_tensor(np.asarray(test_x, np.float32))
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    d, k = xtr.shape[1], len(classes)
    net = (nn.Linear(d, k) if kind == "linear" else
           nn.Sequential(nn.Linear(d, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, k)))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2 if kind == "linear" else 3e-3,
                           weight_decay=1e-4)
    yt = torch.as_tensor(y)
    net.train()
    for _ in range(epochs):
        loss = F.cross_entropy(net(xtr), yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = classes[net(xte).argmax(-1).numpy()]
    return float((pred == np.asarray(test_y)).mean())
