"""The neutral query of motion matching: an untrained one changes nothing, the regressor learns
what only a track's history shows, training on a store's people against their own-tempo
neutral performance, causality, export and checkpoints."""

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
from streamtmr.models import motion_match as mm
from streamtmr.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from streamtmr.models.neutral_query import NeutralQuery, query_error, train_neutral_query

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"search_every": 4, "blend_frames": 3, "margin": 0.05}
QUERY = {"hidden": 16, "epochs": 3}


@pytest.fixture(scope="module")
def store(matcher_store) -> SkeletonStore:
    return matcher_store


@pytest.fixture(scope="module")
def model(store) -> mm.MotionMatching:
    m = mm.build_database(store, views=(0,), reps=None,
                          config={**SETTINGS, "neutral_query": QUERY})
    mm.train_query(m, store.root)
    return m


def lengths(model) -> torch.Tensor:
    return torch.as_tensor(model.config["dummy_lengths"], dtype=torch.float32)


def run(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.retarget(x, lengths(model)[None])


def test_an_untrained_neutral_query_plays_what_the_plain_matcher_plays(store, matcher_source):
    """The regressor is a residual with a zero head: before training, the matcher with it
    publishes bit for bit what the matcher without it publishes (so the wiring alone changes
    nothing), and its state carries the LSTM's h and c."""
    plain = mm.build_database(store, views=(0,), reps=None, config=SETTINGS)
    with_query = mm.build_database(store, views=(0,), reps=None,
                                   config={**SETTINGS, "neutral_query": QUERY})
    assert {"query_h", "query_c"} <= set(with_query.state_spec())
    assert with_query.state_spec()["query_h"][0] == (QUERY["hidden"],)
    torch.testing.assert_close(run(with_query, matcher_source), run(plain, matcher_source),
                               rtol=0, atol=0)


def test_the_regressor_learns_what_only_the_tracks_history_shows():
    """Targets offset by a constant per sequence that the first frames reveal (their mean)
    and the later frames do not: a causal regressor must carry it forward in its state."""
    g = torch.Generator().manual_seed(0)
    src, tgt = [], []
    for _ in range(192):
        offset = torch.randn(4, generator=g)
        x = torch.randn(30, 4, generator=g) * 0.3
        x[:5] += offset                                  # the offset shows in the first frames
        src.append(x)
        tgt.append(x - torch.where(torch.arange(30)[:, None] < 5, offset, 0.0) + 0.5 * offset)
    model = train_neutral_query(src, tgt, hidden=32, epochs=100, seed=0, batch=32, lr=1e-2)
    err = query_error(model, src[:64], tgt[:64])
    # a regressor without memory knows the offset only while it shows: error >= ~0.8 x input
    assert err["predicted"] < 0.2 * err["input"], err


def test_training_on_a_store_brings_the_query_nearer_its_neutral_performance(store, model):
    """Trained on the store's anonymizer_train people (every camera and repetition) against
    their target_sync: the recorded training error is below the query's own, and the
    evaluated people's queries come nearer their own-tempo neutral performance's too."""
    trained = model.config["neutral_query"]["trained"]
    ev = set(store.meta["splits"]["eval"])
    assert trained["store"] == str(store.root)
    assert trained["sequences"] == sum(r["subject"] not in ev for r in store.rows)
    assert trained["train_error"]["predicted"] < trained["train_error"]["input"]
    rows = [i for i, r in enumerate(store.rows) if r["subject"] in ev]
    src = mm.query_features(model, [np.array(store[i].joints) for i in rows])
    tgt = mm.query_features(model, [np.array(store[i].arrays["target_sync"]) for i in rows])
    err = query_error(model.neutral, src, tgt)
    assert err["predicted"] < err["input"], err


def test_the_neutral_query_changes_the_choice_and_stays_causal(store, model, matcher_source):
    """Trained, it changes which database frames play; frames after t never change the
    output up to t, and each body's output is its own."""
    plain = mm.build_database(store, views=(0,), reps=None, config=SETTINGS)
    y = run(model, matcher_source)
    assert not torch.equal(y, run(plain, matcher_source))
    x2 = matcher_source.clone()
    t = x2.shape[1] // 2
    x2[:, t:] = x2[:, t:].flip(1)
    torch.testing.assert_close(run(model, x2)[:, :t], y[:, :t], rtol=0, atol=0)
    torch.testing.assert_close(run(model, matcher_source[1:])[0], y[1], rtol=0, atol=0)


def test_the_neutral_query_exports_to_onnx_and_survives_a_checkpoint(store, matcher_source,
                                                                     tmp_path):
    """A rendered database (the tiny preset's motions) with a neutral query trained on the
    store's people: ONNX Runtime steps as PyTorch does, and the checkpoint keeps the regressor's
    weights (and only them: the database is rendered again)."""
    model = mm.MotionMatching({**mm.MotionMatching.presets["tiny"], "neutral_query": QUERY})
    rows = [i for i, r in enumerate(store.rows)
            if r["subject"] in store.meta["splits"]["anonymizer_train"]]
    mm.fit_neutral_query(model, [np.array(store[i].joints) for i in rows],
                         [np.array(store[i].arrays["target_sync"]) for i in rows])
    want = run(model, matcher_source).numpy()
    loaded = load_checkpoint(save_checkpoint(tmp_path / "q.safetensors", model))
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert all(k.startswith("neutral.") for k in model.state_dict() if "tree" not in k)
    np.testing.assert_array_equal(run(loaded, matcher_source).numpy(), want)
    np.testing.assert_allclose(onnx_steps(loaded, matcher_source), want, atol=1e-4)


def test_the_build_command_trains_the_query_behind_a_named_stage(store, tmp_path):
    """``python -m streamtmr.models.motion_match`` with a neutral query behind the shipped
    default: the stage is recorded by name and SHA-256, the people it trained on too."""
    out = tmp_path / "stage.safetensors"
    subprocess.run([sys.executable, "-m", "streamtmr.models.motion_match",
                    "--config", "configs/motion_match.yaml", "--data", str(store.root),
                    "--set", "database.views=[0]", "--set", "database.reps=null",
                    "--set", "database.interactions=[]",
                    "--set", "neutral_query={hidden: 8, epochs: 1, stage: default}",
                    "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=300, cwd=ROOT)
    loaded = load_checkpoint(out)
    _, extra = read_metadata(out)
    assert extra["data"]["train_subjects"] == store.meta["splits"]["anonymizer_train"]
    stage = loaded.config["neutral_query"]["stage"]
    assert stage["model"] == "default" and len(stage["sha256"]) == 64
    assert isinstance(loaded.neutral, NeutralQuery)


def test_the_training_people_perform_what_the_store_lacks_with_their_neutral_performance(
        store):
    """``interactions``: the store's training people perform carry, each clip with its own-tempo
    neutral performance (the dummy's bones, frame-aligned, the same clips as without), and the
    neutral query trains on those pairs too; ``augment`` adds a replayed copy of every pair."""
    from streamtmr.data.synth import performances

    info, dummy = store.meta["info"], store.meta["dummy"]["lengths"]
    people = store.meta["splits"]["anonymizer_train"]
    kw = {"n_subjects": info["subjects"], "seed": info["seed"],
          "views": store.meta["views_deg"], "reps": info["reps"]}
    clips, names, targets = performances(people, ["carry"], target_lengths=dummy, **kw)
    plain, _ = performances(people, ["carry"], **kw)
    assert len(targets) == len(clips) == len(plain) == len(people) * len(kw["views"])
    for clip, same, target in zip(clips, plain, targets, strict=True):
        np.testing.assert_array_equal(clip, same)
        assert target.shape == clip.shape and target.dtype == np.float32
        np.testing.assert_allclose(skeleton.bone_lengths(target)[:, 1:],
                                   np.broadcast_to(dummy[1:], (len(target), 24)), atol=1e-4)
    m = mm.build_database(store, views=(0,), reps=None, config={
        **SETTINGS, "neutral_query": {**QUERY, "epochs": 1, "interactions": ["carry"]}})
    mm.train_query(m, store.root)
    trained = m.config["neutral_query"]["trained"]["sequences"]
    assert trained == len(mm._clip_rows(store, None, (0, 1), None)) + len(clips)
    replay = mm.build_database(store, views=(0,), reps=None, config={
        **SETTINGS, "neutral_query": {**QUERY, "epochs": 1, "augment": True}})
    mm.train_query(replay, store.root)        # a replayed copy of every pair, source and target
    assert replay.config["neutral_query"]["trained"]["sequences"] == 2 * len(
        mm._clip_rows(store, None, (0, 1), None))
    odd = mm.build_database(store, views=(0,), reps=None, config={
        **SETTINGS, "neutral_query": {**QUERY, "interactions": ["juggle"]}})
    with pytest.raises(ValueError, match=r"\['juggle'\] are not motions"):
        mm.train_query(odd, store.root)


def test_training_needs_a_store_with_the_neutral_performance(store, tmp_path):
    m = mm.MotionMatching({**mm.MotionMatching.presets["tiny"], "neutral_query": QUERY})
    with pytest.raises(ValueError, match="needs a SynthKinect store"):
        mm.train_query(m, None)
    with pytest.raises(ValueError, match="every input sequence needs a target"):
        train_neutral_query([torch.zeros(5, 3)], [torch.zeros(4, 3)])
