"""A checkpoint's error on people it never saw: the ``heldout`` block of a model card.

The held-out population is the card's (another SynthKinect population seed: 6 subjects, 6
actions, view 0, 1 repetition, seed 123), rendered afresh. Three numbers against the
ground-truth retarget onto the dummy (``target_sync``), each the mean joint error in mm:

* ``mpjpe_mm``: the centre 64-frame crop of each performance, each crop a track from its first
  frame (what ``tests/test_default_model.py`` checks for the shipped default);
* ``whole_sequences_streamed_mpjpe_mm``: each whole performance as one track from its first frame
  (what the node publishes for a body that stays in view);
* ``naive_mpjpe_mm`` / ``source_mpjpe_mm``: the naive bone swap and the untouched source.

    python -m bench.heldout streamtmr/assets/default_model.safetensors
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from streamtmr.data import synth
from streamtmr.data.datasets import load_windows
from streamtmr.data.store import SkeletonStore
from streamtmr.dummy import default_dummy
from streamtmr.models.checkpoint import load_checkpoint
from streamtmr.models.registry import build_model

SPEC = {"subjects": 6, "actions": 6, "views": [0], "reps": 1, "seed": 123}
TARGET = "target_sync"


def generate_population(folder: str | Path, spec: dict = SPEC) -> Path:
    """Render the held-out population of ``spec`` into ``folder``; returns the store's root."""
    return synth.generate(Path(folder) / "s", n_subjects=spec["subjects"],
                          n_actions=spec["actions"], views=tuple(spec["views"]),
                          reps=spec["reps"], seed=spec["seed"], progress=False)


def _mm(y: torch.Tensor, target: torch.Tensor) -> float:
    return float((y - target).norm(dim=-1).mean()) * 1000


def heldout(checkpoint: str | Path, spec: dict = SPEC) -> dict:
    dummy = torch.tensor(default_dummy().lengths)
    model = load_checkpoint(checkpoint).eval().for_dummy(dummy)
    naive = build_model({"method": "naive"}).for_dummy(dummy)
    with tempfile.TemporaryDirectory() as tmp:
        store = SkeletonStore(generate_population(tmp, spec))
        w = load_windows(store, 64, crop="center", arrays=("joints", TARGET))
        x, y = torch.tensor(np.asarray(w["joints"])), torch.tensor(np.asarray(w[TARGET]))
        seqs = [(torch.tensor(np.asarray(s.arrays["joints"]))[None],
                 torch.tensor(np.asarray(s.arrays[TARGET]))[None]) for s in store]
    with torch.inference_mode():
        whole = [(model(src) - tgt).norm(dim=-1).sum() / tgt[..., 0].numel() for src, tgt in seqs]
        frames = sum(t.shape[1] for _, t in seqs)
        weights = [t.shape[1] / frames for _, t in seqs]
        return {**spec, "target_array": TARGET, "mpjpe_mm": round(_mm(model(x), y), 2),
                "naive_mpjpe_mm": round(_mm(naive(x), y), 2),
                "source_mpjpe_mm": round(_mm(x, y), 2),
                "whole_sequences_streamed_mpjpe_mm": round(
                    1000 * float(sum(w_ * e for w_, e in zip(weights, whole, strict=True))), 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(heldout(args.checkpoint), indent=1))


if __name__ == "__main__":
    main()
