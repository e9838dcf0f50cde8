"""Motion matching: database build, exact dummy bones, causality, step == forward, and every
blend-free output pose is a database pose (privacy by construction)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import onnx_steps

from streamtmr import skeleton
from streamtmr.data.store import SkeletonStore
from streamtmr.dummy import default_dummy
from streamtmr.models import motion_match as mm
from streamtmr.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from streamtmr.models.motion_match import MotionMatching, build_database
from streamtmr.models.registry import model_class

SETTINGS = {"search_every": 4, "blend_frames": 3, "margin": 0.05}


@pytest.fixture(scope="module")
def store(matcher_store) -> SkeletonStore:
    return matcher_store


@pytest.fixture(scope="module")
def model(store) -> MotionMatching:
    return build_database(store, views=(0,), reps=None, config=SETTINGS)


@pytest.fixture(scope="module")
def source(matcher_source) -> torch.Tensor:
    """Two observed (sensor-noise) sequences of evaluation subjects, cut to equal length."""
    return matcher_source


def dummy(model: MotionMatching) -> torch.Tensor:
    return torch.as_tensor(model.config["dummy_lengths"], dtype=torch.float32)


def run_steps(model, x):
    """Step ``x [B, T, 25, 3]`` frame by frame: outputs and the state after every frame."""
    state = model.init_state(x.shape[0])
    outs, states = [], []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state, dummy(model))
        outs.append(y)
        states.append(state)
    return torch.stack(outs, 1), states


def facing_aligned(pose: torch.Tensor) -> torch.Tensor:
    """Root-relative joints ``[..., 25, 3]`` turned about the vertical so the hips face +X."""
    rel = pose - pose[..., skeleton.ROOT : skeleton.ROOT + 1, :]
    rot = skeleton.rotation_y(skeleton.facing_angle(rel))
    return torch.matmul(rel, rot.transpose(-1, -2))


def test_database_holds_only_neutral_training_motion(store, model):
    train = set(store.meta["splits"]["anonymizer_train"])
    n_frames = sum(r["length"] for r in store.rows if r["subject"] in train and r["view"] == 0)
    assert model.config["frames"] == 2 * n_frames  # with mirror images
    assert len(model.features) == len(model.directions) == len(model.next) == 2 * n_frames
    assert model.config["database"]["array"] == "target"
    with pytest.raises(ValueError, match="evaluation subjects"):
        build_database(store, subjects=store.meta["splits"]["eval"][:1])


def test_interactions_add_rendered_dummy_clips_and_are_played(store, model, source, tmp_path):
    from streamtmr.data.synth import neutral_identity, render, sample_content
    from streamtmr.models.motion_match import build_from_config, parse_settings

    wider = build_database(store, views=(0,), reps=None, config=SETTINGS,
                           interactions=("carry", "push"), interaction_clips=2)
    extra = wider.config["frames"] - model.config["frames"]
    rng = np.random.default_rng(0)  # the clips build_database renders (seed 0, in this order)
    body = neutral_identity(np.asarray(wider.config["dummy_lengths"], np.float32))
    lengths = [len(render(sample_content(a, rng, side="right"), body, sensor_noise=False)[0])
               for a in ("carry", "carry", "push", "push")]
    assert extra == 2 * sum(lengths)  # with mirror images
    assert wider.config["database"]["interactions"] == ["carry", "push"]
    # a carrying dummy is followed far more closely once the database holds carrying
    carry = torch.as_tensor(render(sample_content("carry", np.random.default_rng(5)), body,
                                   sensor_noise=False)[0])[None]
    errors = []
    for m in (model, wider):
        with torch.no_grad():
            out = m.retarget(carry, dummy(m)[None])
        rel = (out - out[..., :1, :]) - (carry - carry[..., :1, :])
        errors.append(float(rel.norm(dim=-1).mean()))
    assert errors[1] < 0.6 * errors[0], errors
    with pytest.raises(ValueError, match=r"unknown \['fly'\]"):
        build_database(store, views=(0,), interactions=("fly",))
    # the builder's --set reaches the database section; unknown keys are named
    assert parse_settings(["root_motion=leash", "database.interactions=[pull]"]) == {
        "root_motion": "leash", "database": {"interactions": ["pull"]}}
    with pytest.raises(ValueError, match="database.KEY"):
        parse_settings(["database.colour=red"])
    cfg = tmp_path / "mm.yaml"
    cfg.write_text("database: {views: [0], reps: null, size: 3}\n")
    with pytest.raises(ValueError, match=r"unknown keys \['size'\]"):
        build_from_config(cfg, store.root, tmp_path / "m.safetensors")


def test_exact_dummy_bones_and_root_follows_input(model, source):
    y = model.retarget(source, dummy(model)[None])
    assert y.shape == source.shape and torch.isfinite(y).all()
    err = (skeleton.bone_lengths(y)[..., 1:] - dummy(model)[1:]).abs().max()
    assert err < 1e-5
    # horizontal root = the person's place in the room; height comes from the database
    torch.testing.assert_close(y[..., skeleton.ROOT, 0], source[..., skeleton.ROOT, 0])
    torch.testing.assert_close(y[..., skeleton.ROOT, 2], source[..., skeleton.ROOT, 2])


def test_step_equals_forward_and_bodies_are_independent(model, source):
    full = model.retarget(source, dummy(model)[None])
    stepped, _ = run_steps(model, source)
    torch.testing.assert_close(stepped, full, atol=1e-6, rtol=0)
    alone = model.retarget(source[1:], dummy(model)[None])  # body 1 without body 0
    torch.testing.assert_close(alone[0], full[1], atol=1e-6, rtol=0)


def test_causal(model, source):
    t0 = source.shape[1] // 2
    changed = source.clone()
    changed[:, t0 + 1 :] += torch.randn_like(changed[:, t0 + 1 :]) * 0.2
    a = model.retarget(source, dummy(model)[None])
    b = model.retarget(changed, dummy(model)[None])
    torch.testing.assert_close(a[:, : t0 + 1], b[:, : t0 + 1], atol=0, rtol=0)
    assert (a[:, t0 + 1 :] - b[:, t0 + 1 :]).abs().max() > 1e-3  # the input does matter


def test_blend_free_frames_are_database_poses(model, source):
    y, states = run_steps(model, source)
    bf = model.config["blend_frames"]
    free = torch.stack([s["blend"] > bf for s in states], 1)  # no cross-fade at that frame
    assert free.float().mean() > 0.3 and (~free).any()  # both kinds occur
    db_poses = skeleton.forward_kinematics(torch.zeros(len(model.directions), 3),
                                           model.directions, dummy(model))
    db = facing_aligned(db_poses).flatten(1)                      # [N, 75]
    out = facing_aligned(y[free]).flatten(1)                      # [M, 75]
    nearest = torch.cdist(out.double(), db.double()).min(1).values / np.sqrt(75)
    assert nearest.max() < 1e-5
    # cross-faded frames are no database pose but stay within the blend of two
    faded = facing_aligned(y[~free]).flatten(1)
    assert (torch.cdist(faded.double(), db.double()).min(1).values / np.sqrt(75)).max() < 0.2


def test_checkpoint_round_trip(model, source, tmp_path):
    path = save_checkpoint(tmp_path / "mm.safetensors", model)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, MotionMatching) and loaded.config == model.config
    torch.testing.assert_close(loaded.retarget(source, dummy(model)[None]),
                               model.retarget(source, dummy(model)[None]), atol=0, rtol=0)
    spec = loaded.state_spec()
    state = loaded.init_state(3)
    assert set(spec) == set(state)
    assert all(state[k].shape == (3, *spec[k][0]) and state[k].dtype == spec[k][1]
               for k in spec)


def test_tiny_preset_and_fixed_dummy(source):
    tiny = model_class("motion_match").from_preset("tiny")
    assert tiny.config["frames"] > 0
    fixed = tiny.for_dummy(dummy(tiny))
    with torch.no_grad():
        y = fixed(source[:, :20])
    err = (skeleton.bone_lengths(y)[..., 1:] - dummy(tiny)[1:]).abs().max()
    assert y.shape == (2, 20, 25, 3) and err < 1e-5


def test_posture_reference_takes_the_tracks_mean_posture_out_of_the_query(source):
    """β = 1: the position features of a track are relative to its own running mean posture,
    so two tracks that differ only by a held posture offset (a lean of the upper body) give
    the same position features from the first frame on; β = 0 keeps the offset."""
    from streamtmr.models.motion_match import DEFAULTS, _fstate, feature_step

    frame = source[0, 0]
    leaned = frame.clone()
    upper = [skeleton.JOINT[n] for n in ("Head", "HandLeft", "HandRight", "ElbowLeft",
                                          "ElbowRight")]
    leaned[upper] += torch.tensor([0.0, 0.0, 0.08])        # 8 cm forward, every frame
    x = torch.stack([frame, leaned])                       # two bodies, held still
    k = len(DEFAULTS["key_joints"])
    for beta, same in ((1.0, True), (0.0, False)):
        cfg = {**DEFAULTS, "posture_reference": beta}
        fs = _fstate(2, k)
        for _ in range(5):
            feat, _, fs = feature_step(x, fs, cfg)
            pos = feat[:, : 3 * k]
            assert torch.allclose(pos[0], pos[1], atol=1e-6) == same
            if beta == 1.0:
                assert pos.abs().max() < 1e-6   # a still body sits on its own mean


def test_tie_jitter_changes_the_choice_and_exports_exactly(source):
    """Near-tie jitter: a deterministic hash, so the step graph on ONNX Runtime picks the same
    database frames as PyTorch; the choice differs from the jitter-free matcher's, and every
    output keeps the dummy's exact bones."""
    from engines import create_engine

    tiny = MotionMatching.presets["tiny"]
    plain = MotionMatching(dict(tiny))
    jittered = MotionMatching({**tiny, "tie_jitter": 2.0})
    x = source[:, :40]
    a = plain.retarget(x, dummy(plain)[None])
    b = jittered.retarget(x, dummy(jittered)[None])
    assert (a - b).abs().max() > 1e-2
    np.testing.assert_allclose(skeleton.bone_lengths(b)[..., 1:],
                               dummy(jittered)[1:].expand(2, 40, 24), atol=1e-5)
    engine = create_engine("onnxruntime", model=jittered, window=None)
    state = engine.init_state(2)
    outs = []
    for t in range(x.shape[1]):
        y, state = engine.step(x[:, t].numpy(), state)
        outs.append(y)
    np.testing.assert_allclose(np.stack(outs, 1), b.numpy(), atol=1e-4)


