"""Study files as evaluation candidates, the per-method result cache, ``--methods`` and the
study sections of the report (ablations, sweeps, default candidates)."""

import json
import logging

import pytest
import torch

from streamtmr.cli import main
from streamtmr.data.synth import generate
from streamtmr.dummy import default_dummy
from streamtmr.eval import protocol, report, suite
from streamtmr.models.baselines import GaussianNoise, NaiveRetarget
from streamtmr.models.checkpoint import save_checkpoint

torch.set_num_threads(1)

STUDY = """\
out: runs/st
runs:
  - name: noise-a
    config: configs/x.yaml
    group: [ablation, "Noise σ study"]
    param: "σ"
    value: 0.2
    reference: true
  - name: noise-b
    config: configs/x.yaml
    group: "Noise σ study"
    param: "σ"
    value: 0.01
  - name: untrained
    config: configs/x.yaml
    group: ablation
"""
TINY = ["--window", "16", "--epochs", "1", "--width", "8", "--threads", "1"]


def _study(root, out="runs/st"):
    """A study file in ``root/configs`` whose first two runs are trained (noise checkpoints of
    different σ) under ``root/<out>`` and whose third is not."""
    (root / "configs").mkdir(parents=True, exist_ok=True)
    path = root / "configs" / "studies.yaml"
    path.write_text(STUDY.replace("runs/st", out))
    save_checkpoint(root / out / "noise-a" / "model.safetensors",
                    GaussianNoise({"method": "noise", "sigma": 0.2}))
    save_checkpoint(root / out / "noise-b" / "model.safetensors",
                    GaussianNoise({"method": "noise", "sigma": 0.01}))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "s"
    return generate(root, n_subjects=6, n_actions=2, reps=2, seed=0, progress=False)


def test_study_candidates_carry_groups_and_skip_untrained_runs(tmp_path, caplog):
    path = _study(tmp_path)
    with caplog.at_level(logging.WARNING, logger="streamtmr.eval.suite"):
        cands = suite.read_model_list(path)
    assert [c.name for c in cands] == ["noise-a", "noise-b"]
    a, b = cands
    assert a.checkpoint == tmp_path / "runs/st/noise-a/model.safetensors"
    assert a.groups == ("ablation", "Noise σ study") and a.reference and a.value == 0.2
    assert b.groups == ("Noise σ study",) and b.param == "σ" and not b.reference
    assert "1 of 3" in caplog.text and "untrained" in caplog.text
    # --study-out: the runs live elsewhere
    other = tmp_path / "elsewhere"
    save_checkpoint(other / "untrained" / "model.safetensors", NaiveRetarget({"method": "naive"}))
    assert [c.name for c in suite.read_model_list(path, other)] == ["untrained"]
    # the fields reach the method's info
    m = suite.build(a, default_dummy())
    assert m.info["groups"] == ["ablation", "Noise σ study"] and m.info["reference"] is True
    assert m.info["param"] == "σ" and m.info["value"] == 0.2
    # the old list format still works; a run found again by the runs search is evaluated once
    lst = tmp_path / "models.yaml"
    lst.write_text("A: runs/st/noise-a/model.safetensors\n")
    assert suite.read_model_list(lst)[0].checkpoint == a.checkpoint
    found = suite.find_checkpoints(tmp_path / "runs")
    assert [c.name for c in suite.unique_candidates(cands + found)] == ["noise-a", "noise-b"]
    with pytest.raises(protocol.ProtocolError, match="two methods are named 'noise-a'"):
        suite.unique_candidates([a, suite.Candidate("noise-a", {"method": "naive"})])
    with pytest.raises(protocol.ProtocolError, match="no method named 'nope'"):
        suite.select(cands, ["nope"])


def _counting(monkeypatch):
    calls = {"evaluate": [], "train": 0}
    evaluate, train = protocol.evaluate_method, protocol.train_attackers

    def counted_evaluate(method, *a, **k):
        calls["evaluate"].append(method.name)
        return evaluate(method, *a, **k)

    def counted_train(*a, **k):
        calls["train"] += 1
        return train(*a, **k)

    monkeypatch.setattr(protocol, "evaluate_method", counted_evaluate)
    monkeypatch.setattr(protocol, "train_attackers", counted_train)
    return calls


