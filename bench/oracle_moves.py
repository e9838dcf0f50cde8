"""Where a pose-atom model's identity is: the own-tempo oracle, quantised and moved.

Writes copies of a SynthKinect store (hard links, all but ``target_sync``) whose own-tempo
ground truth is rewritten the way a pose-atom model publishes: each frame's pose the nearest of
the model's atoms, then turned, placed and stood on the floor by the source instead of by the
truth, one part at a time. The evaluation's oracle row ("ground truth (own tempo)") then
attacks each copy; what a part adds to re-ID is what publishing it leaks
(docs/results.md, "Where the identity is"):

    python -m bench.oracle_moves --data data/synthkinect --model default --out runs/oracle-moves
    streamtmr evaluate --data runs/oracle-moves/source_root --all \\
        --methods "ground truth (own tempo)" --attacks reid,action --epochs 10 --width 32 ...

Variants (``--variants``): ``atoms`` (quantised only), ``source_frame`` (the source's heading,
root and floor, as the model publishes), ``source_heading``, ``source_floor``,
``source_root``, ``in_place`` (the source's first root), ``leash`` (a 0.5 m leash to the source's
root). The copies hold a 250 MB array each: delete them after.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from streamtmr import skeleton
from streamtmr.dummy import default_dummy
from streamtmr.models.checkpoint import resolve_model
from streamtmr.models.pose_atoms import nearest_atoms
from streamtmr.models.tmr_stream import leash_path

VARIANTS = ("atoms", "source_frame", "source_heading", "source_floor", "source_root",
            "in_place", "leash")


def quantised(target: torch.Tensor, atoms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each frame of ``target [T, 25, 3]`` as the nearest atom ``[K, 25, 3]`` (bone directions
    in the frame's heading frame) with ``lengths``, in that heading frame at the origin."""
    rot = skeleton.rotation_y(skeleton.facing_angle(target))
    dirs = skeleton.bone_directions(skeleton.to_frame_local(
        target, rot, target[:, skeleton.ROOT])).flatten(1)
    nearest = nearest_atoms(dirs, atoms)
    n = len(target)
    return skeleton.forward_kinematics(torch.zeros(n, 3), atoms[nearest],
                                       lengths.expand(n, skeleton.NUM_JOINTS))


def moved(pose: torch.Tensor, target: torch.Tensor, source: torch.Tensor, variant: str
          ) -> torch.Tensor:
    """``pose [T, 25, 3]`` (heading frame, origin) turned, placed and floored per ``variant``:
    by the truth ``target``, or in part by the ``source``."""
    def frame(x):
        return (skeleton.rotation_y(skeleton.facing_angle(x)), x[:, skeleton.ROOT],
                skeleton.floor_height(x[:, None]))
    rot, root, floor = frame(target)
    s_rot, s_root, s_floor = frame(source)
    if variant == "source_frame":
        rot, root, floor = s_rot, s_root, s_floor
    elif variant == "source_heading":
        rot = s_rot
    elif variant == "source_floor":
        floor = s_floor
    elif variant == "source_root":
        root = s_root
    elif variant == "in_place":
        first = s_root[:1].expand(len(s_root), 3)
        root = torch.stack([first[:, 0], s_root[:, 1], first[:, 2]], -1)
    elif variant == "leash":
        root = leash_path(s_root[None], 0.5, s_root[:1])[0]
    elif variant != "atoms":
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    out = skeleton.from_canonical(pose[:, None], rot, root)
    return skeleton.place_on_floor(out, floor)[:, 0]


def write_copy(data: Path, out: Path, variant: str, atoms: torch.Tensor,
               lengths: torch.Tensor) -> Path:
    """A hard-linked copy of the store ``data`` at ``out`` with ``target_sync`` rewritten."""
    if "target_sync" not in json.loads((data / "meta.json").read_text()).get("arrays", {}):
        raise ValueError(f"{data}: no target_sync array (the own-tempo ground truth)")
    out.mkdir(parents=True, exist_ok=True)
    for f in data.iterdir():
        if f.name != "target_sync.f32" and not (out / f.name).exists():
            os.link(f, out / f.name)
    shape = (-1, skeleton.NUM_JOINTS, 3)
    target = np.fromfile(data / "target_sync.f32", np.float32).reshape(shape)
    source = np.fromfile(data / "joints.f32", np.float32).reshape(shape)
    new = np.empty_like(target)
    with open(data / "index.csv") as f:
        for row in csv.DictReader(f):
            a, n = int(row["offset"]), int(row["length"])
            t, s = torch.from_numpy(target[a:a + n]), torch.from_numpy(source[a:a + n])
            new[a:a + n] = moved(quantised(t, atoms, lengths), t, s, variant).numpy()
    new.tofile(out / "target_sync.f32")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a SynthKinect store")
    p.add_argument("--model", default="default", help="a pose-atom model [default]")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    decoder = resolve_model(a.model).decoder
    if not hasattr(decoder, "atoms"):
        p.error(f"{a.model}: not a pose-atom model")
    lengths = torch.from_numpy(np.array(default_dummy().lengths, np.float32))
    for v in a.variants.split(","):
        print(f"wrote {write_copy(a.data, a.out / v, v.strip(), decoder.atoms, lengths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
