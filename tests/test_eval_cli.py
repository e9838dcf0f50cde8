"""``streamtmr evaluate --quick``, ``visualize`` and ``compare`` through the CLI entry point."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from streamtmr.cli import main
from streamtmr.dummy import default_dummy
from streamtmr.eval import report

torch.set_num_threads(1)


def test_evaluate_quick_naive_writes_json_and_markdown(tmp_path):
    out = tmp_path / "eval"
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nprose kept\n")
    rc = main(["evaluate", "--quick", "--method", "naive", "--out", str(out),
               "--report", str(doc), "--threads", "1"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == {"original", "naive"}
    c = res["chance"]
    assert c["reid_top1"] == pytest.approx(1 / len(res["data"]["eval_subjects"]))
    assert c["action_top1"] == pytest.approx(0.25) and c["linkage_auc"] == 0.5
    assert not set(res["data"]["eval_subjects"]) & set(res["data"]["anonymizer_train_subjects"])
    naive = res["methods"]["naive"]
    assert naive["quality"]["bone_var_mm2"] < 1e-3  # every frame has the dummy's bones
    assert res["methods"]["original"]["quality"]["mpjpe_source_mm"] == 0.0
    for mode in ("static", "adaptive"):
        assert {"reid_top1", "reid_top5", "linkage", "action_top1", "sex_acc"} <= set(naive[mode])
        assert {"auc", "eer", "frac_pred_same", "degenerate"} <= set(naive[mode]["linkage"])
    md = (out / "results.md").read_text()
    assert "Chance: re-ID top-1" in md and "| `naive` |" in md and "streamtmr evaluate" in md
    text = doc.read_text()
    assert "prose kept" in text and report.BEGIN in text and "| `naive` |" in text


def test_evaluate_needs_data_or_quick(capsys):
    assert main(["evaluate", "--method", "naive"]) == 2
    assert "--data" in capsys.readouterr().err


def test_utk_subjects_takes_ids_and_ranges(capsys):
    from streamtmr.commands.evaluate import _subject_ids

    assert _subject_ids("6-10") == (6, 7, 8, 9, 10)
    assert _subject_ids("1,3, 5-6") == (1, 3, 5, 6)
    for bad in ("6-x", "4"):
        assert main(["evaluate", "--quick", "--method", "naive", "--utk-subjects", bad]) == 2
        assert "--utk-subjects" in capsys.readouterr().err


def _seq_file(tmp_path):
    t = np.linspace(0, 2 * np.pi, 12)
    seq = np.repeat(default_dummy().rest_pose()[None], 12, axis=0)
    seq[:, 7, 1] += 0.2 * np.sin(t)  # wave the left hand
    seq[:, :, 2] += 2.5
    path = tmp_path / "seq.npy"
    np.save(path, seq.astype(np.float32))
    return path


def test_visualize_writes_gif(tmp_path):
    out = tmp_path / "seq.gif"
    assert main(["visualize", str(_seq_file(tmp_path)), "--out", str(out), "--step", "1"]) == 0
    with Image.open(out) as im:
        assert im.format == "GIF" and im.n_frames == 12


def test_compare_writes_side_by_side_gif(tmp_path):
    out = tmp_path / "cmp.gif"
    assert main(["compare", str(_seq_file(tmp_path)), "--method", "naive", "--out", str(out),
                 "--step", "3"]) == 0
    with Image.open(out) as im:
        assert im.n_frames == 4 and im.size[0] == 2 * im.size[1]


def test_visualize_bad_input_is_a_user_error(tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((5, 20, 3), np.float32))
    assert main(["visualize", str(bad), "--out", str(tmp_path / "x.gif")]) == 2
    assert "[T, 25, 3]" in capsys.readouterr().err


def test_the_recorded_command_pastes_back_into_a_shell():
    """A method name with spaces and parentheses is quoted in the command a report records."""
    import argparse
    import shlex

    from streamtmr.commands import evaluate

    sub = argparse.ArgumentParser().add_subparsers()
    evaluate.register(sub)
    parser = sub.choices["evaluate"]
    argv = ["--data", "data/synthkinect", "--methods", "ground truth (own tempo)", "--seeds",
            "0,1,2", "--all"]
    args = parser.parse_args(argv)
    line = evaluate._command(args)
    again = parser.parse_args(shlex.split(line)[2:])
    assert again.methods == "ground truth (own tempo)" and again.seeds == args.seeds
    assert vars(again) == vars(args)
