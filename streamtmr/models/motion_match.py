"""Motion matching: every output pose is taken (and blended) from the dummy's own motion.

A privacy-by-construction rival of the learned retargeting models, after game animation's
motion matching (Clavet 2016; Holden et al. 2020, "Learned Motion Matching"). The database is
the dummy's *neutral* SynthKinect performances (the store's ``target`` array: every style trait
of the performer removed, the dummy's bone lengths), plus the dummy rendered performing motions
the store's classes lack (``interactions``: carrying, pushing, pulling). At every frame a
causal feature vector of the input — root-relative, heading-aligned, body-size-normalised
positions of key joints, their velocities and the past root velocity — is compared with the
database's; every
``search_every`` frames (and whenever the playing clip ends) the nearest database frame is
looked up by brute force, and the anonymizer jumps there when it is cheaper than continuing the
current clip by ``margin``. Otherwise the current clip keeps playing at 30 Hz. A jump is
cross-faded over ``blend_frames`` frames (normalised lerp of bone directions; the old clip keeps
playing underneath), and forward kinematics with the target's bone lengths keeps every bone
exact.

What passes from the source to the output: the horizontal root position (where the person is
in the room), the facing direction about the vertical, the floor height, and the *choice and
timing* of database frames. No joint position or bone direction of the source reaches the
output; blend-free frames are exactly database poses. With ``root_motion: in_place`` the root
path and the facing are held at where each track was first seen, and only the choice and timing
of database frames (and the floor height) follow the person; with ``root_motion: leash`` the
avatar moves by the database's own steps and turns, and the body's root and facing only pull
it back when it strays past ``leash_m`` / ``leash_deg``.

The model is stateful and causal: :meth:`MotionMatching.init_state` / :meth:`MotionMatching.step`
follow the engines' streaming contract (:class:`engines.base.Engine`: one state per body),
and :meth:`retarget` over a window is stepping from a fresh state. The database lives in
registered buffers, so a built database is an ordinary streamtmr checkpoint
(``save_checkpoint`` / ``load_checkpoint``).

Build: :func:`build_database` from a SynthKinect store (``configs/motion_match.yaml``)::

    python -m streamtmr.models.motion_match --config configs/motion_match.yaml \\
        --data data/synthkinect --out runs/motion_match/model.safetensors

or :func:`build_rendered` from a recipe (``configs/matcher.yaml``, the shipped ``matcher``'s
stage): the dummy rendered performing every motion, no store read. A rendered database is part
of the model's definition: the config holds the recipe and a fingerprint, the database is
rendered again whenever the model is built, and the checkpoint stores none of it::

    python -m streamtmr.models.motion_match --config configs/matcher.yaml \\
        --out runs/matcher/stage.safetensors
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from streamtmr import skeleton
from streamtmr.cache import cached_tensors
from streamtmr.data.store import SkeletonStore
from streamtmr.data.windows import pad_to
from streamtmr.dummy import default_dummy
from streamtmr.models import box_tree
from streamtmr.models.action_prior import PRIOR_DEFAULTS, ActionPrior, class_codes
from streamtmr.models.base import Anonymizer
from streamtmr.models.neutral_query import QUERY_DEFAULTS, NeutralQuery
from streamtmr.models.registry import register

log = logging.getLogger(__name__)

#: Joints whose root-relative positions and velocities form the matching features.
KEY_JOINTS: tuple[str, ...] = ("Head", "HandLeft", "HandRight", "FootLeft", "FootRight",
                               "ElbowLeft", "ElbowRight", "KneeLeft", "KneeRight")
FPS = 30.0
#: State entries of the matcher (besides the feature state): database frame playing, frame
#: faded out, frames since the last jump, frames since the last search, the published facing
#: angle (radians, see ``heading_deadband``).
MATCH_STATE = ("cur", "old", "blend", "since_search", "facing")

DEFAULTS: dict[str, Any] = {
    "window": 64,            # window the evaluation hands over (any length works)
    "frames": 0,             # database size N (set by build_database; buffers are [N, ...])
    "search_frames": 0,      # the first S frames are searched (set by the build; 0: all N)
    "search_every": 5,       # frames between searches while a clip plays
    "margin": 0.1,           # a jump must beat continuing by this much (standardised cost)
    "blend_frames": 6,       # cross-fade length after a jump
    "heading_alpha": 0.4,    # EMA weight of the newest facing direction
    "velocity_alpha": 0.5,   # EMA weight of the newest joint / root velocity
    "floor_alpha": 0.1,      # EMA weight of the newest lowest-foot height (floor = running min)
    "weights": {"position": 1.0, "velocity": 0.5, "root_velocity": 1.0},
    "key_joints": list(KEY_JOINTS),
    # Share β of the track's own running mean posture taken out of the position features
    # before matching (0: off). The mean carries the person's posture habits (lean, arm carry,
    # stance width), which would otherwise choose the database frames that share them.
    "posture_reference": 0.0,
    # Near-tie jitter δ (0: off): every search adds δ·u to each database frame's cost, u a
    # deterministic hash of (frame index, track time) in [0, 1), so that among frames within
    # δ of the best the choice stops following small differences of the person's style.
    "tie_jitter": 0.0,
    # Frames per leaf of the search's box tree (streamtmr.models.box_tree; 0: brute force).
    # The tree finds the same frame as brute force while reading a few percent of the
    # database; it is rebuilt from the database whenever the model is built or loaded.
    "search_leaf": box_tree.DEFAULT_LEAF,
    # Leaves read per search (0: as many as may hold the best frame, exact). With k > 0 every
    # search reads the k leaves with the nearest representatives and nothing more, so its cost
    # no longer grows for queries far from the database (real people's); it returns the best
    # frame of those leaves, the exact one or one of nearly its cost
    # (box_tree.capped_nearest; bench/capped_search.py measures the difference).
    "search_leaves": 0,
    # Search only every k-th landing frame of each clip (1: all). By brute force the search
    # is one matrix product over the searched frames, so k divides its cost; a jump lands at
    # most k − 1 frames from the best frame of its clip (unlike the tree, this changes the
    # output). The database is ordered searched frames first.
    "search_stride": 1,
    # Dead band of the published facing, in degrees (0: off). The output's facing is held
    # until the body's smoothed facing leaves ± this band, then dragged along at the band's
    # edge (a backlash), as VR body solvers turn the torso only once the head has turned past
    # a threshold. Real turns still follow, within the band; the small turns of the hips that
    # are a person's own (gait sway, weight shifts) stop reaching the output. Only the
    # published rotation changes: features and database are the same.
    "heading_deadband": 0.0,
    # Root motion, as game engines name it: "full" publishes where the body is in the room and
    # which way it faces (the root path, the smoothed facing); "in_place" holds both at where
    # the track was first seen (the track's first root and facing), for applications that
    # place the avatar themselves (a seat, a panel, their own locomotion); "leash" moves and
    # turns the avatar by the database's own root motion (the dummy's neutral steps and turns
    # of the frames it plays) and pulls it along only when it strays more than ``leash_m``
    # metres from the body's root or ``leash_deg`` degrees from its smoothed facing, as games
    # keep an animation-driven character near its simulated controller. The pose still comes
    # from the database, matched on the moving body's features (which read the path's
    # velocity); only the published root and facing change.
    "root_motion": "full",
    "leash_m": 0.5,
    "leash_deg": 30.0,
    # A causal recognizer of the input's kind of motion whose class posterior joins the query
    # (streamtmr.models.action_prior; None: off). Its settings: action_prior.PRIOR_DEFAULTS.
    "action_prior": None,
    # A neutral query (streamtmr.models.neutral_query; None: off): a causal regressor turns the
    # query into the query of the dummy's own-tempo neutral performance of the same motion, and
    # the matcher searches with that. Its settings: neutral_query.QUERY_DEFAULTS.
    "neutral_query": None,
}
ROOT_MOTIONS = ("full", "in_place", "leash")

def _joints(cfg: dict[str, Any]) -> list[int]:
    names = cfg.get("key_joints") or KEY_JOINTS
    unknown = [n for n in names if n not in skeleton.JOINT]
    if unknown:
        raise ValueError(f"motion_match key_joints: unknown joints {unknown}")
    return [skeleton.JOINT[n] for n in names]


def groups(cfg: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    """Feature groups in vector order: (name, size)."""
    k = len(_joints(cfg))
    return (("position", 3 * k), ("velocity", 3 * k), ("root_velocity", 3))


def _fstate(batch: int, k: int, device=None) -> dict[str, torch.Tensor]:
    z = torch.zeros
    return {"t": z(batch, device=device),
            "heading": z(batch, 2, device=device), "scale": z(batch, device=device),
            "foot_ema": z(batch, device=device), "floor": z(batch, device=device),
            "prev_rel": z(batch, k, 3, device=device), "prev_root": z(batch, 3, device=device),
            "vel": z(batch, k, 3, device=device), "root_vel": z(batch, 3, device=device),
            "pos_mean": z(batch, k, 3, device=device)}


def _ema(old: torch.Tensor, new: torch.Tensor, alpha: float, first: torch.Tensor):
    """``alpha·new + (1−alpha)·old``, or ``new`` where ``first`` (a fresh track)."""
    mixed = alpha * new + (1.0 - alpha) * old
    return torch.where(first.view(-1, *[1] * (new.dim() - 1)), new, mixed)


def feature_step(frame: torch.Tensor, fs: dict[str, torch.Tensor], cfg: dict[str, Any]
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Causal matching features of one frame ``[B, 25, 3]``.

    Returns ``(features [B, F], rotation [B, 3, 3] to the smoothed heading frame, new state)``.
    The same function featurises the database clips and the live input, so both sides match.
    """
    first = fs["t"] < 0.5
    angle = skeleton.facing_angle(frame)
    heading = _ema(fs["heading"], torch.stack([torch.cos(angle), torch.sin(angle)], -1),
                   cfg["heading_alpha"], first)
    rot = skeleton.rotation_y(torch.atan2(heading[:, 1], heading[:, 0]))
    n = fs["t"] + 1.0
    height = skeleton.standing_height(skeleton.bone_lengths(frame))
    scale = fs["scale"] + (height - fs["scale"]) / n           # running mean body size
    root = frame[:, skeleton.ROOT]
    rel = frame[:, _joints(cfg)] - root[:, None]
    zero = torch.zeros_like(rel)
    vel = _ema(fs["vel"], torch.where(first[:, None, None], zero, rel - fs["prev_rel"]) * FPS,
               cfg["velocity_alpha"], first)
    rvel = _ema(fs["root_vel"], torch.where(first[:, None], zero[:, 0], root - fs["prev_root"])
                * FPS, cfg["velocity_alpha"], first)
    foot = frame[:, list(skeleton.FEET), 1].amin(-1)
    foot_ema = _ema(fs["foot_ema"], foot, cfg["floor_alpha"], first)
    floor = torch.where(first, foot_ema, torch.minimum(fs["floor"], foot_ema))
    s = scale.clamp_min(0.5)[:, None, None]
    pos = torch.matmul(rel, rot.transpose(-1, -2)) / s
    pos_mean = fs["pos_mean"] + (pos - fs["pos_mean"]) / n[:, None, None]  # the track's mean
    canon = torch.cat([pos - float(cfg.get("posture_reference", 0.0)) * pos_mean,
                       torch.matmul(vel, rot.transpose(-1, -2)) / s,
                       torch.matmul(rvel[:, None], rot.transpose(-1, -2)) / s], 1)
    new = {"t": fs["t"] + 1, "heading": heading, "scale": scale, "foot_ema": foot_ema,
           "floor": floor, "prev_rel": rel, "prev_root": root, "vel": vel, "root_vel": rvel,
           "pos_mean": pos_mean}
    return canon.flatten(1), rot, new