def test_search_stride_searches_every_kth_frame_of_the_same_database(store, source):
    """``search_stride: 3``: the same clips (followed through ``next`` from each clip's first
    frame, frame for frame), a third of the landing frames searched, each of them a multiple
    of 3 frames into its clip; the matcher still plays database poses with exact bones."""
    one = build_database(store, views=(0,), reps=None, config={**SETTINGS, "search_stride": 1})
    three = build_database(store, views=(0,), reps=None, config={**SETTINGS, "search_stride": 3})

    def clips(m):
        nxt = m.next.tolist()
        starts = sorted(set(range(len(nxt))) - {j for j in nxt if j >= 0})
        out = {}
        for s in starts:
            seq, i = [], s
            while i >= 0:
                seq.append(i)
                i = nxt[i]
            out[tuple(m.features[s].tolist())] = seq
        return out

    a, b = clips(one), clips(three)
    assert a.keys() == b.keys()
    s3 = three.config["search_frames"]
    for key, seq_a in a.items():
        seq_b = b[key]
        torch.testing.assert_close(three.directions[seq_b], one.directions[seq_a], atol=0, rtol=0)
        searched = [k for k, i in enumerate(seq_b) if i < s3]
        assert searched and all(k % 3 == 0 for k in searched)
        assert all(torch.isfinite(three.landing[seq_b[k]]) for k in searched)
    landing = int(torch.isfinite(one.landing).sum())
    assert one.config["search_frames"] == landing
    assert abs(s3 - landing / 3) <= len(a)  # one per 3 landing frames, ± one per clip
    y, _ = run_steps(three, source)
    lengths = skeleton.bone_lengths(y)[..., 1:]
    torch.testing.assert_close(lengths, dummy(three)[1:].expand_as(lengths), atol=1e-5, rtol=0)


