"""Pose atoms (``pose_atoms`` of tmr-stream): every published pose is one of the atoms, exactly,
streamed or in parallel, in PyTorch and ONNX Runtime; the choice trains straight through."""

import numpy as np
import pytest
import torch
from test_tmr_stream import forward, stepped, synth_track

from streamtmr import skeleton
from streamtmr.dummy import resolve_dummy
from streamtmr.models.pose_atoms import heading_directions, init_chooser, kmeans_atoms
from streamtmr.models.registry import model_class
from streamtmr.train.tmr import STAGE_WEIGHTS, tmr_training_losses

K = 16


def poses() -> np.ndarray:
    return synth_track(120)[:96]


def atom_model(k: int = K):
    """A tiny tmr-stream with ``k`` atoms fitted on a synthetic person's poses."""
    torch.manual_seed(0)
    model = model_class("tmr-stream").from_preset("tiny", pose_atoms=k)
    init_chooser(model, kmeans_atoms(heading_directions(poses()), k))
    return model


def test_kmeans_atoms_are_unit_bones_of_real_poses():
    dirs = heading_directions(poses())
    atoms = kmeans_atoms(dirs, K)
    assert atoms.shape == (K, 25, 3)
    norms = torch.linalg.vector_norm(atoms, dim=-1)
    assert torch.allclose(norms[:, 1:], torch.ones(K, 24), atol=1e-5)
    assert float(norms[:, 0].abs().max()) == 0.0  # the root has no bone
    # each atom is a centre of the poses it stands for: nearer to them than a random pose is
    near = torch.cdist(dirs.flatten(1), atoms.flatten(1)).amin(1).mean()
    assert near < torch.cdist(dirs.flatten(1), dirs[torch.randperm(len(dirs))[:K]].flatten(1)
                              ).amin(1).mean()
    with pytest.raises(ValueError, match="frames"):
        kmeans_atoms(dirs[:4], K)


def test_every_published_pose_is_an_atom_and_step_equals_forward():
    model = atom_model().eval()
    dm = model.for_dummy(resolve_dummy(None).lengths).eval()
    x = torch.from_numpy(synth_track(60)[:48])[None]
    y = forward(dm, x)
    assert float((stepped(dm, x) - y).abs().max()) <= 1e-4
    # the output's bones, in each source frame's heading frame, are one atom's, exactly
    rot = skeleton.rotation_y(skeleton.facing_angle(x[0]))
    canon = skeleton.to_canonical(y[0][:, None], rot, y[0][:, skeleton.ROOT])[:, 0]
    dirs = skeleton.bone_directions(canon).flatten(1)
    gap = torch.cdist(dirs, model.decoder.atoms.flatten(1)).amin(1)
    assert float(gap.max()) <= 1e-3
    lengths = skeleton.bone_lengths(y[0])[:, 1:]
    assert torch.allclose(lengths, torch.from_numpy(resolve_dummy(None).lengths[1:].copy()).expand(
        len(lengths), 24), atol=1e-4)


def test_the_chooser_starts_at_the_atom_nearest_the_free_head():
    """init_chooser: the logits are the dot products of the atoms with the free head's
    direction output, so the first choice is the atom nearest to what the model predicted."""
    model = atom_model().eval()
    dec = model.decoder
    x = torch.randn(2, 5, dec.memory.in_features)
    h = torch.randn(1, model.config["d_identity"])
    z = dec.memory(x)
    for layer in dec.layers:
        z = layer(z, h)
    z = dec.norm(z)
    free = dec.head(z)[..., 2:]                                      # (2, 5, 75)
    expected = (free @ dec.atoms.flatten(1).T).argmax(-1)
    assert torch.equal(dec.choose(z).argmax(-1), expected)


def test_the_choice_trains_straight_through_and_the_atom_loss_is_finite():
    model = atom_model().train()
    x = torch.from_numpy(synth_track(40)[:32])
    source = torch.stack([x, x + torch.tensor([0.3, 0.0, 0.0])])
    lengths = torch.from_numpy(resolve_dummy(None).lengths.copy()).expand(2, 25)
    batch = {"source": source, "target": source, "target_lengths": lengths,
             "action": torch.tensor([0, 1]), "subject": torch.tensor([0, 1])}
    losses = tmr_training_losses(model, batch, {**STAGE_WEIGHTS[3], "atom": 1.0})
    assert {"mse", "atom"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.decoder.choose.weight.grad.abs().sum() > 0
    # the decoder losses alone reach the choice through the straight-through softmax
    model.zero_grad()
    tmr_training_losses(model, batch, {"mse": 1.0})["mse"].backward()
    assert model.decoder.choose.weight.grad.abs().sum() > 0
    assert model.decoder.atoms.grad is None  # the atoms are the dummy's poses: never trained


def test_onnx_step_graph_publishes_the_same_atoms(tmp_path, isolated_cache):
    from engines.onnx_export import export_onnx, max_abs_error
    from engines.source import resolve_source

    source = resolve_source(atom_model().eval(), None, None)
    path = export_onnx(source, tmp_path / "atoms.onnx")
    x = synth_track(80)[None].repeat(2, 0)
    x[1, :, :, 0] *= -1  # mirrored: another body
    assert max_abs_error(source, path, x) <= 1e-5
