"""Attackers learn a separable toy problem; the linkage degeneracy check flags a constant
predictor."""

import numpy as np
import pytest
import torch

from streamtmr import skeleton
from streamtmr.dummy import default_dummy
from streamtmr.eval.attackers import (
    AttackerTraining,
    LinkageAttacker,
    SkeletonClassifier,
    linkage_report,
    make_pairs,
    probe_accuracy,
)

torch.set_num_threads(1)
TINY = AttackerTraining(width=8, epochs=12, batch=32, lr=5e-3)


def _toy(n_per: int = 24, subjects: int = 3, seed: int = 0):
    """Windows of people who differ in size (scale 0.8 / 1.0 / 1.2) and wave at their own
    rate; labels: subject and a binary 'action' (left or right arm waves)."""
    rng = np.random.default_rng(seed)
    rest = default_dummy().rest_pose()
    xs, subj, act = [], [], []
    t = np.arange(16)[:, None, None]
    for s in range(subjects):
        for i in range(n_per):
            a = i % 2
            seq = np.repeat(rest[None] * (0.8 + 0.2 * s), 16, axis=0).copy()
            hand = skeleton.JOINT["HandLeft" if a == 0 else "HandRight"]
            seq[:, hand, 1] += 0.3 * np.sin(t[:, 0, 0] * (0.3 + 0.1 * s))
            seq += rng.normal(scale=0.005, size=seq.shape)
            xs.append(seq)
            subj.append(s)
            act.append(a)
    return np.stack(xs).astype(np.float32), np.array(subj), np.array(act)


def test_classifier_learns_separable_subjects_and_actions():
    x, subj, act = _toy()
    xt, st, at = _toy(seed=1)
    clf = SkeletonClassifier(TINY).fit(x, {"subject": subj, "action": act})
    res = clf.evaluate(xt, {"subject": st, "action": at})
    assert res["subject"]["top1"] >= 0.9
    assert res["action"]["top1"] >= 0.9
    assert res["subject"]["top5"] == 1.0  # 3 classes: the true one is always in the top 5
    assert clf.embed(xt).shape == (len(xt), 16)


def test_classifier_rejects_mismatched_labels():
    x, subj, _ = _toy(n_per=4)
    with pytest.raises(ValueError, match="labels for"):
        SkeletonClassifier(TINY).fit(x, {"subject": subj[:-1]})


def test_linkage_attacker_verifies_toy_subjects():
    x, subj, _ = _toy()
    xt, st, _ = _toy(seed=1)
    att = LinkageAttacker(AttackerTraining(width=8, epochs=10, batch=32, lr=5e-3),
                          pairs_per_epoch=256).fit(x, subj)
    rep = att.evaluate(xt, st, n_pairs=200)
    assert rep["auc"] >= 0.8
    assert not rep["degenerate"]
    assert 0.02 < rep["frac_pred_same"] < 0.98


def test_linkage_report_flags_a_constant_predictor():
    _, same = make_pairs(np.repeat(np.arange(4), 5), 100, seed=0)
    rep = linkage_report(np.full(len(same), 0.7), same)
    assert rep["degenerate"] and rep["frac_pred_same"] == 1.0
    assert rep["auc"] == pytest.approx(0.5) and rep["balanced_accuracy"] == pytest.approx(0.5)
    good = linkage_report(np.where(same, 0.9, 0.1), same)
    assert not good["degenerate"] and good["auc"] == 1.0 and good["eer"] == 0.0


def test_make_pairs_is_balanced_without_self_pairs():
    groups = np.repeat(np.arange(5), 4)
    pairs, same = make_pairs(groups, 200, seed=3)
    assert same.sum() == 100
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert np.array_equal(groups[pairs[:, 0]] == groups[pairs[:, 1]], same)
    with pytest.raises(ValueError, match="two groups"):
        make_pairs(np.zeros(4), 10)


def test_probe_accuracy_on_blobs():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(4, 8))
    y = np.repeat(np.arange(4), 30)
    x = centres[y] + rng.normal(size=(120, 8))
    yt = np.repeat(np.arange(4), 10)
    xt = centres[yt] + rng.normal(size=(40, 8))
    assert probe_accuracy(x, y, xt, yt, "linear") >= 0.9
    assert probe_accuracy(x, y, xt, yt, "mlp", epochs=150) >= 0.9
    noise = rng.normal(size=(120, 8))
    assert probe_accuracy(noise, y, rng.normal(size=(40, 8)), yt) < 0.6
    with pytest.raises(ValueError, match="probe kind"):
        probe_accuracy(x, y, xt, yt, "svm")
