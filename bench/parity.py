"""Streaming parity of a checkpoint on people it never saw: the ``streaming`` block of a card.

Each performance of :mod:`bench.heldout`'s population is streamed frame by frame from its first
frame, and compared with

* the model's parallel pass over the whole performance (``step == forward``), and
* ONNX Runtime's step graph, each side carrying its own state (``onnx``, the first ``--onnx``
  performances).

Reported per performance (the largest coordinate difference in metres, as ONNX parity is
measured, and the frames over 1 mm), so that a single near-tie of a sampled choice shows as
what it is: one performance, a few frames.

    python -m bench.parity streamtmr/assets/default_model.safetensors
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.heldout import SPEC, generate_population
from bench.machine import describe_machine
from streamtmr.data.store import SkeletonStore

TOLERANCE_M = 1e-3


def _stepped(module, x: torch.Tensor) -> torch.Tensor:
    state, ys = module.init_state(1), []
    for t in range(x.shape[1]):
        y, state = module.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1)


def parity(checkpoint: str | Path, onnx_count: int = 12, spec: dict = SPEC) -> dict:
    from engines.onnx_export import export_onnx, max_abs_error
    from engines.source import resolve_source

    source = resolve_source(str(checkpoint))
    if not source.streaming:
        raise SystemExit(f"{checkpoint}: not a streaming model (no step to compare)")
    module = source.module.cpu().eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        seqs = [np.array(s.arrays["joints"], np.float32)
                for s in SkeletonStore(generate_population(tmp, spec))]
        onnx = export_onnx(source, Path(tmp) / "model.onnx") if onnx_count else None
        for i, s in enumerate(seqs):
            x = torch.from_numpy(s)[None]
            with torch.inference_mode():
                gap = (_stepped(module, x) - module(x)).abs().amax((-1, -2))[0]
            row = {"frames": int(x.shape[1]), "step_vs_forward_max_m": float(gap.max()),
                   "frames_over_1mm": torch.nonzero(gap > TOLERANCE_M).flatten().tolist()}
            if onnx is not None and i < onnx_count:
                row["onnx_vs_torch_step_max_m"] = max_abs_error(source, onnx, s[None])
            rows.append(row)
    agree = [r for r in rows if not r["frames_over_1mm"]]
    return {**spec, "machine": describe_machine(), "model": source.name,
            "sha256": source.sha256, "performances": len(rows),
            "frames": sum(r["frames"] for r in rows),
            "step_vs_forward_max_m": max(r["step_vs_forward_max_m"] for r in rows),
            "performances_within_1mm": len(agree),
            "step_vs_forward_max_m_where_within": max(
                (r["step_vs_forward_max_m"] for r in agree), default=None),
            "onnx_vs_torch_step_max_m": max((r["onnx_vs_torch_step_max_m"] for r in rows
                                             if "onnx_vs_torch_step_max_m" in r), default=None),
            "per_performance": rows}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--onnx", type=int, default=12,
                   help="performances also stepped through ONNX Runtime (0: none) [12]")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(parity(args.checkpoint, args.onnx), indent=1))


if __name__ == "__main__":
    main()