def _comparable(r):
    """A method's own results (without run-dependent timing)."""
    return json.loads(json.dumps({k: v for k, v in r.items() if k != "seconds"},
                                 default=report._json_default))


def test_evaluate_study_with_cache_and_method_filter(store, tmp_path, monkeypatch, capsys):
    study = _study(tmp_path)
    cache = tmp_path / "cache"
    base = ["evaluate", "--data", str(store), "--models", str(study), "--cache", str(cache),
            *TINY]
    calls = _counting(monkeypatch)
    out1 = tmp_path / "e1"
    assert main([*base, "--out", str(out1)]) == 0
    assert calls["evaluate"] == ["original", "noise-a", "noise-b"]
    res1 = json.loads((out1 / "results.json").read_text())
    info = res1["methods"]["noise-a"]["info"]
    assert info["groups"] == ["ablation", "Noise σ study"] and info["reference"] is True
    assert res1["methods"]["noise-b"]["info"]["value"] == 0.01
    assert len(list(cache.glob("*.json"))) == 3 and not list(cache.glob(".tmp-*"))
    md = (out1 / "results.md").read_text()
    assert "Sweep Noise σ study" in md and "| `noise-a` (full model) |" in md
    # the study's noise checkpoints make its sweep, not the inferred noise σ sweep
    assert [p.name for p in (out1 / "img").iterdir()] == ["tradeoff_noise_sigma_study.png"]
    assert res1["images"] == [str(out1 / "img" / "tradeoff_noise_sigma_study.png")]

    # a second process over a subset: everything is read back, no attacker is trained
    calls["evaluate"].clear()
    calls["train"] = 0
    out2 = tmp_path / "e2"
    assert main([*base, "--out", str(out2), "--methods", "noise-b"]) == 0
    assert calls == {"evaluate": [], "train": 0}
    assert "2 read back (original, noise-b)" in capsys.readouterr().out
    res2 = json.loads((out2 / "results.json").read_text())
    assert list(res2["methods"]) == ["original", "noise-b"]
    for name in ("original", "noise-b"):
        assert res2["methods"][name] == res1["methods"][name]  # goals, retention recomputed

    # recomputed without the cache (alone, not after noise-a): the same numbers
    out3 = tmp_path / "e3"
    assert main([*base, "--out", str(out3), "--methods", "noise-b", "--no-cache"]) == 0
    assert calls["evaluate"] == ["original", "noise-b"] and calls["train"] == 2
    res3 = json.loads((out3 / "results.json").read_text())
    assert _comparable(res3["methods"]["noise-b"]) == _comparable(res1["methods"]["noise-b"])

    # another setting is another key
    calls["evaluate"].clear()
    out4 = tmp_path / "e4"
    assert main([*base, "--out", str(out4), "--methods", "noise-b", "--epochs", "2"]) == 0
    assert calls["evaluate"] == ["original", "noise-b"]

    assert main([*base, "--out", str(tmp_path / "e5"), "--methods", "noise-a,nope"]) == 2
    assert "no method named 'nope'" in capsys.readouterr().err


def _r(reid_s, reid_a, act_s, act_a, mpjpe, groups=(), param=None, value=None, ref=False,
       checkpoint=None, config=None):
    return {"static": {"reid_top1": reid_s, "action_top1": act_s},
            "adaptive": {"reid_top1": reid_a, "action_top1": act_a,
                         "linkage": {"auc": 0.6, "degenerate": False}},
            "quality": {"mpjpe_target_mm": mpjpe, "stream_gap_mm": 1.5},
            "embedding": {"probe_action_reid_mlp": 0.25},
            "info": {"method": "tmr", "checkpoint": checkpoint, "config": config,
                     "groups": list(groups), "param": param, "value": value,
                     "reference": ref}}