def test_held_facing_is_a_backlash_by_hand():
    from streamtmr.models.motion_match import held_facing

    band = math.radians(20)
    fresh, going = torch.tensor([True]), torch.tensor([False])
    deg = lambda v: torch.tensor([math.radians(v)])  # noqa: E731
    assert torch.allclose(held_facing(deg(50), deg(0), band, fresh), deg(50))   # fresh track
    assert torch.allclose(held_facing(deg(15), deg(0), band, going), deg(0))    # inside: held
    assert torch.allclose(held_facing(deg(50), deg(0), band, going), deg(30))   # dragged
    assert torch.allclose(held_facing(deg(-50), deg(0), band, going), deg(-30))
    # across ±180°: 170° → −170° is a 20° turn, not 340°
    out = held_facing(deg(-170), deg(170), math.radians(10), going)
    assert torch.allclose(torch.cos(out), torch.cos(deg(-180)), atol=1e-6)


def _turned(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """``x [B, T, 25, 3]`` turned about its root by ``angles [T]`` (radians), frame by frame."""
    root = x[..., skeleton.ROOT : skeleton.ROOT + 1, :]
    rot = skeleton.rotation_y(angles)[None, :, None]
    return torch.matmul((x - root)[..., None, :], rot.transpose(-1, -2))[..., 0, :] + root


def test_heading_deadband_hides_sway_follows_turns_and_exports(source):
    """A body that sways its facing ±8° is published with a nearly still facing; a 90° turn is
    followed to within the band; the published facing never leaves the band around the
    body's smoothed facing; the pose about the root and the root path are unchanged; ONNX
    Runtime steps the same."""
    tiny = MotionMatching.presets["tiny"]
    plain = MotionMatching(dict(tiny))
    band = 15.0
    banded = MotionMatching({**tiny, "heading_deadband": band})
    T = 60
    t = torch.arange(T, dtype=torch.float32)
    sway = torch.deg2rad(8.0 * torch.sin(2 * math.pi * t / 15))
    turn = torch.deg2rad(torch.clamp(t - 20, 0, 15) * 6.0)       # 0° → 90° over half a second
    x = source[:, :T]

    def wrap(v):
        return torch.atan2(torch.sin(v), torch.cos(v))

    for angles in (sway, turn):
        xs = _turned(x, angles)
        _, states = run_steps(banded, xs)
        facing = torch.stack([s["facing"] for s in states], 1)
        theta = torch.stack([torch.atan2(s["heading"][:, 1], s["heading"][:, 0])
                             for s in states], 1)
        assert wrap(facing - theta).abs().amax() <= math.radians(band) + 1e-5
        moved, body = wrap(facing.diff(dim=1)).abs().sum(1), wrap(theta.diff(dim=1)).abs().sum(1)
        if angles is sway:   # most of the sway never reaches the published facing
            assert bool((moved < 0.3 * body).all()), (moved, body)
        else:                # the turn does, to within the band
            assert bool((wrap(facing[:, -1] - facing[:, 0]).abs() > math.radians(65)).all())
        a = plain.retarget(xs, dummy(plain)[None])
        b = banded.retarget(xs, dummy(banded)[None])
        assert torch.allclose(a[..., skeleton.ROOT, :], b[..., skeleton.ROOT, :], atol=1e-5)
        assert torch.allclose(facing_aligned(a), facing_aligned(b), atol=1e-4)
    xs = _turned(x, sway + turn)
    np.testing.assert_allclose(onnx_steps(banded, xs),
                               banded.retarget(xs, dummy(banded)[None]).numpy(), atol=1e-4)


def test_in_place_holds_the_root_and_facing_of_the_first_frame_and_exports(source):
    """``root_motion: in_place``: a body walking a 2 m path while turning 90° is published at
    its first root (horizontally) facing its first facing, frame after frame; the database
    pose about the root is the full mode's with the facing turned back; ONNX Runtime steps
    the same; an unknown mode is refused by name."""
    tiny = MotionMatching.presets["tiny"]
    full = MotionMatching(dict(tiny))
    held = MotionMatching({**tiny, "root_motion": "in_place"})
    T = 60
    t = torch.arange(T, dtype=torch.float32)
    xs = _turned(source[:, :T], torch.deg2rad(torch.clamp(t - 20, 0, 15) * 6.0))
    xs = xs + torch.stack([t / T * 2.0, 0 * t, 0 * t], -1)[None, :, None]   # 2 m along +X
    a = full.retarget(xs, dummy(full)[None])
    b = held.retarget(xs, dummy(held)[None])
    root = b[..., skeleton.ROOT, :]
    assert torch.allclose(root[..., [0, 2]], xs[:, :1, skeleton.ROOT][..., [0, 2]].expand_as(
        root[..., [0, 2]]), atol=1e-5)
    assert (a[:, -1, skeleton.ROOT, 0] - a[:, 0, skeleton.ROOT, 0] > 1.9).all()  # full follows
    assert torch.allclose(root[..., 1], a[..., skeleton.ROOT, 1], atol=1e-5)    # floor height
    facing = skeleton.facing_angle(b)
    spread = torch.atan2(torch.sin(facing - facing[:, :1]), torch.cos(facing - facing[:, :1]))
    full_turn = skeleton.facing_angle(a[:, -1]) - skeleton.facing_angle(a[:, 0])
    assert spread.abs().amax() < math.radians(20)      # the database's own hip sway only
    assert (torch.cos(full_turn) < math.cos(math.radians(60))).all()            # full turns
    assert torch.allclose(facing_aligned(a), facing_aligned(b), atol=1e-4)
    np.testing.assert_allclose(onnx_steps(held, xs), b.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="root_motion 'fixed'"):
        MotionMatching({**tiny, "root_motion": "fixed"})
    with pytest.raises(ValueError, match="leash_m must be > 0"):
        MotionMatching({**tiny, "root_motion": "leash", "leash_m": -0.5})


def test_leash_moves_by_the_database_and_stays_within_reach_of_the_body(source):
    """``root_motion: leash``: the published root never strays more than ``leash_m`` from the
    body's (horizontally), nor the published facing more than ``leash_deg`` from the body's
    smoothed facing, over a 2 m walk with a 90° turn; where it does not pull, the root moves by
    the database's step of the frames played, not by the body's; the step into a clip's first
    frame is zero; ONNX Runtime steps the same."""
    tiny = MotionMatching.presets["tiny"]
    leash = MotionMatching({**tiny, "root_motion": "leash", "leash_m": 0.3, "leash_deg": 20.0})
    is_next = torch.zeros(len(leash.next), dtype=torch.bool)
    is_next[leash.next[leash.next >= 0]] = True
    first_frames = (~is_next).nonzero().squeeze(1)   # no frame leads into a clip's first
    assert len(first_frames) > 0
    assert leash.root_step[first_frames].abs().max() == 0
    assert leash.turn[first_frames].abs().max() == 0
    assert leash.root_step.norm(dim=-1).max() > 0.01      # the walk clip does step

    T = 60
    t = torch.arange(T, dtype=torch.float32)
    xs = _turned(source[:, :T], torch.deg2rad(torch.clamp(t - 20, 0, 15) * 6.0))
    xs = xs + torch.stack([t / T * 2.0, 0 * t, 0 * t], -1)[None, :, None]
    y, states = run_steps(leash, xs)
    gap = (y[..., skeleton.ROOT, :] - xs[..., skeleton.ROOT, :])[..., [0, 2]].norm(dim=-1)
    assert gap.max() <= 0.3 + 1e-4
    facing = torch.stack([s["facing"] for s in states], 1)
    theta = torch.stack([torch.atan2(s["heading"][:, 1], s["heading"][:, 0]) for s in states], 1)
    off = torch.atan2(torch.sin(facing - theta), torch.cos(facing - theta))
    assert off.abs().max() <= math.radians(20.0) + 1e-5

    # wherever the leash does not pull, the root moved by the database's step (turned to the
    # published facing) and nothing of the body's own step
    w = torch.stack([(s["blend"] / (leash.config["blend_frames"] + 1)).clamp(max=1.0)
                     for s in states], 1)
    cur = torch.stack([s["cur"] for s in states], 1).long()
    old = torch.stack([s["old"] for s in states], 1).long()
    step = (1 - w)[..., None] * leash.root_step[old] + w[..., None] * leash.root_step[cur]
    step = torch.matmul(step[..., None, :], skeleton.rotation_y(facing))[..., 0, :]
    moved = y[:, 1:, skeleton.ROOT] - y[:, :-1, skeleton.ROOT]
    free = gap[:, 1:] < 0.3 - 1e-3
    assert free.float().mean() > 0.2
    assert torch.allclose(moved[free][:, [0, 2]], step[:, 1:][free][:, [0, 2]], atol=1e-5)
    assert not torch.allclose(moved[free][:, [0, 2]], (xs[:, 1:, skeleton.ROOT]
                              - xs[:, :-1, skeleton.ROOT])[free][:, [0, 2]], atol=1e-3)

    np.testing.assert_allclose(onnx_steps(leash, xs), y.numpy(), atol=1e-4)


def test_a_rendered_database_is_rebuilt_from_its_recipe_and_never_stored(source, tmp_path,
                                                                         monkeypatch):
    """``build_rendered``: no store, no person; the checkpoint holds only the recipe, and
    loading it renders the very same database again."""
    from safetensors import safe_open

    from streamtmr.data.synth import ACTIONS

    model = mm.build_rendered({**SETTINGS, "window": 16, "root_motion": "leash"}, clips=1,
                              interactions=["carry"])
    n_clips = 2 * (len(ACTIONS) + 1)  # each motion once, mirrored
    assert model.config["database"]["rendered"] and model.config["frames"] > 50 * n_clips
    path = save_checkpoint(tmp_path / "r.safetensors", model)
    with safe_open(str(path), framework="pt") as f:
        assert list(f.keys()) == []  # nothing but the recipe in the metadata
    assert path.stat().st_size < 64 * 1024
    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path / "empty"))   # rendered, not read back
    loaded = load_checkpoint(path)
    assert list((tmp_path / "empty").rglob("*.safetensors"))   # and cached there
    for name in ("features", "feat_scale", "directions", "next", "landing", "root_step"):
        assert torch.equal(getattr(model, name), getattr(loaded, name)), name
    torch.testing.assert_close(loaded.retarget(source, dummy(model)[None]),
                               model.retarget(source, dummy(model)[None]), atol=0, rtol=0)


