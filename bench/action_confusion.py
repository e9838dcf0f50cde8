"""Which actions a model's published output loses, and what an action prior says on real people.

Two diagnostics behind docs/motion_matching.md ("An action prior"):

* ``--data``: per-class frozen action accuracy on SynthKinect's unseen people. A recognizer
  (the evaluation's SGN-style classifier, ``--epochs`` / ``--width``) is trained on original
  windows of the evaluation split and tested on each model's test windows as the node
  publishes them (:func:`streamtmr.eval.protocol.published_windows`), and on the own-tempo
  ground truth (``target_sync``). For each action: accuracy and the classes it is taken for.
* ``--utkinect``: for a matcher with an action prior (alone or as a cascade's last stage),
  which of the prior's classes it reads, frame by frame, on each of UTKinect's real actions
  (every segment on the sensor's clock, through the cascade's earlier stages as the node
  runs them), and its mean confidence. No attacker; no label is used for anything but the
  count.

    python -m bench.action_confusion --data data/synthkinect --models matcher
    python -m bench.action_confusion --utkinect /work/shared/data/real/utkinect \
        --models runs/prior/matcher_w1ia.safetensors
    python -m bench.action_confusion --data data/synthkinect --played clap walk_away \
        --models runs/prior/matcher_w1ia.safetensors

``--played`` (with ``--data``): which database classes a prior-conditioned matcher plays on
the unseen people's recordings of some actions, by the code of the frame playing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from streamtmr.eval.report import machine


def per_class(scores: np.ndarray, labels: np.ndarray, names: list[str]) -> dict:
    """Top-1 of every class and the two classes it is most taken for (counts)."""
    pred = scores.argmax(1)
    out = {"top1": float((pred == labels).mean()), "classes": {}}
    for c in np.unique(labels):
        m = labels == c
        wrong = np.bincount(pred[m], minlength=len(names))
        wrong[c] = 0
        out["classes"][names[c]] = {
            "top1": float((pred[m] == c).mean()), "windows": int(m.sum()),
            "taken_for": {names[t]: int(wrong[t]) for t in np.argsort(-wrong)[:2] if wrong[t]}}
    return out


def synthkinect(data: str, models: list[str], epochs: int, width: int) -> dict:
    from streamtmr.eval import metrics
    from streamtmr.eval.attackers import SkeletonClassifier
    from streamtmr.eval.protocol import (
        EvalConfig,
        load_store,
        method_from_model,
        published_windows,
    )
    from streamtmr.models.checkpoint import resolve_model

    cfg = EvalConfig()
    cfg = replace(cfg, attacker=replace(cfg.attacker, epochs=epochs, width=width))
    ev = load_store(data, cfg)
    names = list(ev.info["actions"])
    rec = SkeletonClassifier(cfg.attacker).fit(ev.train["joints"],
                                               {"action": ev.train["action"]})
    y = ev.test["action"]
    outputs = {"original": ev.test["joints"], "target_sync": ev.test["target_sync"]}
    for spec in models:
        method = method_from_model(spec, resolve_model(spec), ev.dummy)
        outputs[spec] = published_windows(method, ev, cfg)["test"]
    return {name: {**per_class(rec.scores(x)["action"], y, names),
                   "pose_mpjpe_sync_mm": metrics.pose_mpjpe_mm(x, ev.test["target_sync"])}
            for name, x in outputs.items()}


def matcher_stages(spec: str):
    """(the model, its earlier stages, its motion-matching stage) of a model spec."""
    from streamtmr.models.checkpoint import resolve_model

    model = resolve_model(spec).eval()
    stages = list(getattr(model, "stages", [model]))
    last = stages[-1]
    if last.method != "motion_match" or last.prior is None:
        raise SystemExit(f"{spec}: its last stage is not a matcher with an action prior")
    return model, stages[:-1], last


@torch.no_grad()
def utkinect(root: str, models: list[str], skip: int = 10) -> dict:
    from streamtmr.data.utkinect import on_sensor_clock, read_utkinect
    from streamtmr.models.action_prior import stage_outputs
    from streamtmr.models.motion_match import query_features

    segments = read_utkinect(root)
    out = {}
    for spec in models:
        _, earlier, mm = matcher_stages(spec)
        lengths = torch.as_tensor(mm.config["dummy_lengths"])
        clips = [on_sensor_clock(s.joints, s.frame_ids) for s in segments]
        for stage in earlier:
            clips = stage_outputs(stage.for_dummy(lengths).eval(), clips)
        classes = list(mm.config["action_prior"]["classes"])
        n = len(classes)
        share, conf = defaultdict(lambda n=n: np.zeros(n)), defaultdict(list)
        for seg, q in zip(segments, query_features(mm, clips), strict=True):
            p = mm.prior(q[None])[0].softmax(-1)[skip:]
            share[seg.action] += np.bincount(p.argmax(-1).numpy(), minlength=len(classes))
            conf[seg.action].append(float(p.max(-1).values.mean()))
        out[spec] = {a: {"confidence": float(np.mean(conf[a])),
                         "read_as": {classes[t]: round(float(s[t] / s.sum()), 3)
                                     for t in np.argsort(-s)[:3]}}
                     for a, s in share.items()}
    return out


@torch.no_grad()
def played(data: str, models: list[str], actions: list[str]) -> dict:
    """For each of ``actions``: which database classes a matcher with an action prior plays
    (share of the frames after the tenth, by the code of the frame playing) on the unseen
    people's test recordings (camera 1, repetition 1), and the share of frames that are not
    the next frame of the one before (jumps)."""
    from streamtmr.data.store import SkeletonStore
    from streamtmr.data.synth import ACTIONS
    from streamtmr.models.cascade import last_stage_key

    store = SkeletonStore(data)
    ev = set(store.meta["splits"]["eval"])
    out = {}
    for spec in models:
        model, earlier, mm = matcher_stages(spec)
        module = model.for_dummy(torch.as_tensor(mm.config["dummy_lengths"])).eval()
        key = last_stage_key(model, "cur")
        classes = list(mm.config["action_prior"]["classes"])
        out[spec] = {}
        for act in actions:
            rows = [i for i, r in enumerate(store.rows) if r["subject"] in ev and r["view"] == 0
                    and r["rep"] == 0 and ACTIONS[int(r["action"])] == act]
            share, jumps = np.zeros(len(classes)), []
            for i in rows:
                x = torch.as_tensor(np.array(store[i].joints, np.float32))
                state, cur = module.init_state(1), []
                for t in range(len(x)):
                    _, state = module.step(x[t:t + 1], state)
                    cur.append(int(state[key][0]))
                codes = mm.features[torch.tensor(cur[10:]), -len(classes):].argmax(-1)
                share += np.bincount(codes.numpy(), minlength=len(classes))
                jumps.append(float(np.mean(np.diff(cur) != 1)))
            share /= share.sum()
            out[spec][act] = {"recordings": len(rows), "jump_share": float(np.mean(jumps)),
                              "played": {classes[t]: round(float(share[t]), 3)
                                         for t in np.argsort(-share)[:3]}}
    return out


def show(title: str, res: dict, line) -> None:
    """Print each model's block: ``title`` with the model's name, then ``line(key, value)``."""
    for name, r in res.items():
        print(f"== {name}: {title}")
        for key, value in r.items():
            print("  " + line(key, value))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--data", help="SynthKinect store: per-class frozen action accuracy")
    p.add_argument("--utkinect", help="UTKinect folder: what each model's action prior reads")
    p.add_argument("--played", nargs="+", default=None, metavar="ACTION",
                   help="with --data: which database classes a prior-conditioned matcher "
                        "plays on these actions' test recordings")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if not (args.data or args.utkinect):
        p.error("give --data and/or --utkinect")
    torch.set_num_threads(args.threads)
    from streamtmr.cache import file_sha256
    from streamtmr.models.checkpoint import model_path

    record: dict = {"machine": machine(), "models": args.models,
                    "sha256": {m: file_sha256(model_path(m)) for m in args.models},
                    "command": "python -m bench.action_confusion " + " ".join(argv or [])}
    if args.data and args.played:
        record["played"] = res = played(args.data, args.models, args.played)
        show("database classes played", res, lambda a, v: (
            f"{a:>12s} " + ", ".join(f"{k} {x:.2f}" for k, x in v["played"].items())
            + f"; jumps on {100 * v['jump_share']:.0f} % of frames"))
    elif args.data:
        record["synthkinect"] = res = synthkinect(args.data, args.models, args.epochs,
                                                  args.width)
        for name, r in res.items():
            show(f"frozen action top-1 {100 * r['top1']:.1f} %, pose MPJPE to the own-tempo "
                 f"target {r['pose_mpjpe_sync_mm']:.1f} mm", {name: r["classes"]},
                 lambda c, v: f"{c:>14s} {100 * v['top1']:5.1f} %  " + ", ".join(
                     f"{k} {n}" for k, n in v["taken_for"].items()))
    if args.utkinect:
        record["utkinect_prior"] = res = utkinect(args.utkinect, args.models)
        show("the action prior on UTKinect", res, lambda a, v: (
            f"{a:>10s} confidence {v['confidence']:.2f}: "
            + ", ".join(f"{k} {x:.2f}" for k, x in v["read_as"].items())))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
