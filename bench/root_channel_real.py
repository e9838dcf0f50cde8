"""Diagnostic: on real people, how much of a model's adaptive re-ID rides on the root channel?

Every UTKinect segment is played through the node's path (``published_segments``, leak guard
on), exactly as ``streamtmr evaluate --utkinect`` does. The published tracks are then attacked
as they are, with the horizontal root path held still (pose and height kept), and with the root
path held and the heading frozen at the segment's first frame (pose only). The ``half
mirrored`` variants mirror half the segments left to right (:func:`mirror_at_random`), in
training and test alike, so that which side of the body acts (a habit, such as the hand that
waves) no longer tells people apart. One re-ID attacker and one action recognizer are retrained
on each variant, split by run as in :func:`streamtmr.eval.realdata.evaluate_utkinect` (mean of
both folds).

    python -m bench.root_channel_real --model runs/mm/casc.safetensors \\
        --utkinect /work/shared/data/real/utkinect --out runs/root_channel_real.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from bench.machine import describe_machine
from streamtmr import skeleton
from streamtmr.dummy import default_dummy
from streamtmr.eval.attackers import AttackerTraining, SkeletonClassifier
from streamtmr.eval.protocol import method_from_model
from streamtmr.eval.published import windows_of
from streamtmr.eval.realdata import published_segments, utkinect_windows
from streamtmr.models.checkpoint import resolve_model

VARIANTS = ("source", "as published", "root path held", "root path and heading held",
            "root path smoothed", "heading smoothed", "root path and heading smoothed",
            "source half mirrored", "as published half mirrored")


def _ema(x: np.ndarray, alpha: float) -> np.ndarray:
    """Causal exponential moving average along the first axis (the first value as it is)."""
    out = np.empty_like(x)
    out[0] = x[0]
    for t in range(1, len(x)):
        out[t] = alpha * x[t] + (1.0 - alpha) * out[t - 1]
    return out


def hold_root(seq: np.ndarray) -> np.ndarray:
    """``seq`` [T, 25, 3] with its horizontal root path held at the first frame's."""
    d = seq[:1, :1, :] - seq[:, :1, :]
    d[..., 1] = 0
    return seq + d


def _turn_to(seq: np.ndarray, facing: np.ndarray) -> np.ndarray:
    """``seq`` [T, 25, 3] turned about its root, frame by frame, so its hips face ``facing [T]``."""
    rot = skeleton.rotation_y(skeleton.facing_angle(seq) - facing)
    root = seq[:, :1, :]
    return np.matmul(seq - root, np.swapaxes(rot, -1, -2)).astype(np.float32) + root


def hold_heading(seq: np.ndarray) -> np.ndarray:
    """``seq`` turned about its root, frame by frame, to the first frame's hip facing."""
    angle = skeleton.facing_angle(seq)
    return _turn_to(seq, np.broadcast_to(angle[:1], angle.shape))


def smooth_root(seq: np.ndarray, alpha: float) -> np.ndarray:
    """``seq`` with its horizontal root path replaced by a causal EMA of it (weight ``alpha``)."""
    root = seq[:, :1, :]
    d = _ema(root, alpha) - root
    d[..., 1] = 0
    return (seq + d).astype(np.float32)


def smooth_heading(seq: np.ndarray, alpha: float) -> np.ndarray:
    """``seq`` turned about its root, frame by frame, to a causal EMA of its hip facing (the
    unit facing vector averaged, so turns through ±180° stay continuous)."""
    angle = skeleton.facing_angle(seq)
    vec = _ema(np.stack([np.cos(angle), np.sin(angle)], -1), alpha)
    return _turn_to(seq, np.arctan2(vec[:, 1], vec[:, 0]))


