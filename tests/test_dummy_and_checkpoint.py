import json

import numpy as np
import pytest
import torch

from streamtmr import skeleton as S
from streamtmr.dummy import Dummy, DummyError, default_dummy, resolve_dummy
from streamtmr.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from streamtmr.models.registry import available, build_model


def test_default_dummy_is_plausible():
    d = default_dummy()
    assert d.lengths.shape == (25,) and d.lengths[0] == 0
    assert ((d.lengths[1:] > 0.01) & (d.lengths[1:] < 0.6)).all()
    assert 1.0 < S.standing_height(d.lengths) < 2.0
    assert resolve_dummy("default").name == d.name
    rest = d.rest_pose()
    assert np.allclose(S.bone_lengths(rest)[1:], d.lengths[1:], atol=1e-6)
    assert rest[S.JOINT["Head"], 1] > rest[S.JOINT["SpineBase"], 1] > rest[S.JOINT["FootLeft"], 1]


def test_dummy_roundtrip_and_errors(tmp_path):
    d = default_dummy()
    d.save(tmp_path / "d.json")
    assert np.allclose(Dummy.load(tmp_path / "d.json").lengths, d.lengths, atol=1e-6)
    seq = S.set_bone_lengths(np.random.default_rng(0).normal(size=(10, 25, 3)), d.lengths)
    assert np.allclose(Dummy.from_sequence(seq).lengths, d.lengths, atol=1e-5)
    bad = json.loads((tmp_path / "d.json").read_text())
    del bad["bone_lengths"]["Head"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DummyError, match="bad.json.*Head"):
        Dummy.load(tmp_path / "bad.json")
    (tmp_path / "neg.json").write_text(json.dumps({"lengths": [0.0] + [-0.1] * 24}))
    with pytest.raises(DummyError, match="finite"):
        Dummy.load(tmp_path / "neg.json")
    with pytest.raises(DummyError, match="missing.json"):
        Dummy.load(tmp_path / "missing.json")


def test_naive_retarget_for_dummy():
    d = default_dummy()
    model = build_model({"method": "naive"})
    x = torch.randn(3, 16, 25, 3) * 0.3
    y = model.for_dummy(torch.tensor(d.lengths))(x)
    assert torch.allclose(S.bone_lengths(y)[..., 1:], torch.tensor(d.lengths[1:]).expand(3, 16, 24),
                          atol=1e-5)
    # bone directions are kept
    assert torch.allclose(S.bone_directions(y)[..., 1:, :], S.bone_directions(x)[..., 1:, :],
                          atol=1e-4)


def test_noise_baseline_projected_to_dummy_bones():
    d = default_dummy()
    model = build_model({"method": "noise", "sigma": 0.1})
    y = model.for_dummy(torch.tensor(d.lengths))(torch.randn(2, 8, 25, 3))
    assert torch.allclose(S.bone_lengths(y)[..., 1:], torch.tensor(d.lengths[1:]).expand(2, 8, 24),
                          atol=1e-5)


def test_registry_and_checkpoint_roundtrip(tmp_path):
    assert {"naive", "noise"} <= set(available())
    with pytest.raises(KeyError, match="unknown method"):
        build_model({"method": "nope"})
    model = build_model({"method": "noise", "sigma": 0.02})
    path = save_checkpoint(tmp_path / "m.safetensors", model, extra={"note": "x"})
    config, extra = read_metadata(path)
    assert config["sigma"] == 0.02 and extra == {"note": "x"}
    assert load_checkpoint(path).sigma == 0.02


def test_a_checkpoint_saves_to_the_same_bytes_in_any_process(tmp_path):
    """Privacy cards bind to a checkpoint's SHA-256: the same model saved twice, here and in
    another process, is the same bytes (safetensors alone writes its metadata keys in hash-map
    order, which differs from save to save), and it loads back to the same tensors."""
    import subprocess
    import sys

    from streamtmr.models.checkpoint import default_checkpoint_path

    model = load_checkpoint(default_checkpoint_path())
    extra = {"note": "x", "stages": ["a", "b"], "sha": "0" * 64}
    paths = [save_checkpoint(tmp_path / f"m{i}.safetensors", model, extra) for i in range(3)]
    script = ("import sys\nfrom streamtmr.models.checkpoint import load_checkpoint, "
              "save_checkpoint, default_checkpoint_path as d\n"
              f"save_checkpoint(sys.argv[1], load_checkpoint(d()), {extra!r})")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "other.safetensors")],
                   check=True, timeout=300)
    data = {p.read_bytes() for p in [*paths, tmp_path / "other.safetensors"]}
    assert len(data) == 1
    back = load_checkpoint(paths[0]).state_dict()
    assert all(torch.equal(v, back[k]) for k, v in model.state_dict().items())
    assert read_metadata(paths[0])[1] == extra


def test_checkpoint_errors(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "none.safetensors")


def test_rest_pose_faces_the_sensor_like_real_recordings():
    rest = default_dummy().rest_pose()
    # a person facing a Kinect v2 has its left hip at smaller X (NTU samples agree)
    assert rest[S.JOINT["HipLeft"], 0] < rest[S.JOINT["HipRight"], 0]
    assert rest[S.JOINT["FootLeft"], 2] < rest[S.JOINT["AnkleLeft"], 2]
    assert abs(S.facing_angle(rest)) < 1e-6  # already canonical
