"""Evaluation metrics against hand-computed values."""

import numpy as np
import pytest

from streamtmr import skeleton
from streamtmr.data.windows import trailing_windows
from streamtmr.dummy import default_dummy
from streamtmr.eval import metrics

J = skeleton.JOINT


def _rest(T: int = 10) -> np.ndarray:
    return np.repeat(default_dummy().rest_pose()[None], T, axis=0).astype(np.float64)


def test_mse_and_mpjpe_known_values():
    ref = _rest(4)
    pred = ref + np.array([0.003, 0.004, 0.0])
    assert metrics.mpjpe_mm(pred, ref) == pytest.approx(5.0)
    assert metrics.mse(pred, ref) == pytest.approx((0.003**2 + 0.004**2) / 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.mse(pred[:2], ref)
    # a translated body has a position error but no pose error
    assert metrics.pose_mpjpe_mm(pred, ref) == pytest.approx(0.0, abs=1e-9)
    bent = ref.copy()
    bent[:, J["HandLeft"]] += [0.0, 0.0, 0.025]  # one joint of 25 moved 25 mm
    assert metrics.pose_mpjpe_mm(bent + 1.0, ref) == pytest.approx(1.0)


def test_bone_length_variance():
    seq = _rest(6) + np.linspace(0, 1, 6)[:, None, None]  # rigid translation
    assert metrics.bone_length_variance_mm2(seq) == pytest.approx(0.0, abs=1e-6)
    lengths = np.tile(default_dummy().lengths.astype(np.float64), (6, 1))
    lengths[::2, J["ElbowLeft"]], lengths[1::2, J["ElbowLeft"]] = 0.2, 0.4  # one bone ±100 mm
    seq = skeleton.set_bone_lengths(_rest(6), lengths)
    assert metrics.bone_length_variance_mm2(seq) == pytest.approx(100.0**2 / 24, rel=1e-6)


def test_joint_angle_validity():
    rest = _rest(4)
    assert metrics.joint_angle_validity(rest) == pytest.approx(100.0)
    folded = rest.copy()
    for side in ("Left", "Right"):  # wrists folded back onto the shoulders: elbow angle 0
        folded[:, J["Wrist" + side]] = folded[:, J["Shoulder" + side]]
    # 8 limited angles (elbows, knees, wrists, ankles); the wrist on the shoulder folds both
    # the elbow (0°) and the wrist (elbow–wrist–hand, 0°): 4 of 8 invalid
    assert metrics.joint_angle_validity(folded) == pytest.approx(50.0)


def test_mean_acceleration_of_uniform_acceleration():
    fps, a = 30.0, 2.0
    t = np.arange(12) / fps
    seq = _rest(12)
    seq = seq + (0.5 * a * t**2)[:, None, None] * np.array([1.0, 0.0, 0.0])
    assert metrics.mean_acceleration(seq, fps) == pytest.approx(a, rel=1e-6)
    still = _rest(5) + np.arange(5)[:, None, None] * 0.01  # constant velocity
    assert metrics.mean_acceleration(still) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="3 frames"):
        metrics.mean_acceleration(_rest(2))


def test_velocity_mmd():
    rng = np.random.default_rng(0)
    a = _rest(20) + rng.normal(scale=0.01, size=(20, 25, 3))
    assert metrics.velocity_mmd(a, a) == pytest.approx(0.0, abs=1e-9)
    b = _rest(20) + rng.normal(scale=0.05, size=(20, 25, 3))
    assert metrics.velocity_mmd(a, b) > 0.1


def test_foot_skate_and_contacts():
    fps = 30.0
    still = _rest(8)
    assert metrics.foot_skate(still, fps=fps) == pytest.approx(0.0)
    slide = still + (np.arange(8) * 0.01)[:, None, None] * np.array([1.0, 0.0, 0.0])
    assert metrics.foot_skate(slide, fps=fps) == pytest.approx(0.01 * fps)  # 0.3 m/s
    assert metrics.foot_contact_correlation(still, still) == 1.0
    lifted = still.copy()
    lifted[4:, J["FootLeft"], 1] += 0.3  # left foot leaves the floor halfway
    lifted[4:, J["AnkleLeft"], 1] += 0.3
    assert metrics.foot_contact_correlation(lifted, lifted) == pytest.approx(1.0)
    assert metrics.foot_contact_correlation(lifted, still) == 0.0  # still: constant contacts


def test_trailing_windows_and_gap():
    seq = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 25, 3), np.float32)
    w = trailing_windows(seq, 3)
    assert w.shape == (5, 3, 25, 3)
    assert w[0, :, 0, 0].tolist() == [0, 0, 0]  # padded by repeating the first frame
    assert w[4, :, 0, 0].tolist() == [2, 3, 4]  # window t ends at frame t
    assert np.array_equal(w[:, -1], seq)
    assert metrics.streamed_offline_gap_mm(w[:, -1], seq) == 0.0


def test_classification_metrics():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = np.array([1, 1, 0, 0])
    assert metrics.topk_accuracy(scores, labels, 1) == 0.5
    assert metrics.topk_accuracy(scores, labels, 2) == 0.75
    assert metrics.balanced_accuracy(np.array([1, 1, 1, 0]), np.array([1, 1, 0, 0])) == 0.75


def test_roc_auc_and_eer():
    s = np.array([0.1, 0.4, 0.35, 0.8])
    y = np.array([0, 0, 1, 1])
    assert metrics.roc_auc(s, y) == pytest.approx(0.75)  # 3 of 4 pos/neg pairs ordered
    assert metrics.roc_auc([0.5] * 4, y) == pytest.approx(0.5)  # ties count one half
    assert metrics.roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert metrics.equal_error_rate([1, 2, 3, 4], [0, 0, 1, 1]) == 0.0
    assert metrics.equal_error_rate(s, y) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both"):
        metrics.roc_auc([0.1, 0.2], [1, 1])