def _fake_results():
    ms = {
        "original": {**_r(0.9, 0.9, 0.8, 0.8, None), "info": {"method": "original"}},
        "default (shipped)": _r(0.3, 0.4, 0.7, 0.7, 40.0, checkpoint="d"),
        "tmr-no-lstm": _r(0.2, 0.5, 0.6, 0.65, 55.0, ["ablation"], checkpoint="n",
                          config={"method": "tmr", "d": 8}),
        "tmr-full": _r(0.1, 0.3, 0.7, 0.75, 50.0, ["ablation", "TMR λ_adv"], "λ_adv", 0.5,
                       True, "f", {"method": "tmr", "d": 16}),
        "tmr-adv-8": _r(0.1, 0.2, 0.6, 0.6, 60.0, ["TMR λ_adv"], "λ_adv", 8, checkpoint="8",
                        config={"method": "tmr", "d": 32}),
        "tmr-adv-0": _r(0.2, 0.6, 0.8, 0.8, 45.0, ["TMR λ_adv"], "λ_adv", 0, checkpoint="0",
                        config={"method": "tmr", "d": 4}),
        "tmr-b128": _r(0.1, 0.35, 0.7, 0.72, 38.5, ["default candidates"], checkpoint="b"),
    }
    return {"chance": {"reid_top1": 0.1, "action_top1": 0.25}, "methods": ms}


def test_ablation_and_default_candidate_tables():
    res = _fake_results()
    rows = report.ablation_table(res)
    assert rows[0].startswith("| method | re-ID top-1 static | re-ID top-1 adaptive |")
    assert rows[2] == ("| `tmr-full` (full model) | 10.0 | 30.0 | 0.60 | 70.0 | 75.0 | 50.0 | "
                       "– | 25.0 | 1.5 | – | – | – |")
    assert rows[3] == ("| `tmr-no-lstm` | 20.0 | 50.0 | 0.60 | 60.0 | 65.0 | 55.0 | – | 25.0 | "
                       "1.5 | +20.0 | -10.0 | +5.0 |")
    assert len(rows) == 4
    cand = report.default_candidates_table(res)
    assert cand[2].startswith("| `default (shipped)` (shipped) |")
    assert cand[3].endswith("| -5.0 | +2.0 | -1.5 |") and len(cand) == 4
    md = "\n".join(report.study_markdown(res))
    assert "Ablations" in md and "Sweep TMR λ_adv" in md and "Candidates for the shipped" in md
    no_ref = _fake_results()
    no_ref["methods"]["tmr-full"]["info"]["reference"] = False
    assert report.ablation_table(no_ref)[2].startswith("| `tmr-no-lstm` | 20.0")


def test_study_sweeps_take_precedence_and_are_plotted(tmp_path):
    res = _fake_results()
    found = suite.sweeps(res)
    # one sweep: the study group; no sweep inferred from the varying "d" of its checkpoints
    assert found == [("TMR λ_adv", ["tmr-adv-0", "tmr-full", "tmr-adv-8"],
                      ["λ_adv=0", "λ_adv=0.5", "λ_adv=8"])]
    table = report.sweep_table(res, found[0][1])
    assert table[0].startswith("| λ_adv | run | re-ID top-1 static |")
    assert table[3] == "| 0.5 | `tmr-full` (reference) | 10.0 | 30.0 | 70.0 | 75.0 | 50.0 |"
    paths = suite.plot_sweeps(res, tmp_path)
    assert [p.name for p in paths] == ["tradeoff_tmr_adv.png"]
    assert paths[0].stat().st_size > 1000


def test_store_identity_follows_the_evaluated_arrays(tmp_path):
    """Adding an array the evaluation does not read keeps a store's identity (cached results
    stay valid); different joints (e.g. regenerated sensor noise) change it."""
    import json
    import shutil

    from streamtmr.data.synth import generate

    a = generate(tmp_path / "a", n_subjects=3, n_actions=1, reps=1, seed=0, progress=False)
    before = suite.store_identity(a)
    meta = json.loads((a / "meta.json").read_text())
    meta["arrays"]["extra"] = {"dtype": "float32", "frame_shape": [1]}
    (a / "extra.f32").write_bytes(b"\0" * 4 * meta["frames"])
    (a / "meta.json").write_text(json.dumps(meta))
    assert suite.store_identity(a) == before
    b = tmp_path / "b"
    shutil.copytree(a, b)
    with open(b / "joints.f32", "r+b") as f:
        f.write(b"\1\2\3\4")
    assert suite.store_identity(b) != before
