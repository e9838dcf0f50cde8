"""The action prior of motion matching: database codes, the prior deciding the kind of motion
played, the recognizer learning, causal stage outputs, export and checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import onnx_steps

from streamtmr import skeleton
from streamtmr.data.store import SkeletonStore
from streamtmr.data.synth import ACTIONS
from streamtmr.dummy import default_dummy
from streamtmr.models import motion_match as mm
from streamtmr.models.action_prior import class_codes, stage_outputs, train_prior
from streamtmr.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from streamtmr.models.registry import model_class

ROOT = Path(__file__).resolve().parents[1]
CLASSES = list(ACTIONS[:3])          # the tiny store's actions
SETTINGS = {"search_every": 4, "blend_frames": 3, "margin": 0.05}


def prior_settings(weight: float = 1.0, classes=CLASSES) -> dict:
    return {**SETTINGS, "action_prior": {"classes": list(classes), "weight": weight,
                                         "hidden": 16, "epochs": 2}}


@pytest.fixture(scope="module")
def store(matcher_store) -> SkeletonStore:
    return matcher_store


@pytest.fixture(scope="module")
def model(store) -> mm.MotionMatching:
    m = mm.build_database(store, views=(0,), reps=None, config=prior_settings())
    mm.train_action_prior(m, store.root)
    return m


@pytest.fixture(scope="module")
def source(matcher_source) -> torch.Tensor:
    """Two observed (sensor-noise) sequences of evaluation subjects, cut to equal length."""
    return matcher_source


def lengths(model) -> torch.Tensor:
    return torch.as_tensor(model.config["dummy_lengths"], dtype=torch.float32)


def playing(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs ``[B, T, 25, 3]`` and the database frame playing ``[B, T]`` at every step."""
    state, outs, cur = model.init_state(x.shape[0]), [], []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state, lengths(model))
        outs.append(y)
        cur.append(state["cur"].long())
    return torch.stack(outs, 1), torch.stack(cur, 1)


def test_database_frames_carry_their_actions_code(store, model):
    """Every database frame ends in w·one-hot of the action of the clip it came from: the
    frame counts per class are those of the store's clips (and their mirror images)."""
    codes = model.features[:, -len(CLASSES):]
    assert torch.equal(codes.sum(1), torch.ones(len(codes)))   # every clip is a known action
    rows = mm._clip_rows(store, None, (0,), None)
    want = np.zeros(len(CLASSES))
    for k in rows:
        want[int(store.rows[k]["action"])] += 2 * store.rows[k]["length"]   # and its mirror
    np.testing.assert_array_equal(codes.sum(0).numpy(), want)
    # the landing cost reads the codes too (one nearest-neighbour search in F + C dimensions)
    finite = torch.isfinite(model.landing)
    torch.testing.assert_close(model.landing[finite], (model.features[finite] ** 2).sum(1))
    assert class_codes(["clap", "carry"], CLASSES).tolist() == [[0, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize("forced", [0, 2])
def test_the_prior_decides_which_kind_of_motion_plays(store, source, forced):
    """With a heavy weight and the posterior forced to one class, every database frame played
    comes from that class's clips, whatever the person does; the bones stay the dummy's."""
    m = mm.build_database(store, views=(0,), reps=None, config=prior_settings(weight=10.0))
    with torch.no_grad():
        m.prior.head.weight.zero_()
        m.prior.head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(forced), 3) * 30.0)
    y, cur = playing(m, source)
    code = m.features[cur.reshape(-1), -len(CLASSES):].argmax(-1)
    assert (code == forced).all()
    np.testing.assert_allclose(skeleton.bone_lengths(y)[..., 1:],
                               lengths(m)[1:].expand(*y.shape[:2], 24), atol=1e-5)


def test_the_prior_changes_the_choice_and_stays_causal(model, source):
    """The prior changes which frames play; with its recurrent state the matcher is still
    causal (later frames changed, earlier outputs bit-identical) and bodies stay
    independent."""
    plain = mm.build_database(SkeletonStore(model.config["database"]["store"]), views=(0,),
                              reps=None, config=SETTINGS)
    y, with_prior = playing(model, source)
    _, without = playing(plain, source)
    assert (with_prior != without).any()
    assert {"prior_h", "prior_c"} <= set(model.state_spec())
    cut = source.shape[1] // 2
    changed = source.clone()
    changed[:, cut:] += 0.3
    y2, _ = playing(model, changed)
    torch.testing.assert_close(y2[:, :cut], y[:, :cut], atol=0, rtol=0)
    assert (y2[:, cut:] - y[:, cut:]).abs().max() > 1e-3
    alone, _ = playing(model, source[1:])
    torch.testing.assert_close(alone[0], y[1], atol=1e-5, rtol=0)


