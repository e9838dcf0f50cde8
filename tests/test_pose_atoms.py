"""Pose atoms (``pose_atoms`` of tmr-stream): every published pose is one of the atoms, exactly,
streamed or in parallel, in PyTorch and ONNX Runtime; the choice trains straight through."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_tmr_stream import forward, stepped, synth_track

from streamtmr import skeleton
from streamtmr.dummy import resolve_dummy
from streamtmr.models.pose_atoms import heading_directions, init_chooser, kmeans_atoms
from streamtmr.models.registry import model_class
from streamtmr.models.tmr_stream import (
    MAX_HOLD,
    NOISE_PERIOD,
    action_gate,
    gumbel_table,
    held_choice,
    next_clock,
    noise_rows,
    play_templates,
)
from streamtmr.train import privacy as P
from streamtmr.train.tmr import STAGE_WEIGHTS, tmr_training_losses

K = 16


def poses() -> np.ndarray:
    return synth_track(120)[:96]


def atom_model(k: int = K, blend: int = 1, margin: float = 0.0, sample: float = 0.0,
               hold: int = 1, action: float = 0.0, template: int = 0):
    """A tiny tmr-stream with ``k`` atoms fitted on a synthetic person's poses; with ``action``
    (atom_action) each action ``a`` takes the atoms ``k`` with ``(k + a) % 3 == 0``; with
    ``template`` (atom_template) the performances of :func:`played_performances`."""
    torch.manual_seed(0)
    model = model_class("tmr-stream").from_preset("tiny", pose_atoms=k, atom_blend=blend,
                                                  atom_margin=margin, atom_sample=sample,
                                                  atom_sample_hold=hold, atom_action=action,
                                                  atom_template=template)
    init_chooser(model, kmeans_atoms(heading_directions(poses()), k))
    if action:
        model.decoder.action_atoms.copy_(action_members(model.config["num_actions"], k))
    if template:
        table, lengths = played_performances(model.config["num_actions"], k)
        model.decoder.action_template.copy_(table)
        model.decoder.template_length.copy_(lengths)
    return model


def played_performances(actions: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The test performances of ``atom_template``: action ``a`` plays the atoms ``(3a + t) %
    k`` for ``t < 5 + a`` frames, then loops."""
    from streamtmr.models.tmr_stream import TEMPLATE_FRAMES

    t, a = torch.arange(TEMPLATE_FRAMES)[None], torch.arange(actions)[:, None]
    lengths = 5.0 + torch.arange(actions).float()
    table = torch.where(t < lengths[:, None], (3 * a + t) % k, 0).float()
    return table, lengths


def action_members(actions: int, k: int) -> torch.Tensor:
    """The test table of ``atom_action``: action ``a`` takes the atoms ``(k + a) % 3 == 0``."""
    return ((torch.arange(k)[None] + torch.arange(actions)[:, None]) % 3 == 0).float()


def moving_chooser(model, x: torch.Tensor) -> None:
    """Set ``model``'s chooser to read only how its decoder's features move over ``x``, so
    that its choice changes along the track (a random chooser keeps one atom)."""
    lengths = resolve_dummy(None).lengths
    with torch.no_grad():
        dec = model.decoder
        z = dec.memory(model.encode_action(x)[0].h)
        for layer in dec.layers:
            z = layer(z, model.for_dummy(lengths).h_identity)
        w = torch.randn_like(dec.choose.weight)
        dec.choose.weight.copy_(w)
        dec.choose.bias.copy_(-w @ dec.norm(z).mean((0, 1)))


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
    gap = torch.cdist(dirs, model.decoder.atoms.flatten(1),   # exact, not |a|² + |b|² - 2ab
                      compute_mode="donot_use_mm_for_euclid_dist").amin(1)
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


def test_pair_atom_is_the_atom_loss_on_both_people_of_a_pair():
    """``pair_atom`` teaches the choice on the step's fresh pairs: with both people of a pair
    the same track and the target that track, it is exactly the atom loss of that track."""
    model = atom_model().train()
    x = torch.from_numpy(synth_track(40)[:32])
    y = x + torch.tensor([0.3, 0.0, 0.0])
    lengths = torch.from_numpy(resolve_dummy(None).lengths.copy()).expand(2, 25)
    main = {"source": torch.stack([x, y]), "target": torch.stack([x, y]),
            "target_lengths": lengths, "action": torch.tensor([0, 1]),
            "subject": torch.tensor([0, 1])}
    pairs = {"pair_a": torch.stack([x, y]), "pair_b": torch.stack([x, y]),
             "pair_a2": torch.stack([y, x]), "pair_target": torch.stack([x, y]),
             "pair_action": torch.tensor([0, 1])}
    model.eval()  # no dropout: the two encodings see the same network
    model.decoder.train()
    atom = tmr_training_losses(model, main, {"atom": 1.0})["atom"]
    pair = tmr_training_losses(model, pairs, {"pair_atom": 1.0})["pair_atom"]
    assert float(pair) == pytest.approx(float(atom), rel=1e-5)
    pair.backward()
    assert model.decoder.choose.weight.grad.abs().sum() > 0
    free = model_class("tmr-stream").from_preset("tiny").train()
    with pytest.raises(ValueError, match="pose_atoms"):
        tmr_training_losses(free, pairs, {"pair_atom": 1.0})


