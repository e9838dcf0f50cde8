"""Moon et al. anonymizers: models, Alg. 1 / Alg. 2 training steps, export, end-to-end run."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from streamtmr import skeleton
from streamtmr.data.store import StoreWriter
from streamtmr.dummy import default_dummy
from streamtmr.models.checkpoint import load_checkpoint
from streamtmr.models.moon import MoonAE, MoonResNet
from streamtmr.models.pmr import REST_DIRECTIONS
from streamtmr.models.registry import build_model
from streamtmr.train.config import ConfigError, from_dict
from streamtmr.train.moon import MoonCurriculum, StoreBatches, train_moon

torch.set_num_threads(1)
DUMMY = torch.tensor(default_dummy().lengths.copy())


def make_store(root, subjects=(1, 2, 3, 4), actions=(0, 1, 2), reps=2, frames=24, seed=0):
    """A small labelled store: body proportions per subject, one swinging limb per action."""
    rng = np.random.default_rng(seed)
    dirs0 = np.asarray(REST_DIRECTIONS)
    limbs = [skeleton.JOINT[n] for n in ("ElbowLeft", "ElbowRight", "KneeLeft")]
    meta = {"splits": {"anonymizer_train": list(subjects)}}
    with StoreWriter(root, {"joints": (25, 3)}, meta=meta) as w:
        for s in subjects:
            lengths = default_dummy().lengths * rng.uniform(0.85, 1.15) * rng.uniform(
                0.95, 1.05, 25)
            for a in actions:
                for r in range(reps):
                    t = np.arange(frames) / 30.0
                    dirs = np.repeat(dirs0[None], frames, 0)
                    ang = 0.8 * np.sin(2 * np.pi * (0.7 + 0.3 * a) * t + rng.uniform(0, 6))
                    dirs[:, limbs[a % 3]] = np.stack(
                        [0.3 * np.sin(ang), -np.cos(ang), np.sin(ang)], -1)
                    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True) + 1e-9
                    hips = np.stack([0.1 * np.sin(t), 0.9 + 0 * t, 2.5 + 0.1 * t], -1)
                    joints = skeleton.forward_kinematics(hips, dirs, lengths)
                    joints += rng.normal(0, 0.005, joints.shape)
                    w.append({"joints": joints.astype(np.float32)}, subject=s, action=a, rep=r)
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("moon") / "store")


def config(method="moon-resnet", stages=None, **overrides):
    raw = {"model": {"method": method, "preset": "tiny",
                     "overrides": {"classifier_channels": 8, "classifier_blocks": 1,
                                   **overrides}},
           "data": {"window": 16},
           "train": {"batch_size": 6, "lr": 1e-3, "progress": False, "log_every": 1,
                     "stages": stages or [{"name": "pretrain_action", "iterations": 2}]}}
    return from_dict(raw)


@pytest.mark.parametrize("cls", [MoonResNet, MoonAE])
def test_shapes_and_fixed_dummy_bones(cls):
    m = cls.from_preset("tiny").eval()
    x = torch.randn(3, m.window, 25, 3) * 0.3 + torch.tensor([0.0, 0.9, 2.5])
    y = m.retarget(x, DUMMY)
    assert y.shape == x.shape and not cls.exact_bones
    streamed = m.for_dummy(DUMMY)(x)
    assert (skeleton.bone_lengths(streamed)[..., 1:] - DUMMY[1:]).abs().max() < 1e-5
    with pytest.raises(ValueError, match=r"\[B, T, 25, 3\]"):
        m.retarget(torch.zeros(2, m.window, 20, 3), DUMMY)


def test_resnet_is_per_frame_and_starts_as_identity():
    m = MoonResNet.from_preset("tiny")
    x = torch.randn(2, 16, 25, 3)
    assert torch.allclose(m.retarget(x), x)  # zero-initialised output layer
    torch.nn.init.normal_(m.out.weight, std=0.1)
    y = m.retarget(x)
    x2 = x.clone()
    x2[:, 8:] += 1.0  # future frames change …
    assert torch.allclose(m.retarget(x2)[:, :8], y[:, :8])  # … past outputs do not
    # translation invariant perturbation: moving the person moves the output with them
    assert torch.allclose(m.retarget(x + 0.5), y + 0.5, atol=1e-5)


def test_ae_rejects_bad_window():
    with pytest.raises(ValueError, match="divisible"):
        MoonAE({"window": 18, "channels": [8, 8]})


@pytest.mark.parametrize("method", ["moon-resnet", "moon-ae"])
def test_onnx_parity(method):
    ort = pytest.importorskip("onnxruntime")
    m = build_model({"method": method, **(MoonResNet if method == "moon-resnet"
                                          else MoonAE).presets["tiny"]}).eval()
    torch.nn.init.normal_(m.out.weight, std=0.05) if method == "moon-resnet" else None
    f = m.for_dummy(DUMMY).eval()
    x = torch.randn(2, 16, 25, 3) * 0.3
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(f, (x,), buf, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x5 = torch.randn(5, 16, 25, 3) * 0.3 + torch.tensor([0.0, 0.9, 2.5])
    y = sess.run(None, {"x": x5.numpy()})[0]
    with torch.no_grad():
        assert np.abs(y - f(x5).numpy()).max() <= 1e-4


def _curriculum(store, method, stage_names, **overrides):
    cfg = config(method, [{"name": n, "iterations": 2} for n in stage_names], **overrides)
    data = StoreBatches(store, 16, 6)
    model = build_model({"method": method, **MoonResNet.presets["tiny"]} if method ==
                        "moon-resnet" else {"method": method, **MoonAE.presets["tiny"]})
    model.config.update(cfg.model.overrides)
    cur = MoonCurriculum(model, cfg, data.num_classes("action"), data.num_classes("subject"))
    return cur, data


def _snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(module, before):
    return any(not torch.equal(a, b) for a, b in zip(module.parameters(), before))


def test_alg1_adversarial_keeps_action_classifier_frozen(store):
    cur, data = _curriculum(store, "moon-resnet", ["adversarial"], min_steps=2)
    (stage,) = cur.stages
    assert stage.weights == {"action": 1.0, "privacy": 1.0, "rec": 10.0}  # Moon et al.
    cur.begin(stage)
    opts = cur.optimizers(stage)
    act, priv, anon = (_snapshot(cur.action_classifiers), _snapshot(cur.privacy_classifiers),
                       _snapshot(cur.model))
    logs = [cur.step(None, data.next(), stage, opts) for _ in range(3)]
    # k = 2 minimisation steps, then one maximisation step of the privacy classifier
    assert "action" in logs[0] and "action" in logs[1] and "privacy_ce" in logs[2]
    assert all(np.isfinite(v) for lg in logs for v in lg.values())
    assert 0 <= logs[0]["privacy"] <= np.log(data.num_classes("subject")) + 1e-6  # bounded
    assert not _changed(cur.action_classifiers, act)
    assert _changed(cur.privacy_classifiers, priv) and _changed(cur.model, anon)
    assert not any(p.requires_grad for p in cur.action_classifiers.parameters())


def test_alg2_ensemble_freezes_every_classifier(store):
    cur, data = _curriculum(store, "moon-ae", ["ensemble"], action_classifiers=2,
                            privacy_classifiers=3)
    (stage,) = cur.stages
    assert stage.weights == {"action": 1.0, "privacy": 0.3, "rec": 2.0}
    assert len(cur.action_classifiers) == 2 and len(cur.privacy_classifiers) == 3
    cur.begin(stage)
    opts = cur.optimizers(stage)
    clf, anon = _snapshot(cur.classifiers()), _snapshot(cur.model)
    for _ in range(2):
        logs = cur.step(None, data.next(), stage, opts)
        assert all(np.isfinite(v) for v in logs.values())
    assert not _changed(cur.classifiers(), clf) and _changed(cur.model, anon)


def test_pretrain_stage_trains_only_its_classifiers(store):
    cur, data = _curriculum(store, "moon-resnet", ["pretrain_privacy"])
    (stage,) = cur.stages
    cur.begin(stage)
    opts = cur.optimizers(stage)
    act, priv, anon = (_snapshot(cur.action_classifiers), _snapshot(cur.privacy_classifiers),
                       _snapshot(cur.model))
    cur.step(None, data.next(), stage, opts)
    assert _changed(cur.privacy_classifiers, priv)
    assert not _changed(cur.action_classifiers, act) and not _changed(cur.model, anon)


def test_config_errors(store):
    with pytest.raises(ConfigError, match="unknown stage"):
        _curriculum(store, "moon-resnet", ["retarget"])
    with pytest.raises(ConfigError, match="min_steps"):
        _curriculum(store, "moon-resnet", ["adversarial"], min_steps=0)


@pytest.mark.parametrize("method,algorithm", [("moon-resnet", "adversarial"),
                                              ("moon-ae", "ensemble")])
def test_end_to_end_checkpoint_reloads(store, tmp_path, method, algorithm):
    stages = [{"name": "pretrain_action", "iterations": 2},
              {"name": "pretrain_privacy", "iterations": 2},
              {"name": algorithm, "iterations": 3}]
    path = train_moon(config(method, stages), store, tmp_path / "run")
    assert path.is_file() and (tmp_path / "run" / "classifiers.safetensors").is_file()
    assert (tmp_path / "run" / "stage3.safetensors").is_file()
    model = load_checkpoint(path)
    assert model.method == method
    x = torch.randn(2, 16, 25, 3) * 0.3
    again = load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(model.retarget(x, DUMMY), again.retarget(x, DUMMY))
    assert model.config["classifier_channels"] == 8  # training settings are recorded
