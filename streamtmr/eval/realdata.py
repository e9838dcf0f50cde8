"""The same privacy/utility check on real recordings: UTKinect-Action3D (Kinect v1, mapped to
Kinect v2's 25 joints by :func:`streamtmr.skeleton.from_kinect_v1`).

10 subjects × 2 runs, each run holding the 10 actions. Windows cover the labelled action
segments. Attackers (re-ID) and the action recognizer are split by run (repetition): trained on
run 1 and tested on run 2, then the other way round; numbers are the mean of the two folds.
Static attackers are trained on original recordings, adaptive ones on the method's output.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from streamtmr.data.utkinect import ACTIONS, read_utkinect
from streamtmr.data.windows import crop, sliding_windows
from streamtmr.eval import metrics
from streamtmr.eval.attackers import AttackerTraining, SkeletonClassifier
from streamtmr.eval.protocol import Method, make_anonymizer

log = logging.getLogger(__name__)

PROTOCOL = ("Windows over the labelled action segments (training: sliding windows, stride "
            "{stride}; testing: one centred window per segment, short segments padded by "
            "holding the last frame). Attackers are split by run: trained on one run of every "
            "subject, tested on the other; mean of both folds. Static: trained on original "
            "recordings; adaptive: retrained on the method's output.")


def utkinect_windows(root: str | Path, window: int = 32, stride: int = 4
                     ) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    """{execution: {"train": windows, "test": windows}} with joints, subject, action arrays."""
    seqs = read_utkinect(root)
    out: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for ex in sorted({s.execution for s in seqs}):
        part = [s for s in seqs if s.execution == ex]
        sets = {}
        for name in ("train", "test"):
            xs, subj, act = [], [], []
            for s in part:
                w = (sliding_windows(s.joints, window, stride) if name == "train"
                     else crop(s.joints, window, "center")[None])
                xs.append(w)
                subj += [s.subject] * len(w)
                act += [s.action_index] * len(w)
            sets[name] = {"joints": np.concatenate(xs).astype(np.float32),
                          "subject": np.asarray(subj), "action": np.asarray(act)}
        out[ex] = sets
    return out


def evaluate_utkinect(root: str | Path, methods: list[Method], attacker: AttackerTraining,
                      window: int = 32, stride: int = 4, batch: int = 64) -> dict[str, Any]:
    """Re-ID and action accuracy before and after each method (plus ``original``)."""
    data = utkinect_windows(root, window, stride)
    runs = sorted(data)
    if len(runs) != 2:
        raise ValueError(f"{root}: expected two runs per subject, found {runs}")
    methods = [Method("original", None, None, None, {"method": "original"}),
               *[m for m in methods if m.name != "original"]]
    folds = [(runs[0], runs[1]), (runs[1], runs[0])]
    per: dict[str, list[dict[str, float]]] = {m.name: [] for m in methods}
    for tr, te in folds:
        train, test = data[tr]["train"], data[te]["test"]
        labels_tr = {"subject": train["subject"], "action": train["action"]}
        static_reid = SkeletonClassifier(attacker).fit(train["joints"],
                                                       {"subject": labels_tr["subject"]})
        static_act = SkeletonClassifier(attacker).fit(train["joints"],
                                                      {"action": labels_tr["action"]})
        for m in methods:
            anonymize = make_anonymizer(m.module, m.window, batch)
            a_train, a_test = anonymize(train["joints"]), anonymize(test["joints"])
            r: dict[str, float] = {}
            s_reid = static_reid.evaluate(a_test, {"subject": test["subject"]})["subject"]
            s_act = static_act.evaluate(a_test, {"action": test["action"]})["action"]
            if m.module is None:
                a_reid, a_act = s_reid, s_act
            else:
                a_reid = SkeletonClassifier(attacker).fit(
                    a_train, {"subject": labels_tr["subject"]}).evaluate(
                    a_test, {"subject": test["subject"]})["subject"]
                a_act = SkeletonClassifier(attacker).fit(
                    a_train, {"action": labels_tr["action"]}).evaluate(
                    a_test, {"action": test["action"]})["action"]
            r.update(static_reid_top1=s_reid["top1"], static_reid_top5=s_reid["top5"],
                     adaptive_reid_top1=a_reid["top1"], adaptive_reid_top5=a_reid["top5"],
                     static_action_top1=s_act["top1"], adaptive_action_top1=a_act["top1"],
                     mpjpe_source_mm=metrics.mpjpe_mm(a_test, test["joints"]))
            per[m.name].append(r)
            log.info("UTKinect fold train run %d: %s %s", tr, m.name, r)
    results = {}
    for name, rs in per.items():
        mean = {k: float(np.mean([r[k] for r in rs])) for k in rs[0]}
        results[name] = {
            "static": {"reid_top1": mean["static_reid_top1"],
                       "reid_top5": mean["static_reid_top5"],
                       "action_top1": mean["static_action_top1"]},
            "adaptive": {"reid_top1": mean["adaptive_reid_top1"],
                         "reid_top5": mean["adaptive_reid_top5"],
                         "action_top1": mean["adaptive_action_top1"]},
            "mpjpe_source_mm": mean["mpjpe_source_mm"], "folds": rs}
    n_subj = len(np.unique(data[runs[0]]["test"]["subject"]))
    return {"dataset": "UTKinect-Action3D", "root": str(root), "subjects": n_subj,
            "actions": len(ACTIONS), "window": window, "stride": stride,
            "windows": int(sum(len(d[s]["subject"]) for d in data.values()
                               for s in ("train", "test"))),
            "protocol": PROTOCOL.format(stride=stride),
            "chance": {"reid_top1": 1.0 / n_subj, "reid_top5": min(5, n_subj) / n_subj,
                       "action_top1": 1.0 / len(ACTIONS)},
            "attacker": attacker.as_dict(), "methods": results}
