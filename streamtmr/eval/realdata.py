"""The same privacy/utility check on real recordings: UTKinect-Action3D (Kinect v1, mapped to
Kinect v2's 25 joints by :func:`streamtmr.skeleton.from_kinect_v1`).

10 subjects × 2 runs, each run holding the 10 actions. Windows cover the labelled action
segments. Attackers (re-ID) and the action recognizer are split by run (repetition): trained on
run 1 and tested on run 2, then the other way round; numbers are the mean of the two folds.
Static attackers are trained on original recordings, adaptive ones on the method's output.
Each method's output is what the node publishes (:mod:`streamtmr.eval.published`): every
labelled segment played through the node's path as one track, the windows then cut from it.

The recorder kept about one Kinect frame in four (frame ids 2–8 apart). A live node gets every
frame at 30 Hz, so by default (``clock="sensor"``) each segment is played on the sensor's frame
clock (:func:`streamtmr.data.utkinect.on_sensor_clock`: the skipped frames interpolated) and
the published stream is read back at the recorded rows, so the attackers see the same frames
as before. ``clock="rows"`` plays the recorded rows as consecutive frames (the protocol before
2026-12-03): 4× faster motion than the model runs on, which a model with temporal state reads
as another motion.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from streamtmr.data.real_windows import utkinect_subjects_seen
from streamtmr.data.utkinect import ACTIONS, of_subjects, on_sensor_clock, read_utkinect
from streamtmr.data.windows import crop_start, window_starts
from streamtmr.eval import metrics
from streamtmr.eval.attackers import AttackerTraining, SkeletonClassifier
from streamtmr.eval.protocol import Method
from streamtmr.eval.published import windows_of

log = logging.getLogger(__name__)

PROTOCOL = ("Windows over the labelled action segments (training: sliding windows, stride "
            "{stride}; testing: one centred window per segment, short segments padded by "
            "holding the last frame). Attackers are split by run: trained on one run of every "
            "subject, tested on the other; mean of both folds. Static: trained on original "
            "recordings; adaptive: retrained on the method's output. {clock}")
CLOCKS = {"sensor": "Methods run on the sensor's 30 Hz frame clock (the frames the recorder "
                    "skipped interpolated); their output is read at the recorded rows.",
          "rows": "Methods run on the recorded rows as consecutive frames (about 4x the "
                  "motion's speed)."}


def utkinect_windows(root: str | Path, window: int = 32, stride: int = 4,
                     subjects: tuple[int, ...] | None = None,
                     ) -> tuple[dict[int, dict[str, dict[str, np.ndarray]]], list[np.ndarray],
                                list[np.ndarray]]:
    """({execution: {"train": windows, "test": windows}}, segments, frame ids): windows with
    joints, subject, action, ``segment`` (index into the segments) and ``start`` arrays (rows
    of the recording); each segment's Kinect frame ids; only the people of ``subjects`` when
    given (raises ``ValueError`` naming any the folder lacks)."""
    seqs = read_utkinect(root)
    if subjects is not None:
        seqs = of_subjects(seqs, subjects, root)
    segments = [np.asarray(s.joints, np.float32) for s in seqs]
    frame_ids = [np.asarray(s.frame_ids, np.int64) for s in seqs]
    out: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for ex in sorted({s.execution for s in seqs}):
        part = [k for k, s in enumerate(seqs) if s.execution == ex]
        sets = {}
        for name in ("train", "test"):
            starts = {k: (window_starts(len(segments[k]), window, stride) if name == "train"
                          else np.array([crop_start(len(segments[k]), window, "center")]))
                      for k in part}
            seg = np.concatenate([np.full(len(starts[k]), k) for k in part])
            start = np.concatenate([starts[k] for k in part])
            ident = {k: k for k in part}
            sets[name] = {"joints": windows_of(segments, seg, start, window, ident),
                          "subject": np.asarray([seqs[k].subject for k in seg]),
                          "action": np.asarray([seqs[k].action_index for k in seg]),
                          "segment": seg, "start": start}
        out[ex] = sets
    return out, segments, frame_ids


def published_segments(method: Method, segments: list[np.ndarray],
                       frame_ids: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """What the node publishes for every segment (``method.anonymizer`` on a torch engine),
    one array per segment with one frame per recorded row. With ``frame_ids`` every segment
    plays on the sensor's frame clock (:func:`on_sensor_clock`) and the output is read back
    at the recorded rows; without, the rows play as consecutive frames."""
    import torch

    from engines import create_engine
    from streamtmr.eval.published import publish_sequences

    streams = (segments if frame_ids is None else
               [on_sensor_clock(s, f) for s, f in zip(segments, frame_ids, strict=True)])
    engine = create_engine("torch", model=method.anonymizer, window=None, max_batch=64,
                           threads=torch.get_num_threads())
    try:
        torch.manual_seed(0)
        out = publish_sequences(engine, streams, leak_guard=method.leak_guard).outputs
    finally:
        engine.close()
    return out if frame_ids is None else [o[f - f[0]] for o, f in zip(out, frame_ids,
                                                                       strict=True)]


def evaluate_utkinect(root: str | Path, methods: list[Method], attacker: AttackerTraining,
                      window: int = 32, stride: int = 4, batch: int = 64,
                      reid_archs: tuple[str, ...] = ("sgn",),
                      subjects: tuple[int, ...] | None = None,
                      clock: str = "sensor") -> dict[str, Any]:
    """Re-ID and action accuracy before and after each method (plus ``original``). Re-ID is
    attacked by every backbone of ``reid_archs``; the one with the higher mean adaptive top-1
    over both folds is reported (``reid_arch``; all in ``reid_by_arch``). ``subjects`` keeps
    only those people (the half an anonymizer trained with ``data.real_utkinect_subjects`` on
    the other half never saw); chance follows their number. ``clock`` is one of
    :data:`CLOCKS` (module docstring)."""
    if clock not in CLOCKS:
        raise ValueError(f"UTKinect clock {clock!r}: expected one of {list(CLOCKS)}")
    data, segments, frame_ids = utkinect_windows(root, window, stride, subjects)
    runs = sorted(data)
    _check_unseen(methods, {int(v) for d in data.values() for v in d["test"]["subject"]})
    if len(runs) != 2:
        raise ValueError(f"{root}: expected two runs per subject, found {runs}")
    methods = [Method("original", None, None, None, {"method": "original"}),
               *[m for m in methods if m.name != "original"]]
    per: dict[str, list[dict[str, float]]] = {m.name: [] for m in methods}
    published = {m.name: published_segments(m, segments,
                                            frame_ids if clock == "sensor" else None)
                 for m in methods if m.module is not None}
    ident = dict(enumerate(range(len(segments))))
    for tr, te in ((runs[0], runs[1]), (runs[1], runs[0])):
        train, test = data[tr]["train"], data[te]["test"]
        static = _fit(train["joints"], train, attacker, reid_archs)
        for m in methods:
            if m.module is None:
                a_train, a_test = train["joints"], test["joints"]
            else:
                a_train, a_test = (windows_of(published[m.name], d["segment"], d["start"],
                                              window, ident) for d in (train, test))
            adaptive = static if m.module is None else _fit(a_train, train, attacker,
                                                            reid_archs)
            r = {**_scores("static", static, a_test, test),
                 **_scores("adaptive", adaptive, a_test, test),
                 "mpjpe_source_mm": metrics.mpjpe_mm(a_test, test["joints"])}
            per[m.name].append(r)
            log.info("UTKinect fold train run %d: %s %s", tr, m.name, r)
    n_subj = len(np.unique(data[runs[0]]["test"]["subject"]))
    return {"dataset": "UTKinect-Action3D", "root": str(root), "subjects": n_subj,
            **({"subject_ids": sorted(subjects)} if subjects is not None else {}),
            "actions": len(ACTIONS), "window": window, "stride": stride,
            "windows": int(sum(len(d[s]["subject"]) for d in data.values()
                               for s in ("train", "test"))),
            "protocol": PROTOCOL.format(stride=stride, clock=CLOCKS[clock]), "clock": clock,
            "chance": {"reid_top1": 1.0 / n_subj, "reid_top5": min(5, n_subj) / n_subj,
                       "action_top1": 1.0 / len(ACTIONS)},
            "attacker": attacker.as_dict(), "reid_archs": list(reid_archs),
            "methods": {name: _fold_means(rs, reid_archs) for name, rs in per.items()}}


def _check_unseen(methods: list[Method], evaluated: set[int]) -> None:
    """Refuse a model that trained on any evaluated person (its checkpoint's
    ``data.real_subjects`` names UTKinect people ``utkinect:sNN``)."""
    for m in methods:
        seen = utkinect_subjects_seen(m.info.get("real_subjects", ()))
        if seen & evaluated:
            raise ValueError(f"{m.name}: trained on UTKinect subjects {sorted(seen & evaluated)}"
                             f"; evaluate it on people it never saw (--utk-subjects "
                             f"{','.join(str(s) for s in sorted(evaluated - seen))})")


def _fit(x: np.ndarray, labels: dict[str, np.ndarray], attacker: AttackerTraining,
         reid_archs: tuple[str, ...]) -> dict[str, SkeletonClassifier]:
    """One re-ID classifier per backbone and the action recognizer, trained on ``x``."""
    out = {f"reid@{a}": SkeletonClassifier(replace(attacker, arch=a)).fit(
        x, {"subject": labels["subject"]}) for a in reid_archs}
    out["action"] = SkeletonClassifier(attacker).fit(x, {"action": labels["action"]})
    return out


def _scores(mode: str, att: dict[str, SkeletonClassifier], x: np.ndarray,
            test: dict[str, np.ndarray]) -> dict[str, float]:
    r = {}
    for key, clf in att.items():
        if key.startswith("reid@"):
            s = clf.evaluate(x, {"subject": test["subject"]})["subject"]
            r[f"{mode}_reid_top1@{key[5:]}"], r[f"{mode}_reid_top5@{key[5:]}"] = (
                s["top1"], s["top5"])
    r[f"{mode}_action_top1"] = att["action"].evaluate(x, {"action": test["action"]})[
        "action"]["top1"]
    return r


def _fold_means(rs: list[dict[str, float]], reid_archs: tuple[str, ...]) -> dict[str, Any]:
    mean = {k: float(np.mean([r[k] for r in rs])) for k in rs[0]}
    arch = max(reid_archs, key=lambda a: mean[f"adaptive_reid_top1@{a}"])
    out: dict[str, Any] = {"mpjpe_source_mm": mean["mpjpe_source_mm"], "folds": rs}
    for mode in ("static", "adaptive"):
        out[mode] = {"reid_top1": mean[f"{mode}_reid_top1@{arch}"],
                     "reid_top5": mean[f"{mode}_reid_top5@{arch}"], "reid_arch": arch,
                     "reid_by_arch": {a: {"top1": mean[f"{mode}_reid_top1@{a}"],
                                          "top5": mean[f"{mode}_reid_top5@{a}"]}
                                      for a in reid_archs},
                     "action_top1": mean[f"{mode}_action_top1"]}
    return out
