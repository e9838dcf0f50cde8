"""Does the phase of a matcher's searches change what it leaks? The node's check for
staggering (``streamtmr.stream.state.StateSlots``): bodies that start together get different
search phases, while the evaluation plays every recording from the zero state (phase 0).

Each phase ``p`` is the same checkpoint whose fresh state starts the matcher stage's
``since_search`` at ``p`` — exactly the state the node hands a staggered body — played
through the node's path and attacked on UTKinect's real people by
:func:`streamtmr.eval.realdata.evaluate_utkinect` (the function ``streamtmr evaluate
--utkinect`` runs: full-strength SGN and transformer re-ID, the retrained recognizer), once per
attacker seed. Phase 0 is the published, evaluated schedule (the control).

    python -m bench.search_phase --utkinect /work/shared/data/real/utkinect --model matcher \\
        --phases=-2,0,2 --seeds 0,1,2 --out bench/results/search-phase-....json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch

from bench.machine import describe_machine
from bench.utk_clock import summarise
from streamtmr.dummy import default_dummy
from streamtmr.eval.attackers import AttackerTraining
from streamtmr.eval.protocol import method_from_model
from streamtmr.eval.realdata import evaluate_utkinect
from streamtmr.models.checkpoint import model_path, resolve_model


def phased(model, phase: int):
    """``model`` (a cascade or a matcher) whose fresh states start its matcher's searches
    ``phase`` frames into their period, as :class:`StateSlots` phases a staggered body."""
    stages = list(getattr(model, "stages", [model]))
    matchers = [s for s in stages if s.method == "motion_match"]
    if not matchers:
        raise ValueError(f"{model.method}: no motion-matching stage to phase")
    mm = matchers[-1]
    half = int(mm.config["search_every"]) // 2
    if abs(phase) > half:                              # StateSlots centres its phases
        raise ValueError(f"phase {phase}: must be in [-{half}, {half}]")
    base = type(mm).init_state

    def init_state(self, batch: int) -> dict[str, torch.Tensor]:
        state = base(self, batch)
        state["since_search"] = torch.full_like(state["since_search"], float(phase))
        return state

    mm.init_state = types.MethodType(init_state, mm)
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--utkinect", required=True)
    p.add_argument("--model", default="matcher", help="a matcher checkpoint or shipped name")
    p.add_argument("--phases", default="-2,0,2", help="fresh since_search values, each in "
                   "[-search_every // 2, search_every // 2]: write --phases=-2,0,2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--archs", default="sgn,transformer")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    phases = [int(x) for x in a.phases.split(",")]
    methods = [method_from_model(f"phase {ph}", phased(resolve_model(a.model), ph),
                                 default_dummy(), {"checkpoint": str(model_path(a.model)),
                                                   "phase": ph})
               for ph in phases]
    archs = tuple(x.strip() for x in a.archs.split(","))
    record: dict = {"command": "python -m bench.search_phase " + " ".join(
                        sys.argv[1:] if argv is None else argv),
                    "machine": describe_machine(), "model": a.model,
                    "checkpoint": str(model_path(a.model)), "phases": phases,
                    "seeds": [int(s) for s in a.seeds.split(",")], "archs": list(archs)}
    runs = []
    for seed in record["seeds"]:
        t0 = time.time()
        att = AttackerTraining(width=a.width, epochs=a.epochs, seed=seed)
        runs.append(evaluate_utkinect(a.utkinect, methods, att, reid_archs=archs))
        print(f"seed {seed}: {time.time() - t0:.0f} s", flush=True)
        for name, s in summarise(runs).items():
            print(f"  {name}: re-ID {100 * s['reid_top1']:.1f} ± {100 * s['reid_top1_std']:.1f} %"
                  f" ({s['reid_arch']}), action {100 * s['action_top1']:.1f} %", flush=True)
        record.update(summary=summarise(runs), runs=runs)
        Path(a.out).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
