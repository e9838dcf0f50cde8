"""Style augmentation (streamtmr.train.augment) and its use by the TMR trainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamtmr import skeleton
from streamtmr.data import synth
from streamtmr.dummy import default_dummy
from streamtmr.models.tmr_encoders import rest_pose
from streamtmr.train import Trainer, load_config
from streamtmr.train.augment import delayed, style_jitter
from streamtmr.train.config import ConfigError

TINY = Path(__file__).resolve().parents[1] / "configs" / "tmr_tiny.yaml"
LENGTHS = torch.tensor(np.array(default_dummy().lengths, np.float32))


def static_windows(b: int = 6, t: int = 10) -> torch.Tensor:
    """``b`` windows of a person standing still in the rest pose, 2 m in front of the camera."""
    x = rest_pose(LENGTHS)[None, None].repeat(b, t, 1, 1)
    return x + torch.tensor([0.0, 0.0, 2.0])


def moving_windows(b: int = 6, t: int = 16) -> torch.Tensor:
    """Rest pose with every bone swinging about its direction: non-constant, unit directions."""
    x = static_windows(b, t)
    dirs = skeleton.bone_directions(x)
    phase = torch.linspace(0, 2 * np.pi, t)[None, :, None, None]
    wobble = 0.3 * torch.sin(phase + torch.arange(25.0)[None, None, :, None])
    dirs = dirs + wobble * torch.tensor([1.0, 0.0, 0.0])
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return skeleton.forward_kinematics(x[..., 0, :], dirs, LENGTHS)


def angles_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cos = (skeleton.bone_directions(a) * skeleton.bone_directions(b)).sum(-1).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))[..., 1:]  # entry 0 is the root, not a bone


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_all_zero_returns_the_input():
    x = moving_windows()
    assert style_jitter(x) is x


def test_posture_is_a_constant_per_window_offset_that_keeps_bones_and_root():
    x = static_windows()
    y = style_jitter(x, posture=0.07, generator=gen())
    torch.testing.assert_close(skeleton.bone_lengths(y)[..., 1:],
                               skeleton.bone_lengths(x)[..., 1:])
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])
    torch.testing.assert_close(y, y[:, :1].expand_as(y))  # constant within each window
    assert not torch.allclose(y[0], y[1])  # but drawn per window
    mean_angle = float(angles_deg(x, y).mean())
    assert 2.0 < mean_angle < 9.0, mean_angle  # 0.07 ≈ a few degrees, not a new pose


def test_amplitude_scales_motion_only():
    still = static_windows()
    torch.testing.assert_close(style_jitter(still, amplitude=0.3, generator=gen()), still)
    x = moving_windows()
    y = style_jitter(x, amplitude=0.3, generator=gen())
    torch.testing.assert_close(skeleton.bone_lengths(y)[..., 1:],
                               skeleton.bone_lengths(x)[..., 1:])
    # the range of each bone's swing changes: some windows move more, some less
    swing = lambda s: skeleton.bone_directions(s)[..., 0].std(dim=1)[..., 1:]  # noqa: E731
    ratio = swing(y) / swing(x).clamp_min(1e-6)
    assert float(ratio.max()) > 1.1 and float(ratio.min()) < 0.9


def test_bones_change_lengths_not_directions():
    x = moving_windows()
    y = style_jitter(x, bones=0.05, generator=gen())
    assert float(angles_deg(x, y).max()) < 0.05
    ratio = skeleton.bone_lengths(y)[..., 1:] / skeleton.bone_lengths(x)[..., 1:]
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))  # one factor per window
    assert float(ratio.min()) >= 0.5 and float(ratio.max()) <= 1.5
    assert 0.02 < float(ratio.std()) < 0.1


def test_delayed_shifts_each_series_and_holds_the_window_ends():
    seq = torch.arange(6.0)[None, :, None, None].repeat(1, 1, 3, 2)         # [1, 6, 3, 2]
    delay = torch.tensor([2.0, -1.0, 0.5])[None, None, :, None]
    out = delayed(seq, delay)[0, :, :, 0]
    assert out[:, 0].tolist() == [0, 0, 0, 1, 2, 3]           # 2 frames later, first held
    assert out[:, 1].tolist() == [1, 2, 3, 4, 5, 5]           # 1 frame sooner, last held
    assert out[:, 2].tolist() == [0, 0.5, 1.5, 2.5, 3.5, 4.5]  # half a frame, interpolated
    torch.testing.assert_close(delayed(seq, torch.zeros(1, 1, 3, 1)), seq)


def test_lag_retimes_each_bone_and_keeps_lengths_and_root():
    x = moving_windows()
    y = style_jitter(x, lag=2.0, generator=gen())
    torch.testing.assert_close(skeleton.bone_lengths(y), skeleton.bone_lengths(x))
    torch.testing.assert_close(y[..., skeleton.ROOT, :], x[..., skeleton.ROOT, :])
    assert float(angles_deg(x, y).max()) > 1.0                # the motion moved in time
    # every direction the output takes is one of the source's series (or between two frames)
    # of the same bone: the poses are not bent, only the limbs' timing
    spread = angles_deg(y, x.mean(1, keepdim=True).expand_as(x)).amax(1)
    assert bool((spread <= angles_deg(x, x.mean(1, keepdim=True).expand_as(x)).amax(1)
                 + 1e-3).all())
    still = static_windows()
    torch.testing.assert_close(style_jitter(still, lag=3.0, generator=gen()), still)


def test_reproducible_with_a_generator_and_rejects_bad_input():
    x = moving_windows()
    a = style_jitter(x, 0.07, 0.1, 0.05, generator=gen(3))
    torch.testing.assert_close(a, style_jitter(x, 0.07, 0.1, 0.05, generator=gen(3)))
    assert not torch.allclose(a, style_jitter(x, 0.07, 0.1, 0.05, generator=gen(4)))
    with pytest.raises(ValueError, match=r"\[B, T, 25, 3\]"):
        style_jitter(x[0], posture=0.1)
    with pytest.raises(ValueError, match=">= 0"):
        style_jitter(x, posture=-0.1)
    with pytest.raises(ValueError, match="lag -1"):
        style_jitter(x, lag=-1.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth") / "tiny", n_subjects=6, n_actions=3,
                          views=(0,), reps=2, seed=0, progress=False)


def test_trainer_augments_training_batches_only(store, tmp_path):
    aug = ["data.augment_posture=0.07", "data.augment_amplitude=0.1", "data.augment_bones=0.05"]
    plain = Trainer(load_config(TINY), store, tmp_path / "plain")
    jittered = Trainer(load_config(TINY, aug), store, tmp_path / "aug")
    batch = {"source": moving_windows(), "target": static_windows(6, 16)}
    torch.manual_seed(0)
    out = jittered.curriculum.augment(batch)
    assert out["target"] is batch["target"] and not torch.allclose(out["source"], batch["source"])
    assert plain.curriculum.augment(batch) is batch
    # validation sees the data as stored: the same model validates identically under both
    before_a, before_b = plain.model.state_dict(), jittered.model.state_dict()
    assert all(torch.equal(before_a[k], before_b[k]) for k in before_a)  # same initial model
    assert plain.validate() == jittered.validate()
    # training sees the augmented source: same seed, different weights after a few steps
    plain.fit(max_steps=3)
    jittered.fit(max_steps=3)
    a, b = plain.model.state_dict(), jittered.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_a_lag_alone_reaches_the_training_batches(store, tmp_path):
    trainer = Trainer(load_config(TINY, ["data.augment_lag=2.0"]), store, tmp_path / "lag")
    batch = {"source": moving_windows(), "target": static_windows(6, 16)}
    torch.manual_seed(0)
    out = trainer.curriculum.augment(batch)
    assert not torch.allclose(out["source"], batch["source"])
    torch.testing.assert_close(skeleton.bone_lengths(out["source"]),
                               skeleton.bone_lengths(batch["source"]))


def test_methods_without_augmentation_refuse_it(tmp_path):
    from streamtmr.train import train

    cfg = Path(__file__).resolve().parents[1] / "configs" / "moon_resnet_tiny.yaml"
    with pytest.raises(ConfigError, match=r"data.augment_posture: .* for \[.*'tmr'.*\], "
                                          r"not 'moon-resnet'"):
        train(load_config(cfg, ["data.augment_posture=0.1"]), tmp_path / "no-store",
              tmp_path / "out")
