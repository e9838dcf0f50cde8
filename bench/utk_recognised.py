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

With ``--data`` (the SynthKinect store the model trained on), ``synth_control`` asks whether
UTKinect's sensor alone explains a misreading: the same head on the first ``CONTROL``
camera-0 recordings of the store's ``eval`` people, as they are, with the joints a Kinect v1
lacks derived as UTKinect's are (:func:`streamtmr.skeleton.to_kinect_v1`, then
``from_kinect_v1``), and with that and one frame kept every 2–8 (UTKinect's recorder) and the
rest interpolated back as the evaluation does (``on_sensor_clock``): per variant the share of
frames recognised, from frame ``WARM_UP`` on, and of recordings whose most frequent action
there is theirs.

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
from streamtmr import skeleton
from streamtmr.cache import file_sha256
from streamtmr.data.utkinect import ACTIONS, on_sensor_clock, read_utkinect
from streamtmr.data.windows import crop_start
from streamtmr.models.checkpoint import model_path, resolve_model

#: Rows of the attackers' UTKinect test window (``streamtmr evaluate --utkinect``'s).
WINDOW = 32
#: SynthKinect recordings of ``synth_control``, and the frames of each it skips (the encoder's
#: first second, before it has seen the action)
CONTROL = 200
WARM_UP = 30


@torch.no_grad()
def h_action(model, joints: np.ndarray) -> torch.Tensor:
    """H_action ``[T, d_action]`` of a tmr-stream ``model`` over one track ``joints [T, 25,
    3]``, streamed from its first frame (the parallel form, equal to stepping)."""
    x = torch.from_numpy(np.ascontiguousarray(joints, np.float32))[None]
    return model.encode_action(x)[0].h[0]


@torch.no_grad()
def recognised(model, joints: np.ndarray, frame_ids: np.ndarray) -> int:
    """The action a tmr-stream ``model``'s head recognises in one segment (``joints [N, 25, 3]``
    at ``frame_ids [N]``): the most frequent per-frame argmax over the recorded rows of the
    centred ``WINDOW``-row window, the segment played on the sensor's clock from its first
    frame (the lowest index of equally frequent actions)."""
    best = model.action_encoder.head(h_action(model, on_sensor_clock(joints, frame_ids)))
    best = best.argmax(-1)
    start = crop_start(len(frame_ids), WINDOW, "center")
    rows = frame_ids[start:start + WINDOW] - frame_ids[0]
    return int(np.bincount(best[torch.from_numpy(rows)].numpy()).argmax())


def as_recorded(joints: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``joints [T, 25, 3]`` as UTKinect's recorder and the evaluation's clock leave them: one
    frame kept every 2–8 (from the first to the last), the rest interpolated back."""
    ids = [0]
    while ids[-1] < len(joints) - 1:
        ids.append(min(len(joints) - 1, ids[-1] + int(rng.integers(2, 9))))
    ids = np.asarray(ids)
    return on_sensor_clock(joints[ids], ids)


@torch.no_grad()
def synth_control(model, data: str, count: int = CONTROL, seed: int = 0) -> dict[str, dict]:
    """``synth_control`` of the module docstring over the first ``count`` recordings."""
    from streamtmr.data.store import SkeletonStore

    store = SkeletonStore(data)
    source = store.array("joints")
    rng = np.random.default_rng(seed)
    variants = {"as recorded": lambda x: x,
                "Kinect v1 joints": lambda x: skeleton.from_kinect_v1(skeleton.to_kinect_v1(x)),
                "Kinect v1 joints, UTKinect's frames kept": lambda x: as_recorded(
                    skeleton.from_kinect_v1(skeleton.to_kinect_v1(x)), rng)}
    frames: dict[str, list] = {k: [] for k in variants}
    whole: dict[str, list] = {k: [] for k in variants}
    for r in store.rows_of("eval", view=0)[:count]:
        x = np.array(source[r["offset"]:r["offset"] + r["length"]], np.float32)
        for name, change in variants.items():
            best = model.action_encoder.head(h_action(model, change(x))[WARM_UP:])
            best = best.argmax(-1).numpy()
            frames[name].append(best == int(r["action"]))
            whole[name].append(np.bincount(best).argmax() == int(r["action"]))
    return {name: {"frames": round(float(np.concatenate(frames[name]).mean()), 4),
                   "recordings": round(float(np.mean(whole[name])), 4),
                   "count": len(whole[name])} for name in variants}


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
        "synth_control": synth_control(model, a.data) if a.data else None,
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
          f"label re-ID {record['label_reid']:.1%} (chance {record['chance']:.1%})")
    for name, v in (record["synth_control"] or {}).items():
        print(f"SynthKinect, {name}: {v['frames']:.1%} of frames, {v['recordings']:.1%} of "
              "recordings recognised")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
