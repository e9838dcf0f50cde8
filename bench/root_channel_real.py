"""Diagnostic: on real people, how much of a model's adaptive re-ID rides on the root channel?

Every UTKinect segment is played through the node's path (``published_segments``, leak guard
on), exactly as ``streamtmr evaluate --utkinect`` does. The published tracks are then attacked
as they are, with the horizontal root path held still (pose and height kept), and with the root
path held and the heading frozen at the segment's first frame (pose only). One re-ID attacker
and one action recognizer are retrained on each variant, split by run as in
:func:`streamtmr.eval.realdata.evaluate_utkinect` (mean of both folds).

    python -m bench.root_channel_real --model runs/mm/casc.safetensors \\
        --utkinect /work/shared/data/real/utkinect --out runs/root_channel_real.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch

from streamtmr import skeleton
from streamtmr.dummy import default_dummy
from streamtmr.eval.attackers import AttackerTraining, SkeletonClassifier
from streamtmr.eval.protocol import method_from_model
from streamtmr.eval.published import windows_of
from streamtmr.eval.realdata import published_segments, utkinect_windows
from streamtmr.models.checkpoint import resolve_model

VARIANTS = ("source", "as published", "root path held", "root path and heading held")


def hold_root(seq: np.ndarray) -> np.ndarray:
    """``seq`` [T, 25, 3] with its horizontal root path held at the first frame's."""
    d = seq[:1, :1, :] - seq[:, :1, :]
    d[..., 1] = 0
    return seq + d


def hold_heading(seq: np.ndarray) -> np.ndarray:
    """``seq`` turned about its root, frame by frame, to the first frame's hip facing."""
    angle = skeleton.facing_angle(seq)
    rot = skeleton.rotation_y(angle - angle[:1])
    root = seq[:, :1, :]
    return np.matmul(seq - root, np.swapaxes(rot, -1, -2)).astype(np.float32) + root


def attack(train: np.ndarray, test: np.ndarray, tr: dict, te: dict,
           att: AttackerTraining, arch: str) -> dict[str, float]:
    reid = SkeletonClassifier(replace(att, arch=arch)).fit(train, {"subject": tr["subject"]})
    act = SkeletonClassifier(att).fit(train, {"action": tr["action"]})
    return {"reid_top1": reid.evaluate(test, {"subject": te["subject"]})["subject"]["top1"],
            "action_top1": act.evaluate(test, {"action": te["action"]})["action"]["top1"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="checkpoint, or 'default'")
    p.add_argument("--utkinect", required=True)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--arch", default="sgn")
    p.add_argument("--seeds", default="0")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model = resolve_model(a.model)
    method = method_from_model(a.model, model, default_dummy())
    data, segments = utkinect_windows(a.utkinect)
    t0 = time.time()
    pub = published_segments(method, segments)
    print(f"published {len(pub)} segments in {time.time() - t0:.0f} s", flush=True)
    build = {"source": lambda: segments, "as published": lambda: pub,
             "root path held": lambda: [hold_root(s) for s in pub],
             "root path and heading held": lambda: [hold_heading(hold_root(s)) for s in pub]}
    chosen = [v.strip() for v in a.variants.split(",")]
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    variants = {name: build[name]() for name in chosen}
    runs = sorted(data)
    ident = dict(enumerate(range(len(segments))))
    res: dict[str, dict] = {}
    for name, tracks in variants.items():
        rows = []
        for seed in (int(s) for s in a.seeds.split(",")):
            att = AttackerTraining(width=a.width, epochs=a.epochs, seed=seed)
            for r_tr, r_te in ((runs[0], runs[1]), (runs[1], runs[0])):
                tr, te = data[r_tr]["train"], data[r_te]["test"]
                x_tr, x_te = (windows_of(tracks, d["segment"], d["start"], 32, ident)
                              for d in (tr, te))
                rows.append(attack(x_tr, x_te, tr, te, att, a.arch))
        res[name] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"runs": rows}
        print(name, {k: round(v, 3) for k, v in res[name].items() if k != "runs"}, flush=True)
    with open(a.out, "w") as f:
        json.dump({"model": a.model, "arch": a.arch, "epochs": a.epochs, "width": a.width,
                   "seeds": a.seeds, "results": res}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