def held_facing(angle: torch.Tensor, held: torch.Tensor, band: float, first: torch.Tensor
                ) -> torch.Tensor:
    """The published facing ``[B]`` (radians): ``held`` while ``angle`` stays within ± ``band``
    of it, else ``angle`` ∓ ``band`` (dragged at the band's edge); ``angle`` on a fresh track."""
    d = angle - held
    d = torch.atan2(torch.sin(d), torch.cos(d))             # wrapped to (−π, π]
    return torch.where(first, angle, angle - d.clamp(-band, band))


def _nlerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Normalised lerp of unit bone directions ``[B, 25, 3]`` with weights ``w [B]``."""
    w = w[:, None, None]
    mix = (1.0 - w) * a + w * b
    return mix / mix.norm(dim=-1, keepdim=True).clamp_min(skeleton.EPS)


def tree_search(query: torch.Tensor, need: torch.Tensor, t: torch.Tensor,
                tree: dict[str, torch.Tensor], leaves: int, jitter: float, gate: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The best landing frame and its cost ``|q − f|² [B]`` of each body in ``need`` by the box
    tree (``leaves`` > 0: :func:`box_tree.capped_nearest`, else the exact
    :func:`box_tree.nearest`); frame 0 and +inf for the others. The track time ``t [B]`` seeds
    the near-tie ``jitter`` (read only if > 0).

    ``gate``: only the bodies in ``need`` are searched, and nothing when none is (a branch on
    the host). Without it (CUDA) every body is searched and the others are masked: fixed shapes
    and no synchronisation, so that a CUDA graph captures the step (the capped search; the
    exact one prunes to a data-dependent size). The same frames either way.

    Costs are kept on a 1e-3 grid, first index on ties: frames of a hold are near-equal, and two
    back ends (PyTorch, ONNX Runtime) must not pick different ones from float noise.
    TorchScript-compatible (the traced step scripts it, :func:`_traceable`)."""
    best = torch.zeros_like(query[:, 0], dtype=torch.int64)
    cost = torch.full_like(query[:, 0], float("inf"))
    if not gate:
        frame, score = _tree_frames(query, _tie_key(t, jitter), tree, leaves, jitter)
        return torch.where(need, frame, best), torch.where(need, score, cost)
    if bool(need.any()):
        rows = need.nonzero().squeeze(1)
        frame, score = _tree_frames(query[rows], _tie_key(t, jitter, rows), tree, leaves, jitter)
        best = best.index_copy(0, rows, frame)
        cost = cost.index_copy(0, rows, score)
    return best, cost


def _tie_key(t: torch.Tensor, jitter: float, rows: torch.Tensor | None = None
             ) -> torch.Tensor | None:
    """The near-tie noise's key of each searched body (its track time ``t``, at ``rows``), or
    None without jitter: nothing is read or cast then."""
    if jitter <= 0:
        return None
    if rows is not None:
        t = t[rows]
    return t.long()