def test_a_rendered_database_is_cached_as_safetensors_and_read_back(tmp_path, monkeypatch):
    """The database, its search frames and its tree are derived data: rendered once per
    recipe and code, then read back (the same buffers, bit for bit); another setting is
    another entry, and a damaged entry is rendered again, never read."""
    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path / "c"))
    rendered, real = [], mm.recipe_clips
    monkeypatch.setattr(mm, "recipe_clips", lambda *a: rendered.append(a) or real(*a))
    tiny = MotionMatching.presets["tiny"]
    first, again = MotionMatching(tiny), MotionMatching(tiny)
    assert len(rendered) == 1
    buffers = dict(again.named_buffers())
    assert {k for k in buffers if k.startswith("tree_")} and first.features_in_tree
    for name, value in first.named_buffers():
        assert torch.equal(value, buffers[name]), name
    assert again.config == first.config
    entries = list((tmp_path / "c" / "motion_match").glob("*.safetensors"))
    assert len(entries) == 1
    MotionMatching({**tiny, "search_leaf": 8})           # another tree: another entry
    assert len(rendered) == 2
    entries[0].write_bytes(entries[0].read_bytes()[:-100])   # truncated: rendered again
    third = MotionMatching(tiny)
    assert len(rendered) == 3 and torch.equal(third.tree_leaf_feat, first.tree_leaf_feat)
    x = torch.as_tensor(np.stack(mm.rendered_clips(first.config["dummy_lengths"], ["squat"],
                                                   seed=3)))        # the clip and its mirror
    with torch.no_grad():
        torch.testing.assert_close(third.retarget(x, dummy(first)[None]),
                                   first.retarget(x, dummy(first)[None]), atol=0, rtol=0)


