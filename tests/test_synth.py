"""SynthKinect generator: determinism, geometry, ground truth, store, noise, actions."""

from __future__ import annotations

import numpy as np
import pytest

from streamtmr import skeleton
from streamtmr.data import synth
from streamtmr.data import synth_motion as sm
from streamtmr.data.store import SkeletonStore, StoreError
from streamtmr.dummy import default_dummy

VIEWS = (-45.0, 0.0, 45.0)


@pytest.fixture(scope="module")
def people():
    return synth.sample_population(4, seed=3)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "store"
    return synth.generate(out, n_subjects=3, n_actions=3, views=VIEWS, reps=2, seed=11,
                          progress=False)


def test_population_is_deterministic_and_prefix_stable(people):
    again = synth.sample_population(4, seed=3)
    other = synth.sample_population(4, seed=4)
    for a, b in zip(people, again):
        np.testing.assert_array_equal(a.lengths, b.lengths)
        np.testing.assert_array_equal(a.habit, b.habit)
        assert a.tempo == b.tempo and a.sex == b.sex and a.age_group == b.age_group
    assert not np.allclose(people[0].lengths, other[0].lengths)
    np.testing.assert_array_equal(synth.sample_population(2, seed=3)[1].lengths,
                                  people[1].lengths)


def test_content_and_render_are_deterministic(people):
    c1 = synth.sample_content("wave", np.random.default_rng(5))
    c2 = synth.sample_content("wave", np.random.default_rng(5))
    assert c1 == c2
    a = synth.render(c1, people[0], rng=np.random.default_rng(1))
    b = synth.render(c2, people[0], rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_render_shapes_and_dtypes(people):
    rng = np.random.default_rng(0)
    for action in synth.ACTIONS:
        content = synth.sample_content(action, rng)
        assert 2.0 <= content.duration <= 5.0 + 1e-9
        joints, state = synth.render(content, people[1], view_deg=45.0, rng=rng)
        assert joints.dtype == np.float32 and joints.shape == (content.n_frames, 25, 3)
        assert state.dtype == np.uint8 and state.shape == (content.n_frames, 25)
        assert set(np.unique(state)) <= {1, 2}
        assert np.isfinite(joints).all()
        # camera space: the subject stands 1.5-5.5 m in front of the sensor
        assert 1.5 < np.median(joints[:, 0, 2]) < 5.5


def test_bodies_are_plausible(people):
    for p in synth.sample_population(40, seed=1):
        assert 1.45 <= p.height <= 2.0
        assert p.lengths.dtype == np.float32 and p.lengths.shape == (25,)
        assert p.lengths[0] == 0 and (p.lengths[1:] > 0.02).all()
        left, right = p.lengths[list(skeleton.LEFT)], p.lengths[list(skeleton.RIGHT)]
        asym = np.abs(left - right) / left
        assert asym.max() < 0.08 and asym.max() > 0  # symmetric up to small asymmetries
        ratio = skeleton.standing_height(p.lengths) / p.height
        assert ratio == pytest.approx(synth.CHAIN_RATIO, rel=1e-5)


def test_clean_render_keeps_the_identity_bone_lengths(people):
    rng = np.random.default_rng(2)
    for action in synth.ACTIONS:
        content = synth.sample_content(action, rng)
        joints, state = synth.render(content, people[2], sensor_noise=False)
        assert (state == 2).all()
        np.testing.assert_allclose(skeleton.bone_lengths(joints), np.broadcast_to(
            people[2].lengths, joints.shape[:2]), atol=1e-5)


def test_identities_differ_in_body_and_style(people):
    a, b = people[0], people[1]
    assert np.abs(a.lengths - b.lengths).max() > 0.005
    assert a.tempo != b.tempo and a.lean != b.lean
    assert np.abs(a.habit - b.habit).max() > 1.0
    # the same content looks different on different people, even after a bone swap
    content = synth.sample_content("clap", np.random.default_rng(0))
    ja, _ = synth.render(content, a, sensor_noise=False)
    jb, _ = synth.render(content, b, sensor_noise=False)
    ja = skeleton.set_bone_lengths(ja, default_dummy().lengths)
    jb = skeleton.set_bone_lengths(jb, default_dummy().lengths)
    assert np.abs(ja - jb).max() > 0.05


def test_neutral_identity_has_no_style():
    dummy = default_dummy()
    n = synth.neutral_identity(dummy.lengths)
    np.testing.assert_array_equal(n.lengths, dummy.lengths)
    assert (n.sex, n.age_group) == (-1, -1)
    assert n.tempo == 1.0 and n.amplitude == 1.0 and n.sway_amp == 0 and n.tremor_amp == 0
    assert not n.habit.any() and not n.phase_lag.any() and (n.amp_habit == 1).all()


def test_feet_touch_the_floor_and_jumps_leave_it(people):
    rng = np.random.default_rng(4)
    for action in ("clap", "walk_towards", "sit_down", "kick"):
        w = synth.world_motion(synth.sample_content(action, rng), people[0])
        lowest = w[:, list(skeleton.FEET), 1].min(1)
        np.testing.assert_allclose(lowest, synth.FLOOR_CLEARANCE, atol=1e-9)
    w = synth.world_motion(synth.sample_content("jump", rng), people[0])
    assert w[:, list(skeleton.FEET), 1].min(1).max() > synth.FLOOR_CLEARANCE + 0.05


def test_walks_travel_and_sitting_lowers_the_pelvis(people):
    rng = np.random.default_rng(6)
    cam = synth.Camera(view_deg=0.0, distance=3.5)
    towards, _ = synth.render(synth.sample_content("walk_towards", rng), people[0], camera=cam,
                              sensor_noise=False)
    away, _ = synth.render(synth.sample_content("walk_away", rng), people[0], camera=cam,
                           sensor_noise=False)
    assert towards[-1, 0, 2] - towards[0, 0, 2] < -0.8
    assert away[-1, 0, 2] - away[0, 0, 2] > 0.8
    sit, _ = synth.render(synth.sample_content("sit_down", rng), people[0], sensor_noise=False)
    assert sit[0, 0, 1] - sit[-1, 0, 1] > 0.25


def test_sensor_noise_is_millimetres(people):
    rng = np.random.default_rng(7)
    content = synth.sample_content("clap", rng)
    clean, _ = synth.render(content, people[0], sensor_noise=False)
    errs = []
    for seed in range(5):
        noisy, state = synth.render(content, people[0], rng=np.random.default_rng(seed))
        tracked = state == 2
        errs.append(np.linalg.norm(noisy - clean, axis=-1)[tracked])
    err = np.concatenate(errs)
    assert 0.002 < np.median(err) < 0.012
    assert np.percentile(err, 99) < 0.1


def test_sensor_marks_inferred_extremities():
    rng = np.random.default_rng(0)
    clean = np.zeros((3000, 25, 3)) + np.array([0.0, 0.0, 3.0])
    noisy, state = synth.sensor_model(clean, rng, view_deg=45.0)
    inferred = (state == 1).mean(0)
    extremities = [skeleton.JOINT[n] for n in ("HandLeft", "HandRight", "FootLeft", "FootRight")]
    assert (inferred[extremities] > 0).all()
    assert inferred[skeleton.JOINT["SpineMid"]] == 0
    # the side turned away from a +45° camera (the right) is occluded more often
    assert inferred[skeleton.JOINT["HandRight"]] > inferred[skeleton.JOINT["HandLeft"]]
    err = np.linalg.norm(noisy - clean, axis=-1)
    assert err[state == 1].mean() > 2 * err[state == 2].mean()


def _motion_signature(action: str, body) -> np.ndarray:
    rng = np.random.default_rng(0)
    content = synth.sample_content(action, rng, side="right")
    j, _ = synth.render(content, body, sensor_noise=False)
    v = np.diff(j, axis=0) * synth.FPS
    return np.concatenate([np.linalg.norm(v, axis=-1).mean(0), v.mean(0).ravel(),
                           (j - j[:, :1]).mean(0).ravel()])


def test_every_motion_moves_differently():
    body = synth.neutral_identity(default_dummy().lengths)
    motions = list(sm.MOTION_SPECS)
    sig = np.stack([_motion_signature(a, body) for a in motions])
    d = np.linalg.norm(sig[:, None] - sig[None], axis=-1)
    d[np.diag_indices(len(sig))] = np.inf
    i, k = np.unravel_index(d.argmin(), d.shape)
    assert d.min() > 0.15, f"{motions[i]} and {motions[k]} move alike"
    assert len(synth.ACTIONS) >= 20 and len(set(synth.ACTIONS)) == len(synth.ACTIONS)


def test_interactions_are_performable_but_never_store_classes(people):
    # the store's labels stay the action classes; carry / push / pull are extra motions
    assert set(sm.INTERACTION_SPECS) == {"carry", "push", "pull"}
    assert not set(sm.INTERACTION_SPECS) & set(synth.ACTIONS)
    assert synth.ACTIONS == tuple(sm.ACTION_SPECS)
    rng = np.random.default_rng(2)
    cam = synth.Camera(view_deg=0.0, distance=3.5)
    J = skeleton.JOINT

    def render(action):
        content = synth.sample_content(action, rng, side="right")
        return synth.render(content, people[0], camera=cam, sensor_noise=False)[0]

    carry = render("carry")  # walks towards the camera with both hands held in front
    assert carry[-1, 0, 2] - carry[0, 0, 2] < -0.6
    hands = carry[:, [J["WristLeft"], J["WristRight"]]] - carry[:, J["SpineShoulder"]][:, None]
    walking = slice(len(carry) // 3, 2 * len(carry) // 3)
    assert (hands[walking, :, 2] < -0.02).all()         # in front of the chest all along
    assert np.ptp(hands[walking, :, 1], axis=0).max() < 0.08  # no arm swing
    for action in ("push", "pull"):  # the dominant hand reaches forward, the other hangs
        x = render(action)
        reach = x[:, J["WristRight"], 2] - x[:, J["SpineShoulder"], 2]
        other = x[:, J["WristLeft"], 2] - x[:, J["SpineShoulder"], 2]
        assert reach.min() < -0.35 and reach.min() < other.min() - 0.15, action
        assert np.abs(x[-1, 0, [0, 2]] - x[0, 0, [0, 2]]).max() < 0.15, action  # on the spot


def test_splits_are_disjoint_and_cover():
    for n in (2, 3, 10, 60):
        s = synth.make_splits(range(n), seed=1)
        train, ev = set(s["anonymizer_train"]), set(s["eval"])
        assert train and ev and not train & ev and train | ev == set(range(n))
        assert abs(len(train) - 2 * n / 3) <= 1
    assert synth.make_splits(range(30), 1) != synth.make_splits(range(30), 2)


def test_store_round_trip_and_ground_truth(tiny_store):
    store = SkeletonStore(tiny_store)
    meta = store.meta
    assert meta["name"] == "synthkinect" and meta["fps"] == 30 and meta["units"] == "m"
    assert meta["skeleton"] == "kinect_v2" and meta["actions"] == list(synth.ACTIONS[:3])
    dummy = default_dummy()
    assert meta["dummy"]["name"] == dummy.name
    np.testing.assert_allclose(meta["dummy"]["lengths"], dummy.lengths, atol=1e-6)
    assert sorted(meta["splits"]["anonymizer_train"] + meta["splits"]["eval"]) == [0, 1, 2]
    assert len(store) == 3 * 3 * len(VIEWS) * 2
    assert set(store.array_names) == {"joints", "clean", "target", "target_sync", "state"}
    for col in ("subject", "action", "view", "rep", "sex", "age_group"):
        assert store.column(col).dtype.kind == "i"
    assert set(store.column("view")) == {0, 1, 2}

    people = synth.sample_population(3, seed=11)
    target_body = synth.neutral_identity(dummy.lengths)
    for i in (0, 7, len(store) - 1):
        seq = store[i]
        m = seq.meta
        person = people[m["subject"]]
        assert (m["sex"], m["age_group"]) == (person.sex, person.age_group)
        content, cams, _ = synth.plan_performance(person, m["action"], m["rep"], VIEWS, seed=11)
        cam = cams[m["view"]]
        clean, _ = synth.render(content, person, camera=cam, sensor_noise=False)
        target, _ = synth.render(content, target_body, camera=cam, sensor_noise=False)
        np.testing.assert_allclose(seq.arrays["clean"], clean, atol=1e-6)
        np.testing.assert_allclose(seq.arrays["target"], target, atol=1e-6)
        sync, _ = synth.render(content, synth.replace(target_body, tempo=person.tempo),
                               camera=cam, sensor_noise=False)
        np.testing.assert_allclose(seq.arrays["target_sync"], sync, atol=1e-6)
        np.testing.assert_allclose(skeleton.bone_lengths(seq.arrays["target"]),
                                   np.broadcast_to(dummy.lengths, target.shape[:2]), atol=1e-5)
        noise = np.linalg.norm(seq.arrays["joints"] - seq.arrays["clean"], axis=-1)
        assert 0.001 < np.median(noise) < 0.025  # 3-D error; per-axis σ grows with depth
        assert set(np.unique(seq.arrays["state"])) <= {1.0, 2.0}


def test_views_see_the_same_performance(tiny_store):
    store = SkeletonStore(tiny_store)
    rows = [i for i, r in enumerate(store.rows) if (r["subject"], r["action"], r["rep"]) ==
            (1, 2, 0)]
    clean = [np.asarray(store[i].arrays["clean"]) for i in rows]
    assert len(clean) == len(VIEWS)
    # same body motion from cameras 45° apart: identical bone lengths, facing turned by 45°
    facing = np.degrees([skeleton.facing_angle(c[0]) for c in clean])
    np.testing.assert_allclose(np.diff(facing), 45.0, atol=3.0)
    for c in clean[1:]:
        np.testing.assert_allclose(skeleton.bone_lengths(c), skeleton.bone_lengths(clean[0]),
                                   atol=1e-5)


def _onset_end(seq: np.ndarray) -> tuple[int, int]:
    """First and last frame where the wrists move faster than 0.3 m/s (relative to the root)."""
    rel = seq[:, list(skeleton.HANDS)] - seq[:, :1]
    speed = np.linalg.norm(np.diff(rel, axis=0), axis=-1).max(-1) * synth.FPS
    moving = np.flatnonzero(speed > 0.3)
    return int(moving[0]), int(moving[-1])


def test_target_sync_follows_the_source_timing():
    """target_sync is the neutral-style dummy at the person's own tempo: it starts and stops
    moving with the source, while the neutral-tempo target ends at another time."""
    people = synth.sample_population(60, seed=0)
    fast = max(people, key=lambda p: p.tempo)
    assert fast.tempo > 1.15
    content, cams, _ = synth.plan_performance(fast, synth.ACTIONS.index("wave"), 0,
                                              (0.0,), seed=0)
    body = synth.neutral_identity(default_dummy().lengths)
    clean = synth.world_motion(content, fast)
    sync = synth.world_motion(content, synth.replace(body, tempo=fast.tempo))
    target = synth.world_motion(content, body)
    (c0, c1), (s0, s1), (_t0, t1) = _onset_end(clean), _onset_end(sync), _onset_end(target)
    assert abs(s0 - c0) <= 3 and abs(s1 - c1) <= 3
    assert t1 - c1 > 6  # the neutral tempo is slower: the target lags the fast person


def test_add_target_sync_upgrades_an_older_store(tiny_store, tmp_path):
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_store, old)
    (old / "target_sync.f32").unlink()
    meta = json.loads((old / "meta.json").read_text())
    del meta["arrays"]["target_sync"]
    (old / "meta.json").write_text(json.dumps(meta))
    assert "target_sync" not in SkeletonStore(old).array_names
    synth.add_target_sync(old, progress=False)
    np.testing.assert_array_equal(SkeletonStore(old).array("target_sync"),
                                  SkeletonStore(tiny_store).array("target_sync"))
    synth.add_target_sync(old, progress=False)  # already there: nothing to do


def test_generate_refuses_existing_store(tiny_store):
    with pytest.raises(StoreError, match="already exists"):
        synth.generate(tiny_store, n_subjects=2, n_actions=1, reps=1, progress=False)


def test_default_dummy_is_the_population_medoid():
    chosen = synth.choose_default_dummy(seed=0)
    shipped = default_dummy()
    assert shipped.name == chosen.name
    np.testing.assert_allclose(shipped.lengths, chosen.lengths, atol=1e-6)
    left, right = chosen.lengths[list(skeleton.LEFT)], chosen.lengths[list(skeleton.RIGHT)]
    np.testing.assert_array_equal(left, right)


def test_summary_stats(people):
    content = synth.sample_content("wave", np.random.default_rng(0))
    clean, _ = synth.render(content, people[0], sensor_noise=False)
    noisy, _ = synth.render(content, people[0])
    s_clean, s_noisy = synth.summary_stats(clean), synth.summary_stats([noisy, noisy])
    np.testing.assert_allclose(s_clean["bone_lengths"], people[0].lengths, atol=1e-5)
    assert s_clean["height"] == pytest.approx(people[0].height, rel=1e-4)
    assert s_clean["bone_cv"] < 1e-5 < s_noisy["bone_cv"]
    assert s_noisy["jitter_mm"] > s_clean["jitter_mm"]
    assert 0 < s_clean["speed_mean"] < s_clean["hand_speed_p95"]
    with pytest.raises(ValueError, match="expected"):
        synth.summary_stats(np.zeros((10, 20, 3)))