def test_pair_choice_asks_two_people_for_one_choice_whichever_atom_it_is():
    """``pair_choice`` is zero when both people of a pair are the same track (one choice,
    even where it misses the target's atom), positive when they differ, and trains the choice
    of both towards the other's."""
    model = atom_model().train()
    x = torch.from_numpy(synth_track(40)[:32])
    y = x.clone()
    y[:, :, 1] += 0.05 * torch.sin(torch.arange(32.0))[:, None]  # another way to move
    target = torch.stack([x, x]) + torch.tensor([0.0, 0.2, 0.0])  # no one's choice: unused
    pairs = {"pair_a": torch.stack([x, x]), "pair_b": torch.stack([x, y]),
             "pair_a2": torch.stack([y, y]), "pair_target": target,
             "pair_action": torch.tensor([0, 1])}
    model.eval()  # no dropout: the encodings see the same network
    model.decoder.train()
    moving_chooser(model, x[None])
    loss = tmr_training_losses(model, pairs, {"pair_choice": 1.0})["pair_choice"]
    logits = model.decoder.atom_logits
    same = P.choice_consistency(logits[0], logits[2])  # item 0: a and b are one track
    differ = P.choice_consistency(logits[1], logits[3])  # item 1: two ways to move
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    assert float(differ) > 1e-3
    assert float(loss) == pytest.approx(0.5 * float(same + differ), rel=1e-5)
    loss.backward()
    assert model.decoder.choose.weight.grad.abs().sum() > 0
    free = model_class("tmr-stream").from_preset("tiny").train()
    with pytest.raises(ValueError, match="pose_atoms"):
        tmr_training_losses(free, pairs, {"pair_choice": 1.0})


