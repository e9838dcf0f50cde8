"""How often a pose-atom model chooses the pose the ideal output would: its choice of atom
against the atom nearest to the own-tempo target, on people it never saw.

The own-tempo target quantised to a model's atoms hides people about as well as the ideal
output itself (docs/results.md, "Where the identity is"); what a pose-atom model leaks beyond it
is in the frames where it chooses another atom. Per frame of the first ``--recordings``
camera-0 recordings of a SynthKinect store's ``eval`` people, each run as one track from its
first frame (the parallel form, equal to stepping: tests/test_tmr_stream.py):

- ``agreement``: the share of frames whose chosen atom is the one nearest to the target's pose
  (bone directions in the frame's heading frame, as the decoder chooses them), and
  ``top5``: the share where it is among the model's five highest scores;
- ``chosen_error`` / ``nearest_error``: the mean distance (over the 24 bones' unit directions,
  stacked) of the chosen atom and of the nearest atom from the target's pose;
- per person: the lowest and highest agreement of the ``eval`` people;
- ``pair_agreement`` / ``pair_kl``: between people, on ``--pairs`` cross-identity pair items of
  stream ``PAIR_STREAM`` (:mod:`streamtmr.data.pairs`; the training recipes draw stream 1, so
  these people are new to every model): two people perform the same content, frame-aligned and
  seen by one camera, so the ideal output chooses alike for both. The share of frames where the
  two people's chosen atoms are the same, and the mean symmetric KL divergence between their
  distributions over the atoms (:func:`streamtmr.train.privacy.choice_consistency`, nats). A
  choice that follows the person differs between them where the ideal one would not;
- ``off_action``: the share of frames whose chosen atom is none of the atoms its action's
  neutral performance ever comes nearest to (over the store's training people, camera 0:
  ``atom_action``'s table, :func:`streamtmr.models.pose_atoms.action_table`), and per person
  its lowest and highest: the frames an action-conditioned choice changes; and
  ``action_frames``, the share of frames whose action the model's action head, read on that
  frame's H_action alone (what ``atom_action`` reads), recognises.

Every choice is the one the model publishes before the draw's noise: the largest of its
scores (``FrameDecoder.scores``: the logits over ``atom_sample``'s temperature, plus
``atom_action``'s gate where the model publishes with it); ``pair_kl`` compares the chooser's
own distributions (softmax of the logits).

    python -m bench.atom_choice --data data/synthkinect --models default runs/x/model.safetensors \\
        [--recordings 200] [--pairs 200]
(written to ``bench/results/atom-choice-<date>-<host>.json`` unless ``--out`` says where)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

import numpy as np
import torch

from bench.machine import describe_machine, write_record

#: The pair stream of ``pair_agreement`` (the verification probe's: never a training stream).
PAIR_STREAM = 99


def eval_recordings(data: str | Path, count: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(person, source ``[T, 25, 3]``, own-tempo target) of the first ``count`` camera-0
    recordings of a store's ``eval`` people."""
    from streamtmr.data.store import SkeletonStore

    store = SkeletonStore(data)
    source, target = store.array("joints"), store.array("target_sync")
    return [(int(r["subject"]), np.array(source[r["offset"]:r["offset"] + r["length"]]),
             np.array(target[r["offset"]:r["offset"] + r["length"]]))
            for r in store.rows_of("eval", view=0)[:count]]


def off_action(model, dummy_lengths: torch.Tensor, data: str | Path, count: int,
               table: torch.Tensor) -> dict:
    """``off_action`` of the module docstring over the first ``count`` camera-0 recordings of
    the ``eval`` people, against ``table [actions, K]``, 1 for each action's atoms
    (:func:`streamtmr.models.pose_atoms.action_table`)."""
    from streamtmr.data.store import SkeletonStore

    store = SkeletonStore(data)
    source = store.array("joints")
    h_identity = model.for_dummy(dummy_lengths).h_identity
    per: dict[int, list[torch.Tensor]] = {}
    recognised = []
    for r in store.rows_of("eval", view=0)[:count]:
        _, scores, actions = choices(model, h_identity,
                                     np.array(source[r["offset"]:r["offset"] + r["length"]]))
        per.setdefault(int(r["subject"]), []).append(
            (table[int(r["action"]), scores.argmax(1)] == 0).float())
        recognised.append((actions.argmax(1) == int(r["action"])).float())
    people = [float(torch.cat(v).mean()) for v in per.values()]
    return {"off_action": round(float(torch.cat([x for v in per.values() for x in v]).mean()), 4),
            "person_off_action_min": round(min(people), 4),
            "person_off_action_max": round(max(people), 4),
            "action_frames": round(float(torch.cat(recognised).mean()), 4)}


@torch.no_grad()
def choices(model, h_identity: torch.Tensor, source: np.ndarray
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chooser's logits ``[T, K]`` of a pose-atom StreamTMR over one track ``source [T, 25,
    3]``, styled by the dummy's ``h_identity``; the scores its published choice takes the
    largest of before the draw's noise (``FrameDecoder.scores``: over ``atom_sample``'s
    temperature, with ``atom_action``'s gate where the model publishes with it); and the
    action head's logits ``[T, actions]`` read on each frame (what the gate reads)."""
    dec = model.decoder
    if getattr(dec, "template_switch", 0):
        raise ValueError("bench.atom_choice: the model publishes with atom_template, which plays "
                         "each action's performance instead of its chooser's choice")
    code, _ = model.encode_action(torch.from_numpy(np.ascontiguousarray(source))[None])
    logits = dec.choose(dec.trunk(code.h, h_identity))
    actions = model.action_encoder.head(code.h)
    gated = getattr(dec, "action_floor", 0.0) > 0
    return logits[0], dec.scores(logits, actions if gated else None)[0], actions[0]


