"""``streamtmr card``: a privacy card written from the evaluation that measured the weights."""

import json
import shutil

import pytest
import torch

from engines.base import EngineError
from engines.card import find_card
from engines.select import open_engine
from streamtmr.cli import main
from streamtmr.eval.card import CardSourceError, privacy_from_results
from streamtmr.models.checkpoint import save_checkpoint
from streamtmr.models.registry import model_class

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny streaming checkpoint and a real quick evaluation of it with two attacker seeds."""
    d = tmp_path_factory.mktemp("card")
    torch.manual_seed(0)
    weights = save_checkpoint(d / "m.safetensors", model_class("tmr-stream").from_preset("tiny"))
    (d / "m.yaml").write_text("- name: tiny stream\n  checkpoint: m.safetensors\n")
    assert main(["evaluate", "--quick", "--models", str(d / "m.yaml"), "--out", str(d / "ev"),
                 "--threads", "1", "--seeds", "0,1", "--attacks", "reid,action"]) == 0
    return weights, d / "ev" / "results.json"


def test_card_carries_the_records_numbers_and_unlocks_the_model(evaluated, tmp_path, capsys):
    weights, results = evaluated
    local = tmp_path / "m.safetensors"
    shutil.copy(weights, local)  # the same bytes elsewhere: the card binds bytes, not a path
    with pytest.raises(EngineError, match="unevaluated|privacy card"):
        open_engine("torch", local, warmup=False, leak_guard=False)
    assert main(["card", str(local), "--results", str(results)]) == 0
    assert "wrote" in capsys.readouterr().out
    card = find_card(local)
    rec = json.loads(results.read_text())
    m = rec["methods"]["tiny stream"]
    p = card["privacy"]
    assert card["name"] == "tiny stream" and card["method"] == "tmr-stream"
    assert p["reid_top1_adaptive_pct"] == [round(100 * m["adaptive"]["reid_top1"], 1),
                                           round(100 * m["std"]["adaptive"]["reid_top1"], 1)]
    assert p["action_top1_frozen_pct"][0] == round(100 * m["static"]["action_top1"], 1)
    assert p["seeds"] == [0, 1] and len(p["per_seed_adaptive_reid_top1_pct"]) == 2
    assert p["command"].startswith("streamtmr evaluate") and p["record"] == str(results)
    engine = open_engine("torch", local, warmup=False, leak_guard=False)
    assert not getattr(engine, "unevaluated", False)


def test_card_refuses_a_record_of_other_weights(evaluated, tmp_path, capsys):
    _, results = evaluated
    torch.manual_seed(1)
    other = save_checkpoint(tmp_path / "o.safetensors",
                            model_class("tmr-stream").from_preset("tiny"))
    assert main(["card", str(other), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "no evaluated method is these weights" in err and "tiny stream" in err
    assert not (tmp_path / "o.card.json").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["card", str(other), "--results", str(bad)]) == 2
    assert "not an evaluation record" in capsys.readouterr().err


def test_privacy_names_a_missing_method():
    with pytest.raises(CardSourceError, match="no method 'x'.*it has: a"):
        privacy_from_results({"methods": {"original": {}, "a": {}}}, "x")
    with pytest.raises(CardSourceError, match="was not attacked"):
        privacy_from_results({"methods": {"a": {"quality": {}}}}, "a")


def test_a_second_record_is_kept_beside_the_headline(evaluated, tmp_path):
    weights, results = evaluated
    local = tmp_path / "m.safetensors"
    shutil.copy(weights, local)
    assert main(["card", str(local), "--results", str(results), "--results", str(results),
                 "--name", "tiny (two records)"]) == 0
    card = find_card(local)
    assert card["name"] == "tiny (two records)"
    (other,) = card["privacy"]["other_records"]
    assert other["reid_top1_adaptive_pct"] == card["privacy"]["reid_top1_adaptive_pct"]


def test_card_names_the_clock_of_its_utkinect_record(evaluated):
    """A UTKinect record states how it played the recordings; an older one (no clock) played
    the rows as consecutive frames, and its card says so."""
    _, results = evaluated
    record = json.loads(results.read_text())
    utk = {"static": {"reid_top1": 0.1}, "adaptive": {"reid_top1": 0.2, "action_top1": 0.8},
           "std": {"adaptive": {"reid_top1": 0.01, "action_top1": 0.02}}}
    for clock, expect in (("sensor", "sensor"), (None, "rows")):
        record["utkinect"] = {"chance": {"reid_top1": 0.1}, "methods": {"tiny stream": utk},
                              **({"clock": clock} if clock else {})}
        card = privacy_from_results(record, "tiny stream")
        assert card["utkinect_clock"] == expect
        assert card["utkinect_reid_top1_adaptive_pct"] == [20.0, 1.0]


def test_card_carries_sex_and_age_beside_their_majority_class(evaluated):
    """A record with attribute attackers gives the card the adaptive sex / age-group accuracy
    and the majority class they are judged against; a record without them adds nothing."""
    _, results = evaluated
    record = json.loads(results.read_text())
    assert "sex_adaptive_pct" not in privacy_from_results(record, "tiny stream")
    m = record["methods"]["tiny stream"]
    m["adaptive"].update(sex_acc=0.55, age_group_acc=0.41)
    m["std"]["adaptive"].update(sex_acc=0.02, age_group_acc=0.01)
    record["chance"].update(sex_majority=0.6, age_group_majority=0.4)
    card = privacy_from_results(record, "tiny stream")
    assert card["sex_adaptive_pct"] == [55.0, 2.0] and card["sex_majority_pct"] == 60.0
    assert card["age_group_adaptive_pct"] == [41.0, 1.0] and card["age_group_majority_pct"] == 40.0