def test_choice_consistency_is_a_symmetric_kl_divergence():
    a = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    b = torch.tensor([[0.0, 2.0, -1.0], [3.0, 0.5, 0.5]])
    p, q = a.softmax(-1), b.softmax(-1)
    kl = (p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)
    assert float(P.choice_consistency(a, b)) == pytest.approx(float(kl.mean()), rel=1e-6)
    assert float(P.choice_consistency(b, a)) == pytest.approx(float(kl.mean()), rel=1e-6)
    assert float(P.choice_consistency(a, a + 7.0)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("blend, margin, sample, hold, action, template", [
    (1, 0.0, 0.0, 1, 0.0, 0), (3, 0.0, 0.0, 1, 0.0, 0), (3, 0.05, 0.0, 1, 0.0, 0),
    (3, 0.05, 1.0, 1, 0.0, 0), (3, 0.0, 1.0, 3, 0.0, 0), (3, 0.0, 0.5, 8, 1e-3, 0),
    (3, 0.05, 0.0, 1, 1e-3, 0), (3, 0.0, 0.0, 1, 0.0, 3)])
def test_onnx_step_graph_publishes_the_same_atoms(tmp_path, isolated_cache, blend, margin,
                                                  sample, hold, action, template):
    from engines.onnx_export import export_onnx, max_abs_error
    from engines.source import resolve_source

    model = atom_model(blend=blend, margin=margin, sample=sample, hold=hold, action=action,
                       template=template).eval()
    x = synth_track(80)[None].repeat(2, 0)
    x[1, :, :, 0] *= -1  # mirrored: another body
    if template:  # the played action changes along the track
        two_action_head(model, torch.from_numpy(x[:1]), 40)
    source = resolve_source(model, None, None)
    path = export_onnx(source, tmp_path / "atoms.onnx")
    assert max_abs_error(source, path, x) <= 1e-5


def test_a_blend_ramps_between_the_chosen_atoms_and_steps_as_it_computes_in_parallel():
    """atom_blend 3: each published pose is the renormalised 0.5 / 0.3 / 0.2 mix of the atoms
    chosen in this frame and the two before (a track's first atom standing in before it), the
    same streamed frame by frame, for bodies that enter at different frames."""
    exact = atom_model().eval()
    lengths = resolve_dummy(None).lengths
    x = torch.from_numpy(synth_track(60)[:40])[None]
    d1 = exact.for_dummy(lengths).eval()
    moving_chooser(exact, x)
    blended = atom_model(blend=3).eval()
    blended.load_state_dict(exact.state_dict())
    d3 = blended.for_dummy(lengths).eval()
    assert "atoms" in d3.state_spec() and "atoms" not in d1.state_spec()
    with torch.no_grad():
        code, frame = exact.encode_action(x)
        h_id = d1.h_identity
        _, chosen, _ = exact.decode_from(code.h, h_id, d1.lengths[None], frame)
        _, dirs, _, _ = blended.decoder(code.h, h_id)
    assert len(torch.unique(chosen.flatten(2), dim=1)[0]) >= 3  # the choice moves
    pad = torch.cat([chosen[:, :1], chosen[:, :1], chosen], 1)
    mix = 0.5 * pad[:, 2:] + 0.3 * pad[:, 1:-1] + 0.2 * pad[:, :-2]
    mix = mix / torch.linalg.vector_norm(mix, dim=-1, keepdim=True).clamp_min(1e-6)
    assert torch.allclose(dirs[..., 1:, :], mix[..., 1:, :], atol=1e-5)
    assert not torch.allclose(forward(d3, x), forward(d1, x), atol=1e-3)
    # two bodies, the second entering 7 frames later: each equals its own track alone
    late = torch.cat([x[:, :7], x[:, :33]], 1)
    both = torch.cat([x, late])
    state, outs = d3.init_state(2), []
    with torch.no_grad():
        for t in range(both.shape[1]):
            frame_t = both[:, t].clone()
            if t == 7:
                state = {k: torch.cat([v[:1], d3.init_state(1)[k]]) for k, v in state.items()}
            y, state = d3.step(frame_t, state)
            outs.append(y)
    y = torch.stack(outs, 1)
    assert float((y[0] - forward(d3, x)[0]).abs().max()) <= 1e-4
    assert float((y[1, 7:] - forward(d3, x[:, :33])[0]).abs().max()) <= 1e-4


def test_a_margin_holds_the_chosen_atom_until_another_beats_it_by_more():
    """atom_margin: hysteresis of the choice. The atom chosen in the frame before stays while
    the largest logit beats it by no more than the margin; streamed as computed in parallel."""
    logits = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 1.5], [0.0, 1.0, 2.5], [3.0, 1.0, 0.0]]])
    assert held_choice(logits, 0.0).tolist() == logits.argmax(-1).tolist() == [[1, 2, 2, 0]]
    assert held_choice(logits, 1.0).tolist() == [[1, 1, 2, 0]]   # 1.5 - 1.0 is not > 1
    assert held_choice(logits, 2.0).tolist() == [[1, 1, 1, 1]]   # 3.0 - 1.0 is not > 2, ...
    assert held_choice(logits, 2.0, (torch.tensor([[2.0]]), torch.tensor([[False]]))
                       ).tolist() == [[2, 2, 2, 0]]               # ... 3.0 - 0.0 is
    assert held_choice(logits, 9.0, (torch.tensor([[0.0]]), torch.tensor([[True]]))
                       ).tolist() == [[1, 1, 1, 1]]               # a fresh track starts anew
    with pytest.raises(ValueError, match="atom_margin"):
        atom_model(margin=-1.0)
    x = torch.from_numpy(synth_track(90)[:80])[None]
    base = atom_model(blend=3).eval()
    moving_chooser(base, x)
    free = base.for_dummy(resolve_dummy(None).lengths).eval()
    held = atom_model(blend=3, margin=0.05)
    held.load_state_dict(base.state_dict())
    dm = held.eval().for_dummy(resolve_dummy(None).lengths).eval()
    assert dm.state_spec()["atom_index"][0] == (1,)
    y = forward(dm, x)
    assert float((stepped(dm, x) - y).abs().max()) <= 1e-4
    # fewer changes of atom than without the margin, and the first frame the same
    def changes(d):
        with torch.no_grad():
            code, frame = d.model.encode_action(x)
            index = d.model.decode_from(code.h, d.h_identity, d.lengths[None], frame)[2]
        return int((index[0, 1:] != index[0, :-1]).sum())
    assert 0 < changes(dm) < changes(free)
    assert torch.allclose(y[:, 0], forward(free, x)[:, 0], atol=1e-6)


