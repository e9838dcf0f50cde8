"""Training configs: the shipped YAML files, validation errors and --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streamtmr.models.tmr import DisentangledTMR
from streamtmr.train.config import ConfigError, dump_config, from_dict, load_config
from streamtmr.train.tmr import STAGE_WEIGHTS, STAGES, TMRCurriculum

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TMR_CONFIGS = ("tmr_tiny.yaml", "tmr_small.yaml", "tmr_paper.yaml")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return path


MINIMAL = """\
model:
  method: tmr
  preset: tiny
data:
  window: 32
train:
  batch_size: 4
  stages:
    - name: encoders
      iterations: 2
    - name: decoder
      iterations: 2
      lr: 0.001
"""


@pytest.mark.parametrize("name", TMR_CONFIGS)
def test_shipped_configs_are_valid_and_follow_the_lambda_table(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.model.method == "tmr"
    assert [s.name for s in cfg.train.stages] == ["encoders", "decoder", "end_to_end"]
    for stage in cfg.train.stages:
        table = {k: v for k, v in STAGE_WEIGHTS[STAGES[stage.name]].items() if v}
        assert stage.weights == table, f"{name}: {stage.name} λ differ from the design table"
    text = (CONFIGS / name).read_text()
    assert "streamtmr train --config configs/" + name in text  # header documents the command


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("tmr_stream_*.yaml")))
def test_every_streaming_recipe_loads_with_known_terms(name):
    """Every StreamTMR recipe of ``configs/`` validates, is a streaming model's, and names only
    losses the trainer knows (it refuses others when the run starts)."""
    from streamtmr.train.tmr import LOSS_NAMES

    cfg = load_config(CONFIGS / name)
    assert cfg.model.method == "tmr-stream"
    for stage in cfg.train.stages:
        assert stage.weights and set(stage.weights) <= set(LOSS_NAMES), stage.name


def test_paper_config_matches_the_design():
    cfg = load_config(CONFIGS / "tmr_paper.yaml")
    assert cfg.model.preset == "paper"
    assert [s.iterations for s in cfg.train.stages] == [20_000, 15_000, 15_000]
    assert cfg.train.batch_size == 64 and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.data.window == 64


def test_defaults_and_stage_lr(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.seed == 0
    assert cfg.train.stages[0].weights is None and cfg.train.stages[1].lr == 0.001
    assert cfg.source.endswith("x.yaml")


def test_unknown_key_names_file_line_key_and_suggestion(tmp_path):
    path = _write(tmp_path, MINIMAL.replace("      lr: 0.001", "      lrr: 0.001"))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert f"{path}:13: train.stages[1].lrr: unknown key (did you mean 'lr'?)" in msg


def test_unknown_section_key_suggests(tmp_path):
    path = _write(tmp_path, MINIMAL.replace("  batch_size: 4", "  batchsize: 4"))
    with pytest.raises(ConfigError, match=r"x\.yaml:7: train\.batchsize: unknown key "
                                          r"\(did you mean 'batch_size'\?\)"):
        load_config(path)


@pytest.mark.parametrize("old,new,where,what", [
    ("  batch_size: 4", "  batch_size: big", "train.batch_size", "expected an integer"),
    ("  batch_size: 4", "  batch_size: 4.5", "train.batch_size", "expected an integer"),
    ("  window: 32", "  window: [32]", "data.window", "expected an integer"),
    ("      lr: 0.001", "      lr: fast", "train.stages[1].lr", "expected a number"),
    ("  preset: tiny", "  preset: 3", "model.preset", "expected a string"),
    ("  batch_size: 4", "  batch_size: 4\n  device: gpu", "train.device", "expected one of"),
    ("  batch_size: 4", "  batch_size: 4\n  progress: 1", "train.progress", "true/false"),
    ("  window: 32", "  window: 32\n  augment_posture: -0.1", "data.augment_posture",
     "must be >= 0"),
    ("  window: 32", "  window: 32\n  augment_bones: 0.3", "data.augment_bones", "must be < 0.25"),
    ("      iterations: 2\n      lr", "      iterations: 0\n      lr", "train.stages[1].iterations",
     "must be > 0"),
    ("    - name: encoders\n      iterations: 2\n", "    - name: encoders\n",
     "train.stages[0].iterations", "missing required key"),
])
def test_wrong_values_name_the_key_and_file(tmp_path, old, new, where, what):
    assert old in MINIMAL
    path = _write(tmp_path, MINIMAL.replace(old, new))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and where in msg and what in msg, msg


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="x.yaml: invalid YAML"):
        load_config(_write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="nope.yaml: cannot read config"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))


def test_overrides(tmp_path):
    path = _write(tmp_path, MINIMAL)
    cfg = load_config(path, ["train.batch_size=8", "train.stages[0].iterations=7",
                             "train.stages.1.weights={mse: 2}", "model.overrides.dropout=0.2",
                             "output.dir=runs/elsewhere", "data.val_values=[1, 2]"])
    assert cfg.train.batch_size == 8
    assert cfg.train.stages[0].iterations == 7
    assert cfg.train.stages[1].weights == {"mse": 2.0}
    assert cfg.model.overrides == {"dropout": 0.2}
    assert cfg.output.dir == "runs/elsewhere"
    assert cfg.data.val_values == [1, 2]


@pytest.mark.parametrize("override,what", [
    ("train.batchsize=8", "train.batchsize: unknown key (did you mean 'batch_size'?)"),
    ("train.stages[5].iterations=1", "train.stages[5]: index out of range (have 2)"),
    ("train.batch_size=eight", "train.batch_size: expected an integer"),
    ("train.batch_size", "expected KEY=VALUE"),
    ("train..batch_size=1", "malformed key"),
    ("train.stages[0].lrr=1", "did you mean 'lr'?"),
])
def test_bad_overrides_name_the_file_and_key(tmp_path, override, what):
    path = _write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as e:
        load_config(path, [override])
    assert str(path) in str(e.value) and what in str(e.value), str(e.value)


def test_dump_round_trips():
    cfg = load_config(CONFIGS / "tmr_tiny.yaml")
    again = from_dict(yaml.safe_load(dump_config(cfg)), cfg.source)
    assert again == cfg


def test_tmr_curriculum_resolves_stages_and_rejects_unknown_names(tmp_path):
    model = DisentangledTMR.from_preset("tiny")
    cfg = load_config(_write(tmp_path, MINIMAL))
    stages = TMRCurriculum(model, cfg).stages
    assert [s.name for s in stages] == ["encoders", "decoder"]
    assert stages[0].weights == STAGE_WEIGHTS[1]  # no weights given: the design table
    assert stages[0].lr == pytest.approx(1e-4) and stages[1].lr == pytest.approx(1e-3)
    assert set(stages[1].active) == {"mse", "bone", "smooth", "vel"}

    bad = load_config(_write(tmp_path, MINIMAL.replace("name: decoder", "name: decodr")))
    with pytest.raises(ConfigError, match=r"train\.stages\[1\]\.name: unknown stage 'decodr' "
                                          r"\(did you mean 'decoder'\?\)"):
        TMRCurriculum(model, bad)
    bad = load_config(_write(tmp_path, MINIMAL), ["train.stages[0].weights={mes: 1}"])
    with pytest.raises(ConfigError, match=r"weights\.mes: unknown loss \(did you mean 'mse'"):
        TMRCurriculum(model, bad)
    bad = load_config(_write(tmp_path, MINIMAL), ["train.stages[0].weights={mse: 0}"])
    with pytest.raises(ConfigError, match="every λ is zero"):
        TMRCurriculum(model, bad)
