"""The trainer on the real DisentangledTMR "tiny" preset and a tiny SynthKinect store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from streamtmr import cli, skeleton
from streamtmr.data import synth
from streamtmr.data.store import SkeletonStore
from streamtmr.models.checkpoint import load_checkpoint, read_metadata
from streamtmr.models.registry import build_model
from streamtmr.train import Trainer, TrainError, load_config
from streamtmr.train.curriculum import DataInfo, lr_factor
from streamtmr.train.distributed import DistInfo
from streamtmr.train.trainer import StepBatches, encode_labels, load_optim_state

TINY = Path(__file__).resolve().parents[1] / "configs" / "tmr_tiny.yaml"


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return synth.generate(tmp_path_factory.mktemp("synth") / "tiny", n_subjects=6, n_actions=3,
                          views=(0,), reps=2, seed=0, progress=False)


@pytest.fixture(scope="module")
def run(store, tmp_path_factory) -> Path:
    """One complete tiny run (4 + 4 + 4 steps)."""
    out = tmp_path_factory.mktemp("run")
    Trainer(load_config(TINY), store, out).fit()
    return out


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_stages_run_in_order_and_log_every_loss(run):
    recs = _records(run)
    train = [r for r in recs if "split" not in r]
    assert [r["step"] for r in train] == list(range(1, 13))
    assert [r["stage"] for r in train] == ["encoders"] * 4 + ["decoder"] * 4 + ["end_to_end"] * 4
    cfg = load_config(TINY)
    for r in train:
        weights = cfg.train.stages[(r["step"] - 1) // 4].weights
        assert set(weights) <= set(r), r
        assert r["loss"] == pytest.approx(sum(w * r[k] for k, w in weights.items()), rel=1e-4)
        k = (r["step"] - 1) % 4  # step within the stage
        assert r["lr"] == pytest.approx(1e-3 * lr_factor(k, 4, "cosine", 1, 0.05))
        assert r["time"] >= 0
        assert all(np.isfinite(v) for v in r.values() if isinstance(v, float))
    val = [r for r in recs if r.get("split") == "val"]
    assert [r["step"] for r in val] == [4, 8, 12]
    assert all(r["val_mse"] > 0 and r["val_mpjpe_mm"] > 0 for r in val)
    # the decoder stage learns: validation error falls from the untrained decoder's
    assert val[2]["val_mpjpe_mm"] < val[0]["val_mpjpe_mm"]


def test_each_stage_trains_only_its_modules(run):
    cfg = load_config(TINY)
    config, _ = read_metadata(run / "model.safetensors")
    torch.manual_seed(cfg.train.seed)
    init = {k: v.detach().clone() for k, v in build_model(config).state_dict().items()}
    s1, s2, s3 = (_params(run / "checkpoints" / f"stage{k}.safetensors") for k in (1, 2, 3))

    def changed(a, b, prefix):
        keys = [k for k in a if k.startswith(prefix) and a[k].is_floating_point()]
        assert keys
        return any(not torch.equal(a[k], b[k]) for k in keys)

    encoders = ("action_encoder.", "identity_encoder.", "subject_head.", "discriminator.")
    # stage 1: encoders + RI heads move, the decoder does not
    assert all(changed(init, s1, p) for p in ("action_encoder.", "subject_head.",
                                              "discriminator."))
    assert not changed(init, s1, "decoder.")
    # stage 2: only the decoder moves
    assert changed(s1, s2, "decoder.")
    assert not any(changed(s1, s2, p) for p in encoders)
    # stage 3: everything trains
    assert changed(s2, s3, "decoder.") and changed(s2, s3, "action_encoder.")


def test_checkpoint_records_the_training_subjects(run, store):
    model = load_checkpoint(run / "model.safetensors")
    assert model.method == "tmr"
    meta = SkeletonStore(store).meta
    _, extra = read_metadata(run / "model.safetensors")
    data = extra["data"]
    assert data["train_subjects"] == sorted(meta["splits"]["anonymizer_train"])
    assert not set(data["train_subjects"]) & set(meta["splits"]["eval"])
    assert data["val"] == {"column": "rep", "values": [1], "windows": 12}
    assert data["real_subjects"] == []
    assert model.config["num_subjects"] == len(data["train_subjects"])
    assert model.config["num_actions"] == 3 and model.config["window"] == 32
    assert extra["train"]["complete"] and extra["train"]["step"] == 12
    assert "train_config" in extra and (run / "config.yaml").is_file()
    # exported for streaming, the model keeps the dummy's bone lengths
    x = torch.as_tensor(SkeletonStore(store)[0].joints[:32].copy())[None]
    dummy = torch.tensor(meta["dummy"]["lengths"])
    y = model.for_dummy(dummy)(x)
    assert torch.allclose(skeleton.bone_lengths(y)[..., 1:], dummy[1:].expand(1, 32, 24),
                          atol=1e-4)


def test_optimiser_state_is_safetensors_and_json(run):
    states, progress = load_optim_state(run / "checkpoints" / "last.optim.safetensors")
    assert progress == {"stage": 3, "step_in_stage": 0, "step": 12,
                        "stage_names": ["encoders", "decoder", "end_to_end"]}
    adam = states["adam"]
    assert adam["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.05)  # end of the cosine
    first = adam["state"][0]
    assert set(first) == {"step", "exp_avg", "exp_avg_sq"}
    assert float(first["step"]) == 4.0


def test_resume_reproduces_an_uninterrupted_run(run, store, tmp_path):
    cfg = load_config(TINY)
    # stop in the middle of the decoder stage (Adam state matters), then resume
    stopped = Trainer(cfg, store, tmp_path).fit(max_steps=6)
    assert stopped == tmp_path / "checkpoints" / "last.safetensors"
    assert not (tmp_path / "model.safetensors").exists()
    with pytest.raises(TrainError, match="already holds a run"):
        Trainer(cfg, store, tmp_path)
    Trainer(cfg, store, tmp_path, resume=True).fit()
    a, b = _params(run / "model.safetensors"), _params(tmp_path / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    steps = [r["step"] for r in _records(tmp_path) if "split" not in r]
    assert steps == list(range(1, 13))  # the metrics file continues where it stopped


def test_resume_without_checkpoint_fails(store, tmp_path):
    with pytest.raises(TrainError, match="nothing to resume"):
        Trainer(load_config(TINY), store, tmp_path, resume=True)


def test_step_batches_shard_one_global_stream():
    one = StepBatches(10, 4, seed=3, start=0, stop=6, info=DistInfo())
    r0 = StepBatches(10, 4, seed=3, start=0, stop=6, info=DistInfo(0, 2))
    r1 = StepBatches(10, 4, seed=3, start=0, stop=6, info=DistInfo(1, 2))
    for s0, s1, s in zip(r0, r1, one, strict=True):
        assert s0 + s1 == s
    flat = [i for b in one for _, i in b]  # 24 items: epochs 0, 1 and part of 2
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert [e for b in one for e, _ in b][:10] == [0] * 10
    resumed = StepBatches(10, 4, seed=3, start=4, stop=6, info=DistInfo())
    assert list(resumed) == list(one)[4:]
    with pytest.raises(ValueError, match="not divisible"):
        StepBatches(10, 3, 0, 0, 1, DistInfo(0, 2))


def test_lr_schedule():
    assert [lr_factor(s, 10, "constant") for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert [lr_factor(s, 10, "constant", warmup=4) for s in (0, 1, 3, 4)] == [0.25, 0.5, 1, 1]
    cos = [lr_factor(s, 12, "cosine", 1, 0.1) for s in range(12)]
    assert cos[0] == pytest.approx(1.0) and cos[1] == pytest.approx(1.0)
    assert cos[6] == pytest.approx(0.55) and cos[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(cos[1:], cos[2:]))


def test_labels_are_encoded_as_training_classes():
    info = DataInfo(labels={"subject": [3, 7, 9], "action": [0, 2]}, window=8)
    out = encode_labels({"subject": torch.tensor([9, 3, 7, 5, 11]),
                         "action": torch.tensor([2, 0, 1, 0, 2])}, info)
    assert out["subject"].tolist() == [2, 0, 1, -1, -1]
    assert out["action"].tolist() == [1, 0, -1, 0, 1]


def test_cli_train(store, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["train", "--config", str(TINY), "--data", str(store), "--out", str(out),
            "--set", "train.stages[0].iterations=1", "--set", "train.stages[1].iterations=1",
            "--set", "train.stages[2].iterations=1", "--device", "cpu"]
    assert cli.main(argv) == 0
    assert "trained model" in capsys.readouterr().out
    assert load_checkpoint(out / "model.safetensors").method == "tmr"
    assert load_config(out / "config.yaml").train.stages[0].iterations == 1
    # resume of a finished run: config from the run directory, nothing left to train
    assert cli.main(["train", "--data", str(store), "--out", str(out), "--resume"]) == 0

    assert cli.main(["train", "--config", str(TINY), "--data", str(store), "--out",
                     str(tmp_path / "x"), "--set", "train.batchsize=2"]) == 2
    assert "train.batchsize: unknown key (did you mean 'batch_size'?)" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(TINY), "--data", str(tmp_path / "none"),
                     "--out", str(tmp_path / "y")]) == 2
    assert "meta.json" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(TINY), "--data", str(store), "--out",
                     str(tmp_path / "z"), "--set", "data.train_split=everyone"]) == 2
    assert "no split 'everyone'" in capsys.readouterr().err


@pytest.mark.parametrize("config", ["dmr_tiny.yaml", "moon_resnet_tiny.yaml"])
def test_cli_trains_adversarial_methods(store, tmp_path, config, capsys):
    """`streamtmr train` dispatches PMR/DMR and Moon configs to their own training loops."""
    out = tmp_path / "run"
    path = TINY.parent / config
    assert cli.main(["train", "--config", str(path), "--data", str(store), "--out", str(out),
                     "--device", "cpu", "--no-progress"]) == 0
    model = load_checkpoint(capsys.readouterr().out.split("trained model: ")[1].strip())
    assert model.method == load_config(path).model.method
    assert cli.main(["train", "--config", str(path), "--data", str(store), "--out", str(out),
                     "--resume"]) == 2
    assert "not supported" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("config", ["tmr_tiny.yaml", "pmr_tiny.yaml", "dmr_tiny.yaml",
                                    "moon_resnet_tiny.yaml", "moon_ae_tiny.yaml"])
def test_every_method_trains_on_cuda(store, tmp_path, config, capsys):
    """The training loops keep every tensor on the GPU (no CPU/CUDA mix) and save a
    checkpoint that loads on the CPU."""
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(TINY.parent / config), "--data", str(store),
                     "--out", str(out), "--device", "cuda", "--no-progress"]) == 0
    model = load_checkpoint(capsys.readouterr().out.split("trained model: ")[1].strip())
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())
