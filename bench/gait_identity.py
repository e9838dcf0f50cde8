"""Does SynthKinect's walking carry as much identity as real walks? (issue 16, item 2)

Re-ID by the evaluation's attacker (:class:`streamtmr.eval.attackers.SkeletonClassifier`,
SGN-style) on walking windows only, retrained on each variant (adaptive):

* UTKinect-Action3D (real, 10 people): the ``walk`` segments; trained on one run of every
  person, tested on the other, both folds (as :mod:`streamtmr.eval.realdata`).
* SynthKinect (20 unseen people of the store): ``walk_towards`` and ``walk_away``; trained on
  cameras 2–3 of repetition 2, tested on camera 1 of repetition 1 (as
  :mod:`streamtmr.eval.protocol`), windows of the same length as UTKinect's.

Variants: the source (``original``), the naive retarget onto the dummy (``naive``: the source's
bone directions, the dummy's bones) and, on SynthKinect, the ground-truth own-tempo retarget
(``target_sync``: what no anonymizer can beat). Several attacker seeds; mean ± std.

    python -m bench.gait_identity --data data/synthkinect \
        --utkinect /work/shared/data/real/utkinect --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from streamtmr.data.datasets import load_windows
from streamtmr.data.utkinect import ACTIONS as UTK_ACTIONS
from streamtmr.eval.attackers import AttackerTraining, SkeletonClassifier
from streamtmr.eval.protocol import eval_subjects, store_dummy
from streamtmr.eval.realdata import utkinect_windows
from streamtmr.models.registry import build_model

SYNTH_WALKS = ("walk_towards", "walk_away")


def naive(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    model = build_model({"method": "naive"})
    with torch.no_grad():
        return model.retarget(torch.as_tensor(x), torch.as_tensor(lengths)[None]).numpy()


def reid(train_x, train_y, test_x, test_y, att: AttackerTraining) -> float:
    clf = SkeletonClassifier(att).fit(train_x, {"subject": train_y})
    return float(clf.evaluate(test_x, {"subject": test_y})["subject"]["top1"])


def synth_sets(store: str, window: int, stride: int) -> dict[str, dict[str, np.ndarray]]:
    from streamtmr.data.store import SkeletonStore
    s = SkeletonStore(store)
    ev, _ = eval_subjects(s)
    walk = [s.meta["actions"].index(a) for a in SYNTH_WALKS]
    arrays = ("joints", "target_sync")
    tr = load_windows(s, window, subjects=ev, arrays=arrays, stride=stride)
    te = load_windows(s, window, crop="center", subjects=ev, arrays=arrays)
    tr_m = np.isin(tr["action"], walk) & (tr["view"] != 0) & (tr["rep"] != 0)
    te_m = np.isin(te["action"], walk) & (te["view"] == 0) & (te["rep"] == 0)
    lengths = store_dummy(s).lengths
    out = {}
    for name, d, m in (("train", tr, tr_m), ("test", te, te_m)):
        out[name] = {"original": d["joints"][m], "naive": naive(d["joints"][m], lengths),
                     "target_sync": d["target_sync"][m], "subject": d["subject"][m]}
    return out


def utk_folds(root: str, window: int, stride: int) -> list[dict[str, dict[str, np.ndarray]]]:
    from streamtmr.dummy import default_dummy
    data, _, _ = utkinect_windows(root, window, stride)
    walk = UTK_ACTIONS.index("walk")
    runs = sorted(data)
    folds = []
    for a, b in ((runs[0], runs[1]), (runs[1], runs[0])):
        fold = {}
        for name, d in (("train", data[a]["train"]), ("test", data[b]["test"])):
            m = d["action"] == walk
            fold[name] = {"original": d["joints"][m],
                          "naive": naive(d["joints"][m], default_dummy().lengths),
                          "subject": d["subject"][m]}
        folds.append(fold)
    return folds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--utkinect", required=True)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--out", default="runs/gait_identity.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.time()
    rows: dict[str, list[float]] = {}
    synth = synth_sets(args.data, args.window, args.stride)
    folds = utk_folds(args.utkinect, args.window, args.stride)
    for seed in seeds:
        att = AttackerTraining(width=args.width, epochs=args.epochs, seed=seed)
        for v in ("original", "naive", "target_sync"):
            tr, te = synth["train"], synth["test"]
            rows.setdefault(f"synthkinect {v}", []).append(
                reid(tr[v], tr["subject"], te[v], te["subject"], att))
        for v in ("original", "naive"):
            rows.setdefault(f"utkinect {v}", []).append(float(np.mean(
                [reid(f["train"][v], f["train"]["subject"], f["test"][v], f["test"]["subject"],
                      att) for f in folds])))
        print(f"seed {seed}: {json.dumps({k: v[-1] for k, v in rows.items()})}", flush=True)
    sizes = {"synthkinect": {k: len(synth[k]["subject"]) for k in ("train", "test")},
             "synthkinect_subjects": len(np.unique(synth["test"]["subject"])),
             "utkinect": [{k: len(f[k]["subject"]) for k in ("train", "test")} for f in folds]}
    result = {"reid_top1": {k: {"mean": float(np.mean(v)), "std": float(np.std(v)),
                                "seeds": v} for k, v in rows.items()},
              "windows": sizes, "settings": vars(args), "seconds": round(time.time() - t0)}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for k, v in result["reid_top1"].items():
        print(f"{k:28s} re-ID top-1 {100 * v['mean']:5.1f} ± {100 * v['std']:.1f} %")
    print(json.dumps(sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
