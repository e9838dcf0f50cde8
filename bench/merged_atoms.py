"""Diagnostic: is what identifies people in the fine detail of a pose-atom model's poses?

Writes a copy of a pose-atom StreamTMR checkpoint in which each of its K atoms is replaced by
the centre of its cluster when the atoms themselves are clustered into ``--clusters`` groups
(:func:`streamtmr.models.pose_atoms.kmeans_atoms`: K-means over every bone, each bone
renormalised). The chooser is untouched, so the copy chooses exactly as the model does and
publishes the cluster's pose: with ``atom_sample`` a draw over the clusters, each with its
members' probabilities summed. Attack the copy as any model (``streamtmr evaluate --models``
with a list naming it): if its re-ID stays where the model's is, the identity is not in what
the merge took away (docs/results.md, "An action-conditioned choice").

    python -m bench.merged_atoms --model default --clusters 64 \\
        --out runs/merge64/published.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def merged_atoms(atoms: torch.Tensor, clusters: int, seed: int = 0) -> torch.Tensor:
    """``atoms [K, 25, 3]`` with each replaced by the unit-bone centre of its K-means cluster of
    atoms (``clusters`` centres, 50 Lloyd steps)."""
    from streamtmr.models.pose_atoms import kmeans_atoms, nearest_atoms

    centres = kmeans_atoms(atoms, clusters, seed=seed, steps=50)
    return centres[nearest_atoms(atoms, centres)]


def write_merged(model_spec: str, clusters: int, out: str | Path) -> Path:
    """The copy of the module docstring: the checkpoint ``model_spec`` (a path or a shipped
    name) with its atoms merged into ``clusters``; its metadata says so."""
    from streamtmr.cache import file_sha256
    from streamtmr.models.checkpoint import (
        load_checkpoint,
        model_path,
        read_metadata,
        save_checkpoint,
    )

    path = model_path(model_spec)
    model = load_checkpoint(path)
    if not hasattr(model.decoder, "atoms"):
        raise ValueError(f"--model {model_spec}: not a pose-atom StreamTMR")
    with torch.no_grad():
        model.decoder.atoms.copy_(merged_atoms(model.decoder.atoms, clusters))
    _, extra = read_metadata(path)
    return save_checkpoint(out, model, {**extra, "merged_atoms": {
        "clusters": clusters, "of": f"{model_spec} sha256:{file_sha256(path)[:12]}"}})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a pose-atom checkpoint or shipped name")
    p.add_argument("--clusters", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"wrote {write_merged(a.model, a.clusters, a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
