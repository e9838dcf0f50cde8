"""Diagnostic: would a reading of real motion hide real people? A tmr-stream copy whose action
head alone is refitted on some UTKinect people (never shipped).

``atom_template`` publishes the neutral performance of the action the encoder's head recognises;
on real people that head, trained on SynthKinect's people, reads most motions as other actions,
and which ones depends on the person (``bench.utk_recognised``). This writes a copy of such a
model whose head (a linear layer on H_action) is refitted on the UTKinect segments of
``--subjects`` (both runs, every frame, each segment played on the sensor's clock as a fresh
track), each UTKinect action labelled with the SynthKinect action whose neutral performance
stands in for it (``bench.utk_tempo_floor.TEMPLATE``); the encoder, the decoder and the
performances stay as they are. The copy names those people in its ``data.real_subjects``, so
``streamtmr evaluate --utkinect`` refuses it on them: attack it on the others
(``--utk-subjects``), as issue 16's two-fold split by person asks.

    python -m bench.utk_real_head --base runs/tmpl/t8_leash_f0.1.safetensors \\
        --utkinect /work/shared/data/real/utkinect --data data/synthkinect --subjects 1 2 3 4 5 \\
        --out runs/tmpl/t8_head_s1-5.safetensors
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch
import torch.nn.functional as F

from bench.utk_recognised import h_action
from bench.utk_tempo_floor import TEMPLATE
from streamtmr.data.real_windows import real_people_names
from streamtmr.data.store import SkeletonStore
from streamtmr.data.synth_motion import ACTION_SPECS
from streamtmr.data.utkinect import of_subjects, on_sensor_clock, read_utkinect

#: Full-batch Adam steps and learning rate of the refit (a linear layer: converges well within)
STEPS = 300
LR = 1e-2


def frame_features(model, seqs) -> list[torch.Tensor]:
    """H_action ``[T, d_action]`` of every frame of each UTKinect segment, played on the
    sensor's clock from its first frame."""
    return [h_action(model, on_sensor_clock(s.joints, s.frame_ids)) for s in seqs]


def refit_head(head: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor,
               steps: int = STEPS, lr: float = LR) -> float:
    """Fit ``head`` (in place, from its weights) to per-frame ``features [N, d]`` and
    ``labels [N]`` by full-batch cross-entropy (deterministic); returns the final training
    accuracy."""
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(features), labels).backward()
        opt.step()
    with torch.no_grad():
        return float((head(features).argmax(-1) == labels).float().mean())


def refit_on_utkinect(model, seqs, names: list[str]) -> dict[str, float | int]:
    """Refit ``model``'s action head (in place) on the UTKinect segments ``seqs``, each frame
    labelled with the index in ``names`` (the model's actions) of its action's stand-in;
    returns the frames and the head's accuracy on them before and after."""
    missing = sorted({TEMPLATE[s.action] for s in seqs} - set(names))
    if missing:
        raise ValueError(f"the model's actions lack the stand-ins {missing}")
    feats = frame_features(model, seqs)
    labels = torch.cat([torch.full((len(f),), names.index(TEMPLATE[s.action]))
                        for f, s in zip(feats, seqs, strict=True)])
    head = model.action_encoder.head
    with torch.no_grad():
        before = float((head(torch.cat(feats)).argmax(-1) == labels).float().mean())
    return {"frames": int(len(labels)), "accuracy_before": round(before, 4),
            "accuracy_after": round(refit_head(head, torch.cat(feats), labels), 4)}


def main(argv: list[str] | None = None) -> int:
    from streamtmr.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="a tmr-stream checkpoint")
    p.add_argument("--utkinect", required=True, help="a UTKinect-Action3D folder")
    p.add_argument("--data", help="the SynthKinect store the model trained on (names its "
                   "actions; default: SynthKinect's full list, what `streamtmr data synth` "
                   "writes)")
    p.add_argument("--subjects", required=True, type=int, nargs="+",
                   help="the UTKinect people to fit on, e.g. 1 2 3 4 5")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_checkpoint(a.base).eval()
    if model.method != "tmr-stream":
        p.error(f"{a.base} is a {model.method} model, not tmr-stream")
    people = sorted(set(a.subjects))
    seqs = of_subjects(read_utkinect(a.utkinect), people, a.utkinect)
    names = (list(SkeletonStore(a.data).meta["actions"]) if a.data
             else list(ACTION_SPECS))
    fit = refit_on_utkinect(model, seqs, names)
    _, extra = read_metadata(a.base)
    data = dict(extra.get("data") or {})
    data["real_subjects"] = sorted(set(data.get("real_subjects") or [])
                                   | set(real_people_names(None, people)))
    extra["data"] = data
    extra["utk_real_head"] = {
        "subjects": people, **fit, "steps": STEPS, "lr": LR,
        "command": "python -m bench.utk_real_head "
                   + shlex.join(argv if argv is not None else sys.argv[1:]),
        "note": "holds real people (UTKinect): a diagnostic, never shipped"}
    save_checkpoint(a.out, model, extra)
    print(f"head on {fit['frames']} frames of UTKinect people {people}: stand-in action "
          f"{fit['accuracy_before']:.1%} → {fit['accuracy_after']:.1%}; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
