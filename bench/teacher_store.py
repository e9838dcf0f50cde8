"""A store whose extra array is what a teacher model publishes, as a training target.

For distillation experiments (``data.target_array``): the teacher (e.g. the shipped
``matcher``) runs on every recording of the store's ``anonymizer_train`` people through the
node's own path (:func:`streamtmr.offline.publish_sequences`), and its output, turned and moved
frame by frame onto the ``target_sync`` root and hip facing, is written as array ``--array``
(NaN for the other people, whom training never reads). Root and facing come from the own-tempo
target because a student trained on random windows cannot know the teacher's root state (a
leash, a held facing) from before its window; the pose is the teacher's. The other arrays and
the index are linked, not copied.

    python -m bench.teacher_store --model matcher --data data/synthkinect \\
        --out data/synth-mm --array target_mm
    streamtmr train --config ... --data data/synth-mm --set data.target_array=target_mm
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from streamtmr import skeleton


def onto(pose: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``pose [L, 25, 3]`` turned about +Y and moved, frame by frame, so that its root and
    hip facing are ``target``'s."""
    angle = skeleton.facing_angle(pose) - skeleton.facing_angle(target)
    rel = pose - pose[:, skeleton.ROOT, None]
    rel = np.einsum("tij,tkj->tki", skeleton.rotation_y(angle), rel)
    return (rel + target[:, skeleton.ROOT, None]).astype(np.float32)


def write(model: str, data: str | Path, out: str | Path, array: str, chunk: int = 400,
          progress: bool = True) -> Path:
    from engines import create_engine
    from streamtmr.data.store import SkeletonStore
    from streamtmr.offline import publish_sequences

    store, out = SkeletonStore(data), Path(out)
    if array in store.array_names:
        raise ValueError(f"--array {array}: {store.root} already has that array")
    out.mkdir(parents=True, exist_ok=True)
    for f in [*(f"{a}.f32" for a in store.array_names), "index.csv"]:
        link = out / f
        if not link.exists():
            os.symlink((store.root / f).resolve(), link)
    people = set(store.meta["splits"]["anonymizer_train"])
    rows = [r for r in store.rows if r["subject"] in people]
    joints, sync = store.array("joints"), store.array("target_sync")
    dst = np.memmap(out / f"{array}.f32", dtype="<f4", mode="w+", shape=sync.shape)
    dst[:] = np.nan
    engine = create_engine("onnxruntime", model=model, window=None, threads=1, max_batch=64)
    t0 = time.perf_counter()
    for k in range(0, len(rows), chunk):
        part = rows[k:k + chunk]
        spans = [slice(r["offset"], r["offset"] + r["length"]) for r in part]
        published = publish_sequences(engine, [np.ascontiguousarray(joints[s]) for s in spans])
        for s, y in zip(spans, published, strict=True):
            dst[s] = onto(y, np.asarray(sync[s]))
        if progress:
            print(f"{k + len(part)} / {len(rows)} recordings, {time.perf_counter() - t0:.0f} s",
                  flush=True)
    dst.flush()
    engine.close()
    meta = dict(store.meta)
    meta["arrays"] = {**meta["arrays"], array: {"dtype": "float32", "frame_shape": [25, 3]}}
    meta["info"] = {**meta.get("info", {}),
                    "teacher": {"array": array, "model": model, "people": sorted(people),
                                "from": str(store.root.resolve())}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="matcher")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--array", default="target_teacher")
    a = p.parse_args(argv)
    print(f"wrote {write(a.model, a.data, a.out, a.array)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
