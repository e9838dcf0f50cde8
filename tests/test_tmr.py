"""DisentangledTMR: shapes, exact bones, causality, training contract, overfit, ONNX export."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from streamtmr import skeleton
from streamtmr.dummy import default_dummy
from streamtmr.models.checkpoint import load_checkpoint, save_checkpoint
from streamtmr.models.registry import build_model
from streamtmr.models.tmr import DisentangledTMR, validate_config
from streamtmr.models.tmr_encoders import REST_DIRECTIONS
from streamtmr.train.tmr import (
    LOSS_NAMES,
    STAGE_ITERATIONS,
    STAGE_WEIGHTS,
    ri_loss,
    stage_modules,
    stage_weights,
    tmr_training_losses,
)

torch.set_num_threads(1)
DUMMY = torch.tensor(np.array(default_dummy().lengths))


def random_lengths(b: int, gen: torch.Generator) -> torch.Tensor:
    scale = 0.8 + 0.4 * torch.rand(b, 1, generator=gen)
    jitter = 1 + 0.1 * (torch.rand(b, 25, generator=gen) - 0.5)
    out = DUMMY * scale * jitter
    out[:, 0] = 0
    return out


def random_walk(b: int, t: int, lengths: torch.Tensor, gen: torch.Generator,
                rest: torch.Tensor | None = None) -> torch.Tensor:
    """Random-walk motion: bone directions drift from the rest pose, the root wanders."""
    dirs = torch.as_tensor(REST_DIRECTIONS).expand(b, t, 25, 3) if rest is None else rest
    steps = 0.03 * torch.randn(b, t, 25, 3, generator=gen).cumsum(1)
    dirs = torch.nn.functional.normalize(dirs + steps, dim=-1)
    root = torch.tensor([0.0, 0.9, 3.0]) + 0.01 * torch.randn(b, t, 3, generator=gen).cumsum(1)
    angle = 2 * np.pi * torch.rand(b, generator=gen)
    rot = skeleton.rotation_y(angle)[:, None]  # random facing per sequence
    dirs = torch.matmul(dirs, rot.transpose(-1, -2))
    return skeleton.forward_kinematics(root, dirs, lengths[:, None, :])


def make_batch(b: int = 4, t: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    src_len, tgt_len = random_lengths(b, gen), random_lengths(b, gen)
    source = random_walk(b, t, src_len, gen)
    scale = skeleton.leg_length(tgt_len) / skeleton.leg_length(src_len)
    target = skeleton.rescale_root(skeleton.set_bone_lengths(source, tgt_len[:, None]), scale)
    return {"source": source, "target": target, "target_lengths": tgt_len,
            "action": torch.tensor([i % 2 for i in range(b)]),
            "subject": torch.arange(b) % 6}


def tiny(**overrides) -> DisentangledTMR:
    torch.manual_seed(0)
    return DisentangledTMR.from_preset("tiny", **overrides)


VARIANTS = [
    {},
    {"causal": True},
    {"decoding": "autoregressive"},
    {"decoding": "autoregressive", "causal": True},
    {"temporal_conv": False},
    {"lstm": False},
    {"identity_mode": "full_sequence"},
    {"tokens": "position"},
    {"tokens": "dynamics"},
    {"tokens": "dynamics", "vq": True},
    {"style": "film"},
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in
                                                                       o.items()) or "default")
def test_variants_shapes_bones_and_losses(overrides):
    model = tiny(**overrides)
    batch = make_batch()
    model.eval()
    with torch.no_grad():
        y = model.retarget(batch["source"], batch["target_lengths"])
        y_seq = model.retarget(batch["source"], batch["target"])  # target given as a sequence
    assert y.shape == batch["source"].shape == y_seq.shape
    err = (skeleton.bone_lengths(y) - batch["target_lengths"][:, None]).abs()[..., 1:]
    assert err.max() < 1e-5
    model.train()
    weights = stage_weights(model, 3) | {"ee": 1.0}
    losses = tmr_training_losses(model, batch, weights)
    assert set(losses) == {k for k, v in weights.items() if v}
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    if overrides.get("vq"):
        stats = model.codebook_stats()
        assert 1.0 <= stats["perplexity"] <= model.config["vq_codes"]
        assert 0 < stats["usage"] <= 1


def test_exact_target_bone_lengths_per_sample_and_camera_space():
    model = tiny().eval()
    batch = make_batch(b=3)
    lengths = batch["target_lengths"]
    with torch.no_grad():
        y = model.retarget(batch["source"], lengths)
    assert (skeleton.bone_lengths(y)[..., 1:] - lengths[:, None, 1:]).abs().max() < 1e-5
    # the output is mapped back to the input's camera space: moving the source moves the output
    shift = torch.tensor([0.5, 0.0, -0.7])
    with torch.no_grad():
        y2 = model.retarget(batch["source"] + shift, lengths)
    torch.testing.assert_close(y2, y + shift, atol=1e-5, rtol=0)


@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
def test_causal_output_ignores_future_frames(decoding):
    t, cut = 16, 9
    batch = make_batch(b=2, t=t)
    x = batch["source"]
    x_future = x.clone()
    x_future[:, cut + 1:] += 0.3 * torch.randn_like(x_future[:, cut + 1:])
    for causal in (True, False):
        model = tiny(causal=causal, decoding=decoding).eval()
        with torch.no_grad():
            y, y2 = model.retarget(x, DUMMY), model.retarget(x_future, DUMMY)
        diff = (y[:, : cut + 1] - y2[:, : cut + 1]).abs().max()
        if causal:
            assert diff < 1e-5
        else:  # the check can fail: a non-causal model does look ahead
            assert diff > 1e-4
        assert (y[:, cut + 1:] - y2[:, cut + 1:]).abs().max() > 1e-4


def _grad_params(modules):
    return {id(p) for m in modules for p in m.parameters()}


def test_training_losses_gradients_follow_the_curriculum():
    model = tiny()
    batch = make_batch()
    all_modules = stage_modules(model, 3)
    assert {id(p) for p in model.parameters()} == _grad_params(all_modules)

    # stage 1: encoder losses only; nothing reaches the decoder
    losses = tmr_training_losses(model, batch, STAGE_WEIGHTS[1])
    assert set(losses) == {"ar", "ri", "nce", "adv", "orth", "mi"}
    sum(STAGE_WEIGHTS[1][k] * v for k, v in losses.items()).backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    for module in stage_modules(model, 1):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(p.grad.abs().sum() > 0 for p in model.subject_head.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.discriminator.parameters())
    model.zero_grad(set_to_none=True)

    # stage 2: encoders frozen as the trainer does; only the decoder learns
    stage = _grad_params(stage_modules(model, 2))
    for p in model.parameters():
        p.requires_grad_(id(p) in stage)
    losses = tmr_training_losses(model, batch, STAGE_WEIGHTS[2])
    assert set(losses) == {"mse", "bone", "smooth", "vel"}
    sum(STAGE_WEIGHTS[2][k] * v for k, v in losses.items()).backward()
    assert all(p.grad is None for p in model.parameters() if id(p) not in stage)
    assert all(torch.isfinite(p.grad).all() for p in model.decoder.parameters()
               if p.grad is not None)
    assert model.decoder.head.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)

    # stage 3: everything
    for p in model.parameters():
        p.requires_grad_(True)
    losses = tmr_training_losses(model, batch, STAGE_WEIGHTS[3])
    sum(STAGE_WEIGHTS[3][k] * v for k, v in losses.items()).backward()
    for module in stage_modules(model, 3):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_ri_and_adv_train_their_heads_against_the_encoder():
    model = tiny()
    batch = make_batch()
    # RI: the classifier's CE uses detached features, the entropy term frozen head weights
    code, _ = model.encode_action(batch["source"])
    pooled = code.pooled.detach().requires_grad_(True)
    from streamtmr import losses as L
    ri = ri_loss(model, pooled, batch["subject"])
    g_feat, = torch.autograd.grad(ri, pooled, retain_graph=True)
    gap = L.entropy_gap(model.subject_head(pooled))
    g_gap, = torch.autograd.grad(gap, pooled)
    torch.testing.assert_close(g_feat, g_gap)  # features only see the entropy term
    # adv: the encoder receives the reversed discriminator gradient
    model.zero_grad()
    out = tmr_training_losses(model, batch, {"adv": 1.0})
    out["adv"].backward()
    g_rev = model.action_encoder.head.weight.grad  # head is not on the adv path
    assert g_rev is None
    g_enc = model.action_encoder.embed.weight.grad.clone()
    model.zero_grad()
    code = model.action_encoder(*model._normalize(batch["source"])[:2])
    torch.nn.functional.cross_entropy(model.discriminator(code.pooled), batch["subject"]).backward()
    torch.testing.assert_close(g_enc, -model.action_encoder.embed.weight.grad)


def test_training_losses_rejects_bad_requests():
    model = tiny()
    batch = make_batch()
    with pytest.raises(KeyError, match="bogus"):
        tmr_training_losses(model, batch, {"bogus": 1.0})
    with pytest.raises(ValueError, match="vq"):
        tmr_training_losses(model, batch, {"vq": 1.0})
    with pytest.raises(KeyError, match="subject"):
        tmr_training_losses(model, {k: v for k, v in batch.items() if k != "subject"},
                            {"adv": 1.0})
    assert tmr_training_losses(model, batch, {"mse": 0.0}) == {}


def test_overfit_one_batch():
    model = tiny()
    batch = make_batch(b=4, t=16, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    weights = {"mse": 1.0}
    first = float(tmr_training_losses(model, batch, weights)["mse"])
    for _ in range(100):
        loss = tmr_training_losses(model, batch, weights)["mse"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = float(tmr_training_losses(model, batch, weights)["mse"])
    assert last < first / 5, (first, last)


def _export(module, x, path):
    torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})


@pytest.mark.parametrize("causal", [False, True])
def test_for_dummy_onnx_export_parity(tmp_path, causal):
    model = tiny(causal=causal).eval()
    fixed = model.for_dummy(DUMMY).eval()
    t = model.window
    _export(fixed, make_batch(b=2, t=t)["source"], tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = make_batch(b=3, t=t, seed=5)["source"]  # another batch size than at export
    y_ort = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        y = fixed(x).numpy()
    assert np.abs(y_ort - y).max() <= 1e-4
    bones = skeleton.bone_lengths(y_ort)[..., 1:]
    assert np.abs(bones - DUMMY.numpy()[1:]).max() < 1e-5


def test_for_dummy_bakes_identity():
    model = tiny().eval()
    with torch.no_grad():  # style layers start as the identity map: give H_identity a say
        for layer in model.decoder.layers:
            layer.style.to_scale_shift.weight.normal_(0, 0.3)
    x = make_batch(b=2)["source"]
    fixed = model.for_dummy(DUMMY)
    with torch.no_grad():
        torch.testing.assert_close(fixed(x), model.retarget(x, DUMMY), atol=1e-6, rtol=0)
        for p in model.identity_encoder.parameters():  # changing the encoder afterwards...
            p.add_(0.5)
        baked, live = fixed(x), model.retarget(x, DUMMY)
        fresh = model.for_dummy(DUMMY)(x)
    assert (baked - live).abs().max() > 1e-4  # ...does not reach the baked H_identity
    torch.testing.assert_close(fresh, live, atol=1e-6, rtol=0)
    assert "h_identity" in dict(fixed.named_buffers())


def test_embeddings_shapes():
    model = tiny().eval()
    x = make_batch(b=2)["source"]
    with torch.no_grad():
        emb = model.embeddings(x)
    cfg = model.config
    assert emb["h_action"].shape == (2, x.shape[1], cfg["d_action"])
    assert emb["h_identity"].shape == (2, cfg["d_identity"])
    assert emb["action_logits"].shape == (2, cfg["num_actions"])


def test_config_validation_and_registry(tmp_path):
    with pytest.raises(KeyError, match="d_modle"):
        validate_config({"d_modle": 64})
    with pytest.raises(ValueError, match="decoding"):
        validate_config({"decoding": "beam"})
    with pytest.raises(ValueError, match="causal"):
        validate_config({"causal": "yes"})
    with pytest.raises(ValueError, match="decoder_heads"):
        validate_config({"d_model": 30, "decoder_heads": 4})
    model = tiny()
    with pytest.raises(ValueError, match="frames"):
        model.retarget(torch.zeros(1, model.window + 1, 25, 3), DUMMY)
    with pytest.raises(ValueError, match="target"):
        model.retarget(torch.zeros(1, 8, 25, 3), torch.zeros(3, 3))
    built = build_model({"method": "tmr", **DisentangledTMR.presets["tiny"]})
    assert isinstance(built, DisentangledTMR)
    small = DisentangledTMR.from_preset("small")
    assert small.config["causal"] and small.config["decoding"] == "parallel"
    assert small.window == 64
    path = save_checkpoint(tmp_path / "tmr.safetensors", model)
    loaded = load_checkpoint(path)
    x = make_batch(b=1)["source"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.retarget(x, DUMMY), model.eval().retarget(x, DUMMY))


def test_stage_table_matches_design():
    table = {"ar": (1, 0, 0.5), "ri": (1, 0, 0.5), "nce": (0.1, 0, 0.05),
             "adv": (0.5, 0, 0.25), "orth": (0.1, 0, 0.05), "mi": (0.1, 0, 0.05),
             "mse": (0, 1, 1), "bone": (0, 0.5, 0.5), "smooth": (0, 0.1, 0.1),
             "vel": (0, 0.1, 0.1)}
    for name, per_stage in table.items():
        assert tuple(STAGE_WEIGHTS[s][name] for s in (1, 2, 3)) == per_stage
    assert STAGE_ITERATIONS == {1: 20_000, 2: 15_000, 3: 15_000}
    assert set(STAGE_WEIGHTS[1]) <= set(LOSS_NAMES)
    assert stage_weights(tiny(vq=True), 1)["vq"] == 1.0
    assert "vq" not in stage_weights(tiny(), 1)


def test_skeleton_classifier_shapes_and_causality():
    from streamtmr.models.classifier import STGCNClassifier
    torch.manual_seed(0)
    x = make_batch(b=2, t=12)["source"]
    clf = STGCNClassifier(num_classes=5, channels=8, blocks=2, causal=True)
    assert clf(x).shape == (2, 5)
    f = clf.features(x)
    x2 = x.clone()
    x2[:, 7:] += 1.0
    assert f.shape == (2, 12, 8)
    torch.testing.assert_close(clf.features(x2)[:, :7], f[:, :7])
    with pytest.raises(ValueError, match="25, 3"):
        clf(torch.zeros(2, 12, 20, 3))


def test_vector_quantizer_straight_through_and_stats():
    from streamtmr.models.vq import VectorQuantizer
    vq = VectorQuantizer(num_codes=4, dim=2, beta=0.25)
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.tensor([[0.0, 0], [1, 0], [0, 1], [1, 1]]))
    z = torch.tensor([[[0.9, 0.1], [0.1, 0.8], [0.2, 0.1]]], requires_grad=True)
    q, loss, codes = vq(z)
    assert codes.tolist() == [[1, 2, 0]]
    torch.testing.assert_close(q, vq.codebook.weight[codes])
    (g,) = torch.autograd.grad((q * torch.arange(6.0).reshape(1, 3, 2)).sum(), z)
    torch.testing.assert_close(g, torch.arange(6.0).reshape(1, 3, 2))  # straight-through
    expected = 1.25 * (z.detach() - q.detach()).pow(2).mean()
    torch.testing.assert_close(loss, expected)
    stats = vq.stats(codes)
    assert stats["usage"] == 0.75 and stats["perplexity"] == pytest.approx(3.0)


def test_floor_align_stands_the_dummy_on_the_source_floor(tmp_path):
    """With ``floor_align`` the output's lowest foot point over the window is the source's
    (the dummy stands on the same floor, whatever its height); the shift is vertical only and
    the switch leaves everything else as it was; it exports to ONNX."""
    batch = make_batch(b=3, t=16)
    src = batch["source"]
    lengths = torch.as_tensor(default_dummy().lengths)
    plain = tiny().eval()
    aligned = tiny(floor_align=True).eval()
    aligned.load_state_dict(plain.state_dict())
    with torch.no_grad():
        y0 = plain.retarget(src, lengths)
        y1 = aligned.retarget(src, lengths)
    torch.testing.assert_close(skeleton.floor_height(y1), skeleton.floor_height(src),
                               atol=1e-5, rtol=0)
    d = y1 - y0
    torch.testing.assert_close(d[..., [0, 2]], torch.zeros_like(d[..., [0, 2]]), atol=1e-5,
                               rtol=0)
    assert torch.allclose(d[..., 1], d[:, :1, :1, 1].expand_as(d[..., 1]), atol=1e-5)
    fixed = aligned.for_dummy(lengths).eval()
    _export(fixed, src[:2], tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(sess.run(None, {"x": src.numpy()})[0], fixed(src).numpy(),
                                   atol=1e-4)