def agreement(model, dummy_lengths: torch.Tensor,
              recordings: list[tuple[int, np.ndarray, np.ndarray]]) -> dict:
    """The summary of the module docstring for one model over ``recordings``."""
    from streamtmr.models.pose_atoms import heading_directions, nearest_atoms

    atoms = model.decoder.atoms.flatten(1)                                  # [K, 75]
    h_identity = model.for_dummy(dummy_lengths).h_identity                  # once per model
    hits, top5, chosen_err, nearest_err, per = [], [], [], [], {}
    for person, source, target in recordings:
        _, logits, _ = choices(model, h_identity, source)                # [T, K] scores
        truth = heading_directions(target).flatten(1)                       # [T, 75]
        nearest = nearest_atoms(truth, atoms)
        chosen = logits.argmax(1)
        hit = (chosen == nearest).float()
        hits.append(hit)
        top5.append((logits.topk(min(5, logits.shape[1]), 1).indices == nearest[:, None])
                    .any(1).float())
        chosen_err.append((atoms[chosen] - truth).norm(dim=1))
        nearest_err.append((atoms[nearest] - truth).norm(dim=1))
        per.setdefault(person, []).append(hit)
    people = [float(torch.cat(v).mean()) for v in per.values()]
    return {"frames": int(sum(len(h) for h in hits)), "people": len(per),
            "agreement": round(float(torch.cat(hits).mean()), 4),
            "top5": round(float(torch.cat(top5).mean()), 4),
            "chosen_error": round(float(torch.cat(chosen_err).mean()), 4),
            "nearest_error": round(float(torch.cat(nearest_err).mean()), 4),
            "person_agreement_min": round(min(people), 4),
            "person_agreement_max": round(max(people), 4)}


def pair_agreement(model, dummy_lengths: torch.Tensor, items: int) -> dict:
    """``pair_agreement`` and ``pair_kl`` of the module docstring over ``items`` pair items."""
    from streamtmr.data.pairs import pair_batch
    from streamtmr.train.privacy import choice_consistency

    raw = pair_batch(PAIR_STREAM, np.arange(items), dummy_lengths.numpy())
    h_identity = model.for_dummy(dummy_lengths).h_identity
    same, kl = [], []
    for a, b in zip(raw["a"], raw["b"], strict=True):
        (la, sa, _), (lb, sb, _) = choices(model, h_identity, a), choices(model, h_identity, b)
        same.append((sa.argmax(1) == sb.argmax(1)).float())
        kl.append(float(choice_consistency(la, lb)))
    return {"pairs": items, "pair_agreement": round(float(torch.cat(same).mean()), 4),
            "pair_kl": round(float(np.mean(kl)), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a SynthKinect store")
    p.add_argument("--models", nargs="+", required=True,
                   help="pose-atom checkpoints or shipped names")
    p.add_argument("--recordings", type=int, default=200)
    p.add_argument("--pairs", type=int, default=200,
                   help="cross-identity pair items for the between-people agreement (0: none)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from streamtmr.cache import file_sha256
    from streamtmr.dummy import default_dummy
    from streamtmr.models.checkpoint import load_checkpoint, model_path
    from streamtmr.models.pose_atoms import action_table

    recordings = eval_recordings(a.data, a.recordings)
    if not recordings:
        p.error(f"--data {a.data}: no camera-0 recordings of eval people")
    lengths = torch.from_numpy(default_dummy().lengths.copy())
    rows = []
    for spec in a.models:
        path = model_path(spec)
        model = load_checkpoint(path).eval()
        if not hasattr(model.decoder, "atoms") or not hasattr(model, "encode_action"):
            p.error(f"--models {spec}: not a pose-atom StreamTMR")
        rows.append({"model": f"{spec} sha256:{file_sha256(path)[:12]}",
                     **agreement(model, lengths, recordings),
                     **off_action(model, lengths, a.data, a.recordings,
                                  model.decoder.action_atoms
                                  if hasattr(model.decoder, "action_atoms") else
                                  action_table(a.data, model.decoder.atoms,
                                               int(model.config["num_actions"]))),
                     **(pair_agreement(model, lengths, a.pairs) if a.pairs > 0 else {})})
    record = {"what": "pose-atom choice against the atom nearest to the own-tempo target",
              "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
              "machine": describe_machine(), "recordings": len(recordings),
              "command": "python -m bench.atom_choice " + " ".join(argv or sys.argv[1:]),
              "rows": rows}
    for r in rows:
        print(f"{r['model']:60s} agreement {100 * r['agreement']:5.1f} % (people "
              f"{100 * r['person_agreement_min']:.1f}-{100 * r['person_agreement_max']:.1f}), "
              f"top-5 {100 * r['top5']:5.1f} %, error {r['chosen_error']:.3f} "
              f"(nearest {r['nearest_error']:.3f}), off-action {100 * r['off_action']:4.1f} %, "
              f"action head per frame {100 * r['action_frames']:4.1f} %"
              + (f"; two people alike {100 * r['pair_agreement']:5.1f} %, KL {r['pair_kl']:.3f}"
                 if "pair_agreement" in r else ""))
    print(f"wrote {write_record(record, a.out, 'atom-choice')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