def test_publishing_options_go_on_a_copy_with_the_same_weights(tmp_path):
    """``python -m streamtmr.models.pose_atoms --set``: how a trained model publishes (blend,
    margin, leash, ...) changes on a copy; the weights do not, and nothing else can. Numbers
    are read as numbers (YAML alone reads 25e-2 as text)."""
    from streamtmr.models.checkpoint import load_checkpoint, save_checkpoint
    from streamtmr.models.pose_atoms import main, with_options

    base = save_checkpoint(tmp_path / "atoms.safetensors", atom_model(), {})
    assert main(["--base", str(base), "--blend", "3", "--set", "root_motion=leash",
                 "--set", "leash_m=25e-2", "--out", str(tmp_path / "copy.safetensors")]) == 0
    copy = load_checkpoint(tmp_path / "copy.safetensors")
    assert (copy.config["atom_blend"], copy.config["root_motion"], copy.config["leash_m"]) == \
        (3, "leash", 0.25)
    original = load_checkpoint(base)
    for k, v in original.state_dict().items():
        assert torch.equal(copy.state_dict()[k], v), k
    with pytest.raises(KeyError, match="d_model"):
        with_options(base, tmp_path / "x.safetensors", d_model=8)
    free = save_checkpoint(tmp_path / "free.safetensors",
                           model_class("tmr-stream").from_preset("tiny"), {})
    with pytest.raises(ValueError, match="no pose atoms"):
        with_options(free, tmp_path / "x.safetensors", atom_blend=3)
    assert load_checkpoint(with_options(free, tmp_path / "l.safetensors", root_motion="leash")
                           ).config["root_motion"] == "leash"


def test_gumbel_noise_draws_from_the_softmax_at_the_temperature():
    """argmax(logits / T + Gumbel noise) is a draw from softmax(logits / T): over the table's
    rows, each atom is chosen as often as its probability says."""
    g = gumbel_table(20000, 3)
    assert torch.equal(g, gumbel_table(20000, 3))  # a fixed seed: the same table everywhere
    logits = torch.tensor([2.0, 1.0, 0.0])
    for temperature in (1.0, 0.5):
        counts = torch.bincount((logits / temperature + g).argmax(-1), minlength=3) / len(g)
        assert torch.allclose(counts, (logits / temperature).softmax(-1), atol=0.015)
    rows = noise_rows(torch.zeros(2, 4, 3), (torch.tensor([[5.0, 0.0], [NOISE_PERIOD - 1.0, 0.0]]),
                                             torch.tensor([[False], [False]])))
    assert rows.tolist() == [[5, 6, 7, 8], [NOISE_PERIOD - 1, 0, 1, 2]]
    assert noise_rows(torch.zeros(1, 3, 3), (torch.tensor([[9.0, 0.0]]), torch.tensor([[True]]))
                      ).tolist() == [[0, 1, 2]]  # a fresh track starts at the first row
    held = noise_rows(torch.zeros(2, 5, 3), (torch.tensor([[0.0, 2.0], [NOISE_PERIOD - 1.0, 1.0]]),
                                             torch.tensor([[False], [False]])), hold=3)
    assert held.tolist() == [[0, 1, 1, 1, 2], [NOISE_PERIOD - 1, NOISE_PERIOD - 1, 0, 0, 0]]


@pytest.mark.parametrize("hold", [1, 3, MAX_HOLD])
def test_the_step_clock_reads_the_rows_of_the_parallel_path_and_is_exact_in_fp16(hold):
    """Frame by frame, the step's clock (row, frames into the row) reads the noise rows the
    parallel path reads from the same start, across a row's end and the table's wrap; its values
    stay whole numbers below 2,048, so a float16 plan (TensorRT) counts what float32 counts."""
    go, fresh = torch.tensor([[False]]), torch.tensor([[True]])
    for start in ([0.0, 0.0], [NOISE_PERIOD - 1.0, hold - 1.0]):
        frames = 2 * hold + 3
        parallel = noise_rows(torch.zeros(1, frames, 1), (torch.tensor([start]), go), hold)
        for dtype in (torch.float32, torch.float16):
            clock, read = torch.tensor([start], dtype=dtype), []
            for _ in range(frames):
                read.append(int(noise_rows(torch.zeros(1, 1, 1), (clock, go), hold)))
                clock = next_clock(clock, go, hold)
                assert float(clock.max()) < 2048
            assert read == parallel[0].tolist()
    assert next_clock(torch.tensor([[7.0, 1.0]]), fresh, hold).tolist() == (
        [[0.0, 1.0]] if hold > 1 else [[1.0, 0.0]])  # a fresh track: its first frame was row 0


