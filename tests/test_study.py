"""Study files (configs/studies.yaml) and `streamtmr study`: parsing, errors, status, resume."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streamtmr.train.config import ConfigError, load_config
from streamtmr.train.study import load_study, run_study, status, train_command

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "configs").mkdir(exist_ok=True)
    p = tmp_path / "configs" / "study.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_shipped_study_file_parses_and_every_run_config_validates():
    study = load_study(ROOT / "configs" / "studies.yaml")
    names = [r.name for r in study.runs]
    assert len(names) == len(set(names)) >= 17
    ablations = [r for r in study.runs if "ablation" in r.groups]
    assert len(ablations) == 7 and sum(r.reference for r in ablations) == 1
    for r in study.runs:  # every run's overrides apply to its config without error
        cfg = load_config(r.config, list(r.overrides))
        assert cfg.train.stages
    sweeps = {g for r in study.runs for g in r.groups if r.param is not None}
    assert {"PMR α_emb", "Moon α (privacy)", "TMR adversarial weight"} <= sweeps
    assert study.out == ROOT / "runs" / "studies"


@pytest.mark.parametrize("body, message", [
    ("runs: {a: 1}", "expected a mapping with a 'runs' list"),
    ("runs:\n  - {name: a}", "'config' (a YAML path) is required"),
    ("runs:\n  - {name: a, config: c.yaml}\n  - {name: a, config: c.yaml}", "duplicate name"),
    ("runs:\n  - {name: a, config: c.yaml, colour: red}", "unknown key(s) colour"),
    ("runs:\n  - {name: a, config: c.yaml, param: x}", "'param' and 'value' go together"),
    ("runs:\n  - {name: a/b, config: c.yaml}", "without '/'"),
])
def test_bad_study_files_name_the_problem(tmp_path, body, message):
    p = write(tmp_path, body)
    with pytest.raises(ConfigError, match=r"study\.yaml") as e:
        load_study(p)
    assert message in str(e.value)


def test_select_unknown_run_lists_the_known_ones(tmp_path):
    study = load_study(write(tmp_path, "runs:\n  - {name: a, config: c.yaml}\n"))
    with pytest.raises(ConfigError, match="no run named b .have a"):
        study.select(["b"])


def test_status_and_resume_command(tmp_path):
    study = load_study(write(tmp_path, """
        out: runs/s
        runs:
          - name: r
            config: configs/x.yaml
            set: [train.batch_size=4]
    """))
    run = study.runs[0]
    rd = study.run_dir(run)
    assert rd == tmp_path / "runs" / "s" / "r" and status(rd) == "new"
    cmd = train_command(run, Path("data"), rd, "cuda", ["train.num_threads=1"])
    assert cmd[cmd.index("--config") + 1] == str(tmp_path / "configs" / "x.yaml")
    assert cmd[-6:] == ["--set", "train.batch_size=4", "--set", "train.num_threads=1",
                        "--device", "cuda"]
    (rd / "checkpoints").mkdir(parents=True)
    (rd / "checkpoints" / "last.safetensors").write_bytes(b"x")
    assert status(rd) == "stopped"  # no config.yaml: nothing to resume with
    (rd / "config.yaml").write_text("{}")
    assert status(rd) == "partial"
    cmd = train_command(run, Path("data"), rd, None, [])
    assert "--resume" in cmd and "--config" not in cmd
    (rd / "model.safetensors").write_bytes(b"x")
    assert status(rd) == "done"


def test_run_study_trains_skips_done_and_stops_at_the_deadline(tmp_path):
    from streamtmr.data import synth

    data = synth.generate(tmp_path / "data", n_subjects=6, n_actions=3, views=(0,), reps=2,
                          seed=0, progress=False)
    tiny_cfg = ROOT / "configs" / "tmr_tiny.yaml"
    study = load_study(write(tmp_path, f"""
        out: runs
        runs:
          - name: quick
            config: {tiny_cfg}
            set:
              - train.stages[0].iterations=2
              - train.stages[1].iterations=2
              - train.stages[2].iterations=2
          - name: long
            config: {tiny_cfg}
            set:
              - train.stages[0].iterations=100000
              - train.ckpt_every=1
    """))
    quick, long = study.runs
    logs = []
    # No deadline: the short run finishes and its process exits cleanly, however slow the host.
    result = run_study(study, data, [quick], log=logs.append)
    assert result["quick"]["status"] == "done" and result["quick"]["returncode"] == 0
    # A deadline stops a run that cannot finish in time; its checkpoints stay for --resume.
    result = run_study(study, data, [long], deadline_s=10, log=logs.append)
    assert result["long"]["status"] in ("partial", "new")
    assert result["long"]["returncode"] != 0
    assert any("deadline" in line for line in logs)
    # A second call skips the finished run without starting a process.
    again = run_study(study, data, [quick], log=logs.append)
    assert again["quick"] == {"status": "done", "returncode": 0, "seconds": 0.0}


def test_cli_lists_the_shipped_study():
    out = subprocess.run([sys.executable, "-m", "streamtmr", "study", "list",
                          str(ROOT / "configs" / "studies.yaml"), "--out", "/nonexistent"],
                         capture_output=True, text=True, check=True).stdout
    assert "tmr-no-lstm" in out and "new" in out and "ablation" in out
