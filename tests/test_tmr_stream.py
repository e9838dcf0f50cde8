"""StreamTMR (tmr-stream): step == forward, causality, exact bones, state, ONNX step parity."""

from pathlib import Path

import numpy as np
import pytest
import torch

from streamtmr import skeleton
from streamtmr.data import synth
from streamtmr.data.ntu import read_skeleton
from streamtmr.dummy import resolve_dummy
from streamtmr.models.registry import model_class
from streamtmr.models.tmr_stream import (
    StreamTMRConfig,
    causal_average,
    follow_frame,
    trajectory,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
NTU = REAL / "ntu_samples"
NTU_FILES = sorted(NTU.glob("*.skeleton")) if NTU.is_dir() else []
TOL = 1e-4  # metres


@pytest.fixture(scope="module")
def small():
    """The small preset (the default's size) with fixed random weights, for the dummy."""
    torch.manual_seed(0)
    model = model_class("tmr-stream").from_preset("small", num_actions=8, num_subjects=6).eval()
    return model.for_dummy(resolve_dummy(None).lengths).eval()


def stepped(dm, x: torch.Tensor) -> torch.Tensor:
    """Frame-by-frame output of ``dm`` over ``x [B, T, 25, 3]`` from a fresh state."""
    state, out = dm.init_state(x.shape[0]), []
    with torch.no_grad():
        for t in range(x.shape[1]):
            y, state = dm.step(x[:, t], state)
            out.append(y)
    return torch.stack(out, 1)


def forward(dm, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return dm(x)


def synth_track(min_frames: int = 300, seed: int = 3) -> np.ndarray:
    """One SynthKinect person performing actions back to back (walks included), ≥ min_frames."""
    rng = np.random.default_rng(seed)
    person = synth.sample_population(4, seed)[1]
    clips = []
    actions = [a for a in synth.ACTIONS if "walk" in a][:1] + list(synth.ACTIONS)
    for action in actions:
        joints, _ = synth.render(synth.sample_content(action, rng), person, view_deg=20.0,
                                 rng=rng)
        if clips:  # continue where the previous clip ended (floor plane only)
            shift = clips[-1][-1, 0] - joints[0, 0]
            shift[1] = 0.0
            joints = joints + shift
        clips.append(joints)
        if sum(len(c) for c in clips) >= min_frames:
            break
    return np.concatenate(clips).astype(np.float32)


@pytest.mark.skipif(len(NTU_FILES) == 0, reason=f"real NTU samples not found under {NTU}")
def test_step_equals_forward_on_real_ntu_samples(small):
    one_person = [f for f in NTU_FILES if read_skeleton(f).joints.shape[1] == 1]
    assert len(one_person) == 4, [f.name for f in NTU_FILES]
    for f in one_person:
        x = torch.from_numpy(read_skeleton(f).joints[:, 0])[None]
        err = float((stepped(small, x) - forward(small, x)).abs().max())
        assert err <= TOL, f"{f.name}: max |step - forward| = {err:.2e} m"


def test_step_equals_forward_on_a_long_synthkinect_track(small):
    track = synth_track()
    assert len(track) >= 300
    x = torch.from_numpy(track)[None]
    y = forward(small, x)
    assert float((stepped(small, x) - y).abs().max()) <= TOL
    assert torch.isfinite(y).all()


def test_tracks_batched_at_different_ages_equal_each_track_alone(small):
    """The node steps bodies that started at different frames in one call."""
    track = torch.from_numpy(synth_track(120))
    a, b = track[:100], track[20:120]  # b starts 20 frames into a
    alone_a, alone_b = forward(small, a[None])[0], forward(small, b[None])[0]
    state = small.init_state(1)
    out_a, out_b = [], []
    with torch.no_grad():
        for t in range(20):  # a alone first, then b joins with a fresh slot
            y, state = small.step(a[t][None], state)
            out_a.append(y[0])
        state = {k: torch.cat([v, small.init_state(1)[k]]) for k, v in state.items()}
        for t in range(20, 100):
            y, state = small.step(torch.stack([a[t], b[t - 20]]), state)
            out_a.append(y[0])
            out_b.append(y[1])
    assert float((torch.stack(out_a) - alone_a).abs().max()) <= TOL
    assert float((torch.stack(out_b) - alone_b[:80]).abs().max()) <= TOL


def test_causal_future_frames_do_not_change_the_past(small):
    x = torch.from_numpy(synth_track(120))[None]
    cut = 70
    y = forward(small, x)
    z = x.clone()
    z[:, cut:] += torch.randn_like(z[:, cut:]) * 0.3
    y2 = forward(small, z)
    assert torch.equal(y[:, :cut], y2[:, :cut])
    assert float((y[:, cut:] - y2[:, cut:]).abs().max()) > 1e-3  # the future did change


def test_output_has_exactly_the_dummys_bone_lengths(small):
    x = torch.from_numpy(synth_track(90))[None]
    lengths = skeleton.bone_lengths(stepped(small, x))[0, :, 1:]
    dummy = torch.from_numpy(resolve_dummy(None).lengths[1:].copy())
    assert float((lengths - dummy).abs().max()) < 1e-5


def test_heading_and_position_in_the_room_do_not_matter(small):
    """No reference frame to re-anchor: a body turned about the vertical and moved elsewhere
    in the room gets the same output, turned and moved the same way."""
    x = torch.from_numpy(synth_track(80))[None]
    rot = skeleton.rotation_y(torch.tensor(1.1))
    move = torch.tensor([0.7, 0.2, -0.4])
    moved = skeleton.from_canonical(x, rot, move)  # x turned by rot^T, then shifted
    expected = skeleton.from_canonical(forward(small, x), rot, move)
    assert float((forward(small, moved) - expected).abs().max()) <= TOL


def test_state_spec_shapes_and_init_state(small):
    spec = small.state_spec()
    cfg = small.model.config
    assert spec["kv_k"][0] == (cfg["action_layers"], cfg["window"], cfg["d_action"])
    assert spec["lstm_h"][0] == spec["lstm_c"][0] == (cfg["lstm_hidden"],)
    assert set(spec) >= {"t", "ref_leg", "prev", "conv", "kv_k", "kv_v", "lstm_h", "lstm_c"}
    state = small.init_state(5)
    assert list(state) == list(spec)
    for k, (shape, dtype) in spec.items():
        assert state[k].shape == (5, *shape) and state[k].dtype == dtype
    frame = torch.from_numpy(synth_track(10)[:1]).expand(5, -1, -1)
    with torch.no_grad():
        y, new = small.step(frame, state)
    assert y.shape == (5, 25, 3)
    assert list(new) == list(spec)
    assert all(new[k].shape == state[k].shape for k in spec)
    assert float(new["t"][0]) == 1.0


def test_ring_keeps_only_the_last_window_frames():
    torch.manual_seed(0)
    dm = model_class("tmr-stream").from_preset("tiny").eval().for_dummy(
        resolve_dummy(None).lengths).eval()
    w = dm.model.config["window"]
    x = torch.from_numpy(synth_track(3 * w))[None, : 3 * w]
    y = forward(dm, x)
    assert float((stepped(dm, x) - y).abs().max()) <= TOL
    state = dm.init_state(1)
    with torch.no_grad():
        for t in range(3 * w):
            _, state = dm.step(x[:, t], state)
    assert float(state["t"][0]) == w  # capped: the ring is full, older frames are gone


@pytest.mark.parametrize("frames", [1, 15, 16, 17, 40, 64, 97])
def test_banded_attention_equals_the_masked_product(frames):
    """Tracks longer than the ring run blockwise (cost T·W, not T²): the same numbers as the
    masked T×T product, at every length around the block size."""
    from streamtmr.models.tmr_stream import RingAttention
    torch.manual_seed(frames)
    att = RingAttention(32, 4, 16).eval()
    x = torch.randn(2, frames, 32)
    with torch.no_grad():
        k, v = att.kv(x).chunk(2, -1)
        q, k, v = att._heads(att.q(x)), att._heads(k), att._heads(v)
        idx = torch.arange(frames, dtype=torch.float32)
        age = idx[:, None] - idx[None, :]
        bias = (-att.slopes * age).masked_fill((age < 0) | (age >= att.window), -1e9)
        masked = att._attend(q, k, v, bias)
        assert float((att(x) - masked).abs().max()) <= 1e-6
        if frames > att.window:
            assert float((att._banded(q, k, v) - masked).abs().max()) <= 1e-6


def test_config_is_validated_with_the_key_named():
    cls = model_class("tmr-stream")
    with pytest.raises(KeyError, match="bogus"):
        cls({"method": "tmr-stream", "bogus": 1})
    with pytest.raises(ValueError, match="d_action"):
        cls({"method": "tmr-stream", "d_action": 30, "action_heads": 4})
    with pytest.raises(ValueError, match="decoding"):
        cls({"method": "tmr-stream", "decoding": "autoregressive"})
    assert StreamTMRConfig.from_dict({"window": 8}).window == 8


def test_trains_with_the_shared_tmr_objective():
    from streamtmr.train.tmr import STAGE_WEIGHTS, tmr_training_losses

    torch.manual_seed(0)
    model = model_class("tmr-stream").from_preset("tiny")
    x = torch.from_numpy(synth_track(40)[:32])
    source = torch.stack([x, x + torch.tensor([0.3, 0.0, 0.0])])
    lengths = torch.from_numpy(resolve_dummy(None).lengths.copy()).expand(2, 25)
    batch = {"source": source, "target": source, "target_lengths": lengths,
             "action": torch.tensor([0, 1]), "subject": torch.tensor([0, 1])}
    losses = tmr_training_losses(model, batch, STAGE_WEIGHTS[3])
    assert {"ar", "ri", "adv", "mse", "bone"} <= set(losses)
    total = sum(losses.values())
    total.backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.action_encoder.blocks[0].attn.q.weight.grad.abs().sum() > 0


def test_onnx_step_graph_matches_pytorch(tmp_path, isolated_cache):
    import onnx
    import onnxruntime as ort

    from engines.onnx_export import export_onnx, max_abs_error, read_metadata
    from engines.source import resolve_source

    torch.manual_seed(0)
    model = model_class("tmr-stream").from_preset("small", num_actions=8, num_subjects=6).eval()
    source = resolve_source(model, None, None)
    assert source.streaming
    path = export_onnx(source, tmp_path / "step.onnx")
    proto = onnx.load(str(path))
    names = list(source.state_spec)
    assert [i.name for i in proto.graph.input] == ["frames", *(f"state_in.{k}" for k in names)]
    assert [o.name for o in proto.graph.output] == \
        ["anonymized", *(f"state_out.{k}" for k in names)]
    meta = read_metadata(path)
    assert meta["streaming"] == "1" and meta["state_spec"] == source.state_spec
    x = synth_track(80)[None].repeat(3, 0)
    x[1] += np.float32([0.5, 0.0, 0.3])
    x[2, :, :, 0] *= -1  # mirrored: another body
    assert max_abs_error(source, path, x) <= 1e-5
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"frames": x[:, 0].copy(), **{f"state_in.{k}": np.zeros((3, *s), np.float32)
                                          for k, s in source.state_spec.items()}}
    assert sess.run(["anonymized"], feeds)[0].shape == (3, 25, 3)


def test_paper_preset_streams_the_same_function():
    """The paper-size streaming form (unidirectional LSTM, ALiBi ring, per-frame decoder)."""
    torch.manual_seed(0)
    dm = model_class("tmr-stream").from_preset("paper").eval().for_dummy(
        resolve_dummy(None).lengths).eval()
    assert dm.model.config["d_action"] == 256 and dm.model.config["decoder_layers"] == 6
    x = torch.from_numpy(synth_track(30)[:24])[None]
    assert float((stepped(dm, x) - forward(dm, x)).abs().max()) <= TOL


def published_with(small, **options):
    """The ``small`` fixture's weights publishing with ``options``: (model, its dummy module,
    a 200-frame SynthKinect track, the fixture's output and this one's), stepping as it
    computes in parallel."""
    model = model_class("tmr-stream").from_preset("small", num_actions=8, num_subjects=6,
                                                  **options).eval()
    model.load_state_dict(small.model.state_dict())
    dm = model.for_dummy(resolve_dummy(None).lengths).eval()
    x = torch.from_numpy(synth_track(200))[None]
    y = forward(dm, x)
    assert float((stepped(dm, x) - y).abs().max()) <= TOL
    return model, dm, x, forward(small, x), y


def test_follow_averages_the_published_root_and_heading_and_nothing_else(small, tmp_path,
                                                                         isolated_cache):
    """follow < 1: the published body's horizontal root and heading are a causal exponential
    average of the source's (a gait's sway and hip yaw do not pass), the pose is the same, and
    step, forward and the exported step graph still compute one function."""
    from engines.onnx_export import export_onnx, max_abs_error
    from engines.source import resolve_source

    cls = model_class("tmr-stream")
    with pytest.raises(ValueError, match="follow"):
        cls({"method": "tmr-stream", "follow": 0.0})
    model, followed, x, copied, y = published_with(small, follow=0.1)
    assert followed.state_spec()["follow"][0] == (4,)
    # the same pose: root-centred and turned to the published heading, the joints agree
    for out in (copied, y):
        assert float((skeleton.bone_lengths(out)[0, :, 1:]
                      - torch.from_numpy(resolve_dummy(None).lengths[1:].copy())).abs().max()) \
            < 1e-5
    local = [skeleton.to_frame_local(o, skeleton.rotation_y(skeleton.facing_angle(o)),
                                     o[..., skeleton.ROOT, :]) for o in (copied, y)]
    assert float((local[0] - local[1]).abs().max()) < 1e-4
    # the copied output moved, frame by frame, from the source's root and heading onto their
    # causal average: it starts where the source stands, and the average wobbles less
    path = trajectory(x)
    avg = causal_average(path, 0.1, path[:, 0])
    rot, root, _ = follow_frame((None, x[..., skeleton.ROOT, :], None), path)
    rot_f, root_f, _ = follow_frame((None, x[..., skeleton.ROOT, :], None), avg)
    moved = skeleton.from_canonical(skeleton.to_frame_local(copied, rot, root)[..., None, :, :],
                                    rot_f, root_f)[..., 0, :, :]
    assert float((moved - y).abs().max()) < 1e-4
    assert float((copied[:, 0] - y[:, 0]).abs().max()) < 1e-5
    def wobble(p):
        turn = torch.atan2(p[0, 1:, 1], p[0, 1:, 0]) - torch.atan2(p[0, :-1, 1], p[0, :-1, 0])
        return (float(p[0, :, 2:].diff(n=2, dim=0).norm(dim=-1).mean()),
                float(torch.atan2(torch.sin(turn), torch.cos(turn)).abs().mean()))
    (acc_c, turn_c), (acc_f, turn_f) = wobble(path), wobble(avg)
    assert acc_f < 0.5 * acc_c and turn_f < 0.5 * turn_c, (acc_c, acc_f, turn_c, turn_f)
    # a body that stands still is published where it stands
    still = x[:, :1].expand(-1, 30, -1, -1)
    assert float((forward(followed, still) - forward(small, still)).abs().max()) < 1e-5
    source = resolve_source(model, None, None)
    path = export_onnx(source, tmp_path / "follow.onnx")
    assert max_abs_error(source, path, synth_track(80)[None]) <= 1e-5



def test_a_leashed_body_stands_still_until_its_source_walks_away(small, tmp_path,
                                                                 isolated_cache):
    """root_motion: leash. The published body is the copied one moved horizontally, frame by
    frame, to where a body on a leash_m leash stands: put while the source's root stays within
    reach, pulled along after. Step, forward and the exported step graph agree."""
    from engines.onnx_export import export_onnx, max_abs_error
    from engines.source import resolve_source

    cls = model_class("tmr-stream")
    with pytest.raises(ValueError, match="root_motion"):
        cls({"method": "tmr-stream", "root_motion": "teleport"})
    with pytest.raises(ValueError, match="leash_m"):
        cls({"method": "tmr-stream", "root_motion": "leash", "leash_m": 0.0})
    model, leashed, x, copied, y = published_with(small, root_motion="leash", leash_m=0.3)
    assert leashed.state_spec()["leash"][0] == (3,)
    shift = (y - copied)[0]                                   # [T, 25, 3]
    assert float((shift - shift[:, :1]).abs().max()) < 1e-4   # one translation per frame ...
    assert float(shift[:, 0, 1].abs().max()) < 1e-4           # ... along the floor ...
    reach = shift[:, 0, [0, 2]].norm(dim=-1)
    assert float(reach.max()) <= 0.3 + 1e-4                   # ... never past the leash
    assert float(reach.max()) > 0.25                          # the track walks off: pulled
    root = x[0, :, skeleton.ROOT, [0, 2]]
    body = root + shift[:, 0, [0, 2]]
    assert float(body.diff(dim=0).norm(dim=-1).sum()) < float(root.diff(dim=0).norm(dim=-1).sum())
    # a body that stands still is published where it stands
    still = x[:, :1].expand(-1, 30, -1, -1)
    assert float((forward(leashed, still) - forward(small, still)).abs().max()) < 1e-5
    source = resolve_source(model, None, None)
    path = export_onnx(source, tmp_path / "leash.onnx")
    assert max_abs_error(source, path, synth_track(80)[None]) <= 1e-5