def mirror_at_random(tracks: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """Every track ``[T, 25, 3]`` kept or mirrored left to right (each joint's camera X reflected
    about the first frame's root, left and right joints swapped: :func:`skeleton.mirror`) by a
    fixed draw per track with probability 1/2."""
    flips = np.random.default_rng(seed).random(len(tracks)) < 0.5
    out = []
    for seq, flip in zip(tracks, flips, strict=True):
        if flip:
            mirrored = skeleton.mirror(seq).astype(np.float32)       # X -> -X
            mirrored[..., 0] += 2.0 * seq[0, skeleton.ROOT, 0]       # about the first root
            seq = mirrored
        out.append(seq)
    return out


def attack_tracks(tracks: list[np.ndarray], data: dict, seeds: list[int], width: int,
                  epochs: int, arch: str) -> dict:
    """Re-ID (``arch``) and action attackers retrained on the windows of ``tracks`` (one array
    per UTKinect segment), split by run as ``evaluate_utkinect`` splits them: the mean over
    seeds and both folds, and every fold's numbers (``runs``)."""
    runs = sorted(data)
    ident = dict(enumerate(range(len(tracks))))
    rows = []
    for seed in seeds:
        att = AttackerTraining(width=width, epochs=epochs, seed=seed)
        for r_tr, r_te in ((runs[0], runs[1]), (runs[1], runs[0])):
            tr, te = data[r_tr]["train"], data[r_te]["test"]
            x_tr, x_te = (windows_of(tracks, d["segment"], d["start"], 32, ident)
                          for d in (tr, te))
            reid = SkeletonClassifier(replace(att, arch=arch)).fit(x_tr, {"subject": tr["subject"]})
            act = SkeletonClassifier(att).fit(x_tr, {"action": tr["action"]})
            rows.append({
                "reid_top1": reid.evaluate(x_te, {"subject": te["subject"]})["subject"]["top1"],
                "action_top1": act.evaluate(x_te, {"action": te["action"]})["action"]["top1"]})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"runs": rows}


def attack_variants(variants: dict[str, list[np.ndarray]], data: dict,
                    a: argparse.Namespace, **record) -> None:
    """:func:`attack_tracks` on every variant (printed as it goes); the results, the attackers'
    settings, the machine, the date and ``record`` (the caller's command among it) written as
    JSON to ``a.out``."""
    seeds = [int(v) for v in a.seeds.split(",")]
    res: dict[str, dict] = {}
    for name, tracks in variants.items():
        res[name] = attack_tracks(tracks, data, seeds, a.width, a.epochs, a.arch)
        print(name, {k: round(v, 3) for k, v in res[name].items() if k != "runs"}, flush=True)
    with open(a.out, "w") as f:
        json.dump({**record, "arch": a.arch, "epochs": a.epochs, "width": a.width,
                   "seeds": a.seeds, "results": res, "machine": describe_machine(),
                   "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")},
                  f, indent=1)


def add_attack_arguments(p: argparse.ArgumentParser) -> None:
    """The UTKinect folder and the attackers' settings (light SGN by default)."""
    p.add_argument("--utkinect", required=True)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--arch", default="sgn")
    p.add_argument("--seeds", default="0")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="checkpoint, or 'default'")
    add_attack_arguments(p)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="EMA weight of the newest frame in the smoothed variants")
    p.add_argument("--clock", choices=("sensor", "rows"), default="sensor",
                   help="play segments on the sensor's 30 Hz clock (default) or row by row "
                        "(streamtmr.eval.realdata)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model = resolve_model(a.model)
    method = method_from_model(a.model, model, default_dummy())
    data, segments, frame_ids = utkinect_windows(a.utkinect)
    t0 = time.time()
    pub = published_segments(method, segments, frame_ids if a.clock == "sensor" else None)
    print(f"published {len(pub)} segments in {time.time() - t0:.0f} s", flush=True)
    build = {"source": lambda: segments, "as published": lambda: pub,
             "root path held": lambda: [hold_root(s) for s in pub],
             "root path and heading held": lambda: [hold_heading(hold_root(s)) for s in pub],
             "root path smoothed": lambda: [smooth_root(s, a.alpha) for s in pub],
             "heading smoothed": lambda: [smooth_heading(s, a.alpha) for s in pub],
             "root path and heading smoothed":
                 lambda: [smooth_heading(smooth_root(s, a.alpha), a.alpha) for s in pub],
             "source half mirrored": lambda: mirror_at_random(segments),
             "as published half mirrored": lambda: mirror_at_random(pub)}
    chosen = [v.strip() for v in a.variants.split(",")]
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    variants = {name: build[name]() for name in chosen}
    attack_variants(variants, data, a, model=a.model, alpha=a.alpha, clock=a.clock,
                    command="python -m bench.root_channel_real "
                            + shlex.join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
