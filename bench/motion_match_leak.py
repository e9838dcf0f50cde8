"""Diagnostic: how much of motion matching's adaptive re-ID comes from the root channel?

Motion matching's output (windowed form: each 64-frame window of the evaluation split is a fresh
track) is attacked as is, with its horizontal root path replaced by the own-tempo ground
truth's, and with the root path and the per-frame heading replaced. One SGN-style attacker with
re-ID and action heads is retrained on each variant (width 32, 10 epochs, seed 0).

    python -m bench.motion_match_leak      # needs runs/motion_match/model.safetensors
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from streamtmr import skeleton
from streamtmr.eval import protocol
from streamtmr.eval.attackers import AttackerTraining, SkeletonClassifier
from streamtmr.models.checkpoint import load_checkpoint


def anonymize(model, x: np.ndarray) -> np.ndarray:
    lengths = torch.as_tensor(model.config["dummy_lengths"])[None]
    with torch.no_grad():
        return np.concatenate([model.retarget(torch.as_tensor(x[i : i + 64]), lengths).numpy()
                               for i in range(0, len(x), 64)])


def swap_root(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``y`` moved so its horizontal root path is ``ref``'s (pose and height unchanged)."""
    d = ref[..., :1, :] - y[..., :1, :]
    d[..., 1] = 0
    return y + d


def swap_heading(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``y`` turned about its root, frame by frame, to ``ref``'s hip facing."""
    rot = skeleton.rotation_y(skeleton.facing_angle(y) - skeleton.facing_angle(ref))
    root = y[..., :1, :]
    return np.matmul(y - root, np.swapaxes(rot, -1, -2)) + root


def main() -> int:
    torch.set_num_threads(1)
    data = protocol.load_store("data/synthkinect", protocol.EvalConfig())
    model = load_checkpoint("runs/motion_match/model.safetensors")
    t0 = time.time()
    tr, te = anonymize(model, data.train["joints"]), anonymize(model, data.test["joints"])
    print(f"anonymized in {time.time() - t0:.0f} s", flush=True)
    ref_tr, ref_te = data.train["target_sync"], data.test["target_sync"]
    root_tr, root_te = swap_root(tr, ref_tr), swap_root(te, ref_te)
    variants = {"mm": (tr, te), "mm, root path of the ground truth": (root_tr, root_te),
                "mm, root path and heading of the ground truth": (
                    swap_heading(root_tr, ref_tr), swap_heading(root_te, ref_te))}
    att = AttackerTraining(width=32, epochs=10, seed=0)
    res = {}
    for name, (a, b) in variants.items():
        labels = ("subject", "action")
        clf = SkeletonClassifier(att).fit(a, {k: data.train[k] for k in labels})
        r = clf.evaluate(b, {k: data.test[k] for k in labels})
        res[name] = {"reid_top1": r["subject"]["top1"], "action_top1": r["action"]["top1"]}
        print(name, res[name], flush=True)
    with open("runs/motion_match_leak.json", "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
