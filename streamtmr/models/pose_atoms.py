"""Pose atoms: a streaming model whose every published pose is one of K poses of the dummy.

Motion matching (:mod:`streamtmr.models.motion_match`) publishes only database frames of the
dummy's own neutral performances, so no pose of the source reaches the output, only the choice
of frames; a search every frame, on the features of the learned default's output, re-identifies
about as many people as the shipped matcher (`docs/motion_matching.md`, "A learned choice of
poses"). Its learned form keeps that property without a search: StreamTMR's decoder, with
``pose_atoms: K``, scores K atoms per frame and publishes the best one's bone directions
(:class:`streamtmr.models.tmr_stream.FrameDecoder`), with the dummy's bone lengths and the
root the decoder places.

The atoms are K-means centres of the dummy's neutral poses (``target_sync`` of the training
people, each frame turned into its own heading frame, as the decoder's directions are), every
bone's direction renormalised to unit length. :func:`init_checkpoint` puts them into a copy of
a trained model, with a chooser that starts by picking the atom nearest to what the model's
free head predicts; fine-tuning then trains the choice (the ``atom`` loss and the usual
decoder losses, straight through the choice).

    python -m streamtmr.models.pose_atoms --base streamtmr/assets/default_model.safetensors \\
        --data data/synthkinect --atoms 1024 --out runs/atoms/init.safetensors

``atom_blend`` (:data:`streamtmr.models.tmr_stream.ATOM_BLEND`) publishes the renormalised mix
of the atoms chosen in the last frames instead of the newest alone: a jump between two atoms
becomes a ramp (``bench/jitter.py`` measures the difference); ``--blend N`` sets it on a copy.
``--set KEY=VALUE`` sets any publishing option (:data:`PUBLISHING`) the same way, e.g. the
shipped default's leash (``--set root_motion=leash --set leash_m=0.25``). ``--set
atom_action=EPS --data STORE`` conditions the choice on the action the encoder recognises in
each frame, with the table of each action's atoms (:func:`action_table`) fitted on ``STORE``.
``--set atom_template=N --data STORE`` publishes no choice at all: the atoms of one neutral
performance of the dummy per action (:func:`template_table`), played from its start; a track
starts with the action its first frame recognises and moves to another once the encoder has
recognised that one for N frames in a row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from streamtmr import skeleton

#: Frames of neutral performances the centres are fitted on (a random subset of the store's).
FIT_FRAMES = 100_000
#: K-means (Lloyd) iterations.
KMEANS_STEPS = 20
#: The chooser's initial logits are this times the dot product of an atom with the free head's
#: prediction: sharp enough that the softmax the choice trains through favours the nearest atoms.
INIT_SHARPNESS = 4.0


def heading_directions(joints: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Unit bone directions ``[N, 25, 3]`` of frames ``[N, 25, 3]``, each frame in its own
    heading frame (the frame StreamTMR's decoder predicts directions in)."""
    x = torch.as_tensor(np.asarray(joints, np.float32))                # [N, 25, 3]
    rot = skeleton.rotation_y(skeleton.facing_angle(x))                # [N, 3, 3]
    return skeleton.bone_directions(skeleton.to_frame_local(x, rot, x[:, skeleton.ROOT]))


def kmeans_atoms(dirs: torch.Tensor, k: int, seed: int = 0, steps: int = KMEANS_STEPS
                 ) -> torch.Tensor:
    """K-means centres ``[k, 25, 3]`` of bone directions ``[N, 25, 3]`` (squared distance over
    every bone), each bone renormalised to unit length (the root's entry stays zero)."""
    flat = dirs.reshape(len(dirs), -1)
    if len(flat) < k:
        raise ValueError(f"pose atoms: {k} atoms need at least {k} frames, got {len(flat)}")
    g = torch.Generator().manual_seed(seed)
    centres = flat[torch.randperm(len(flat), generator=g)[:k]].clone()
    for _ in range(steps):
        near = torch.cdist(flat, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, near, flat)
        counts = torch.bincount(near, minlength=k).to(flat.dtype)[:, None]
        empty = counts[:, 0] == 0   # an empty centre restarts at a random frame
        centres = torch.where(empty[:, None],
                              flat[torch.randint(len(flat), (k,), generator=g)],
                              sums / counts.clamp_min(1))
    atoms = centres.reshape(k, skeleton.NUM_JOINTS, 3)
    norm = torch.linalg.vector_norm(atoms, dim=-1, keepdim=True)
    return torch.where(norm > 1e-6, atoms / norm.clamp_min(1e-6), torch.zeros_like(atoms))


def store_atoms(data: str | Path, k: int, seed: int = 0, array: str = "target_sync",
                split: str = "anonymizer_train") -> torch.Tensor:
    """:func:`kmeans_atoms` of the dummy's neutral poses in a SynthKinect store: ``array`` of
    the people of ``split`` (at most :data:`FIT_FRAMES` frames, drawn at random)."""
    from streamtmr.data.store import SkeletonStore

    store = SkeletonStore(data)
    frames = store.array(array)
    rows = store.rows_of(split)
    index = np.concatenate([np.arange(r["offset"], r["offset"] + r["length"]) for r in rows])
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(index, size=min(FIT_FRAMES, len(index)), replace=False))
    return kmeans_atoms(heading_directions(frames[pick]), k, seed)


