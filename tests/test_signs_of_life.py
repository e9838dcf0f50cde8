"""Signs of life when output is redirected (as under pytest: stdout is not a terminal):
training progress lines with losses and ETA, evaluation heartbeat, bench tables as Markdown,
the stats line's fps over the last interval, and ``data synth`` announcing its size."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

from rich.console import Console

from bench import report
from streamtmr import cli
from streamtmr.commands.evaluate import Heartbeat
from streamtmr.data import synth
from streamtmr.stream.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]


def test_train_logs_steps_losses_and_eta_when_not_a_terminal(tmp_path, caplog):
    store = synth.generate(tmp_path / "s", n_subjects=6, n_actions=2, views=(0,), reps=2,
                           seed=0, progress=False)
    argv = ["train", "--config", str(ROOT / "configs" / "tmr_tiny.yaml"), "--data", str(store),
            "--out", str(tmp_path / "run"), "--device", "cpu", "--set", "train.log_every=1"]
    for k in range(3):
        argv += ["--set", f"train.stages[{k}].iterations=2"]
    with caplog.at_level(logging.INFO, logger="streamtmr.train"):
        assert cli.main(argv) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [ln.split()[1] for ln in lines] == [f"{k}/6" for k in range(1, 7)]
    assert all("ETA" in ln and "steps/s" in ln for ln in lines)
    assert "loss" in lines[0] and "[" in lines[0]  # losses and the stage name


def test_evaluate_heartbeat_repeats_the_last_step(caplog, capsys):
    with caplog.at_level(logging.INFO):
        with Heartbeat(every_s=0.05) as beat:
            beat.line("evaluating original, tmr on 10 / 5 windows")
            logging.getLogger("streamtmr.eval.protocol").info("trained attackers on 10 windows")
            time.sleep(0.5)
    assert "evaluating original" in capsys.readouterr().out
    beats = [r.getMessage() for r in caplog.records if "elapsed; last step" in r.getMessage()]
    assert beats and beats[-1].endswith("trained attackers on 10 windows")


def test_bench_tables_are_markdown_when_redirected():
    result = json.loads((ROOT / "bench" / "results" / "2026-11-26-cpu-2c.json").read_text())
    buf = io.StringIO()
    report.render(result, Console(file=buf))
    out = buf.getvalue()
    assert "…" not in out and "━" not in out and "│" not in out  # nothing cut, no box art
    header = next(ln for ln in out.splitlines() if ln.startswith("| model | engine | b1"))
    assert header.count("|") >= 10
    assert "| default | onnxruntime |" in out
    term = io.StringIO()
    report.render(result, Console(file=term, force_terminal=True, width=200))
    assert "| default | onnxruntime |" not in term.getvalue()  # a terminal gets rich tables


def test_stats_line_fps_is_over_the_last_interval():
    m = Metrics()
    m.inc("frames_out", 30)
    time.sleep(0.05)
    first = m.line()
    fps, _ = m.interval_fps()  # no frame since the line: this interval is idle
    assert fps == 0.0
    assert "fps over" in first and "since start" in first
    assert float(first.split("(")[1].split()[0]) > 0
    assert m.line().split("(")[1].startswith("0.0 fps over")


def test_data_synth_announces_its_size(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert cli.main(["data", "synth", "--out", str(out), "--subjects", "2", "--actions", "2",
                     "--reps", "1", "--views", "0", "--no-progress"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("SynthKinect: 4 sequences (2 subjects × 2 actions × 1 reps × 1 views)")
    value, unit = first.split("at most ")[1].split()[:2]
    most = float(value) * {"kB": 1e3, "MB": 1e6, "GB": 1e9}[unit.rstrip(")")]
    written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert 0.2 * most < written <= most
