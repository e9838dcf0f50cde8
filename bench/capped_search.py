"""How a capped search (``search_leaves``: a fixed number of leaves read per search) differs from
the exact box-tree search, on the queries a motion matcher really searches.

Queries come from real people (UTKinect segments on the sensor's clock) and, with ``--data``,
from the unseen people of a SynthKinect store (camera 0). For each cap ``k`` every query is
searched both ways (:func:`streamtmr.models.box_tree.nearest` and
:func:`~streamtmr.models.box_tree.capped_nearest`) and the record holds: the share of searches
that return the same frame, the share whose cost equals the exact one on the search's grid (a
tie broken towards another frame), the cost excess over the exact best (percentiles, in the
standardised squared cost the matcher's ``margin`` is measured in), and the floats each search
reads (exact: representatives, the boxes the sphere test leaves, the frames the box test
leaves; capped: representatives and ``k`` leaves' frames).

    python -m bench.capped_search --model matcher --leaves 8 16 32 64 \\
        --utkinect /work/shared/data/real/utkinect --data data/synthkinect
(written to ``bench/results/capped-search-<date>-<host>.json`` unless ``--out`` says where)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

import numpy as np
import torch

from bench.box_tree_pruning import queries_of, searched_queries, tree_matcher
from bench.machine import describe_machine, write_record

#: The matcher's cost grid (``MotionMatching._search``: costs kept on a 1e-3 grid).
SCALE = 1e3


def store_tracks(data: str | Path, count: int, array: str = "joints") -> list[np.ndarray]:
    """``array`` of the first ``count`` camera-0 recordings of a store's ``eval`` people."""
    from streamtmr.data.store import SkeletonStore

    store = SkeletonStore(data)
    people = set(store.meta["splits"]["eval"])
    joints = store.array(array)
    rows = [r for r in store.rows if r["subject"] in people and r["view"] == 0][:count]
    return [np.array(joints[r["offset"]:r["offset"] + r["length"]]) for r in rows]


def compare(q: torch.Tensor, tree: dict[str, torch.Tensor], leaves: list[int]) -> dict:
    """Exact against capped search of the queries ``q [Q, D]``, per cap."""
    from streamtmr.models import box_tree

    with torch.no_grad():
        exact, exact_score = box_tree.nearest(q, tree, SCALE)
        body, _, _ = box_tree.candidates(q, tree, slack=2.0 / SCALE)
        pb, _, _ = box_tree.sphere_leaves(q, tree, slack=2.0 / SCALE)
        k_all, d = tree["rep_feat"].shape
        m = tree["leaf_frame"].shape[1]
        read = (k_all * d + torch.bincount(pb, minlength=len(q)) * 2 * d
                + torch.bincount(body, minlength=len(q)) * m * d).double()
        out = {"queries": len(q), "exact_floats_read": _pct(read)}
        for k in leaves:
            frame, score = box_tree.capped_nearest(q, tree, SCALE, k)
            excess = (score - exact_score).double()
            out[f"leaves_{k}"] = {
                "same_frame": float((frame == exact).double().mean()),
                "same_cost": float((excess <= 0.5 / SCALE).double().mean()),
                "excess_over_0.01": float((excess > 0.01).double().mean()),
                "excess": _pct(excess),
                "floats_read": k_all * d + k * m * d,
            }
    return out


def _pct(x: torch.Tensor) -> dict:
    v = x.numpy()
    return {f"p{p}": round(float(np.percentile(v, p)), 5) for p in (50, 90, 99)} | {
        "max": round(float(v.max()), 5)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="matcher")
    p.add_argument("--leaves", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--utkinect", required=True)
    p.add_argument("--every", type=int, default=3, help="every k-th UTKinect segment [3]")
    p.add_argument("--data", help="a SynthKinect store: also its unseen people's queries")
    p.add_argument("--recordings", type=int, default=120,
                   help="the store's recordings played [120]")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if any(k < 1 for k in a.leaves):
        p.error("--leaves: every cap must be >= 1")
    torch.set_num_threads(1)
    spec, model, stage = tree_matcher(a.model)
    from streamtmr.models import box_tree
    tree = {k: getattr(stage, "tree_" + k) for k in box_tree.TREE_KEYS}
    sets = {"utkinect": searched_queries(model, a.utkinect, a.every)}
    if a.data:
        sets["synthkinect_unseen"] = queries_of(model, store_tracks(a.data, a.recordings))
    record = {"what": "capped against exact box-tree search",
              "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
              "machine": describe_machine(), "model": spec.ident,
              "command": "python -m bench.capped_search " + " ".join(argv or sys.argv[1:]),
              "margin": float(stage.config["margin"]),
              "sets": {name: compare(q, tree, a.leaves) for name, q in sets.items()}}
    for name, r in record["sets"].items():
        for k in a.leaves:
            c = r[f"leaves_{k}"]
            print(f"{name} ({r['queries']} searches), {k} leaves: same frame "
                  f"{c['same_frame']:.1%}, same cost {c['same_cost']:.1%}, excess > 0.01 "
                  f"{c['excess_over_0.01']:.1%} (p99 {c['excess']['p99']:.4f}), floats "
                  f"{c['floats_read']:,} against exact p50 {r['exact_floats_read']['p50']:,.0f} "
                  f"/ p99 {r['exact_floats_read']['p99']:,.0f}")
    print(f"wrote {write_record(record, a.out, 'capped-search')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