def test_the_recognizer_is_trained_on_training_people_and_recorded(store, model):
    trained = model.config["action_prior"]["trained"]
    rows = mm._clip_rows(store, None, (0, 1), None)
    assert trained["sequences"] == len(rows) and trained["store"] == str(store.root)
    assert 0.0 <= trained["train_frame_accuracy"] <= 1.0
    assert model.config["action_prior"]["stage"] is None


def test_train_prior_learns_a_kind_of_motion_from_its_history():
    """Three classes that share every single frame's distribution and differ only in their
    order over time: the LSTM must read the history to tell them apart."""
    gen = torch.Generator().manual_seed(0)
    seqs, labels = [], []
    for n in range(300):
        c = n % 3
        t = torch.arange(40, dtype=torch.float32) + float(torch.rand(1, generator=gen)) * 20
        rhythm = torch.sin(t * (0.2 + 0.25 * c))[:, None]       # same range, other rhythm
        seqs.append(torch.cat([rhythm, torch.randn(40, 3, generator=gen) * 0.1], 1))
        labels.append(c)
    prior = train_prior(seqs, labels, 3, hidden=16, epochs=40, seed=0, lr=1e-2)
    with torch.no_grad():
        late = torch.stack([prior(s[None])[0, 20:].argmax(-1) for s in seqs])
    assert (late == torch.tensor(labels)[:, None]).float().mean() > 0.9


def test_stage_outputs_are_each_clips_own_track(store):
    """Clips of a batch are end-padded: a causal stage's output for each equals running it on
    that clip alone."""
    stage = model_class("tmr-stream").from_preset("tiny").eval()
    dummy = stage.for_dummy(torch.tensor(np.array(default_dummy().lengths))).eval()
    clips = [np.array(store[k].joints[:n], np.float32) for k, n in ((0, 30), (1, 50), (2, 41))]
    together = stage_outputs(dummy, clips, batch=3)
    for c, y in zip(clips, together, strict=True):
        alone = dummy(torch.as_tensor(c)[None])[0].detach().numpy()
        assert y.shape == c.shape
        np.testing.assert_allclose(y, alone, atol=1e-5)


def test_the_prior_exports_to_onnx_and_survives_a_checkpoint(source, tmp_path):
    """A rendered database (the tiny preset's motions) with a prior trained on its own clips:
    ONNX Runtime steps as PyTorch does, and the checkpoint keeps the prior's weights (and
    only them: the database is rendered again)."""
    tiny = mm.MotionMatching.presets["tiny"]
    classes = tiny["render"]["actions"]
    model = mm.MotionMatching({**tiny, "action_prior": {"classes": classes, "hidden": 8,
                                                         "epochs": 3}})
    recipe = model.config["render"]
    mm.fit_action_prior(model, mm.recipe_clips(model.config["dummy_lengths"], recipe),
              mm.recipe_actions(recipe))
    with torch.no_grad():
        want = model.retarget(source, lengths(model)[None]).numpy()
    path = save_checkpoint(tmp_path / "p.safetensors", model)
    loaded = load_checkpoint(path)
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert all(k.startswith("prior.") for k in model.state_dict() if "tree" not in k)
    with torch.no_grad():
        np.testing.assert_array_equal(loaded.retarget(source, lengths(model)[None]).numpy(),
                                      want)
    np.testing.assert_allclose(onnx_steps(loaded, source), want, atol=1e-4)


def test_a_rendered_database_labels_its_clips_in_render_order():
    """``recipe_actions`` names each clip of ``recipe_clips`` in order (the rendered
    database's codes); the tiny preset with a prior renders and runs."""
    tiny = mm.MotionMatching.presets["tiny"]
    recipe = {**tiny["render"], "clips": 2}
    names = mm.recipe_actions(recipe)
    clips = mm.recipe_clips(default_dummy().lengths, recipe)
    assert len(names) == len(clips)
    assert names == [a for a in tiny["render"]["actions"] for _ in range(2)] * 2
    m = mm.MotionMatching({**tiny, "action_prior": {"classes": ["squat", "wave"],
                                                     "hidden": 8}})
    codes = m.features[:, -2:]
    assert 0 < int(codes[:, 0].sum()) and 0 < int(codes[:, 1].sum())
    assert int((codes.sum(1) == 0).sum()) > 0          # walk_towards: not a class of the prior


def test_a_prior_without_classes_or_clip_actions_is_refused():
    with pytest.raises(ValueError, match="action_prior.classes"):
        mm.MotionMatching({**mm.MotionMatching.presets["tiny"], "action_prior": {"weight": 1}})
    clip = np.zeros((10, 25, 3), np.float32)
    with pytest.raises(ValueError, match="each database clip's action"):
        mm.database([clip], {**mm.DEFAULTS, "action_prior": {"classes": ["wave"]}})


