"""How much of real people's identity is their tempo: UTKinect with every action re-timed.

The ideal streaming output keeps each person's own tempo (the evaluation's own-tempo target),
and on SynthKinect, whose people differ in tempo by about 10 %, it re-identifies 7.8 % of them
(chance 5 %). Real people differ more in how long they take. This diagnostic writes a copy of a
UTKinect-Action3D folder in which every labelled action segment is played back at one duration,
the median over all people of that action, with the skipped frames of the recorder
interpolated (:func:`streamtmr.data.utkinect.on_sensor_clock`) and one row every
``ROW_STEP`` sensor frames from the first, then runs the evaluation's UTKinect protocol
(:func:`streamtmr.eval.realdata.evaluate_utkinect`, sensor clock) on the recorded folder and on
the copy, for the original recordings and the given models. What falls between the two is what
the duration of an action told the attackers; the shape of the motion in time stays.

    python -m bench.utk_tempo --utkinect ../shared/data/real/utkinect --models default \\
        [--seeds 0] [--epochs 30] [--width 32] [--out bench/results/utk-tempo-….json]

The copy is written to a temporary folder and removed after (the recordings are for research
use in this project: never copied into the repository).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.machine import describe_machine, write_record

#: Sensor frames between two rows of the re-timed copy (UTKinect's recorder kept about one in
#: four).
ROW_STEP = 4


def median_durations(seqs) -> dict[str, int]:
    """Each action's median duration in sensor frames (first to last labelled frame, + 1)."""
    per: dict[str, list[int]] = {}
    for s in seqs:
        per.setdefault(s.action, []).append(int(s.frame_ids[-1] - s.frame_ids[0] + 1))
    return {a: int(round(float(np.median(d)))) for a, d in per.items()}


def write_retimed(seqs, durations: dict[str, int], out: Path) -> Path:
    """A UTKinect folder at ``out`` holding ``seqs`` (:class:`UTKSequence`) with every segment
    stretched or squeezed to ``durations[action]`` sensor frames and read one row every
    :data:`ROW_STEP` frames from its first (the last ``(d - 1) % ROW_STEP`` frames fall between
    rows: the same for every person), each run's segments one after another in its joints
    file."""
    from streamtmr.data.utkinect import on_sensor_clock
    from streamtmr.models.action_prior import resample

    out.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[int, int], list] = {}
    for s in seqs:
        runs.setdefault((s.subject, s.execution), []).append(s)
    labels: list[str] = []
    for (subject, execution), part in sorted(runs.items()):
        rows: list[str] = []
        labels.append(f"s{subject:02d}_e{execution:02d}")
        frame = 1
        for s in part:
            dense = on_sensor_clock(s.joints20, s.frame_ids)
            stretch = np.linspace(0.0, len(dense) - 1, durations[s.action])
            timed = resample(dense, stretch)[::ROW_STEP]
            ids = frame + ROW_STEP * np.arange(len(timed))
            rows += [f"{i} " + " ".join(f"{v:.6f}" for v in j.reshape(-1))
                     for i, j in zip(ids, timed, strict=True)]
            labels.append(f"{s.action}: {ids[0]} {ids[-1]}")
            frame = int(ids[-1]) + 10 * ROW_STEP  # a gap no segment reaches into
        (out / f"joints_s{subject:02d}_e{execution:02d}.txt").write_text("\n".join(rows) + "\n")
    (out / "actionLabel.txt").write_text("\n".join(labels) + "\n")
    return out


def attack(root: Path, models: list[str], seed: int, epochs: int, width: int) -> dict:
    """Adaptive and static re-ID and retrained action (SGN, both folds) on ``root``."""
    from streamtmr.dummy import default_dummy
    from streamtmr.eval.attackers import AttackerTraining
    from streamtmr.eval.protocol import method_from_model
    from streamtmr.eval.realdata import evaluate_utkinect
    from streamtmr.models.checkpoint import load_checkpoint, model_path

    dummy = default_dummy()
    methods = [method_from_model(spec, load_checkpoint(model_path(spec)), dummy)
               for spec in models]
    res = evaluate_utkinect(root, methods, AttackerTraining(width=width, epochs=epochs,
                                                            seed=seed, device="cpu"),
                            reid_archs=("sgn",), clock="sensor")
    return {name: {"reid_adaptive": round(m["adaptive"]["reid_top1"], 4),
                   "reid_static": round(m["static"]["reid_top1"], 4),
                   "action_retrained": round(m["adaptive"]["action_top1"], 4)}
            for name, m in res["methods"].items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--utkinect", required=True, help="a UTKinect-Action3D folder")
    p.add_argument("--models", nargs="+", default=["default"],
                   help="checkpoints or shipped names")
    p.add_argument("--seeds", default="0", help="attacker seeds, comma-separated")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    import torch

    from streamtmr.cache import file_sha256
    from streamtmr.data.utkinect import read_utkinect
    from streamtmr.models.checkpoint import model_path

    torch.set_num_threads(1)
    root = Path(a.utkinect)
    seqs = read_utkinect(root)
    durations = median_durations(seqs)
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="utk-tempo-") as tmp:
        retimed = write_retimed(seqs, durations, Path(tmp) / "utkinect")
        for seed in seeds:
            for label, folder in (("as recorded", root), ("one duration per action", retimed)):
                rows.append({"seed": seed, "recordings": label,
                             "results": attack(folder, a.models, seed, a.epochs, a.width)})
                print(f"seed {seed}, {label}: {rows[-1]['results']}", flush=True)
    record = {"what": "UTKinect re-ID and action, recorded and with every action re-timed to "
                      "its median duration",
              "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
              "machine": describe_machine(),
              "command": "python -m bench.utk_tempo " + " ".join(argv or sys.argv[1:]),
              "models": [f"{m} sha256:{file_sha256(model_path(m))[:12]}" for m in a.models],
              "durations_frames": durations, "attacker": {"arch": "sgn", "epochs": a.epochs,
                                                          "width": a.width},
              "rows": rows}
    print(f"wrote {write_record(record, a.out, 'utk-tempo')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