def test_sampling_options_that_cannot_act_are_refused_with_their_name():
    """A hold without a draw, a hold longer than the clock counts, and a temperature YAML read as
    text (5e-1) are refused when the model is built, naming the option."""
    for kwargs, name in (({"hold": 8}, "atom_sample_hold"),
                         ({"sample": 1.0, "hold": MAX_HOLD + 1}, "atom_sample_hold"),
                         ({"sample": "5e-1"}, "atom_sample must be a number")):
        with pytest.raises(ValueError, match=name):
            atom_model(**kwargs)


def chosen_indices(d, x: torch.Tensor) -> torch.Tensor:
    """The atom indices ``[B, T]`` a streaming dummy ``d`` chooses over ``x`` in parallel."""
    with torch.no_grad():
        code, frame = d.model.encode_action(x)
        return d.model.decode_from(code.h, d.h_identity, d.lengths[None], frame)[2]


def test_a_sampled_choice_streams_as_it_computes_in_parallel_and_varies_the_atoms():
    """atom_sample: each frame's atom drawn from softmax(logits / T), the same draw on the step
    path (its noise row in the state) as in parallel, for bodies that enter at different
    frames; draws leave the argmax more often at a higher T."""
    x = torch.from_numpy(synth_track(90)[:80])[None]
    base = atom_model(blend=3).eval()
    moving_chooser(base, x)
    lengths = resolve_dummy(None).lengths

    def sampled(temperature):
        m = atom_model(blend=3, sample=temperature)
        m.load_state_dict(base.state_dict())  # the noise table is not in the file
        return m.eval().for_dummy(lengths).eval()

    with pytest.raises(ValueError, match="atom_sample"):
        atom_model(sample=-0.5)
    dm = sampled(1.0)
    assert dm.state_spec()["atom_clock"][0] == (2,)
    assert "atom_clock" not in base.for_dummy(lengths).state_spec()
    y = forward(dm, x)
    assert float((stepped(dm, x) - y).abs().max()) <= 1e-4
    late = torch.cat([x[:, :7], x[:, :50]], 1)  # a second body entering 7 frames later
    both = torch.cat([x[:, :57], late])
    state, outs = dm.init_state(2), []
    with torch.no_grad():
        for t in range(both.shape[1]):
            if t == 7:
                state = {k: torch.cat([v[:1], dm.init_state(1)[k]]) for k, v in state.items()}
            out, state = dm.step(both[:, t].clone(), state)
            outs.append(out)
    assert float((torch.stack(outs, 1)[1, 7:] - forward(dm, x[:, :50])[0]).abs().max()) <= 1e-4

    argmax = chosen_indices(base.for_dummy(lengths).eval(), x)
    assert float((chosen_indices(dm, x) != argmax).float().mean()) > 0.3  # not the argmax
    cold, warm = chosen_indices(sampled(0.01), x), chosen_indices(sampled(5.0), x)
    assert float((cold == argmax).float().mean()) > 0.9  # cold: the argmax but near-ties
    assert float((warm != argmax).float().mean()) > 0.3


def test_a_held_draw_streams_as_in_parallel_and_switches_less():
    """atom_sample_hold: k keeps each noise row for k frames; step == forward (the count, not
    the row, is the state), and the choice switches less often than with a draw every frame."""
    x = torch.from_numpy(synth_track(90)[:80])[None]
    base = atom_model(blend=3).eval()
    moving_chooser(base, x)
    lengths = resolve_dummy(None).lengths

    def sampled(hold):
        m = atom_model(blend=3, sample=1.0, hold=hold)
        m.load_state_dict(base.state_dict())
        return m.eval().for_dummy(lengths).eval()

    with pytest.raises(ValueError, match="atom_sample_hold"):
        atom_model(sample=1.0, hold=0)
    dm = sampled(4)
    assert float((stepped(dm, x) - forward(dm, x)).abs().max()) <= 1e-4

    def switches(d):
        index = chosen_indices(d, x)
        return float((index[:, 1:] != index[:, :-1]).float().mean())

    assert switches(dm) < switches(sampled(1))


def test_the_action_gate_weights_each_atom_by_its_actions_posterior():
    """action_gate: log P(atom is one of the frame's action's) under softmax(actions), floored;
    added to logits / T before the Gumbel-max draw, every atom is drawn as often as its softmax
    probability times that weight says."""
    table = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    sure = action_gate(torch.tensor([[[20.0, -20.0]]]), table, 1e-3)[0, 0]
    assert torch.allclose(sure, torch.tensor([0.0, 0.0, math.log(1e-3), math.log(1e-3)]),
                          atol=1e-6)
    even = action_gate(torch.zeros(1, 1, 2), table, 1e-3)[0, 0]
    assert torch.allclose(even, torch.tensor([math.log(0.5), 0.0, math.log(0.5),
                                              math.log(1e-3)]), atol=1e-6)
    g = gumbel_table(20000, 4)
    logits, temperature = torch.tensor([2.0, 1.0, 0.0, 3.0]), 0.5
    counts = torch.bincount((logits / temperature + g + even).argmax(-1), minlength=4) / len(g)
    want = (logits / temperature).softmax(-1) * even.exp()
    assert torch.allclose(counts, want / want.sum(), atol=0.015)