def test_a_database_that_renders_differently_is_refused_by_name(tmp_path):
    model = mm.build_rendered({"window": 16}, clips=1)
    check = model.config["database_check"]
    moved = {**check, "feat_mean": [v + 1e-3 for v in check["feat_mean"]]}
    with pytest.raises(ValueError, match="feature means.*renders differently"):
        MotionMatching({**model.config, "database_check": moved})
    with pytest.raises(ValueError, match=f"{check['frames']} frames.*renders differently"):
        MotionMatching({**model.config, "database_check": {**check, "frames": 1}})
    model.config["database_check"] = moved  # a checkpoint recorded by another version
    path = save_checkpoint(tmp_path / "other.safetensors", model)
    with pytest.raises(CheckpointError, match="other.safetensors.*renders differently"):
        load_checkpoint(path)


def test_rendered_clips_draws_new_instances_of_each_motion():
    lengths = default_dummy().lengths
    two = mm.rendered_clips(lengths, ["wave", "carry"], seed=0, clips=2, mirror=False)
    assert len(two) == 4 and not np.array_equal(two[0], two[1])
    one = mm.rendered_clips(lengths, ["wave"], seed=0, mirror=False)
    np.testing.assert_array_equal(one[0], two[0])  # clips=1 draws what it always drew
    with pytest.raises(ValueError, match="clips must be >= 1"):
        mm.rendered_clips(lengths, ["wave"], clips=0)


