"""UTKinect transfer on the sensor's frame clock: the real-data half of ``streamtmr evaluate``
for a list of models, without the SynthKinect half.

UTKinect's recorder kept about one Kinect frame in four, so its rows played as consecutive
frames move four times faster than a live 30 Hz stream (``streamtmr.eval.realdata``). This
runs :func:`streamtmr.eval.realdata.evaluate_utkinect` — the function ``streamtmr evaluate
--utkinect`` calls, with its full-strength attackers (width 48, 30 epochs, SGN and transformer
re-ID, the action recognizer) — once per attacker seed and clock, and reports per model the
mean ± std over seeds of adaptive re-ID for each backbone (the stronger one is the attack) and
of the retrained action recognizer.

    python -m bench.utk_clock --utkinect /work/shared/data/real/utkinect \\
        --models default runs/mm/casc.safetensors --seeds 0,1,2 --clocks sensor \\
        --out runs/utk_clock.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.machine import describe_machine
from streamtmr.dummy import default_dummy
from streamtmr.eval.attackers import AttackerTraining
from streamtmr.eval.realdata import CLOCKS, evaluate_utkinect
from streamtmr.eval.suite import Candidate, build
from streamtmr.models.checkpoint import default_checkpoint_path


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per method: mean ± std over the runs (seeds) of adaptive re-ID per backbone, the
    stronger backbone, retrained action and MPJPE to the source."""
    out: dict[str, dict] = {}
    for name in runs[0]["methods"]:
        per = [r["methods"][name]["adaptive"] for r in runs]
        archs = list(per[0]["reid_by_arch"])
        reid = {a: [p["reid_by_arch"][a]["top1"] for p in per] for a in archs}
        strong = max(archs, key=lambda a: float(np.mean(reid[a])))
        action = [p["action_top1"] for p in per]
        out[name] = {"reid_by_arch": {a: {"mean": float(np.mean(v)), "std": float(np.std(v))}
                                      for a, v in reid.items()},
                     "reid_arch": strong, "reid_top1": float(np.mean(reid[strong])),
                     "reid_top1_std": float(np.std(reid[strong])),
                     "action_top1": float(np.mean(action)),
                     "action_top1_std": float(np.std(action)),
                     "mpjpe_source_mm": float(np.mean([r["methods"][name]["mpjpe_source_mm"]
                                                       for r in runs]))}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--utkinect", required=True)
    p.add_argument("--models", nargs="+", required=True,
                   help="checkpoints, or 'default' (the shipped model)")
    p.add_argument("--names", nargs="*", help="one display name per model (default: the path)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--clocks", default="sensor", help=f"comma-separated: {', '.join(CLOCKS)}")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--archs", default="sgn,transformer")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    names = a.names or a.models
    if len(names) != len(a.models):
        p.error(f"--names: {len(names)} names for {len(a.models)} models")
    clocks = [c.strip() for c in a.clocks.split(",")]
    if set(clocks) - set(CLOCKS):
        p.error(f"--clocks: unknown {sorted(set(clocks) - set(CLOCKS))}; choose from "
                f"{list(CLOCKS)}")
    torch.set_num_threads(1)
    ckpts = [default_checkpoint_path() if m == "default" else Path(m) for m in a.models]
    methods = [build(Candidate(n, checkpoint=c), default_dummy()) for n, c in zip(names, ckpts)]
    seeds = [int(s) for s in a.seeds.split(",")]
    archs = tuple(x.strip() for x in a.archs.split(","))
    record: dict = {"command": "python -m bench.utk_clock " + " ".join(
                        sys.argv[1:] if argv is None else argv),
                    "machine": describe_machine(),
                    "models": dict(zip(names, map(str, ckpts))), "seeds": seeds,
                    "archs": list(archs), "clocks": {}}
    for clock in clocks:
        runs = []
        for seed in seeds:
            t0 = time.time()
            att = AttackerTraining(width=a.width, epochs=a.epochs, seed=seed)
            runs.append(evaluate_utkinect(a.utkinect, methods, att, reid_archs=archs,
                                          clock=clock))
            print(f"{clock} seed {seed}: {time.time() - t0:.0f} s", flush=True)
            for name, s in summarise(runs).items():
                print(f"  {name}: re-ID {100 * s['reid_top1']:.1f} % ({s['reid_arch']}), "
                      f"action {100 * s['action_top1']:.1f} %", flush=True)
        record["clocks"][clock] = {"summary": summarise(runs), "runs": runs}
        Path(a.out).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