def nearest_atoms(dirs: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """Indices ``[N]`` of the atoms ``[K, 25, 3]`` nearest to bone directions ``[N, 25, 3]``
    (Euclidean over every bone, computed exactly: the matrix-product form can flip near-ties)."""
    return torch.cdist(dirs.reshape(len(dirs), -1), atoms.reshape(len(atoms), -1),
                       compute_mode="donot_use_mm_for_euclid_dist").argmin(1)


def camera0_rows(store, actions: int, split: str = "anonymizer_train") -> list[dict]:
    """The camera-0 recordings of ``split``'s people in ``store``, refusing an action the model
    (of ``actions`` actions) does not know."""
    rows = store.rows_of(split, view=0)
    for r in rows:
        if not 0 <= int(r["action"]) < actions:
            raise ValueError(f"pose atoms: {store.root} has action {r['action']}, but the model "
                             f"knows {actions} actions")
    return rows


def action_table(data: str | Path, atoms: torch.Tensor, actions: int,
                 split: str = "anonymizer_train") -> torch.Tensor:
    """Which atoms (rows of ``atoms [K, 25, 3]``) each action's neutral performance takes: ``[
    actions, K]``, 1 where some frame of the action's ``target_sync`` in a camera-0 recording of
    ``split``'s people is nearest to the atom, else 0 (``atom_action``'s table)."""
    from streamtmr.data.store import SkeletonStore

    store = SkeletonStore(data)
    target = store.array("target_sync")
    table = torch.zeros(actions, len(atoms))
    for r in camera0_rows(store, actions, split):
        dirs = heading_directions(np.array(target[r["offset"]:r["offset"] + r["length"]]))
        table[int(r["action"]), nearest_atoms(dirs, atoms)] = 1.0
    return table


def template_table(data: str | Path, atoms: torch.Tensor, actions: int, frames: int,
                   split: str = "anonymizer_train") -> tuple[torch.Tensor, torch.Tensor]:
    """What ``atom_template`` plays: for each action, the nearest atom (a row of ``atoms [K,
    25, 3]``) of every frame of one neutral performance of the dummy (``target``, at the neutral
    tempo), ``[actions, frames]`` (zero past its end), and its length in frames ``[actions]``.
    The performance is that of the camera-0, first-repetition recording of ``split``'s people
    whose length is the median of the action's (the first of equals, in store order); an action
    the store does not hold plays the first one's performance. A recording's ``target`` spans
    the recording's frames, so the performance keeps the dummy's rest before and after its
    motion (looped, the dummy returns to rest between plays)."""
    from streamtmr.data.store import SkeletonStore

    store = SkeletonStore(data)
    target = store.array("target")
    performed: dict[int, list[dict]] = {}
    for r in camera0_rows(store, actions, split):
        if int(r["rep"]) == 0:
            performed.setdefault(int(r["action"]), []).append(r)
    if not performed:
        raise ValueError(f"pose atoms: {data} holds no camera-0 performance of {split}'s people")
    table, lengths = torch.zeros(actions, frames), torch.ones(actions)
    for action in range(actions):
        rows = performed.get(action, performed[min(performed)])
        r = sorted(rows, key=lambda r: int(r["length"]))[(len(rows) - 1) // 2]
        n = min(int(r["length"]), frames)
        dirs = heading_directions(np.array(target[r["offset"]:r["offset"] + n]))
        table[action, :n] = nearest_atoms(dirs, atoms).float()
        lengths[action] = n
    return table, lengths


@torch.no_grad()
def init_chooser(model, atoms: torch.Tensor) -> None:
    """Set ``model``'s atoms and start its chooser at the atom nearest (by dot product over the
    bones) to the free head's direction output: logits = sharpness · A (W x + b)."""
    dec = model.decoder
    dec.atoms.copy_(atoms)
    a = atoms.reshape(len(atoms), -1)                                   # [K, 75]
    w, b = dec.head.weight[2:], dec.head.bias[2:]                       # [75, d], [75]
    dec.choose.weight.copy_(INIT_SHARPNESS * a @ w)
    dec.choose.bias.copy_(INIT_SHARPNESS * a @ b)


def init_checkpoint(base: str | Path, data: str | Path, k: int, out: str | Path,
                    seed: int = 0) -> Path:
    """A copy of the StreamTMR checkpoint ``base`` with ``pose_atoms: k``: its weights, the
    atoms fitted on ``data`` and the chooser of :func:`init_chooser`; its training record is
    the base's (the atoms come from the same training people)."""
    from streamtmr.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
    from streamtmr.models.registry import build_model

    source = load_checkpoint(base)
    if source.method != "tmr-stream":
        raise ValueError(f"pose atoms: {base} is a {source.method} model, not tmr-stream")
    model = build_model({**source.config, "pose_atoms": int(k)})
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    if unexpected or set(missing) != {"decoder.atoms", "decoder.choose.weight",
                                      "decoder.choose.bias"}:
        raise ValueError(f"pose atoms: {base} does not fit (missing {missing}, unexpected "
                         f"{unexpected})")
    init_chooser(model, store_atoms(data, k, seed))
    _, extra = read_metadata(base)
    return save_checkpoint(out, model, {**extra, "pose_atoms": {
        "atoms": int(k), "fitted_on": str(data), "array": "target_sync", "seed": seed,
        "base": str(base)}})


#: tmr-stream settings that change only how a trained model publishes, never its weights
PUBLISHING = ("atom_blend", "atom_margin", "atom_sample", "atom_sample_hold", "atom_action",
              "atom_template", "follow", "root_motion", "leash_m")


def with_options(base: str | Path, out: str | Path, data: str | Path | None = None,
                 **options: Any) -> Path:
    """A copy of the tmr-stream checkpoint ``base`` (the same weights) that publishes with
    ``options`` (keys of :data:`PUBLISHING`; ``atom_*`` need pose atoms). ``atom_action`` needs
    its table: the base's, or else fitted on ``data`` (the store the atoms came from;
    :func:`action_table`)."""
    from streamtmr.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
    from streamtmr.models.registry import build_model

    unknown = sorted(set(options) - set(PUBLISHING))
    if unknown:
        raise KeyError(f"{base}: {unknown} are not publishing options; known: {list(PUBLISHING)}")
    source = load_checkpoint(base)
    if source.config.get("method") != "tmr-stream":
        raise ValueError(f"{base}: a {source.config.get('method')} model, not tmr-stream")
    if any(k.startswith("atom_") for k in options) and not source.config.get("pose_atoms"):
        raise ValueError(f"pose atoms: {base} has no pose atoms")
    model = build_model({**source.config, **options})
    state = source.state_dict()
    _, extra = read_metadata(base)
    _set_tables(model, source, state, extra, base, data)
    if "decoder.action_atoms" in state and not bool(state["decoder.action_atoms"].any()):
        raise ValueError(f"pose atoms: the table of each action's atoms for {base} is empty "
                         "(no action's neutral performance in the store?)")
    model.load_state_dict(state)
    return save_checkpoint(out, model, extra)


def _set_tables(model, source, state: dict, extra: dict, base, data) -> None:
    """The tables of ``atom_action`` (:func:`action_table`) and ``atom_template``
    (:func:`template_table`) in a copy's ``state`` and metadata ``extra``: dropped where the
    copy publishes without the option, (re)fitted on ``data`` where given, else kept from the
    base, which must then have them."""
    from streamtmr.models.tmr_stream import TEMPLATE_FRAMES

    dec, actions = source.decoder, int(source.config["num_actions"])
    tables = (  # (the buffer marking the option, its state keys, how to fit, metadata, what)
        ("action_atoms", ("decoder.action_atoms",),
         lambda: (action_table(data, dec.atoms, actions),),
         {"fitted_on": str(data), "split": "anonymizer_train", "view": 0},
         "atom_action needs the table of each action's atoms"),
        ("action_template", ("decoder.action_template", "decoder.template_length"),
         lambda: template_table(data, dec.atoms, actions, TEMPLATE_FRAMES),
         {"fitted_on": str(data), "split": "anonymizer_train", "view": 0, "rep": 0,
          "array": "target", "performance": "the median length of each action's"},
         "atom_template needs each action's neutral performance"))
    for buffer, keys, fit, meta, what in tables:
        if not hasattr(model.decoder, buffer):  # the option off: no table
            for key in keys:
                state.pop(key, None)
            extra.pop(buffer, None)
        elif data is not None:  # (re)fit it on the store the atoms came from
            state.update(zip(keys, fit(), strict=True))
            extra[buffer] = meta
        elif keys[0] not in state:
            raise ValueError(f"pose atoms: {what}: {base} has none, so give the store its atoms "
                             "came from (--data)")


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for number in (int, float):  # before YAML, which reads 5e-1 as text
        try:
            return key.strip(), number(value)
        except ValueError:
            pass
    return key.strip(), yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="a trained tmr-stream checkpoint")
    p.add_argument("--data", help="the SynthKinect store it was trained on (to fit the atoms, "
                   "or with --set atom_action the table of each action's atoms, with --set "
                   "atom_template each action's neutral performance)")
    p.add_argument("--atoms", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blend", type=int,
                   help="instead: a copy of a pose-atom checkpoint with this atom_blend")
    p.add_argument("--set", dest="options", type=_option, action="append", default=[],
                   metavar="KEY=VALUE", help=f"instead: a copy publishing with these options "
                   f"({', '.join(PUBLISHING)}); with --blend too")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    options = dict(a.options) | ({} if a.blend is None else {"atom_blend": a.blend})
    if options:
        print(f"wrote {with_options(a.base, a.out, a.data, **options)}")
        return 0
    if a.atoms < 1 or not a.data:
        p.error("fitting atoms needs --data and --atoms >= 1")
    print(f"wrote {init_checkpoint(a.base, a.data, a.atoms, a.out, a.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
