"""Diagnostic: what does a real person's *timing* alone reveal? (UTKinect's floor)

SynthKinect has an ideal streaming output, the dummy's neutral performance at the person's own
tempo; real recordings have none. Its closest stand-in here: every UTKinect segment replaced by
one fixed neutral performance of the dummy (SynthKinect ``target``, one training person, the
frontal camera) of the matching action, stretched uniformly to the segment's duration. What is
left of the person is the action and how long they took. Variants:

- ``template, own duration``: placed where the template stands (no room path, no heading);
- ``template, own duration, own place``: its root path and facing replaced by the person's,
  frame by frame (what the node must publish for VR);
- ``template, fixed duration``: the template at its own length (cropped or padded by holding
  the last frame): the action alone, the chance-level control.

The attackers are those of ``streamtmr evaluate --utkinect`` (split by run, mean of both
folds), retrained on each variant.

    python -m bench.utk_tempo_floor --data data/synthkinect \\
        --utkinect /work/shared/data/real/utkinect --seeds 0,1,2 --out runs/utk_tempo_floor.json
"""

from __future__ import annotations

import argparse
import shlex
import sys

import numpy as np
import torch

from bench.motion_match_leak import swap_heading, swap_root
from bench.root_channel_real import add_attack_arguments, attack_variants
from streamtmr.data.store import SkeletonStore
from streamtmr.data.utkinect import ACTIONS, read_utkinect
from streamtmr.eval.realdata import utkinect_windows

#: UTKinect action → the SynthKinect action whose neutral performance stands in for it.
TEMPLATE = {"walk": "walk_towards", "sitDown": "sit_down", "standUp": "stand_up",
            "pickUp": "pick_up", "carry": "walk_towards", "throw": "throw", "push": "punch",
            "pull": "punch", "waveHands": "wave", "clapHands": "clap"}


def templates(store: SkeletonStore) -> dict[str, np.ndarray]:
    """One neutral performance of the dummy per SynthKinect action name (the first training
    person, frontal camera, first repetition)."""
    names = store.meta["actions"]
    person = store.meta["splits"]["anonymizer_train"][0]
    out = {}
    for seq in store:
        m = seq.meta
        if m["subject"] == person and m["view"] == 1 and m["rep"] == 0:
            out[names[m["action"]]] = np.asarray(seq.arrays["target"], np.float32)
    return out


def stretch(seq: np.ndarray, length: int) -> np.ndarray:
    """``seq`` [T, J, 3] resampled uniformly in time to ``length`` frames (linear)."""
    t = np.linspace(0.0, len(seq) - 1, length)
    i = np.clip(np.floor(t).astype(int), 0, len(seq) - 2)
    w = (t - i)[:, None, None].astype(np.float32)
    return (1 - w) * seq[i] + w * seq[i + 1]


def fixed(seq: np.ndarray, length: int) -> np.ndarray:
    """``seq`` cropped to ``length`` frames, or padded by holding its last frame."""
    if len(seq) >= length:
        return seq[:length].copy()
    return np.concatenate([seq, np.repeat(seq[-1:], length - len(seq), 0)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a SynthKinect store (the templates)")
    add_attack_arguments(p)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    tmpl = templates(SkeletonStore(a.data))
    seqs = read_utkinect(a.utkinect)
    data, segments, _ = utkinect_windows(a.utkinect)
    own = [stretch(tmpl[TEMPLATE[ACTIONS[s.action_index]]], len(x))
           for s, x in zip(seqs, segments, strict=True)]
    variants = {
        "template, own duration": own,
        "template, own duration, own place": [swap_heading(swap_root(y, x), x)
                                              for y, x in zip(own, segments, strict=True)],
        "template, fixed duration": [fixed(tmpl[TEMPLATE[ACTIONS[s.action_index]]], len(x))
                                     for s, x in zip(seqs, segments, strict=True)]}
    attack_variants(variants, data, a, template=TEMPLATE,
                    command="python -m bench.utk_tempo_floor "
                            + shlex.join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