def two_action_head(model, x: torch.Tensor, split: int) -> None:
    """Set ``model``'s action head to recognise action 0 where H_action is nearer the mean of
    ``x``'s first ``split`` frames and action 1 where nearer the rest's, surely (the other
    actions never): the recognised action changes along the track."""
    with torch.no_grad():
        h = model.encode_action(x)[0].h[0]
        m0, m1 = h[:split].mean(0), h[split:].mean(0)
        w = (m0 - m1) * (200.0 / float((m0 - m1).pow(2).sum()))
        head = model.action_encoder.head
        head.weight.zero_()
        head.bias.fill_(-1e3)
        head.weight[0], head.weight[1] = w, -w
        head.bias[0] = -float(w @ (m0 + m1)) / 2
        head.bias[1] = -head.bias[0]


def test_an_action_conditioned_choice_keeps_to_the_recognised_actions_atoms():
    """atom_action: where the action head is sure of action a, every chosen atom is one of a's,
    argmax, drawn, held or not; the gate reads the head per frame, so the step path (no new
    state) chooses as the parallel one, also where the recognised action changes along the
    track; the published choice is the largest of FrameDecoder.scores (the benches' choice)."""
    from bench.atom_choice import choices

    x = torch.from_numpy(synth_track(90)[:80])[None]
    base = atom_model(blend=3).eval()
    moving_chooser(base, x)
    lengths = resolve_dummy(None).lengths
    members = action_members(base.config["num_actions"], K)

    def gated(**kwargs):
        m = atom_model(blend=3, action=1e-4, **kwargs)
        m.load_state_dict({**base.state_dict(), "decoder.action_atoms": members})
        return m.eval()

    free = chosen_indices(base.for_dummy(lengths).eval(), x)
    assert not bool(members[0, free].bool().all())  # the free choice leaves action 0's atoms
    assert not bool(members[1, free].bool().all())
    for kwargs in ({}, {"sample": 0.5, "hold": 4}, {"margin": 0.05}):
        m = gated(**kwargs)
        d = m.for_dummy(lengths).eval()
        assert set(d.state_spec()) == set(
            atom_model(blend=3, **kwargs).for_dummy(lengths).state_spec())
        two_action_head(m, x, 40)
        with torch.no_grad():
            posterior = m.action_encoder.head(m.encode_action(x)[0].h)[0].softmax(-1)
        recognised = posterior.argmax(-1)
        sure = posterior.max(-1).values > 0.999
        assert set(recognised[sure].tolist()) == {0, 1} and float(sure.float().mean()) > 0.8
        index = chosen_indices(d, x)[0]
        assert bool(members[recognised, index][sure].bool().all())
        assert float((stepped(d, x) - forward(d, x)).abs().max()) <= 1e-4
        if not kwargs:  # no draw, no hold: the published choice is the scores' largest
            _, scores, _ = choices(m, d.h_identity, x[0].numpy())
            assert torch.equal(scores.argmax(-1), index)


