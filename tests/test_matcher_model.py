"""The shipped ``matcher`` preset: the default it was measured with (the shipped default until
2026-12-05, configs/tmr_stream_ver.yaml), then motion matching on a leash over a database
rendered from its recipe (``configs/matcher.yaml``). It runs by name, carries its privacy card,
and holds no database and no person: only its front's weights and a recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zmq

from bench.models import resolve_model_spec
from engines.card import find_card
from sensors.replay import ReplaySource
from streamtmr import skeleton
from streamtmr.cache import file_sha256
from streamtmr.cli import main
from streamtmr.data import synth
from streamtmr.data.datasets import load_windows
from streamtmr.data.store import SkeletonStore
from streamtmr.dummy import default_dummy
from streamtmr.models import motion_match as mm
from streamtmr.models.checkpoint import (
    default_checkpoint_path,
    load_checkpoint,
    read_metadata,
    resolve_model,
    shipped_path,
)
from streamtmr.models.registry import model_class

ROOT = Path(__file__).resolve().parents[1]
MATCHER = shipped_path("matcher")


@pytest.fixture(scope="module")
def matcher():
    return resolve_model("matcher")


def test_the_matcher_is_its_front_then_a_rendered_matcher_on_a_leash():
    assert MATCHER.is_file() and MATCHER.stat().st_size < 2 * 2**20  # no database inside
    config, extra = read_metadata(MATCHER)
    assert config["method"] == "cascade"
    first, second = config["stages"]
    # the front its card names (chained as "default" when it was): the free-head small model
    # of configs/tmr_stream_ver.yaml, not the pose-atoms default that ships beside it now
    front = find_card(MATCHER)["front"]
    assert extra["stages"][0] == "default"
    assert extra["stage_sha256"][0] == front["sha256"] != file_sha256(default_checkpoint_path())
    assert first["method"] == "tmr-stream" and not first.get("pose_atoms")
    small = model_class("tmr-stream").presets["small"]
    assert all(first[k] == v for k, v in small.items())
    assert extra["data"]["real_subjects"] == []
    assert second["method"] == "motion_match" and second["root_motion"] == "leash"
    spec = yaml.safe_load((ROOT / "configs/matcher.yaml").read_text())
    assert all(second[k] == v for k, v in spec["model"].items())
    # the database: the neutral performances of the default's own training people (no one
    # evaluated), and carry / push / pull rendered 40 times each
    recipe = second["render"]
    assert recipe["population"]["subjects"] == sorted(extra["data"]["train_subjects"])
    assert len(recipe["population"]["subjects"]) == 40
    assert recipe["actions"] == ["carry", "push", "pull"] and recipe["clips"] == 40
    assert second["frames"] == 214_972


def test_the_matchers_database_is_what_its_recipe_renders(matcher, tmp_path, monkeypatch):
    """configs/matcher.yaml rebuilds the very stage that ships (same recipe, same fingerprint),
    and the loaded stage holds exactly that rendering."""
    monkeypatch.setenv("STREAMTMR_CACHE", str(tmp_path / "empty"))   # rendered, not read back
    out = mm.build_from_config(ROOT / "configs/matcher.yaml", None, tmp_path / "stage.safetensors")
    rebuilt, shipped = read_metadata(out)[0], read_metadata(MATCHER)[0]["stages"][1]
    # the fingerprint's means may differ in their last digits on another machine (summation
    # order); the load check allows 1e-4, everything else is identical
    check, want = rebuilt.pop("database_check"), shipped.pop("database_check")
    # a setting added since the file shipped (search_leaf: how to search, not what is found)
    # takes its default when the file loads; every stored setting is the recipe's
    assert rebuilt == {**mm.DEFAULTS, **shipped}
    assert check["frames"] == want["frames"] == rebuilt["frames"] > 200_000
    np.testing.assert_allclose(check["feat_mean"], want["feat_mean"], atol=1e-5)
    stage = matcher.stages[1]
    fresh = load_checkpoint(out)
    for name in ("features", "directions", "next", "root_step"):
        assert torch.equal(getattr(stage, name), getattr(fresh, name)), name


def test_the_first_stage_reproduces_its_fronts_recorded_heldout_error(matcher, tmp_path):
    """The front inside the matcher is the model its card names: on the held-out people of the
    default's card it makes the error recorded for that model when it was the default."""
    front = find_card(MATCHER)["front"]
    spec = json.loads(default_checkpoint_path().with_suffix(".json").read_text())["heldout"]
    root = synth.generate(tmp_path / "s", n_subjects=spec["subjects"], n_actions=spec["actions"],
                          views=tuple(spec["views"]), reps=spec["reps"], seed=spec["seed"],
                          progress=False)
    w = load_windows(SkeletonStore(root), 64, crop="center", arrays=("joints", "target_sync"))
    x, y = (torch.tensor(np.asarray(w[k])) for k in ("joints", "target_sync"))
    torch.set_num_threads(1)
    with torch.inference_mode():
        out = matcher.stages[0].for_dummy(torch.tensor(default_dummy().lengths))(x)
    err = float((out - y).norm(dim=-1).mean()) * 1000
    assert err == pytest.approx(front["heldout_mpjpe_mm"], abs=0.5)


def test_the_matcher_staggers_its_search_across_bodies(matcher):
    """The node phases bodies that start together by the matcher stage's search counter."""
    import torch

    mod = matcher.for_dummy(torch.tensor(np.array(default_dummy().lengths, np.float32)))
    assert mod.stagger == ("s1.since_search", matcher.config["stages"][1]["search_every"])
    assert mod.stagger[0] in mod.state_spec()


def test_the_matcher_has_a_card_bound_to_its_weights():
    card = find_card(MATCHER)
    assert card is not None and card["sha256"] == file_sha256(MATCHER)
    privacy = card["privacy"]
    # a privacy number never without its utility: both, on SynthKinect and on real people
    for key in ("reid_top1_adaptive_pct", "action_top1_retrained_pct",
                "utkinect_reid_top1_adaptive_pct", "utkinect_action_top1_retrained_pct"):
        assert len(privacy[key]) == 2, key  # [mean, std] over the attacker seeds
    assert privacy["seeds"] == [0, 1, 2] and privacy["utkinect_clock"] == "sensor"


def test_the_matcher_runs_by_name_and_publishes_only_the_dummy(tmp_path):
    sock = zmq.Context.instance().socket(zmq.PUB)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    sock.close(0)
    rec = tmp_path / "m.stmr"
    assert main(["run", "--model", "matcher", "--engine", "torch", "--source", "synthetic",
                 "--fast", "--max-frames", "40", "--sink", f"zmq://127.0.0.1:{port}",
                 "--budget-ms", "5000", "--record", str(rec), "--stagger-search"]) == 0
    bodies = [b for f in ReplaySource(rec, realtime=False) for b in f.bodies]
    assert len(bodies) >= 40
    lengths = default_dummy().lengths
    assert max(float(np.abs(skeleton.bone_lengths(b.joints)[1:] - lengths[1:]).max())
               for b in bodies) < 1e-4


def test_benchmarks_take_the_matcher_by_name():
    m = resolve_model_spec("matcher")
    assert m.label == "matcher" and m.method == "cascade" and m.sha256 == file_sha256(MATCHER)
