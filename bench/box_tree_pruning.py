"""How much of a motion matcher's database its box-tree search reads, on real people, and how
long the tree takes to build.

UTKinect segments (real people, the sensor's clock) are played through the model; every query
its motion-matching stage searches is kept, and for each the share of searchable frames in
the leaves left after pruning (:func:`streamtmr.models.box_tree.candidates`) is recorded:
brute force reads all of them; so is the share of leaves whose box is read, those left by the
sphere test (:func:`~streamtmr.models.box_tree.sphere_leaves`). The tree's build is timed on
the same database.

    python -m bench.box_tree_pruning --model matcher \\
        --utkinect /work/shared/data/real/utkinect --out bench/results/box-tree-<date>-<host>.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.machine import describe_machine
from bench.models import resolve_model_spec


def matching_stage(model):
    stages = getattr(model, "stages", [model])
    found = [s for s in stages if s.method == "motion_match"]
    if not found:
        raise ValueError(f"{model.method}: no motion-matching stage")
    return found[-1]


def tree_matcher(name: str):
    """``(spec, model, matching stage)`` of a model spec whose matcher searches by a tree
    (SystemExit naming it otherwise)."""
    spec = resolve_model_spec(name)
    model = spec.model
    if isinstance(model, str):                      # a shipped name or a checkpoint path
        from streamtmr.models.checkpoint import resolve_model
        model = resolve_model(model)
    model = model.eval()
    stage = matching_stage(model)
    if not stage.has_tree:
        raise SystemExit(f"{name}: its matching stage searches by brute force (search_leaf 0)")
    return spec, model, stage


def queries_of(model, tracks) -> torch.Tensor:
    """Every (finite) query the model's matching stage searches while each track
    ``[L, 25, 3]`` is played through the model from a fresh state: ``[Q, D]``."""
    stage = matching_stage(model)
    search, kept = stage._search, []

    def keep(query, need, t):
        kept.append(query[need].clone())
        return search(query, need, t)

    stage._search = keep
    try:
        lengths = torch.as_tensor(stage.config["dummy_lengths"])[None]
        for x in tracks:
            with torch.no_grad():
                model.retarget(torch.nan_to_num(torch.as_tensor(x))[None], lengths)
    finally:
        del stage._search
    q = torch.cat(kept)
    return q[torch.isfinite(q).all(1)]


def searched_queries(model, utkinect: str | Path, every: int = 3) -> torch.Tensor:
    """Every query the model's matching stage searches on every ``every``-th UTKinect segment."""
    from streamtmr.data.utkinect import on_sensor_clock, read_utkinect

    return queries_of(model, [on_sensor_clock(seg.joints, seg.frame_ids)
                              for seg in read_utkinect(utkinect)[::every]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="matcher")
    p.add_argument("--utkinect", required=True)
    p.add_argument("--every", type=int, default=3, help="every k-th segment [3]")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from streamtmr.models import box_tree

    torch.set_num_threads(1)
    spec, model, stage = tree_matcher(a.model)
    s = int(stage.config.get("search_frames") or len(stage.features))
    builds = []
    for _ in range(3):
        t0 = time.perf_counter()
        box_tree.build(stage.features[:s], stage.landing[:s], int(stage.config["search_leaf"]))
        builds.append(time.perf_counter() - t0)
    tree = {k: getattr(stage, "tree_" + k) for k in box_tree.TREE_KEYS}
    searchable = int(torch.isfinite(stage.landing[:s]).sum())
    q = searched_queries(model, a.utkinect, a.every)
    share = np.array([box_tree.candidates(q[i : i + 1], tree, 2e-3)[1].numel() / searchable
                      for i in range(len(q))])
    leaves = len(tree["leaf_frame"])
    boxes = np.array([len(box_tree.sphere_leaves(q[i : i + 1], tree, 2e-3)[1]) / leaves
                      for i in range(len(q))])
    record = {
        "kind": "box_tree_pruning", "date": _dt.date.today().isoformat(),
        "command": "python -m bench.box_tree_pruning " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv),
        "machine": describe_machine(), "model": spec.ident,
        "leaves": list(tree["leaf_frame"].shape), "searchable_frames": searchable,
        "build_s": {"median": round(float(np.median(builds)), 2), "max": round(max(builds), 2)},
        "searches": len(q),
        "share_read": {k: round(float(v), 4) for k, v in (
            ("mean", share.mean()), ("p50", np.percentile(share, 50)),
            ("p90", np.percentile(share, 90)), ("p99", np.percentile(share, 99)),
            ("max", share.max()))},
        "boxes_read": {k: round(float(np.percentile(boxes, p)), 4) for k, p in (
            ("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))} | {
            "mean": round(float(boxes.mean()), 4)},
    }
    Path(a.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"{record['model']}: {len(q)} searches, share read mean {share.mean():.4f} p99 "
          f"{np.percentile(share, 99):.4f}; boxes read mean {boxes.mean():.4f}; "
          f"build {record['build_s']['median']} s; wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