def _tree_frames(q: torch.Tensor, key: torch.Tensor | None, tree: dict[str, torch.Tensor],
                 leaves: int, jitter: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`tree_search` of every query ``q [P, F]`` (``key``: :func:`_tie_key`):
    ``(frame [P], |q − f|² [P])``."""
    if leaves > 0:
        frame, score = box_tree.capped_nearest(q, tree, 1e3, leaves, jitter, key)
    else:
        frame, score = box_tree.nearest(q, tree, 1e3, jitter, key)
    return frame, score + (q**2).sum(1)


def brute_search(query: torch.Tensor, need: torch.Tensor, t: torch.Tensor,
                 features: torch.Tensor, landing: torch.Tensor, jitter: float, gate: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`tree_search` by brute force: ``|q − f|² = |q|² + (|f|² − 2 q·f)`` against every
    frame of ``features [S, F]``; ``landing [S]`` holds ``|f|²``, +inf where a jump may not
    land (the last frames of a clip, which would end before the next search)."""
    best = torch.zeros_like(query[:, 0], dtype=torch.int64)
    cost = torch.full_like(query[:, 0], float("inf"))
    if not gate:
        frame, score = _brute_frames(query, _tie_key(t, jitter), features, landing, jitter)
        return torch.where(need, frame, best), torch.where(need, score, cost)
    if bool(need.any()):
        rows = need.nonzero().squeeze(1)
        frame, score = _brute_frames(query[rows], _tie_key(t, jitter, rows), features, landing,
                                     jitter)
        best = best.index_copy(0, rows, frame)
        cost = cost.index_copy(0, rows, score)
    return best, cost


def _brute_frames(q: torch.Tensor, key: torch.Tensor | None, features: torch.Tensor,
                  landing: torch.Tensor, jitter: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`brute_search` of every query ``q [P, F]`` (``key``: :func:`_tie_key`):
    ``(frame [P], |q − f|² [P])``."""
    score = torch.addmm(landing[None], q, features.T, alpha=-2.0)
    score = torch.round(score * 1e3) / 1e3
    if key is not None:
        n = torch.arange(score.shape[1], device=score.device)
        frame = (score + box_tree.tie_noise(n[None], key[:, None], jitter)).argmin(1)
        score = score.gather(1, frame[:, None]).squeeze(1)
    else:
        score, frame = score.min(1)
    return frame, score + (q**2).sum(1)


@functools.cache
def _scripted(fn):
    return torch.jit.script(fn)


def _traceable(fn):
    """``fn`` itself, or compiled by TorchScript while a step is traced (ONNX export): its
    data-dependent branch then survives the trace as an ONNX ``If``."""
    return _scripted(fn) if torch.jit.is_tracing() else fn


@register
class MotionMatching(Anonymizer):
    """Causal motion matching over a database of the dummy's neutral motion (module docstring).

    Buffers (the database, ``N = config["frames"]``): ``features [N, F]`` (standardised and
    weighted), ``feat_mean``/``feat_scale [F]`` (the standardisation applied to queries),
    ``directions [N, 25, 3]`` (unit bone directions in the heading frame), ``height [N]`` (root
    height above the clip's floor), ``next [N]`` (index of the next frame of the same clip,
    −1 at a clip's end).
    """

    method = "motion_match"
    #: "learned" in the registry's sense: running it needs a checkpoint (the database, built by
    #: :func:`build_database`, not trained; ``trainer`` is None). "streaming": the engines step
    #: it frame by frame with a per-body float32 state (:class:`MotionMatchingDummy`).
    traits = frozenset({"learned", "streaming"})
    trainer = None
    #: tiny: a database rendered on the fly (3 actions of the neutral dummy, for tests). A
    #: full database is rendered from a recipe (:func:`build_rendered`, the shipped ``matcher``)
    #: or read from a SynthKinect store (:func:`build_database`, a checkpoint).
    presets = {"tiny": {"window": 16, "render": {"actions": ["wave", "squat", "walk_towards"],
                                                 "seed": 0}}}

    def __init__(self, config: dict[str, Any] | None = None):
        cfg = {**DEFAULTS, **(config or {}), "method": self.method}
        cfg["weights"] = {**DEFAULTS["weights"], **cfg.get("weights", {})}
        if cfg["root_motion"] not in ROOT_MOTIONS:
            raise ValueError(f"motion_match: root_motion {cfg['root_motion']!r} is not one of "
                             f"{list(ROOT_MOTIONS)}")
        if not (float(cfg["leash_m"]) > 0 and 0 < float(cfg["leash_deg"]) <= 180):
            raise ValueError(f"motion_match: leash_m must be > 0 and leash_deg in (0, 180], got "
                             f"{cfg['leash_m']!r} and {cfg['leash_deg']!r}")
        leaf = cfg["search_leaf"]
        if isinstance(leaf, bool) or not isinstance(leaf, int) or leaf < 0:
            raise ValueError(f"motion_match: search_leaf must be an integer >= 0 (frames per "
                             f"leaf of the search tree; 0: brute force), got {leaf!r}")
        cap = cfg["search_leaves"]
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ValueError(f"motion_match: search_leaves must be an integer >= 0 (leaves read "
                             f"per search; 0: exact), got {cap!r}")
        if cap > 0 and leaf == 0:
            raise ValueError("motion_match: search_leaves reads leaves of the search tree; "
                             "it needs search_leaf > 0 (search_leaf 0 searches by brute force)")
        cfg.setdefault("dummy_lengths", [float(v) for v in default_dummy().lengths])
        if cfg.get("action_prior"):
            cfg["action_prior"] = {**PRIOR_DEFAULTS, **cfg["action_prior"]}
            if not cfg["action_prior"]["classes"]:
                raise ValueError("motion_match: action_prior.classes must name the actions "
                                 "the prior tells apart")
        if cfg.get("neutral_query"):
            cfg["neutral_query"] = {**QUERY_DEFAULTS, **cfg["neutral_query"]}
        db = None
        # A rendered database is part of the model's definition: rendered again from its recipe
        # whenever the model is built (a few seconds for 2,000 clips), checked against what was
        # recorded when it was first built, and never stored in a checkpoint.
        rendered = bool(cfg.get("render"))
        if rendered:
            db = rendered_database(cfg)
            cfg["frames"] = len(db["features"])
            cfg["search_frames"] = int(db.pop("search_frames"))
            cfg["database_check"] = check_rendered(db, cfg.get("database_check"))
        super().__init__(cfg)
        n, f = int(cfg["frames"]), sum(size for _, size in groups(cfg))
        self.k = len(_joints(cfg))
        prior = cfg.get("action_prior")
        self.prior = (ActionPrior(f, len(prior["classes"]), int(prior["hidden"]))
                      if prior else None)
        codes = len(prior["classes"]) if prior else 0   # the database's class code columns
        neutral = cfg.get("neutral_query")
        self.neutral = NeutralQuery(f, int(neutral["hidden"])) if neutral else None

        def buffer(name: str, value: torch.Tensor) -> None:
            self.register_buffer(name, value, persistent=not rendered)

        buffer("features", torch.zeros(n, f + codes))
        buffer("feat_mean", torch.zeros(f))
        buffer("feat_scale", torch.ones(f))
        buffer("directions", torch.zeros(n, skeleton.NUM_JOINTS, 3))
        buffer("height", torch.zeros(n))
        buffer("next", torch.full((n,), -1, dtype=torch.int64))
        buffer("landing", torch.zeros(n))
        # the dummy's bone lengths that step() uses by default (from the config: never stored)
        self.register_buffer("dummy_lengths", torch.tensor(cfg["dummy_lengths"],
                                                           dtype=torch.float32), persistent=False)
        if cfg["root_motion"] == "leash":  # the database's root motion (only this mode reads it)
            buffer("root_step", torch.zeros(n, 3))
            buffer("turn", torch.zeros(n))
        self.has_tree = self.features_in_tree = False
        if db is not None:
            self.set_database(db)
        else:  # a stored database arrives by load_state_dict
            self.register_load_state_dict_post_hook(lambda module, _keys: module.build_tree())

    def set_database(self, db: dict[str, torch.Tensor]) -> None:
        """Copy a :func:`database` into the buffers (sizes must match ``config["frames"]``);
        the root motion only where this mode has buffers for it. Its search tree is built,
        unless ``db`` brings it (``tree_*``, as :func:`search_tree` made it from this
        database)."""
        tree = {k[len("tree_"):]: v for k, v in db.items() if k.startswith("tree_")}
        for name, value in db.items():
            if name.startswith("tree_") or (name in ("root_step", "turn")
                                            and name not in self._buffers):
                continue  # the tree: below; the database's root motion: only "leash" keeps it
            getattr(self, name).copy_(value)
        self.build_tree(tree or None)

    @torch.no_grad()
    def build_tree(self, tree: dict[str, torch.Tensor] | None = None) -> None:
        """(Re)build the search's box tree from the database buffers (non-persistent buffers
        ``tree_*``: derived data, never in a checkpoint), or take ``tree``, made from them by
        :func:`search_tree`; ``search_leaf: 0`` searches by brute force instead."""
        leaf = int(self.config["search_leaf"])
        s = int(self.config.get("search_frames") or len(self.features))
        self.has_tree = has_search_tree(self.landing, s, leaf)
        # Where every landing frame is in the tree, the cost of continuing a clip reads the
        # tree's copy of the features too, and the step graph holds one copy, not two.
        self.features_in_tree = self.has_tree and not bool(torch.isfinite(self.landing[s:]).any())
        if self.has_tree:
            if tree is None:
                tree = search_tree(self.features, self.landing, s, leaf)
            for name in (*box_tree.TREE_KEYS, "slot"):
                self.register_buffer("tree_" + name, tree[name].to(self.features.device),
                                     persistent=False)

    def _frame_features(self, idx: torch.Tensor) -> torch.Tensor:
        """The features of database frames ``idx [B]``: from the search tree's copy where it
        holds every landing frame (any other frame's cost is +inf where it is read)."""
        if not self.features_in_tree:
            return self.features[idx]
        m = self.tree_leaf_frame.shape[1]
        slot = self.tree_slot[idx].clamp_min(0)
        leaf = self.tree_leaf_feat[slot // m].reshape(-1, m, self.features.shape[1])  # B, M, D
        return leaf.gather(1, (slot % m)[:, None, None].expand(-1, 1, leaf.shape[2]))[:, 0]

    # ---- streaming interface ---------------------------------------------------------------

    def state_spec(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Per-body state: name → (shape, dtype), all float32 (the engines' step contract;
        database indices and counters are exact in float32 below 2**24)."""
        spec = {k: (tuple(v.shape[1:]), torch.float32) for k, v in _fstate(1, self.k).items()}
        for k in MATCH_STATE:
            spec[k] = ((), torch.float32)
        spec["anchor"] = ((3,), torch.float32)
        if self.prior is not None:  # the action prior's LSTM state
            hidden = self.prior.head.in_features
            spec["prior_h"] = spec["prior_c"] = ((hidden,), torch.float32)
        if self.neutral is not None:  # the neutral query's LSTM state
            hidden = self.neutral.lstm.hidden_size
            spec["query_h"] = spec["query_c"] = ((hidden,), torch.float32)
        return spec

    def init_state(self, batch: int) -> dict[str, torch.Tensor]:
        dev = self.features.device
        state = _fstate(batch, self.k, dev)
        for k in MATCH_STATE:
            state[k] = torch.zeros(batch, device=dev)
        state["anchor"] = torch.zeros(batch, 3, device=dev)
        if self.prior is not None:
            hidden = self.prior.head.in_features
            state["prior_h"] = torch.zeros(batch, hidden, device=dev)
            state["prior_c"] = torch.zeros(batch, hidden, device=dev)
        if self.neutral is not None:
            hidden = self.neutral.lstm.hidden_size
            state["query_h"] = torch.zeros(batch, hidden, device=dev)
            state["query_c"] = torch.zeros(batch, hidden, device=dev)
        return state

    def step(self, frame: torch.Tensor, state: dict[str, torch.Tensor],
             target_lengths: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One frame ``[B, 25, 3]`` → the dummy's pose ``[B, 25, 3]`` and the new state.

        ``target_lengths [B, 25]`` or ``[25]`` (default: the store's dummy recorded at build).
        """
        if len(self.features) == 0:
            raise RuntimeError("motion_match: empty database (build it with build_database)")
        if target_lengths is None:
            target_lengths = self.dummy_lengths.to(frame.dtype)
        fs = {k: state[k] for k in _fstate(1, self.k)}
        first = fs["t"] < 0.5
        feat, rot, fs = feature_step(frame, fs, self.config)
        mode = self.config["root_motion"]
        query = (feat - self.feat_mean) * self.feat_scale
        learned = {}  # the learned parts' states
        if self.prior is not None:  # the kind of motion: w·p, to be searched against w·code
            p, h, c = self.prior.step(query, state["prior_h"], state["prior_c"], first)
            code = float(self.config["action_prior"]["weight"]) * p
            learned.update(prior_h=h, prior_c=c)
        if self.neutral is not None:  # search with the own-tempo neutral performance's query
            query, h, c = self.neutral.step(query, state["query_h"], state["query_c"], first)
            learned.update(query_h=h, query_c=c)
        if self.prior is not None:
            query = torch.cat([query, code], 1)
        cur, old, blend, since = self._match(query, state)
        w = ((blend + 1).to(frame.dtype) / (self.config["blend_frames"] + 1)).clamp(max=1.0)
        dirs = _nlerp(self.directions[old], self.directions[cur], w)
        h = (1.0 - w) * self.height[old] + w * self.height[cur]
        body = frame[:, skeleton.ROOT]
        body_facing = torch.atan2(fs["heading"][:, 1], fs["heading"][:, 0])
        if mode == "leash":  # the database's step and turn, kept on a leash to the body
            facing = held_facing(body_facing,
                                 state["facing"] + (1.0 - w) * self.turn[old] + w * self.turn[cur],
                                 math.radians(self.config["leash_deg"]), first)
            rot = skeleton.rotation_y(facing)
            step = (1.0 - w)[:, None] * self.root_step[old] + w[:, None] * self.root_step[cur]
            anchor = skeleton.leashed(state["anchor"] + torch.matmul(step[:, None], rot)[:, 0],
                                      body, float(self.config["leash_m"]), first)
        else:
            # "facing" and "anchor" are computed (and read) in every mode: the exported step
            # graph must read every state input (ONNX prunes an unused one)
            band = math.pi if mode == "in_place" else math.radians(self.config["heading_deadband"])
            facing = held_facing(body_facing, state["facing"], band, first)
            anchor = torch.where(first[:, None], body, state["anchor"])  # the first root
            if self.config["heading_deadband"] > 0 or mode == "in_place":
                rot = skeleton.rotation_y(facing)           # the published facing
        dirs = torch.matmul(dirs, rot)                      # heading frame → camera space
        root = (body if mode == "full" else anchor).clone()
        root[:, 1] = fs["floor"] + h
        out = skeleton.forward_kinematics(root, dirs, target_lengths)
        new = {**fs, "cur": cur.to(frame.dtype), "old": old.to(frame.dtype), "facing": facing,
               "anchor": anchor,
               "blend": (blend + 1).to(frame.dtype), "since_search": (since + 1).to(frame.dtype),
               **learned}
        return out, new

    def _advance(self, idx: torch.Tensor) -> torch.Tensor:
        nxt = self.next[idx]
        return torch.where(nxt >= 0, nxt, idx)

    @property
    def cuda_graph_blocker(self) -> str | None:
        """Why the torch engine cannot capture this step in a CUDA graph (None: it can). On
        CUDA the capped and the brute-force search run for every body, masked (no branch on
        the host); the exact tree search prunes to a data-dependent size."""
        if self.has_tree and int(self.config.get("search_leaves", 0)) <= 0:
            return "the exact tree search reads a data-dependent number of frames"
        return None

    def _search(self, query: torch.Tensor, need: torch.Tensor, t: torch.Tensor):
        """Best landing frame and its cost ``[B]`` for the bodies in ``need`` (others: frame 0,
        +inf), by :func:`tree_search` or, with ``search_leaf: 0``, :func:`brute_search`.

        On the CPU only the bodies in ``need`` are searched, and nothing is when none is (one in
        ``search_every`` calls searches): eagerly a Python branch, in a traced step (ONNX) the
        same function compiled by TorchScript, whose branch exports as an ONNX ``If``. On any
        other device (CUDA) every body is searched and the others masked, so that the step
        captures as a CUDA graph (a branch on the host would stop the capture, and eagerly the
        step costs about 9 ms in launches and synchronisations:
        ``bench/results/step-stream-2026-12-04-h200``).
        """
        jitter = float(self.config.get("tie_jitter", 0.0))
        gate = query.device.type == "cpu"
        if self.has_tree:
            tree = {k: getattr(self, "tree_" + k) for k in box_tree.TREE_KEYS}
            search = _traceable(tree_search)
            return search(query, need, t, tree, int(self.config.get("search_leaves", 0)), jitter,
                          gate=gate)
        s = int(self.config.get("search_frames") or len(self.features))  # searched: first s
        return _traceable(brute_search)(query, need, t, self.features[:s], self.landing[:s],
                                        jitter, gate=gate)

    def _match(self, query: torch.Tensor, state: dict[str, torch.Tensor]):
        """Continue the playing clip or jump to the best database frame (per body).

        Masks and ``torch.where`` over the whole batch, so that the step traces to ONNX.
        """
        fresh = state["t"] < 0.5
        cur0, blend, since = (state[k].long() for k in ("cur", "blend", "since_search"))
        cur_next = self._advance(cur0)
        old = self._advance(state["old"].long())
        ended = self.next[cur0] < 0
        need = fresh | ended | (since >= self.config["search_every"])
        best, best_cost = self._search(query, need, state["t"])
        cont = ((query - self._frame_features(cur_next)) ** 2).sum(1)
        # A clip about to end before the next search (no landing allowed there) must be left
        # now, so that no clip runs out between searches.
        cont = torch.where(ended | torch.isinf(self.landing[cur_next]), torch.inf, cont)
        jump = need & (fresh | ((best_cost + self.config["margin"] < cont) & (best != cur_next)))
        cur = torch.where(jump, best, cur_next)
        old = torch.where(jump, torch.where(fresh, best, cur_next), old)
        full = torch.full_like(blend, int(self.config["blend_frames"]))
        blend = torch.where(jump, torch.where(fresh, full, torch.zeros_like(full)), blend)
        # A fresh state's since_search is the phase of the body's searches (0 on a zero state;
        # the node staggers bodies that start together: ``MotionMatchingDummy.stagger``).
        since = torch.where(need, torch.where(fresh, since, torch.zeros_like(since)), since)
        return cur, old, blend, since

    # ---- window interface ------------------------------------------------------------------

    def retarget(self, source: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
        """Step through ``source [B, T, 25, 3]`` from a fresh state (causal by construction)."""
        state = self.init_state(source.shape[0])
        lengths = target_lengths.expand(source.shape[0], -1)
        out = []
        for t in range(source.shape[1]):
            y, state = self.step(source[:, t], state, lengths)
            out.append(y)
        return torch.stack(out, 1)

    def for_dummy(self, dummy_lengths) -> MotionMatchingDummy:
        return MotionMatchingDummy(self, dummy_lengths)


class MotionMatchingDummy(nn.Module):
    """Motion matching for one fixed dummy: what engines run and export (streaming).

    ``forward(x [B, T, 25, 3])`` (each sequence a track from its first frame) and
    ``step(frame [B, 25, 3], state) -> (out [B, 25, 3], state)`` compute the same function;
    ``init_state(batch)`` is a fresh track, ``state_spec()`` the per-body state shapes.

    ``stagger``: a fresh state's ``since_search`` ``p`` (−2 … 2 for ``search_every`` 5) moves
    the body's searches ``p`` frames earlier (the first frame still searches; the next search
    comes ``search_every − p`` frames later, then every ``search_every``). A zero state is the
    evaluated schedule; with ``stagger_search`` the node gives bodies that start on the same
    frame different phases, so that they do not all search on the same frames
    (:class:`streamtmr.stream.state.StateSlots`).
    """

    streaming = True
    # no fp16 TensorRT plan: the search's scores are kept on a 1e-3 grid and its database frame
    # indices run to hundreds of thousands, neither of which float16 holds (engines/tensorrt_engine)
    fp16_plan = False

    def __init__(self, model: MotionMatching, dummy_lengths):
        super().__init__()
        lengths = torch.as_tensor(np.asarray(dummy_lengths, np.float32)).reshape(-1)
        if lengths.shape != (skeleton.NUM_JOINTS,):
            raise ValueError(f"motion_match: dummy lengths must be [25], got "
                             f"{tuple(lengths.shape)}")
        self.model = model
        self.register_buffer("lengths", lengths.clone())
        self.stagger = ("since_search", int(model.config["search_every"]))

    def state_spec(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return self.model.state_spec()

    def init_state(self, batch: int) -> dict[str, torch.Tensor]:
        return self.model.init_state(batch)

    def step(self, frame: torch.Tensor, state: dict[str, torch.Tensor]):
        return self.model.step(frame, state, self.lengths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.retarget(x, self.lengths[None])


# --------------------------------------------------------------------------------------------
# Database build
# --------------------------------------------------------------------------------------------


def _clip_rows(store: SkeletonStore, subjects: Sequence[int] | None, views: Sequence[int],
               reps: Sequence[int] | None) -> list[int]:
    splits = store.meta.get("splits") or {}
    if subjects is None:
        if "anonymizer_train" not in splits:
            raise ValueError(f"{store.root}: no splits.anonymizer_train; give subjects")
        subjects = splits["anonymizer_train"]
    held_out = set(int(s) for s in splits.get("eval", [])) & set(int(s) for s in subjects)
    if held_out:
        raise ValueError(f"{store.root}: subjects {sorted(held_out)} are evaluation subjects")
    keep = set(int(s) for s in subjects)
    return [i for i, r in enumerate(store.rows)
            if int(r["subject"]) in keep and int(r["view"]) in views
            and (reps is None or int(r["rep"]) in reps)]


def _featurise(clips: list[np.ndarray], cfg: dict[str, Any]):
    """Features, heading-frame bone directions and root heights of every clip frame."""
    lengths = [len(c) for c in clips]
    T = max(lengths)
    x = torch.as_tensor(np.stack([pad_to(c, T) for c in clips]))   # [C, T, 25, 3], end-padded
    fs = _fstate(len(clips), len(_joints(cfg)))
    f_all, d_all, s_all, a_all = [], [], [], []
    root = x[:, :, skeleton.ROOT] * torch.tensor([1.0, 0.0, 1.0])
    for t in range(T):  # every clip stepped from a fresh state, exactly as a live track
        f, rot, fs = feature_step(x[:, t], fs, cfg)
        f_all.append(f)
        d_all.append(torch.matmul(skeleton.bone_directions(x[:, t]), rot.transpose(-1, -2)))
        # the horizontal step into this frame, in its heading frame; the heading angle
        s_all.append(torch.matmul((root[:, t] - root[:, max(t - 1, 0)])[:, None],
                                  rot.transpose(-1, -2))[:, 0])
        a_all.append(torch.atan2(fs["heading"][:, 1], fs["heading"][:, 0]))
    f_all, d_all, s_all = torch.stack(f_all, 1), torch.stack(d_all, 1), torch.stack(s_all, 1)
    a_all = torch.stack(a_all, 1)
    turn = torch.cat([torch.zeros_like(a_all[:, :1]), a_all.diff(dim=1)], 1)
    turn = torch.atan2(torch.sin(turn), torch.cos(turn))           # the turn into this frame
    heights = x[..., skeleton.ROOT, 1] - skeleton.floor_height(x)[:, None]
    feats, dirs, hs, nexts, steps, turns = [], [], [], [], [], []
    offset = 0
    for c, n in enumerate(lengths):
        feats.append(f_all[c, :n])
        dirs.append(d_all[c, :n])
        hs.append(heights[c, :n])
        steps.append(s_all[c, :n])
        turns.append(turn[c, :n])
        nxt = torch.arange(offset + 1, offset + n + 1)
        nxt[-1] = -1
        nexts.append(nxt)
        offset += n
    return (torch.cat(feats), torch.cat(dirs), torch.cat(hs), torch.cat(nexts),
            torch.cat(steps), torch.cat(turns))


def query_features(matcher: MotionMatching, clips: list[np.ndarray]) -> list[torch.Tensor]:
    """The standardised query ``[T_i, F]`` the matcher computes at every frame of each clip
    (each a track from its first frame; without the action prior's columns)."""
    out = []
    for i in range(0, len(clips), 256):
        part = [np.asarray(c, np.float32) for c in clips[i:i + 256]]
        x = torch.as_tensor(np.stack([pad_to(c, max(len(c) for c in part)) for c in part]))
        fs = _fstate(len(part), matcher.k)
        feats = []
        for t in range(x.shape[1]):
            f, _, fs = feature_step(x[:, t], fs, matcher.config)
            feats.append((f - matcher.feat_mean) * matcher.feat_scale)
        f_all = torch.stack(feats, 1)
        out += [f_all[k, :len(c)] for k, c in enumerate(part)]
    return out


def database(clips: list[np.ndarray], cfg: dict[str, Any],
             actions: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The buffers of a :class:`MotionMatching` model from the dummy's clips ``[T_i, 25, 3]``
    (camera space, any facing): standardised weighted features and their standardisation,
    heading-frame bone directions, root heights above each clip's floor, next-frame links, and
    the root motion into each frame (horizontal step in its heading frame, turn in radians).
    With an ``action_prior`` the features end in ``w·code``, each frame's one-hot action among
    the prior's classes (``actions``: each clip's action name)."""
    if not clips or min(len(c) for c in clips) < 2:
        raise ValueError("motion matching needs at least one clip of >= 2 frames")
    prior = cfg.get("action_prior")
    if prior and (actions is None or len(actions) != len(clips)):
        raise ValueError("motion_match: an action prior needs each database clip's action")
    feats, dirs, heights, nexts, steps, turns = _featurise(
        [np.asarray(c, np.float32) for c in clips], cfg)
    # One scale per feature group (its RMS spread), not per feature: a per-feature z-score
    # would let near-constant features (a joint that hardly moves on the dummy) dominate the
    # distance, and any difference of proportions in the input would then decide the match.
    mean = feats.mean(0)
    weights = {**DEFAULTS["weights"], **cfg.get("weights", {})}
    std, weight, i = torch.empty_like(mean), torch.empty_like(mean), 0
    for g, n in groups(cfg):
        std[i : i + n] = feats[:, i : i + n].var(0).mean().sqrt().clamp_min(1e-4)
        weight[i : i + n] = (float(weights[g]) / n) ** 0.5   # every group counts as a whole
        i += n
    features = (feats - mean) * (weight / std)
    if prior:  # the prior's columns: w·one-hot of each frame's action (0 for an unknown one)
        prior = {**PRIOR_DEFAULTS, **prior}
        names = [a for a, c in zip(actions, clips, strict=True) for _ in range(len(c))]
        codes = class_codes(names, prior["classes"])
        features = torch.cat([features, float(prior["weight"]) * codes], 1)
    # A jump may land only where the clip runs on past the next search and cross-fade.
    ends = torch.nonzero(nexts < 0).squeeze(1)
    left = ends[torch.searchsorted(ends, torch.arange(len(nexts)))] - torch.arange(len(nexts))
    reach = int(cfg["search_every"]) + int(cfg["blend_frames"])
    landing = torch.where(left >= min(reach, 1 + int(left.max()) // 2),
                          (features**2).sum(1), torch.inf)
    # Searched frames first (every search_stride-th landing frame of a clip), the rest after.
    n = len(nexts)
    starts = torch.cat([torch.zeros(1, dtype=torch.bool), nexts[:-1] < 0])
    first = torch.cummax(torch.where(starts, torch.arange(n), 0), 0).values
    searched = torch.isfinite(landing) & ((torch.arange(n) - first)
                                          % int(cfg.get("search_stride", 1)) == 0)
    order = torch.cat([searched.nonzero().squeeze(1), (~searched).nonzero().squeeze(1)])
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n)
    nexts = nexts[order]
    nexts = torch.where(nexts >= 0, rank[nexts.clamp_min(0)], nexts)
    return {"features": features[order], "feat_mean": mean, "feat_scale": weight / std,
            "directions": dirs[order], "height": heights[order], "next": nexts,
            "landing": landing[order], "root_step": steps[order], "turn": turns[order],
            "search_frames": int(searched.sum())}


def rendered_clips(dummy_lengths: Sequence[float], actions: Sequence[str], seed: int = 0,
                   views: Sequence[float] = (0.0,), mirror: bool = True,
                   clips: int = 1) -> list[np.ndarray]:
    """The dummy's neutral performances rendered by SynthKinect (no sensor noise): ``clips``
    random instances of each action (content drawn as the store draws it, the right hand
    acting), each seen from each of ``views`` (degrees), with mirror images."""
    from streamtmr.data.synth import neutral_identity, render, sample_content

    if int(clips) < 1:
        raise ValueError(f"render.clips must be >= 1, got {clips}")
    body = neutral_identity(np.asarray(dummy_lengths, np.float32))
    rng = np.random.default_rng(seed)
    out = []
    for action in actions:
        for _ in range(int(clips)):
            content = sample_content(action, rng, side="right")
            out += [render(content, body, view_deg=v, sensor_noise=False)[0] for v in views]
    return out + [skeleton.mirror(c) for c in out] if mirror else out


#: Bounds on what a database recipe may ask for (it is read from a checkpoint's config).
MAX_RECIPE_CLIPS = 20_000
MAX_RECIPE_PEOPLE = 10_000


def recipe_clips(dummy_lengths: Sequence[float], recipe: dict[str, Any]) -> list[np.ndarray]:
    """The clips of a database recipe (a config's ``render``): ``population`` — the neutral
    performances a SynthKinect store holds for some of its people (the keyword arguments of
    :func:`streamtmr.data.synth.neutral_performances`), rendered again without the store —
    then ``actions`` rendered ``clips`` times each (:func:`rendered_clips`), then, with
    ``mirror`` (default on), every clip's mirror image."""
    from streamtmr.data.synth import ACTIONS, neutral_performances

    recipe = dict(recipe)
    population = recipe.pop("population", None)
    mirror = bool(recipe.pop("mirror", True))
    # A recipe comes from a checkpoint's config: bound the work it may ask for before rendering.
    n_pop = 0
    if population:
        if not 0 < int(population.get("n_subjects", 60)) <= MAX_RECIPE_PEOPLE:
            raise ValueError(f"render.population.n_subjects must be in 1..{MAX_RECIPE_PEOPLE}")
        n_pop = len(population.get("subjects", ())) * int(population.get("n_actions")
                                                          or len(ACTIONS))
    n_clips = n_pop + (len(recipe.get("actions") or ()) * int(recipe.get("clips", 1))
                       * len(recipe.get("views") or (0.0,)))
    if n_clips > MAX_RECIPE_CLIPS:
        raise ValueError(f"render: the recipe asks for {n_clips} clips, more than "
                         f"{MAX_RECIPE_CLIPS}")
    clips = (neutral_performances(dummy_lengths=dummy_lengths, **population)
             if population else [])
    if recipe.get("actions"):
        clips += rendered_clips(dummy_lengths, mirror=False, **recipe)
    return clips + [skeleton.mirror(c) for c in clips] if mirror else clips


def recipe_actions(recipe: dict[str, Any]) -> list[str]:
    """Each clip's action name, in :func:`recipe_clips`'s order."""
    from streamtmr.data.synth import ACTIONS

    population = recipe.get("population")
    names = []
    if population:
        n_actions = int(population.get("n_actions") or len(ACTIONS))
        names += [ACTIONS[a] for _ in population.get("subjects", ()) for a in range(n_actions)]
    views = len(recipe.get("views") or (0.0,))
    names += [a for a in recipe.get("actions") or () for _ in range(int(recipe.get("clips", 1))
                                                                     * views)]
    return names + names if bool(recipe.get("mirror", True)) else names


def has_search_tree(landing: torch.Tensor, search_frames: int, leaf: int) -> bool:
    """Whether a database searches by a tree: ``search_leaf`` > 0 and a searchable frame."""
    return leaf > 0 and bool(torch.isfinite(landing[:search_frames]).any())


@torch.no_grad()
def search_tree(features: torch.Tensor, landing: torch.Tensor, search_frames: int, leaf: int
                ) -> dict[str, torch.Tensor]:
    """The search tree over the first ``search_frames`` frames (:func:`box_tree.build`), with
    ``slot [N]``: each frame's row in the tree's leaf-ordered copy of the features (-1: not
    in it)."""
    tree = box_tree.build(features[:search_frames].cpu(), landing[:search_frames].cpu(), leaf)
    flat = tree["leaf_frame"].reshape(-1)
    real = torch.isfinite(tree["leaf_score"].reshape(-1))
    slot = torch.full((len(features),), -1, dtype=torch.int64)
    slot[flat[real]] = torch.arange(len(flat))[real]   # frame → row of the copy
    return {**tree, "slot": slot}


def rendered_database(cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The :func:`database` of ``cfg``'s recipe (``render``) with ``search_frames`` and its
    search tree (``tree_*``): rendered, featurised and indexed the first time (seconds for the
    shipped ``matcher``), then read back from the cache (:func:`streamtmr.cache.cached_tensors`:
    keyed by the config, this package's code and the numpy and torch versions)."""
    def render() -> dict[str, torch.Tensor]:
        db = database(recipe_clips(cfg["dummy_lengths"], cfg["render"]), cfg,
                      recipe_actions(cfg["render"]))
        s, leaf = int(db["search_frames"]), int(cfg["search_leaf"])
        db["search_frames"] = torch.tensor(s)
        if has_search_tree(db["landing"], s, leaf):
            db.update({"tree_" + k: v for k, v in
                       search_tree(db["features"], db["landing"], s, leaf).items()})
        return db

    facts = {k: v for k, v in cfg.items() if k not in ("frames", "search_frames",
                                                       "database_check")}
    if cfg.get("action_prior"):  # the database reads the prior's classes and weight only
        facts["action_prior"] = {k: cfg["action_prior"][k] for k in ("classes", "weight")}
    return cached_tensors("motion_match", facts, render)


def check_rendered(db: dict[str, torch.Tensor], recorded: dict[str, Any] | None,
                   atol: float = 1e-4) -> dict[str, Any]:
    """The fingerprint of a rendered database (its frame count and feature means), compared
    with ``recorded`` (the fingerprint written when the model was built): another numpy or
    SynthKinect version that renders differently is refused by name, never run silently."""
    check = {"frames": int(len(db["features"])),
             "feat_mean": [round(float(v), 6) for v in db["feat_mean"]]}
    if recorded:
        want = recorded.get("frames")
        if want != check["frames"]:
            raise ValueError(f"motion_match: the database rendered from the recipe has "
                             f"{check['frames']} frames, the model was built with {want}: "
                             "this version renders differently; rebuild the model")
        mean = np.asarray(recorded.get("feat_mean", []), np.float64)
        diff = (float(np.max(np.abs(mean - check["feat_mean"])))
                if mean.shape == (len(check["feat_mean"]),) else math.inf)
        if not diff <= atol:
            raise ValueError(f"motion_match: the database rendered from the recipe differs "
                             f"from the one the model was built with (feature means by "
                             f"{diff:.2g}): this version renders differently; rebuild the model")
    return check


def build_database(store: SkeletonStore | str | Path, subjects: Sequence[int] | None = None,
                   views: Sequence[int] = (1,), reps: Sequence[int] | None = (0,),
                   mirror: bool = True, array: str = "target",
                   config: dict[str, Any] | None = None, interactions: Sequence[str] = (),
                   interaction_clips: int = 40, interaction_seed: int = 0) -> MotionMatching:
    """A :class:`MotionMatching` model whose database is the dummy's neutral performances.

    ``array`` is the store's ground-truth retarget (``target``: the dummy, neutral style and
    tempo). ``subjects`` default to the store's ``anonymizer_train`` split; evaluation subjects
    are refused. ``interactions`` adds ``interaction_clips`` rendered performances of the dummy
    for each named motion of :data:`streamtmr.data.synth_motion.INTERACTION_SPECS` (motions the
    store's action classes lack, e.g. carrying; no person is involved). ``mirror`` adds every
    clip's left↔right mirror image. Save the result with
    :func:`streamtmr.models.checkpoint.save_checkpoint`.
    """
    from streamtmr.data.synth import ACTIONS
    from streamtmr.data.synth_motion import INTERACTION_SPECS

    unknown = sorted(set(interactions) - set(INTERACTION_SPECS))
    if unknown:
        raise ValueError(f"database.interactions: unknown {unknown}; choose from "
                         f"{sorted(INTERACTION_SPECS)}")
    if interactions and int(interaction_clips) < 1:
        raise ValueError(f"database.interaction_clips must be >= 1, got {interaction_clips}")
    store = store if isinstance(store, SkeletonStore) else SkeletonStore(store)
    if array not in store.array_names:
        raise ValueError(f"{store.root}: no {array!r} array (have {store.array_names})")
    rows = _clip_rows(store, subjects, views, reps)
    if not rows:
        raise ValueError(f"{store.root}: no sequences for views {list(views)}, reps {reps}")
    clips = [np.array(store[k].arrays[array], np.float32) for k in rows]
    actions = [ACTIONS[int(store.rows[k]["action"])] for k in rows]
    lengths = (store.meta.get("dummy") or {}).get("lengths", default_dummy().lengths)
    extra = [a for a in interactions for _ in range(interaction_clips)]
    clips += rendered_clips(lengths, extra, seed=interaction_seed, mirror=False)
    actions += extra
    if mirror:
        clips += [skeleton.mirror(c) for c in clips]
        actions += actions
    cfg = {**DEFAULTS, **(config or {})}
    cfg.pop("render", None)
    db = database(clips, cfg, actions)
    cfg.update(frames=len(db["features"]), search_frames=int(db.pop("search_frames")),
               dummy_lengths=[float(v) for v in lengths],
               database={"store": str(store.root), "array": array, "sequences": len(rows),
                         "mirror": bool(mirror), "views": list(views),
                         "reps": None if reps is None else list(reps),
                         **({"interactions": list(interactions),
                             "interaction_clips": int(interaction_clips),
                             "interaction_seed": int(interaction_seed)} if interactions else {})})
    model = MotionMatching(cfg)
    model.set_database(db)
    log.info("motion-matching database: %d frames from %d clips", len(db["features"]),
             len(clips))
    return model.eval()


def build_rendered(config: dict[str, Any] | None = None, clips: int = 40, seed: int = 0,
                   interactions: Sequence[str] = (), mirror: bool = True,
                   population: dict[str, Any] | None = None) -> MotionMatching:
    """A :class:`MotionMatching` model whose database is rendered, not read from a store.

    Without ``population``: the dummy performing each of SynthKinect's action classes and each
    of ``interactions`` (:data:`streamtmr.data.synth_motion.INTERACTION_SPECS`), ``clips``
    random instances each (content drawn as the store draws it). With ``population`` (the
    keyword arguments of :func:`streamtmr.data.synth.neutral_performances`; ``subjects`` may be
    a split's name, e.g. ``anonymizer_train``): the very ``target`` clips a store of that
    population holds for those people (what :func:`build_database` reads), then the
    interactions. Mirror images when ``mirror``. The recipe is the model's config: the database
    is rendered again whenever the model is built, and its checkpoint holds no database."""
    from streamtmr.data.synth import ACTIONS, make_splits
    from streamtmr.data.synth_motion import INTERACTION_SPECS

    unknown = sorted(set(interactions) - set(INTERACTION_SPECS))
    if unknown:
        raise ValueError(f"database.interactions: unknown {unknown}; choose from "
                         f"{sorted(INTERACTION_SPECS)}")
    cfg = {**DEFAULTS, **(config or {}), "frames": 0}
    cfg.pop("database_check", None)
    cfg.setdefault("dummy_lengths", [float(v) for v in default_dummy().lengths])
    recipe: dict[str, Any] = {}
    if population:
        population = dict(population)
        subjects = population.get("subjects", "anonymizer_train")
        n, pop_seed = int(population.get("n_subjects", 60)), int(population.get("seed", 0))
        splits = make_splits(range(n), pop_seed)
        if isinstance(subjects, str):
            if subjects not in splits:
                raise ValueError(f"database.population.subjects: no split {subjects!r} "
                                 f"(splits: {sorted(splits)})")
            subjects = splits[subjects]
        subjects = sorted(int(s) for s in subjects)
        evaluated = sorted(set(subjects) - set(splits["anonymizer_train"]))
        if evaluated:
            raise ValueError(f"database.population.subjects: {evaluated} are not "
                             "anonymizer_train people; only those may form a database (the "
                             "others are evaluated)")
        population["subjects"] = subjects
        recipe["population"] = population
    actions = list(interactions) if population else list(ACTIONS) + list(interactions)
    if actions:
        recipe.update(actions=actions, clips=int(clips), seed=int(seed))
    recipe["mirror"] = bool(mirror)
    cfg["render"] = recipe
    cfg["database"] = {"rendered": True, **recipe}
    model = MotionMatching(cfg)
    log.info("motion-matching database (rendered): %d frames", model.config["frames"])
    return model.eval()


#: Keys of a config's ``database:`` section (the keyword arguments of :func:`build_database`).
DATABASE_KEYS = ("subjects", "views", "reps", "mirror", "array", "interactions",
                 "interaction_clips", "interaction_seed")
#: Keys of a rendered database's section (``render_clips`` or ``population`` set:
#: :func:`build_rendered`, no store is read).
RENDER_KEYS = ("render_clips", "render_seed", "interactions", "mirror", "population")


def parse_settings(assignments: Sequence[str]) -> dict[str, Any]:
    """``["root_motion=in_place", "database.interactions=[carry]", ...]`` → settings (values
    parsed as YAML): matching settings of :data:`DEFAULTS`, and ``database.KEY`` for a key of
    :data:`DATABASE_KEYS` (returned under ``"database"``); any other key is refused by name."""
    import yaml

    out: dict[str, Any] = {}
    for a in assignments:
        key, sep, text = a.partition("=")
        key = key.strip()
        section, _, sub = key.rpartition(".")
        if sep and section == "database" and sub in DATABASE_KEYS + RENDER_KEYS:
            out.setdefault("database", {})[sub] = yaml.safe_load(text)
        elif sep and not section and key in DEFAULTS:
            out[key] = yaml.safe_load(text)
        else:
            keys = list(dict.fromkeys(DATABASE_KEYS + RENDER_KEYS))
            raise ValueError(f"--set {a}: expected KEY=VALUE with KEY one of {sorted(DEFAULTS)}"
                             f" or database.KEY with KEY one of {keys}")
    return out


def fit_action_prior(model: MotionMatching, clips: list[np.ndarray], actions: Sequence[str],
                     stage: nn.Module | None = None) -> dict[str, Any]:
    """Train ``model``'s action prior on ``clips`` (sources, camera space) labelled with
    ``actions`` (clips of other actions are left out): the clips through ``stage`` (the
    cascade's first stage; ``None``: the clips themselves), with replayed copies where the
    prior's ``augment`` asks, featurised as the matcher featurises its input. Returns what was
    measured (the training sequences' frame accuracy)."""
    from streamtmr.models.action_prior import (
        frame_accuracy,
        replayed,
        stage_outputs,
        train_prior,
    )

    cfg = model.config["action_prior"]
    classes = list(cfg["classes"])
    keep = [i for i, a in enumerate(actions) if a in classes]
    inputs = [clips[i] for i in keep]
    if cfg.get("augment"):
        rng = np.random.default_rng([int(cfg["seed"]), 0xA6])
        inputs += [replayed(c, rng) for c in inputs]
        keep += keep
    if stage is not None:
        inputs = stage_outputs(stage, inputs)
    seqs = query_features(model, inputs)
    labels = [classes.index(actions[i]) for i in keep]
    prior = train_prior(seqs, labels, len(classes), int(cfg["hidden"]), int(cfg["epochs"]),
                        int(cfg["seed"]))
    model.prior.load_state_dict(prior.state_dict())
    return {"sequences": len(seqs), "train_frame_accuracy": frame_accuracy(prior, seqs, labels)}


def train_action_prior(model: MotionMatching, data: str | Path | None) -> list[int]:
    """Train ``model``'s action prior (:mod:`streamtmr.models.action_prior`) on the store
    ``data``: the ``anonymizer_train`` people's recordings (every camera and repetition)
    through the prior's ``stage`` (a model spec, e.g. ``default``: the cascade's first stage,
    whose output the matcher will read; ``None``: the recordings themselves). The stage's
    name, its file's SHA-256 and the training accuracy are recorded in the config. Returns
    the people it was trained on (none of them may be evaluated)."""
    from streamtmr.data.synth import ACTIONS
    from streamtmr.data.synth_motion import INTERACTION_SPECS

    cfg = model.config["action_prior"]
    others = [a for a in cfg["classes"] if a not in ACTIONS]
    unknown = sorted(set(others) - set(INTERACTION_SPECS))
    if unknown:
        raise ValueError(f"motion_match: action_prior.classes: {unknown} are neither the "
                         f"store's actions nor motions SynthKinect renders "
                         f"({sorted(INTERACTION_SPECS)})")
    if data is None:
        raise ValueError("motion_match: training the action prior needs a SynthKinect store "
                         "(--data)")
    store = SkeletonStore(data)
    rows, clips = _training_recordings(store)
    actions = [ACTIONS[int(store.rows[k]["action"])] for k in rows]
    if others:  # motions the store lacks: the same people performing them, recorded alike
        more, names = _performances(store, others)
        clips += more
        actions += names
    return _fit_behind_stage(model, cfg, store, fit_action_prior, clips, actions)


def _training_recordings(store: SkeletonStore) -> tuple[list[int], list[np.ndarray]]:
    """The store's ``anonymizer_train`` people's recordings, every camera and repetition:
    their rows and observed joints."""
    rows = _clip_rows(store, None, sorted({int(r["view"]) for r in store.rows}), None)
    return rows, [np.array(store[k].joints, np.float32) for k in rows]


def _fit_behind_stage(model: MotionMatching, cfg: dict[str, Any], store: SkeletonStore,
                      fit: Callable[..., dict[str, Any]], *data: list) -> list[int]:
    """Fit a learned part of ``model`` (its settings ``cfg``) with ``fit(model, *data,
    stage)`` behind the first stage ``cfg["stage"]`` names, and record in ``cfg`` the stage
    (name, SHA-256), the store and what ``fit`` measured. Returns the people it trained on."""
    stage, cfg["stage"] = first_stage(model, cfg.get("stage"))
    report = fit(model, *data, stage)
    cfg["trained"] = {"store": str(store.root), **report}
    log.info("%s: %s", fit.__name__, report)
    return sorted(int(s) for s in store.meta["splits"]["anonymizer_train"])


def _performances(store: SkeletonStore, actions: Sequence[str], **kw):
    """The store's ``anonymizer_train`` people performing ``actions`` (motions SynthKinect
    renders, e.g. ones the store lacks), recorded as the store records them
    (:func:`streamtmr.data.synth.performances`; ``kw``: its ``target_lengths``)."""
    from streamtmr.data.synth import performances
    from streamtmr.data.synth_motion import INTERACTION_SPECS

    unknown = sorted(set(actions) - set(INTERACTION_SPECS))
    if unknown:
        raise ValueError(f"motion_match: {unknown} are not motions SynthKinect renders beyond "
                         f"the store's ({sorted(INTERACTION_SPECS)})")
    info = store.meta.get("info") or {}
    return performances(store.meta["splits"]["anonymizer_train"], actions,
                        n_subjects=int(info.get("subjects", 60)), seed=int(info.get("seed", 0)),
                        views=store.meta.get("views_deg", (-45, 0, 45)),
                        reps=int(info.get("reps", 2)), **kw)


def first_stage(model: MotionMatching, spec: str | dict | None
                ) -> tuple[nn.Module | None, dict[str, str] | None]:
    """The cascade's first stage a learned part of ``model`` is trained behind (a model spec,
    e.g. ``default``, or the record this function made of it; ``None``: none), stepping for the
    matcher's dummy, and its record: the spec and its file's SHA-256."""
    from streamtmr.cache import file_sha256
    from streamtmr.models.checkpoint import model_path, resolve_model

    if not spec:
        return None, None
    spec = spec["model"] if isinstance(spec, dict) else spec
    stage = resolve_model(spec).eval().for_dummy(
        torch.as_tensor(model.config["dummy_lengths"])).eval()
    return stage, {"model": str(spec), "sha256": file_sha256(model_path(spec))}


def fit_neutral_query(model: MotionMatching, clips: list[np.ndarray],
                      targets: list[np.ndarray], stage: nn.Module | None = None
                      ) -> dict[str, Any]:
    """Train ``model``'s neutral query on ``clips`` (sources, camera space) and ``targets``
    (each one's own-tempo neutral performance by the dummy, frame-aligned): the clips through
    ``stage`` (the cascade's first stage; ``None``: the clips themselves), both featurised as
    the matcher featurises its input. Returns the training sequences' errors (per frame, in
    standardised feature units) before and after."""
    from streamtmr.models.action_prior import replayed, stage_outputs
    from streamtmr.models.neutral_query import query_error, train_neutral_query

    cfg = model.config["neutral_query"]
    if cfg.get("augment"):  # replayed copies: each pair at one speed, the same frames dropped
        rng = np.random.default_rng([int(cfg["seed"]), 0xA6])
        pairs = [replayed(np.concatenate([c, t], 1), rng) for c, t in zip(clips, targets,
                                                                          strict=True)]
        clips = clips + [p[:, :skeleton.NUM_JOINTS] for p in pairs]
        targets = targets + [p[:, skeleton.NUM_JOINTS:] for p in pairs]
    inputs = stage_outputs(stage, clips) if stage is not None else clips
    src, tgt = query_features(model, inputs), query_features(model, targets)
    fitted = train_neutral_query(src, tgt, int(cfg["hidden"]), int(cfg["epochs"]),
                                 int(cfg["seed"]))
    model.neutral.load_state_dict(fitted.state_dict())
    return {"sequences": len(src), "train_error": query_error(fitted, src, tgt)}


def train_query(model: MotionMatching, data: str | Path | None) -> list[int]:
    """Train ``model``'s neutral query (:mod:`streamtmr.models.neutral_query`) on the store
    ``data``: the ``anonymizer_train`` people's recordings (every camera and repetition)
    through the query's ``stage`` (a model spec, e.g. ``default``: the cascade's first stage;
    ``None``: the recordings themselves), against their ``target_sync`` (the dummy's neutral
    performance at the person's own tempo). The stage's name, its file's SHA-256 and the
    errors are recorded in the config. Returns the people it was trained on."""
    cfg = model.config["neutral_query"]
    if data is None:
        raise ValueError("motion_match: training the neutral query needs a SynthKinect store "
                         "(--data)")
    store = SkeletonStore(data)
    if "target_sync" not in store.array_names:
        raise ValueError(f"{store.root}: no target_sync array (the own-tempo neutral "
                         "performance the neutral query learns); regenerate it with "
                         "`streamtmr data synth`")
    rows, clips = _training_recordings(store)
    targets = [np.array(store[k].arrays["target_sync"], np.float32) for k in rows]
    if cfg.get("interactions"):  # motions the store lacks: its training people perform them
        more, _, sync = _performances(store, cfg["interactions"], target_lengths=store.meta[
            "dummy"]["lengths"])
        clips += more
        targets += sync
    return _fit_behind_stage(model, cfg, store, fit_neutral_query, clips, targets)


def build_from_config(config: str | Path, data: str | Path | None, out: str | Path,
                      settings: dict[str, Any] | None = None) -> Path:
    """Build the database described by a YAML file (``configs/motion_match.yaml``), its
    settings updated by ``settings`` (:func:`parse_settings`), and save it as a checkpoint at
    ``out``. With ``database.render_clips`` or ``database.population`` the database is rendered
    (:func:`build_rendered`, ``configs/matcher.yaml``; ``data`` is not read), otherwise read
    from the store ``data``
    (:func:`build_database`). A ``database:`` key the chosen builder does not take is
    refused."""
    import yaml

    from streamtmr.models.checkpoint import save_checkpoint

    spec = yaml.safe_load(Path(config).read_text()) or {}
    settings = dict(settings or {})
    db = {**(spec.get("database") or {}), **settings.pop("database", {})}
    model_cfg = {**(spec.get("model") or {}), **settings}
    if "render_clips" in db or "population" in db:
        unknown = sorted(set(db) - set(RENDER_KEYS))
        if unknown:
            raise ValueError(f"{config}: database: {unknown} apply to a store's database, not "
                             f"to a rendered one (render_clips / population); expected some "
                             f"of {list(RENDER_KEYS)}")
        model = build_rendered(model_cfg, clips=db.get("render_clips", 40),
                               seed=db.get("render_seed", 0),
                               interactions=db.get("interactions", ()),
                               mirror=db.get("mirror", True), population=db.get("population"))
        people = (model.config["render"].get("population") or {}).get("subjects", [])
        store = None  # a rendered database reads no store; its action prior trains on one
        if model.prior is not None:
            people = sorted(set(people) | set(train_action_prior(model, data)))
            store = str(SkeletonStore(data).root)
        if model.neutral is not None:
            people = sorted(set(people) | set(train_query(model, data)))
            store = str(SkeletonStore(data).root)
        return save_checkpoint(out, model, {"data": {"store": store, "train_subjects": people,
                                                     "real_subjects": []}})
    if data is None:
        raise ValueError(f"{config}: a database from a store needs --data (or set "
                         "database.render_clips or database.population to render one)")
    unknown = sorted(set(db) - set(DATABASE_KEYS))
    if unknown:
        raise ValueError(f"{config}: database: unknown keys {unknown}; expected some of "
                         f"{list(DATABASE_KEYS)}")
    model = build_database(data, config=model_cfg, **db)
    people = set(train_action_prior(model, data)) if model.prior is not None else set()
    if model.neutral is not None:
        people |= set(train_query(model, data))
    store = SkeletonStore(data)
    people |= {int(store.rows[i]["subject"]) for i in
               _clip_rows(store, db.get("subjects"), db.get("views", (1,)), db.get("reps", (0,)))}
    extra = {"data": {"store": str(store.root), "train_subjects": sorted(people)}}
    return save_checkpoint(out, model, extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build a motion-matching database checkpoint.")
    p.add_argument("--config", type=Path, default=Path("configs/motion_match.yaml"))
    p.add_argument("--data", type=Path, default=None,
                   help="SynthKinect store (not read for a rendered database)")
    p.add_argument("--out", type=Path, default=Path("runs/motion_match/model.safetensors"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting over the config's (e.g. root_motion=in_place, "
                        "database.interactions=[carry,push,pull])")
    args = p.parse_args(argv)
    try:
        settings = parse_settings(args.set)
    except ValueError as e:
        p.error(str(e))
    logging.basicConfig(level=logging.INFO)
    try:
        out = build_from_config(args.config, args.data, args.out, settings)
    except ValueError as e:
        p.error(str(e))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