def test_atom_action_is_refused_where_it_cannot_act_and_published_with_its_table(
        tmp_path, matcher_store):
    """atom_action needs pose atoms and a floor in [float16's smallest normal, 1); a copy that
    publishes with it gets the table of each action's atoms (camera 0 of the training people,
    the nearest atom of every frame of their neutral performance), fitted on the store the
    atoms came from (--data) or kept from the base, never an empty one; a copy without it drops
    the table; the weights never change."""
    from streamtmr.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
    from streamtmr.models.pose_atoms import main, with_options

    for config, name in (({"atom_action": 1.0}, "atom_action must be 0 or in"),
                         ({"atom_action": 1e-8}, "finite in a float16 plan"),
                         ({"atom_action": "1e-3"}, "atom_action must be a number")):
        with pytest.raises(ValueError, match=name):
            model_class("tmr-stream").from_preset("tiny", pose_atoms=K, **config)
    with pytest.raises(ValueError, match="atom_action acts only with pose_atoms"):
        model_class("tmr-stream").from_preset("tiny", atom_action=1e-3)
    base = save_checkpoint(tmp_path / "atoms.safetensors", atom_model(), {})
    with pytest.raises(ValueError, match="--data"):
        with_options(base, tmp_path / "x.safetensors", atom_action=1e-3)
    out = tmp_path / "gated.safetensors"
    assert main(["--base", str(base), "--set", "atom_action=1e-3", "--data",
                 str(matcher_store.root), "--out", str(out)]) == 0
    gated = load_checkpoint(out)
    # the table, computed here independently: camera 0 of the training people only
    atoms = gated.decoder.atoms.reshape(K, -1).double()
    want = torch.zeros(8, K)
    people = {int(s) for s in matcher_store.meta["splits"]["anonymizer_train"]}
    target = matcher_store.array("target_sync")
    views = set()
    for r in matcher_store.rows:
        views.add(r["view"])
        if int(r["subject"]) in people and r["view"] == 0:
            dirs = heading_directions(np.array(target[r["offset"]:r["offset"] + r["length"]]))
            d2 = ((dirs.reshape(len(dirs), 1, -1).double() - atoms[None]) ** 2).sum(-1)
            want[int(r["action"]), d2.argmin(1)] = 1.0
    assert len(views) == 2 and torch.equal(gated.decoder.action_atoms, want)
    assert want[:3].sum(1).min() > 0 and want[3:].sum() == 0  # the store's 3 actions
    assert read_metadata(out)[1]["action_atoms"]["fitted_on"] == str(matcher_store.root)
    again = load_checkpoint(with_options(out, tmp_path / "again.safetensors", atom_blend=3))
    assert torch.equal(again.decoder.action_atoms, want) and again.config["atom_action"] == 1e-3
    off_path = with_options(out, tmp_path / "off.safetensors", atom_action=0.0)
    off = load_checkpoint(off_path)
    assert not hasattr(off.decoder, "action_atoms")
    assert "action_atoms" not in read_metadata(off_path)[1]
    original = load_checkpoint(base)
    for k, v in original.state_dict().items():
        assert torch.equal(off.state_dict()[k], v) and torch.equal(gated.state_dict()[k], v), k
    empty = save_checkpoint(tmp_path / "empty.safetensors", atom_model(action=1e-3), {})
    with torch.no_grad():
        model = load_checkpoint(empty)
        model.decoder.action_atoms.zero_()
    save_checkpoint(empty, model, {})
    with pytest.raises(ValueError, match="empty"):
        with_options(empty, tmp_path / "x.safetensors", atom_blend=3)


def test_play_templates_switches_after_the_lead_and_loops_each_performance():
    """play_templates: the action played changes only once another has led the head for
    ``switch`` frames in a row (a shorter lead is ignored), each performance starts at its
    first frame and loops over its length; two calls joined by the state play as one."""
    from streamtmr.models.tmr_stream import play_templates

    lead = [0] * 7 + [1] * 2 + [0] * 3 + [2] * 6
    actions = F.one_hot(torch.tensor([lead, lead[::-1]]), 3).float() * 5.0
    lengths = torch.tensor([4.0, 9.0, 5.0])
    played, state = play_templates(actions, lengths, 3)
    assert played[0, :, 0].tolist() == [0] * 14 + [2] * 4          # 2 leads from frame 12
    assert played[0, :, 1].tolist() == [0, 1, 2, 3] * 3 + [0, 1] + [0, 1, 2, 3]
    assert state[0].tolist() == [2.0, 3.0, 2.0, 3.0]
    assert played[1, :, 0].tolist() == [2] * 8 + [0] * 10          # 1 never leads 3 frames
    assert played[1, :6, 1].tolist() == [0, 1, 2, 3, 4, 0]
    for cut in (1, 8, 13):
        first, mid = play_templates(actions[:, :cut], lengths, 3)
        rest, end = play_templates(actions[:, cut:], lengths, 3,
                                   (mid, torch.tensor([[False], [True]])))
        assert torch.equal(torch.cat([first, rest], 1)[0], played[0]) and torch.equal(
            end[0], state[0])
        fresh, _ = play_templates(actions[1:, cut:], lengths, 3)
        assert torch.equal(rest[1], fresh[0])                      # a fresh track starts over


