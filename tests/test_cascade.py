"""Cascade: streaming anonymizers in series, one checkpoint (streamtmr.models.cascade)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamtmr.cli import main
from streamtmr.dummy import default_dummy
from streamtmr.models.cascade import Cascade, last_stage_key, save_chain
from streamtmr.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from streamtmr.models.registry import model_class


def _motion(b: int = 2, t: int = 30) -> torch.Tensor:
    from bench.motion import motion_clips
    clips = motion_clips(b, seed=2)
    return torch.as_tensor(np.stack([c[:t] for c in clips]).astype(np.float32))


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("cascade")
    first = model_class("tmr-stream").from_preset("tiny")
    second = model_class("motion_match").from_preset("tiny")
    a = save_checkpoint(d / "a.safetensors", first, {"data": {"store": "s", "train_subjects":
                                                              [1, 2], "real_subjects": []}})
    b = save_checkpoint(d / "b.safetensors", second, {"data": {
        "store": "s", "train_subjects": [2, 3], "real_subjects": ["utkinect:s01"]}})
    return first.eval(), second.eval(), a, b


def test_a_cascade_is_its_stages_in_series_and_steps_like_it_runs(stages, tmp_path):
    first, second, a, b = stages
    path = save_chain([a, b], tmp_path / "c.safetensors")
    cascade = load_checkpoint(path)
    assert isinstance(cascade, Cascade)
    lengths = torch.tensor(default_dummy().lengths)
    x = _motion()
    with torch.no_grad():
        want = second.retarget(first.retarget(x, lengths[None]), lengths[None])
        got = cascade.retarget(x, lengths[None])
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        module = cascade.for_dummy(lengths)
        state = module.init_state(2)
        assert set(state) == set(module.state_spec()) and "t" in state
        outs = []
        for t in range(x.shape[1]):
            y, state = module.step(x[:, t], state)
            outs.append(y)
        torch.testing.assert_close(torch.stack(outs, 1), module(x), atol=1e-5, rtol=0)
        # the matcher's playing frame, by its key in the cascade's state and in its own
        assert last_stage_key(cascade, "cur") == "s1.cur" and "s1.cur" in state
        assert last_stage_key(second, "cur") == "cur"
        assert "cur" in second.for_dummy(lengths).init_state(1)
    # the record: every person any stage saw
    data = read_metadata(path)[1]["data"]
    assert data["train_subjects"] == [1, 2, 3] and data["real_subjects"] == ["utkinect:s01"]


def test_a_windowed_stage_is_refused_by_name(tmp_path, capsys):
    torch.manual_seed(0)
    windowed = save_checkpoint(tmp_path / "w.safetensors",
                               model_class("tmr").from_preset("tiny"))
    streaming = save_checkpoint(tmp_path / "s.safetensors",
                                model_class("tmr-stream").from_preset("tiny"))
    with pytest.raises(ValueError, match="every stage must be a streaming model; tmr is not"):
        Cascade({"stages": [{"method": "tmr", "preset": "tiny"},
                            {"method": "tmr-stream", "preset": "tiny"}]})
    assert main(["chain", str(streaming), str(windowed), "--out",
                 str(tmp_path / "c.safetensors")]) != 0
    assert "tmr is not" in capsys.readouterr().err
    assert not (tmp_path / "c.safetensors").exists()


def test_chain_cli_takes_the_shipped_default_as_a_stage(stages, tmp_path):
    from streamtmr.cache import file_sha256
    from streamtmr.models.checkpoint import default_checkpoint_path

    _, _, _, b = stages
    out = tmp_path / "c.safetensors"
    assert main(["chain", "default", str(b), "--out", str(out)]) == 0
    cascade = load_checkpoint(out)
    shipped = load_checkpoint(default_checkpoint_path())
    assert cascade.stages[0].config == shipped.config
    for k, v in shipped.state_dict().items():
        assert torch.equal(cascade.stages[0].state_dict()[k], v), k
    extra = read_metadata(out)[1]
    assert extra["stages"] == ["default", str(b)]  # a shipped stage by its name
    assert extra["stage_sha256"] == [file_sha256(default_checkpoint_path()), file_sha256(b)]


def test_the_same_learned_stage_twice_keeps_two_states(stages, tmp_path):
    """``chain F F MM``: the learned stage is applied to its own output; each copy carries its
    own state (the presets of docs/results.md, "A named preset")."""
    first, second, a, b = stages
    cascade = load_checkpoint(save_chain([a, a, b], tmp_path / "c3.safetensors"))
    lengths = torch.tensor(default_dummy().lengths)
    x = _motion(t=24)
    with torch.no_grad():
        once = first.retarget(x, lengths[None])
        want = second.retarget(first.retarget(once, lengths[None]), lengths[None])
        torch.testing.assert_close(cascade.retarget(x, lengths[None]), want, atol=1e-6, rtol=0)
        assert not torch.allclose(want, second.retarget(once, lengths[None]), atol=1e-3)
        module = cascade.for_dummy(lengths)
        state = module.init_state(2)
        assert {k.split(".")[0] for k in state if k != "t"} >= {"s0", "s1", "s2"}
        outs = []
        for t in range(x.shape[1]):
            y, state = module.step(x[:, t], state)
            outs.append(y)
        torch.testing.assert_close(torch.stack(outs, 1), module(x), atol=1e-5, rtol=0)
