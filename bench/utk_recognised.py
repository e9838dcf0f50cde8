"""Diagnostic: does a model's encoder read real people's actions person by person?

``atom_template`` publishes only the neutral performance of the action the encoder's action head
recognises, yet real people stay re-identifiable (docs/results.md, "Playing the recognised
action instead of choosing a pose"). If the head, trained on SynthKinect's people, reads one
UTKinect action as different SynthKinect actions for different people, and alike for one
person's two runs, the recognised action alone tells people apart. Per UTKinect segment, played
on the sensor's clock as a fresh track (as ``streamtmr evaluate --utkinect`` streams them), the
recognised action is the most frequent per-frame argmax of the head over the recorded rows of
the segment's centred test window (the window the attackers test on). Per UTKinect action:

- ``same_person``: the share of one person's pairs of runs whose segments are recognised alike;
- ``other_people``: the share of pairs of segments of two people (any runs) recognised alike;
- ``label_reid``: top-1 re-ID of an attacker that sees only the recognised action: for each
  segment of one run, it guesses uniformly among the people whose segment of the same UTKinect
  action in the other run was recognised alike (among everyone where no one's was), both runs
  tested, averaged (chance: one in the number of people);
- ``mapped``: the share of segments recognised as the SynthKinect action whose neutral
  performance stands in for the UTKinect action in ``bench.utk_tempo_floor`` (``TEMPLATE``).

    python -m bench.utk_recognised --model default --utkinect /work/shared/data/real/utkinect \\
        --data data/synthkinect
(written to ``bench/results/utk-recognised-<date>-<host>.json`` unless ``--out`` says where)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import sys

import numpy as np
import torch

from bench.machine import describe_machine, write_record
from bench.utk_tempo_floor import TEMPLATE
from streamtmr.cache import file_sha256
from streamtmr.data.utkinect import ACTIONS, on_sensor_clock, read_utkinect
from streamtmr.data.windows import crop_start
from streamtmr.models.checkpoint import model_path, resolve_model

#: Rows of the attackers' UTKinect test window (``streamtmr evaluate --utkinect``'s).
WINDOW = 32


@torch.no_grad()
def recognised(model, joints: np.ndarray, frame_ids: np.ndarray) -> int:
    """The action a tmr-stream ``model``'s head recognises in one segment (``joints [N, 25, 3]``
    at ``frame_ids [N]``): the most frequent per-frame argmax over the recorded rows of the
    centred ``WINDOW``-row window, the segment played on the sensor's clock from its first
    frame (the lowest index of equally frequent actions)."""
    x = torch.from_numpy(on_sensor_clock(joints, frame_ids))[None]
    code, _ = model.encode_action(x)
    best = model.action_encoder.head(code.h)[0].argmax(-1)
    start = crop_start(len(frame_ids), WINDOW, "center")
    rows = frame_ids[start:start + WINDOW] - frame_ids[0]
    return int(np.bincount(best[torch.from_numpy(rows)].numpy()).argmax())


def label_scores(people: np.ndarray, runs: np.ndarray, actions: np.ndarray,
                 labels: np.ndarray) -> dict[str, float]:
    """``same_person``, ``other_people`` and ``label_reid`` of the module docstring, over
    segments given by their person, run, UTKinect action and recognised action (equal-length
    arrays)."""
    same, other, hits = [], [], []
    everyone = np.unique(people)
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if actions[i] == actions[j] and runs[i] != runs[j] and people[i] == people[j]:
                same.append(labels[i] == labels[j])
            elif actions[i] == actions[j] and people[i] != people[j]:
                other.append(labels[i] == labels[j])
        seen = (actions == actions[i]) & (runs != runs[i])
        alike = np.unique(people[seen & (labels == labels[i])])
        pool = alike if len(alike) else everyone
        hits.append(float(people[i] in pool) / len(pool))
    return {"same_person": round(float(np.mean(same)), 4),
            "other_people": round(float(np.mean(other)), 4),
            "label_reid": round(float(np.mean(hits)), 4),
            "chance": round(1.0 / len(everyone), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default", help="a tmr-stream checkpoint or shipped name")
    p.add_argument("--utkinect", required=True, help="a UTKinect-Action3D folder")
    p.add_argument("--data", help="the SynthKinect store the model was trained on (names its "
                   "actions, for ``mapped``)")
    p.add_argument("--out", help="where to write the record")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model = resolve_model(a.model).eval()
    if model.method != "tmr-stream":
        p.error(f"{a.model} is a {model.method} model; the diagnostic reads a tmr-stream head")
    seqs = read_utkinect(a.utkinect)
    labels = np.array([recognised(model, s.joints, s.frame_ids) for s in seqs])
    people = np.array([s.subject for s in seqs])
    runs = np.array([s.execution for s in seqs])
    actions = np.array([s.action_index for s in seqs])
    names = []
    if a.data:
        from streamtmr.data.store import SkeletonStore

        names = list(SkeletonStore(a.data).meta["actions"])
    record = {
        "what": "bench.utk_recognised: the action a model's head recognises in each UTKinect "
                "segment, and how person-specific it is",
        "model": f"{a.model} sha256:{file_sha256(model_path(a.model))[:12]}",
        "segments": len(seqs), "people": len(np.unique(people)),
        **label_scores(people, runs, actions, labels),
        "mapped": round(float(np.mean([
            names[k] == TEMPLATE[ACTIONS[s.action_index]] if k < len(names) else False
            for k, s in zip(labels, seqs, strict=True)])), 4) if names else None,
        "per_action": {ACTIONS[c]: label_scores(people[actions == c], runs[actions == c],
                                                actions[actions == c], labels[actions == c])
                       for c in np.unique(actions)},
        "recognised": [{"subject": int(s.subject), "run": int(s.execution), "action": s.action,
                        "recognised": int(k)} for s, k in zip(seqs, labels, strict=True)],
        "machine": describe_machine(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.utk_recognised "
                   + shlex.join(argv if argv is not None else sys.argv[1:]),
    }
    path = write_record(record, a.out, "utk-recognised")
    print(f"same person {record['same_person']:.1%}, other people {record['other_people']:.1%}, "
          f"label re-ID {record['label_reid']:.1%} (chance {record['chance']:.1%}); wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