def test_a_played_template_streams_as_it_computes_and_never_reads_the_pose():
    """atom_template: every published atom is the played action's performance at the frames
    into it, on the step path as in parallel, also where the recognised action changes along
    the track; the chooser's weights change nothing."""
    x = torch.from_numpy(synth_track(90)[:80])[None]
    lengths = resolve_dummy(None).lengths
    m = atom_model(blend=3, template=4).eval()
    two_action_head(m, x, 40)
    d = m.for_dummy(lengths).eval()
    assert "atom_play" in d.state_spec()
    with torch.no_grad():
        played, _ = play_templates(m.action_encoder.head(m.encode_action(x)[0].h),
                                   m.decoder.template_length, 4)
    assert set(played[0, :, 0].tolist()) == {0, 1}
    table, _ = played_performances(m.config["num_actions"], K)
    index = chosen_indices(d, x)[0]
    assert torch.equal(index, table[played[0, :, 0], played[0, :, 1]].long())
    assert float((stepped(d, x) - forward(d, x)).abs().max()) <= 1e-4
    before = forward(d, x)
    with torch.no_grad():
        m.decoder.choose.weight.normal_()
    assert torch.equal(forward(d, x), before)
    from bench.atom_choice import choices

    with pytest.raises(ValueError, match="atom_template"):  # it has no choice to score
        choices(m, d.h_identity, x[0].numpy())


def test_atom_template_is_refused_where_it_cannot_act_and_published_with_its_performances(
        tmp_path):
    """atom_template needs pose atoms and no chooser option beside it; a copy that publishes
    with it gets, per action, the nearest atoms of the neutral performance (``target``) of the
    camera-0, first-repetition recording of median length among the training people's, fitted
    on the store (--data) or kept from the base; a copy without it drops them; the weights
    never change."""
    from streamtmr.data.store import SkeletonStore
    from streamtmr.data.synth import generate
    from streamtmr.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
    from streamtmr.models.pose_atoms import main, with_options

    torch.set_num_threads(1)  # two repetitions: only the first one's recordings may play
    store = SkeletonStore(generate(tmp_path / "synth", n_subjects=5, n_actions=3, views=(0,),
                                   reps=2, seed=5, progress=False))
    for config, name in (({"atom_template": 4, "atom_sample": 0.5}, "replaces the chooser"),
                         ({"atom_template": 4, "atom_margin": 0.1}, "replaces the chooser"),
                         ({"atom_template": MAX_HOLD}, "atom_template must be <"),
                         ({"atom_template": -1}, "positive integer")):
        with pytest.raises(ValueError, match=name):
            model_class("tmr-stream").from_preset("tiny", pose_atoms=K, **config)
    with pytest.raises(ValueError, match="atom_template acts only with pose_atoms"):
        model_class("tmr-stream").from_preset("tiny", atom_template=4)
    base = save_checkpoint(tmp_path / "atoms.safetensors", atom_model(), {})
    with pytest.raises(ValueError, match="--data"):
        with_options(base, tmp_path / "x.safetensors", atom_template=4)
    out = tmp_path / "played.safetensors"
    assert main(["--base", str(base), "--set", "atom_template=4", "--data",
                 str(store.root), "--out", str(out)]) == 0
    played = load_checkpoint(out)
    # the performances, found here independently
    atoms = played.decoder.atoms.reshape(K, -1).double()
    people = {int(s) for s in store.meta["splits"]["anonymizer_train"]}
    target = store.array("target")
    for action in range(3):
        rows = [r for r in store.rows if int(r["subject"]) in people
                and r["view"] == 0 and r["rep"] == 0 and r["action"] == action]
        assert len({r["subject"] for r in rows}) == len(rows) >= 2  # one per person
        r = sorted(rows, key=lambda r: r["length"])[(len(rows) - 1) // 2]
        dirs = heading_directions(np.array(target[r["offset"]:r["offset"] + r["length"]]))
        d2 = ((dirs.reshape(len(dirs), 1, -1).double() - atoms[None]) ** 2).sum(-1)
        n = r["length"]
        assert played.decoder.template_length[action] == n
        assert torch.equal(played.decoder.action_template[action, :n], d2.argmin(1).float())
        assert not bool(played.decoder.action_template[action, n:].any())
    # actions the store lacks play the first action's performance
    assert torch.equal(played.decoder.action_template[5], played.decoder.action_template[0])
    assert read_metadata(out)[1]["action_template"]["fitted_on"] == str(store.root)
    again = load_checkpoint(with_options(out, tmp_path / "again.safetensors", atom_blend=3))
    assert torch.equal(again.decoder.action_template, played.decoder.action_template)
    assert torch.equal(again.decoder.template_length, played.decoder.template_length)
    off_path = with_options(out, tmp_path / "off.safetensors", atom_template=0)
    assert not hasattr(load_checkpoint(off_path).decoder, "action_template")
    assert "action_template" not in read_metadata(off_path)[1]
    original = load_checkpoint(base)
    for k, v in original.state_dict().items():
        assert torch.equal(played.state_dict()[k], v), k