def test_a_rendered_database_config_takes_no_store_keys(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("database: {render_clips: 1, subjects: [0]}\n")
    with pytest.raises(ValueError, match=r"\['subjects'\] apply to a store's database"):
        mm.build_from_config(cfg, None, tmp_path / "m.safetensors")
    cfg.write_text("database: {views: [1]}\n")
    with pytest.raises(ValueError, match="needs --data"):
        mm.build_from_config(cfg, None, tmp_path / "m.safetensors")
    cfg.write_text("database: {render_clips: 1, interactions: [carry]}\n")
    out = mm.build_from_config(cfg, None, tmp_path / "m.safetensors")
    config, extra = read_metadata(out)
    assert config["render"]["actions"][-1] == "carry" and extra["data"]["train_subjects"] == []


def test_a_population_recipe_renders_the_stores_very_database(store, model):
    """``population``: the neutral performances a store holds, rendered again without it;
    the database equals the one :func:`build_database` reads from the store, bit for bit."""
    from streamtmr.data.synth import neutral_performances

    info = store.meta["info"]
    pop = {"n_subjects": info["subjects"], "seed": info["seed"],
           "views": store.meta["views_deg"], "view": 0, "rep": 0, "n_actions": 3}
    rows = [i for i, r in enumerate(store.rows) if r["subject"] == 2 and r["view"] == 0]
    again = neutral_performances([2], **pop)
    assert len(again) == len(rows) == 3
    for i, clip in zip(rows, again):
        np.testing.assert_array_equal(clip, np.asarray(store[i].arrays["target"]))
    rendered = mm.build_rendered(SETTINGS, population=pop)  # subjects: anonymizer_train
    assert (rendered.config["render"]["population"]["subjects"]
            == sorted(store.meta["splits"]["anonymizer_train"]))
    for name in ("features", "feat_scale", "directions", "height", "next"):
        assert torch.equal(getattr(rendered, name), getattr(model, name)), name
    with pytest.raises(ValueError, match="not anonymizer_train people"):
        mm.build_rendered(SETTINGS, population={**pop, "subjects": "eval"})
    evaluated = store.meta["splits"]["eval"][0]
    with pytest.raises(ValueError, match=rf"\[{evaluated}\] are not anonymizer_train people"):
        mm.build_rendered(SETTINGS, population={**pop, "subjects": [evaluated]})
    with pytest.raises(ValueError, match=r"subjects \[99\] are not in a population of 6"):
        neutral_performances([99], **pop)
    with pytest.raises(ValueError, match="n_actions must be in 1..22"):
        neutral_performances([2], **{**pop, "n_actions": 23})


def test_a_recipe_asking_for_too_much_work_is_refused_before_rendering(tmp_path):
    """A recipe comes from a checkpoint's config: its size is bounded before anything runs."""
    model = mm.build_rendered({"window": 16}, clips=1)
    greedy = {**model.config["render"], "clips": mm.MAX_RECIPE_CLIPS}
    with pytest.raises(ValueError, match="asks for .* clips, more than 20000"):
        MotionMatching({**model.config, "render": greedy})
    crowd = {"population": {"n_subjects": 10**9, "subjects": [0]}}
    with pytest.raises(ValueError, match="n_subjects must be in 1..10000"):
        MotionMatching({**model.config, "render": crowd})
    model.config["render"] = greedy
    path = save_checkpoint(tmp_path / "greedy.safetensors", model)
    with pytest.raises(CheckpointError, match="greedy.safetensors.*more than 20000"):
        load_checkpoint(path)


def test_a_fresh_since_search_is_the_phase_of_the_bodys_searches(model, source):
    """A fresh state's since_search p: the first frame searches, the next search comes
    search_every − p frames later; p = 0 is the zero state's (evaluated) schedule, bit for bit."""
    every = model.config["search_every"]
    phases = torch.arange(every, dtype=torch.float32) - every // 2   # −2 … 2 for 5
    x = source[:1].expand(every, -1, -1, -1)[:, :3 * every]      # one track, every phase
    state = model.init_state(every)
    state["since_search"] = phases.clone()
    searched, outs = [], []
    for t in range(x.shape[1]):
        before = state["since_search"]
        y, state = model.step(x[:, t], state, dummy(model))
        outs.append(y)                                 # a search resets it to 0, then + 1
        searched.append((state["since_search"] == 1) & (before != 0))
    searched = torch.stack(searched, 1)[:, 1:]         # after the first frame (since = p + 1)
    first = searched.float().argmax(1) + 1
    assert first.tolist() == [every - int(p) for p in phases]
    ref, _ = run_steps(model, x[:1])
    assert torch.equal(torch.stack(outs, 1)[every // 2], ref[0])   # phase 0: the zero state
    mod = model.for_dummy(dummy(model))
    assert mod.stagger == ("since_search", every)


def test_the_node_staggers_bodies_that_enter_together_when_asked(model, source):
    """With ``stagger_search``, bodies that enter on the same frame search on different frames,
    not all on one; a body alone is stepped from the zero state, so it publishes the evaluated
    output (offline path) exactly. By default every body does, in company too."""
    from dataclasses import replace

    from engines import create_engine
    from streamtmr.offline import publish_tracks
    from streamtmr.stream.frame import Body, Frame
    from streamtmr.stream.node import Node, NodeConfig

    eng = create_engine("torch", model=model, window=None)
    every = model.config["search_every"]
    assert eng.stagger == ("since_search", every)
    cfg = NodeConfig(budget_ms=1e6, smoothing="none", leak_guard=False)
    track = source[0, :4 * every].numpy()
    st = np.full(25, 2, np.uint8)

    def together(config):
        node, searching, published = Node(eng, config=config), [], []
        before = np.zeros(every, np.float32)
        for t, joints in enumerate(track):
            out = node.step(Frame(t, int(t * 1e9 / 30), [Body(i, joints + [i, 0, 0], st)
                                                         for i in range(every)], "s"))
            published.append({b.id: b.joints for b in out[0].bodies})
            since = node.states.arrays["since_search"][:every].copy()
            if t >= 1:                                 # a search resets it to 0, then + 1
                searching.append(int(((since == 1) & (before != 0)).sum()))
            before = since
        node.close()
        return searching, published

    spread, _ = together(replace(cfg, stagger_search=True))
    assert max(spread[every:]) == 1                    # one body searches per frame, not five
    in_phase, published = together(cfg)
    assert max(in_phase[every:]) == every              # by default: all on the same frames
    alone = Node(eng, config=cfg)
    got = np.stack([alone.step(Frame(t, int(t * 1e9 / 30), [Body(7, j, st)], "s"))[0]
                    .bodies[0].joints for t, j in enumerate(track)])
    alone.close()
    (ref,) = publish_tracks(eng, [track], cfg)
    np.testing.assert_array_equal(got, ref)
    shifted = np.stack([p[1] for p in published]) - [1, 0, 0]   # body 1 in company, by default
    np.testing.assert_allclose(shifted, ref, atol=1e-5)


def test_the_phase_state_travels_with_exported_graphs_and_cascades(model, tmp_path):
    from engines.onnx_export import export_onnx
    from engines.source import resolve_source
    from streamtmr.models.cascade import CascadeDummy

    src = resolve_source(model, window=None)
    assert src.stagger == ("since_search", model.config["search_every"])
    export_onnx(src, tmp_path / "mm.onnx")
    assert resolve_source(tmp_path / "mm.onnx", window=None).stagger == src.stagger
    tiny = model_class("tmr-stream").from_preset("tiny")
    chained = CascadeDummy([tiny.for_dummy(dummy(model)), model.for_dummy(dummy(model))])
    assert chained.stagger == ("s1.since_search", model.config["search_every"])
    assert chained.stagger[0] in chained.state_spec()
    assert resolve_source(tiny, window=None).stagger is None


def test_state_slots_put_fresh_bodies_on_the_least_used_search_frames():
    from streamtmr.stream.state import StateSlots

    class Engine:
        stagger = ("phase", 5)

        def state_spec(self):
            return {"phase": ((), np.float32), "x": ((2,), np.float32)}

        def init_state(self, n):
            return {"phase": np.zeros(n, np.float32), "x": np.zeros((n, 2), np.float32)}

    def residues(slots, starts):                       # search frames ≡ start − phase
        return [(f - int(slots.arrays["phase"][i])) % 5 for i, f in enumerate(starts)]

    off = StateSlots(Engine(), 8)                      # the node's default: no staggering
    assert not off.gather(list(range(6)), [0] * 6)["phase"].any()
    slots = StateSlots(Engine(), 8, stagger=True)
    state = slots.gather([0], [0])                     # alone: the zero state, phase 0
    assert state["phase"].tolist() == [0.0]
    slots = StateSlots(Engine(), 8, stagger=True)
    state = slots.gather(list(range(6)), [0] * 6)      # six enter together on frame 0
    assert state["phase"][0] == 0
    assert np.bincount(residues(slots, [0] * 6), minlength=5).tolist() == [2, 1, 1, 1, 1]
    for _ in (1, 2):
        slots.gather(list(range(6)), [0] * 6)          # the same six, nothing fresh
    state = slots.gather([*range(6), 6], [0] * 7)      # a seventh on frame 3: residue 3 is
    assert state["phase"][6] == 0                      # among the least used, so phase 0
    assert residues(slots, [0] * 6 + [3]) == [0, 1, 2, 3, 4, 0, 3]
    slots.reset([0, 5])                                # both on residue 0 restart on frame 4:
    state = slots.gather([*range(7)], [0] * 7)         # 0 is now unused, so the first goes
    assert state["phase"][[0, 5]].tolist() == [-1, 0]  # there (phase 4 = −1: centred); the
    #                                                    second is alone on 4
    assert residues(slots, [4, 0, 0, 0, 0, 4, 3]) == [0, 1, 2, 3, 4, 4, 3]
    with pytest.raises(ValueError, match="stagger"):
        Engine.stagger = ("x", 5)                      # not a scalar entry
        StateSlots(Engine(), 2, stagger=True)