def test_the_build_command_trains_the_prior_on_a_named_stage(store, tmp_path):
    """``python -m streamtmr.models.motion_match`` with a prior on the shipped default: the
    command module and the registry's import of it are one method, the stage is recorded by
    name and SHA-256."""
    out = tmp_path / "stage.safetensors"
    setting = ("action_prior={classes: [" + ", ".join(CLASSES)
               + "], hidden: 8, epochs: 1, stage: default}")
    subprocess.run([sys.executable, "-m", "streamtmr.models.motion_match",
                    "--config", "configs/motion_match.yaml", "--data", str(store.root),
                    "--set", "database.views=[0]", "--set", "database.reps=null",
                    "--set", "database.interactions=[]", "--set", setting, "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=300, cwd=ROOT)
    loaded = load_checkpoint(out)
    _, extra = read_metadata(out)
    assert extra["data"]["train_subjects"] == store.meta["splits"]["anonymizer_train"]
    assert extra["data"]["store"] == str(store.root)    # the evaluation checks them against it
    stage = loaded.config["action_prior"]["stage"]
    assert stage["model"] == "default" and len(stage["sha256"]) == 64
    assert loaded.prior is not None


def test_motions_the_store_lacks_are_performed_by_its_training_people(store):
    """A class the store has no recordings of (``carry``): the store's anonymizer_train people
    perform it, recorded as the store records (every camera and repetition), and the prior
    trains on those too."""
    from streamtmr.data.synth import performances

    info = store.meta["info"]
    people = store.meta["splits"]["anonymizer_train"]
    kw = {"n_subjects": info["subjects"], "seed": info["seed"],
          "views": store.meta["views_deg"], "reps": info["reps"]}
    clips, names = performances(people, ["carry", "wave"], **kw)
    per_action = len(people) * info["reps"] * len(store.meta["views_deg"])
    assert names == (["carry"] * (per_action // len(people)) +
                     ["wave"] * (per_action // len(people))) * len(people)
    again, _ = performances(people[:1], ["carry"], **kw)
    np.testing.assert_array_equal(again[0], clips[0])      # (seed, subject, action, rep) only
    assert all(c.dtype == np.float32 and c.shape[1:] == (25, 3) for c in clips)
    with pytest.raises(ValueError, match="not in a population"):
        performances([999], ["carry"], **kw)
    odd = mm.build_database(store, views=(0,), reps=None,
                            config=prior_settings(classes=CLASSES + ["juggle"]))
    with pytest.raises(ValueError, match=r"\['juggle'\] are neither"):
        mm.train_action_prior(odd, store.root)
    m = mm.build_database(store, views=(0,), reps=None, interactions=["carry"],
                          interaction_clips=2, config=prior_settings(classes=CLASSES + ["carry"]))
    mm.train_action_prior(m, store.root)
    rows = mm._clip_rows(store, None, (0, 1), None)
    assert m.config["action_prior"]["trained"]["sequences"] == len(rows) + per_action
    assert int(m.features[:, -1].sum()) > 0               # the rendered carry clips' code


def test_a_rendered_database_records_the_store_its_prior_trained_on(store, tmp_path):
    """A rendered database reads no store, but its prior trains on one: the checkpoint names
    that store and its training people, so that an evaluation refuses to attack them."""
    import yaml

    config = tmp_path / "rendered.yaml"
    config.write_text(yaml.safe_dump({
        "model": {**prior_settings(), "window": 16},
        "database": {"render_clips": 1, "interactions": [], "mirror": False}}))
    out = mm.build_from_config(config, store.root, tmp_path / "r.safetensors")
    _, extra = read_metadata(out)
    assert extra["data"]["store"] == str(store.root)
    assert extra["data"]["train_subjects"] == store.meta["splits"]["anonymizer_train"]
    assert load_checkpoint(out).config["action_prior"]["trained"]["sequences"] > 0


def test_replayed_copies_change_speed_and_drop_frames_without_inventing_motion():
    """A clip moving at constant velocity stays on its line when replayed: the copy is
    resampled (speed 0.7–1.4×, so its length changes accordingly) and the dropped frames are
    interpolated between kept ones; integer times give the frames back exactly."""
    from streamtmr.models.action_prior import replayed, resample

    t = np.arange(90, dtype=np.float32)
    clip = np.zeros((90, 25, 3), np.float32) + t[:, None, None] * np.float32(0.01)
    np.testing.assert_array_equal(resample(clip, np.arange(90.0)), clip)
    rng = np.random.default_rng(0)
    for _ in range(20):
        copy = replayed(clip, rng)
        assert 89 / 1.4 - 10 <= len(copy) <= 89 / 0.7 + 2 and copy.shape[1:] == (25, 3)
        step = np.diff(copy[:, 0, 0])
        np.testing.assert_allclose(step, step[0], atol=1e-5)       # constant speed
        assert 0.01 * 0.7 * 0.99 <= step[0] <= 0.01 * 1.4 * 1.01  # the speed, per frame
