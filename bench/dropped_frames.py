"""What filling dropped sensor frames costs the node: a source that delivers every frame, and
one that delivers every ``--every``-th (the others dropped, as UTKinect's recorder did), each
played in real time through the node (``streamtmr.stream.node.Node``, default settings) with
a streaming model, filling on and off. Every cell times ``--frames`` node steps (≥ 600, so
that p99 means something) of real SynthKinect motion for ``--bodies`` people.

    python -m bench.dropped_frames --model runs/mm/casc_leash_vocab.safetensors \\
        --out bench/results/dropped-frames-<date>-<host>.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.engines import build_engine, parse_engine_specs
from bench.machine import describe_machine, load_average
from bench.models import resolve_model_spec
from bench.motion import motion_clips
from bench.stats import MIN_P99_SAMPLES
from streamtmr.stream.frame import Body, Frame
from streamtmr.stream.node import Node, NodeConfig


def cell(engine, clips: list[np.ndarray], every: int, fill: int, frames: int) -> dict[str, Any]:
    """``frames`` node steps fed every ``every``-th sensor frame of ``clips`` (one body each;
    ``main`` draws clips long enough never to wrap), stamped with and paced by the sensor's
    30 Hz clock; the node's latency and counters."""
    node = Node(engine, config=NodeConfig(fill_dropped=fill))
    start = time.monotonic()
    try:
        for n in range(frames):  # in real time: a frame when the sensor would deliver it
            f = n * every
            time.sleep(max(0.0, start + f / 30 - time.monotonic()))
            bodies = [Body(i, c[f % len(c)]) for i, c in enumerate(clips)]
            node.step(Frame(n, int(f * 1e9 / 30), bodies, "bench"))
        snap = node.metrics.snapshot()
    finally:
        node.close()
    c = snap["counters"]
    return {"every": every, "fill_dropped": fill, "frames": frames,
            "frames_out": c.get("frames_out", 0), "overruns": c.get("overruns", 0),
            "frames_filled": c.get("frames_filled", 0), "fill_skipped": c.get("fill_skipped", 0),
            "total_ms": snap["latency"]["total"], "infer_ms": snap["latency"]["infer"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a streaming checkpoint, or 'default'")
    p.add_argument("--engine", default="onnxruntime@1")
    p.add_argument("--bodies", type=int, default=1)
    p.add_argument("--every", type=int, default=4, help="deliver every Nth sensor frame [4]")
    p.add_argument("--frames", type=int, default=MIN_P99_SAMPLES)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.frames < MIN_P99_SAMPLES or a.every < 2 or a.bodies < 1:
        p.error(f"--frames >= {MIN_P99_SAMPLES}, --every >= 2 and --bodies >= 1 are needed")
    specs, skipped = parse_engine_specs([a.engine])
    if not specs:
        p.error(f"--engine {a.engine}: not available here ({skipped})")
    model = resolve_model_spec(a.model)
    engine = build_engine(model, specs[0])
    if not getattr(engine, "streaming", False):
        p.error(f"--model {a.model}: not a streaming model (filling needs a state)")
    clips = motion_clips(a.bodies, seed=0, min_frames=a.frames * a.every)  # never looped
    load_before = load_average()
    rows = []
    for every, fill in ((1, 7), (a.every, 7), (a.every, 0)):
        rows.append(cell(engine, clips, every, fill, a.frames))
        r = rows[-1]
        print(f"every {every}, fill {fill}: total p50/p99 {r['total_ms'].get('p50_ms')}/"
              f"{r['total_ms'].get('p99_ms')} ms, filled {r['frames_filled']}, overruns "
              f"{r['overruns']}", flush=True)
    record = {"kind": "dropped_frames", "date": _dt.date.today().isoformat(),
              "command": "python -m bench.dropped_frames " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "machine": describe_machine(), "load_before": load_before,
              "load_after": load_average(), "model": model.ident, "engine": a.engine,
              "bodies": a.bodies, "rows": rows}
    Path(a.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
