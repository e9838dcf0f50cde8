"""The shipped default model: loads without unpickling, streams, and keeps its recorded quality."""

import json
from importlib import resources

import numpy as np
import pytest
import torch

from streamtmr import skeleton as S
from streamtmr.data import synth
from streamtmr.data.datasets import load_windows
from streamtmr.data.store import SkeletonStore
from streamtmr.dummy import default_dummy
from streamtmr.models.checkpoint import default_checkpoint_path, read_metadata, resolve_model
from streamtmr.models.registry import build_model, model_class

CARD = json.loads(resources.files("streamtmr.assets").joinpath("default_model.json").read_text())


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """People the default never saw (another population seed), as recorded in the model card."""
    spec = CARD["heldout"]
    root = synth.generate(tmp_path_factory.mktemp("heldout") / "s", n_subjects=spec["subjects"],
                          n_actions=spec["actions"], views=tuple(spec["views"]),
                          reps=spec["reps"], seed=spec["seed"], progress=False)
    target = spec.get("target_array", "target")  # the ground truth the model was trained on
    w = load_windows(SkeletonStore(root), 64, crop="center", arrays=("joints", target))
    return torch.tensor(np.asarray(w["joints"])), torch.tensor(np.asarray(w[target]))


def _mpjpe_mm(model, x, y):
    with torch.inference_mode():
        out = model.for_dummy(torch.tensor(default_dummy().lengths))(x)
    return float((out - y).norm(dim=-1).mean()) * 1000, out


def test_default_is_the_small_streaming_tmr_trained_on_anonymizer_subjects():
    path = default_checkpoint_path()
    assert path.stat().st_size < 8 * 2**20  # a few MB
    config, extra = read_metadata(path)
    assert config["method"] == "tmr-stream" and CARD["method"] == "tmr-stream"
    small = model_class("tmr-stream").presets["small"]
    assert all(config[k] == v for k, v in small.items())
    assert extra["data"]["train_split"] == "anonymizer_train"
    assert extra["data"]["real_subjects"] == []  # no real person inside the shipped model
    assert CARD["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()


def test_default_reproduces_its_recorded_heldout_error(heldout):
    torch.set_num_threads(1)
    x, y = heldout
    model = resolve_model("default")
    err, out = _mpjpe_mm(model, x, y)
    assert err == pytest.approx(CARD["heldout"]["mpjpe_mm"], abs=0.5)
    lengths = torch.tensor(default_dummy().lengths)
    assert torch.allclose(S.bone_lengths(out)[..., 1:], lengths[1:].expand(*out.shape[:2], 24),
                          atol=1e-5)
    naive, _ = _mpjpe_mm(build_model({"method": "naive"}), x, y)
    assert err < naive  # closer to the ground-truth retarget than swapping bone lengths


def test_default_streams_frame_by_frame_as_it_computes_windows(heldout):
    """What the node publishes (one step per frame) is what the held-out error measured."""
    x, _ = heldout
    dm = resolve_model("default").for_dummy(torch.tensor(default_dummy().lengths))
    x = x[:4]
    with torch.inference_mode():
        parallel = dm(x)
        state, steps = dm.init_state(len(x)), []
        for t in range(x.shape[1]):
            y, state = dm.step(x[:, t], state)
            steps.append(y)
    assert float((torch.stack(steps, 1) - parallel).abs().max()) < 1e-4
