"""PMR / DMR: model interface, exact dummy bones, export, the quadruple sampler and the stages."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from streamtmr import skeleton
from streamtmr.dummy import default_dummy
from streamtmr.models.checkpoint import load_checkpoint
from streamtmr.models.pmr import DMR, PMR, rest_pose_sequence
from streamtmr.train.config import ConfigError, from_dict
from streamtmr.train.moon import StoreBatches
from streamtmr.train.pmr import (
    DMRCurriculum,
    PMRCurriculum,
    SynthQuadruples,
    paired_label_maps,
    paired_population,
    train_pmr,
)

synth = pytest.importorskip("streamtmr.data.synth", reason="SynthKinect not available")
torch.set_num_threads(1)
DUMMY = torch.tensor(default_dummy().lengths.copy())
W = 16


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("pmr") / "synth"
    return synth.generate(root, n_subjects=6, n_actions=3, views=(0,), reps=2, progress=False)


def windows(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, W, 25, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.9, 2.5])


@pytest.mark.parametrize("cls", [PMR, DMR])
def test_shapes_and_exact_target_bones(cls):
    m = cls.from_preset("tiny").eval()
    x = windows()
    e = m.embeddings(x)
    assert e["motion"].shape == e["privacy"].shape == (3, 32, 8)
    for target in (DUMMY, DUMMY.expand(3, 25), default_dummy()):
        y = m.retarget(x, target)
        assert y.shape == x.shape
        assert (skeleton.bone_lengths(y)[..., 1:] - DUMMY[1:]).abs().max() < 1e-5
    other = windows(3, seed=1)
    y = m.retarget_to(x, other)
    want = skeleton.bone_lengths(other).median(dim=1).values
    assert (skeleton.bone_lengths(y) - want[:, None]).abs().max() < 1e-5
    with pytest.raises(ValueError, match=r"\[B, 16, 25, 3\]"):
        m.retarget(torch.zeros(2, 20, 25, 3), DUMMY)
    with pytest.raises(ValueError, match="lengths"):
        m.retarget(x, torch.ones(24))


def test_presets_and_window_check():
    paper = PMR.from_preset("paper")
    assert (paper.emb_channels, paper.emb_len, paper.window) == (256, 32, 64)
    with pytest.raises(ValueError, match="power of 2"):
        PMR({"window": 24, "emb_len": 16, "hidden": [8], "emb_channels": 8})


def test_rest_pose_has_the_lengths():
    seq = rest_pose_sequence(DUMMY[None], 4)
    assert seq.shape == (1, 4, 25, 3)
    assert (skeleton.bone_lengths(seq)[..., 1:] - DUMMY[1:]).abs().max() < 1e-6


def test_for_dummy_bakes_privacy_and_exports():
    ort = pytest.importorskip("onnxruntime")
    m = PMR.from_preset("tiny").eval()
    f = m.for_dummy(DUMMY).eval()
    assert "privacy" in dict(f.named_buffers()) and not hasattr(f, "privacy_encoder")
    x = windows(5)
    with torch.no_grad():
        assert (f(x) - m.retarget(x, DUMMY)).abs().max() < 1e-5
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(f, (windows(2),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(y - f(x).numpy()).max() <= 1e-4
    assert (skeleton.bone_lengths(torch.from_numpy(y))[..., 1:] - DUMMY[1:]).abs().max() < 1e-5


def test_quadruple_labels_and_ground_truth(store):
    population, shared = paired_population(StoreBatches(store, W, 4).store, "anonymizer_train",
                                            8, 0)
    assert shared and len(population) == 4  # the store's training subjects, not its eval ones
    q = SynthQuadruples(W, population, pool=3, refresh=5, seed=0).sample(6)
    assert q["x"].shape == q["clean"].shape == (4, 6, W, 25, 3)
    p, a = q["person"], q["action"]
    # (p,a), (p,a'), (p',a), (p',a')
    assert torch.equal(p[0], p[1]) and torch.equal(p[2], p[3]) and (p[0] != p[2]).all()
    assert torch.equal(a[0], a[2]) and torch.equal(a[1], a[3])
    # same content on another person: the clean render of (p',a) is SynthKinect's own render
    lengths = skeleton.bone_lengths(q["clean"])
    assert (lengths.std(dim=2) < 1e-4).all()  # clean renders keep their bones
    assert torch.allclose(q["lengths"][0], q["lengths"][1])
    assert not torch.allclose(q["lengths"][0], q["lengths"][2])
    assert (q["x"] - q["clean"]).abs().mean() < 0.05  # sensor noise only


def test_paired_label_maps_shared_and_disjoint(store):
    data = StoreBatches(store, W, 4)
    maps, n_act, n_sub = paired_label_maps(data, data.classes["subject"], 5, shared=True)
    assert n_sub == data.num_classes("subject") and n_act == 5
    assert maps["person"] == {s: i for i, s in enumerate(data.classes["subject"])}
    maps, n_act, n_sub = paired_label_maps(data, [0, 1], 2, shared=False)
    assert maps["person"] == {0: 4, 1: 5} and n_sub == 6 and n_act == 5


def config(method, stages, **overrides):
    return from_dict({
        "model": {"method": method, "preset": "tiny",
                  "overrides": {"paired_pool": 3, "paired_refresh": 5, **overrides}},
        "data": {"window": W},
        "train": {"batch_size": 8, "lr": 1e-3, "progress": False, "log_every": 1,
                  "stages": [{"name": n, "iterations": 2} for n in stages]}})


def _curriculum(store, method, stages):
    cfg = config(method, stages)
    model = (PMR if method == "pmr" else DMR)({"method": method, **PMR.presets["tiny"],
                                               **cfg.model.overrides})
    data = StoreBatches(store, W, 8)
    population, _ = paired_population(data.store, "anonymizer_train", 4, 0)
    paired = SynthQuadruples(W, population, 3, 5, 0)
    maps, n_act, n_sub = paired_label_maps(data, [p.subject for p in population],
                                           len(paired.actions), True)
    cls = PMRCurriculum if method == "pmr" else DMRCurriculum
    return cls(model, cfg, n_act, n_sub, paired, data, maps)


def _params(cur):
    mods = {"E_M": cur.model.motion_encoder, "E_P": cur.model.privacy_encoder,
            "D": cur.model.decoder}
    if cur.critics is not None:
        mods.update(M=cur.critics.motion_classifier, P=cur.critics.privacy_classifier,
                    Q=cur.critics.quality)
    return mods


@pytest.mark.parametrize("stage_name,changes", [
    ("ae_paired", {"E_M", "E_P", "D"}),
    ("ae_unpaired", {"E_M", "E_P", "D"}),
    ("clf_paired", {"M", "P"}),
    ("clf_unpaired", {"M", "P"}),
    ("adversarial", {"E_M", "E_P", "D", "M", "P", "Q"}),
    ("retarget", {"E_M", "E_P", "D", "M", "P", "Q"}),
])
def test_each_pmr_stage_trains_only_its_parameters(store, stage_name, changes):
    cur = _curriculum(store, "pmr", [stage_name])
    (stage,) = cur.stages
    cur.begin(stage)
    opts = cur.optimizers(stage)
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in _params(cur).items()}
    for _ in range(2):
        logs = cur.step(None, cur.next_batch(stage, 8, torch.device("cpu")), stage, opts)
        assert logs and all(np.isfinite(v) for v in logs.values())
    for k, m in _params(cur).items():
        moved = any(not torch.equal(a, b) for a, b in zip(m.parameters(), before[k]))
        assert moved == (k in changes), (stage_name, k)
    if stage_name == "retarget":
        assert {"cross", "trip", "latent", "ee", "emb", "qc"} <= set(logs)
    if stage_name == "adversarial":  # bounded adversarial term: entropy gaps, not −CE
        assert 0 <= logs["emb_adv"] <= 2 * np.log(20)


def test_dmr_has_no_classifiers(store):
    cur = _curriculum(store, "dmr", ["ae_paired", "retarget"])
    assert cur.critics is None
    assert set(_params(cur)) == {"E_M", "E_P", "D"}
    assert all("emb" not in s.weights and "qc" not in s.weights for s in cur.stages)
    stage = cur.stages[1]
    cur.begin(stage)
    logs = cur.step(None, cur.next_batch(stage, 8, torch.device("cpu")), stage,
                    cur.optimizers(stage))
    assert "emb" not in logs and "qc" not in logs and np.isfinite(logs["cross"])
    assert not any("classifier" in k or "quality" in k for k in cur.model.state_dict())
    with pytest.raises(ConfigError, match="unknown stage"):
        _curriculum(store, "dmr", ["adversarial"])
    with pytest.raises(ConfigError, match="unknown loss"):
        DMRCurriculum(cur.model, from_dict({
            "model": {"method": "dmr"}, "data": {"window": W},
            "train": {"stages": [{"name": "retarget", "iterations": 1,
                                  "weights": {"rec": 1.0, "emb": 10.0}}]}}),
            paired=cur.paired, unpaired=cur.unpaired)


@pytest.mark.parametrize("method,stages", [
    ("pmr", ["ae_paired", "ae_unpaired", "clf_paired", "clf_unpaired", "adversarial",
             "retarget"]),
    ("dmr", ["ae_paired", "ae_unpaired", "retarget"]),
])
def test_end_to_end_checkpoint_reloads(store, tmp_path, method, stages):
    path = train_pmr(config(method, stages), store, tmp_path / "run")
    assert (tmp_path / "run" / "critics.safetensors").is_file() == (method == "pmr")
    model = load_checkpoint(path)
    again = load_checkpoint(path)
    assert model.method == method
    x = windows()
    with torch.no_grad():
        y = model.retarget(x, DUMMY)
        assert torch.equal(y, again.retarget(x, DUMMY))
        assert (y - model.for_dummy(DUMMY)(x)).abs().max() < 1e-5
    assert (skeleton.bone_lengths(y)[..., 1:] - DUMMY[1:]).abs().max() < 1e-5
