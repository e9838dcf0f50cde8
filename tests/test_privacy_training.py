"""Privacy terms for unseen people (issue 16): losses, the cross-identity pairs, a smoke run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import utk_folder
from safetensors.torch import load_file, save_file

from streamtmr import skeleton
from streamtmr.data import synth
from streamtmr.data.pairs import PERSON_BASE, pair_batch, render_pair
from streamtmr.data.real_windows import (
    ntu_windows,
    person_triplets,
    real_people_names,
    utkinect_people,
)
from streamtmr.dummy import default_dummy
from streamtmr.models.registry import build_model, model_class
from streamtmr.train import Trainer, load_config
from streamtmr.train import privacy as P
from streamtmr.train.config import ConfigError
from streamtmr.train.tmr import TMRCurriculum
from streamtmr.train.trainer import encode_labels

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tmr_stream_privacy.yaml"
NTU = Path("/work/shared/data/real/ntu_samples")
DUMMY = default_dummy().lengths


# ------------------------------------------------------------------------------ losses


def test_verification_auc_by_hand():
    scores = torch.tensor([0.9, 0.1, 0.8, 0.3])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # positives 0.9, 0.3 against negatives 0.1, 0.8: 3 of 4 pairs ranked right
    assert float(P.verification_auc(scores, labels)) == pytest.approx(0.75)
    assert float(P.verification_auc(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]))) == 0.5
    with pytest.raises(ValueError, match="positive and negative"):
        P.verification_auc(torch.ones(3), torch.ones(3))


def test_invariance_loss_by_hand_with_finite_gradient():
    h_a = torch.tensor([[[1.0, 0.0]]], requires_grad=True)
    h_b = torch.tensor([[[0.0, 1.0]]])
    loss = P.invariance_loss(h_a, h_b)  # |(1,-1)|² / ½(1 + 1) = 2
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    assert torch.allclose(h_a.grad, torch.tensor([[[2.0, -2.0]]]))  # 2 (h_a − h_b) / 1
    assert float(P.invariance_loss(h_b, h_b.clone())) == 0.0
    # scale-free: shrinking both features does not lower it
    assert P.invariance_loss(0.01 * h_a, 0.01 * h_b).item() == pytest.approx(2.0, rel=1e-3)


def test_verification_targets_pair_only_the_same_action():
    labels, mask = P.verification_targets(torch.tensor([0, 1, 0]))
    assert labels.shape == mask.shape == (6, 3)
    assert labels.sum() == 3 and all(labels[i, i] == 1 for i in range(3))
    k = torch.arange(3)
    assert bool(mask[k, k].all()) and bool(mask[k + 3, k].all())  # A_i and B_i against A_i
    assert bool(mask[2, 0]) and bool(mask[5, 0])  # A_2, B_2 (action 0) against A_0: negatives
    assert not bool(mask[1, 0]) and not bool(mask[4, 2])  # action 1 against action 0: left out


def test_verification_loss_is_ln2_at_zero_logits_and_reverses_the_gradient():
    torch.manual_seed(0)
    head = P.VerificationHead(8, 4)
    k = 3
    pa, pb, pa2 = (torch.randn(k, 8, requires_grad=True) for _ in range(3))
    labels, mask = P.verification_targets(torch.tensor([0, 0, 1]))
    with torch.no_grad():
        head.score.fc2.weight.zero_()
        head.score.fc2.bias.zero_()
    loss, logits = P.verification_loss(head, pa, pb, pa2, labels, mask)
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert torch.count_nonzero(logits) == 0
    # with a live head, the features' gradient is exactly the negative of the head's own BCE's
    torch.nn.init.normal_(head.score.fc2.weight)
    loss, _ = P.verification_loss(head, pa, pb, pa2, labels, mask, scale=1.0)
    reversed_grad = torch.autograd.grad(loss, pa)[0]
    plain = head(torch.cat([pa, pb]), pa2)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(plain, labels, reduction="none")
    pos, neg = mask & (labels > 0.5), mask & (labels < 0.5)
    direct = torch.autograd.grad(0.5 * (bce[pos].mean() + bce[neg].mean()), pa)[0]
    assert torch.isfinite(reversed_grad).all() and direct.abs().sum() > 0
    assert torch.allclose(reversed_grad, -direct, atol=1e-6)


def _frames(direction: list[float]) -> torch.Tensor:
    dirs = torch.tensor(direction).expand(1, skeleton.NUM_JOINTS, 3)
    lengths = torch.full((1, skeleton.NUM_JOINTS), 0.1)
    return skeleton.forward_kinematics(torch.zeros(1, 3), dirs, lengths)


def test_angular_speed_and_dynamics_by_hand():
    # every bone along +x, then along +z: each of the 24 bones turns by π/2
    seq = torch.stack([_frames([1.0, 0, 0]), _frames([0, 0, 1.0])], 1)  # [1, 2, 25, 3]
    speed = P.angular_speed(seq)
    assert speed.shape == (1, 1, 24)
    assert torch.allclose(speed, torch.full_like(speed, math.pi / 2), atol=1e-5)
    # a still output against it: |0 − π/2| everywhere
    still = seq[:, :1].expand(1, 2, 25, 3)
    assert float(P.dynamics_loss(still, seq, lag=1)) == pytest.approx(math.pi / 2, abs=1e-5)
    assert torch.allclose(P.angular_speed(torch.cat([seq, seq[:, 1:]], 1), lag=2),
                          speed, atol=1e-5)  # x, z, z: over 2 frames, again π/2
    with pytest.raises(ValueError, match="lag"):
        P.angular_speed(seq, lag=2)
    # blind to scale, bone lengths and position; finite gradient even at zero turning
    moved = (1.3 * seq + torch.tensor([0.5, 0.0, 2.0])).requires_grad_(True)
    loss = P.dynamics_loss(moved, seq, lag=1)
    assert loss.item() == pytest.approx(0.0, abs=1e-3)
    loss.backward()
    assert torch.isfinite(moved.grad).all()


def test_motion_features_by_hand_and_blind_to_where_the_window_is():
    # every bone along +x, then the whole body 0.1 m to the side with every bone along +z
    still = _frames([1.0, 0, 0])
    turned = _frames([0, 0, 1.0]) + torch.tensor([0.0, 0.0, 0.1])
    seq = torch.stack([still, turned], 1)                                 # [1, 2, 25, 3]
    f = P.motion_features(seq)
    assert f.shape == (1, 2, P.MOTION_FEATURES)
    assert torch.equal(f[:, 0, 72:], torch.zeros(1, 75))                  # no change before
    d0, d1 = f[0, 0, :72].reshape(24, 3), f[0, 1, :72].reshape(24, 3)
    assert torch.allclose(d0.norm(dim=-1), torch.ones(24), atol=1e-5)
    assert torch.allclose(f[0, 1, 72:144], (d1 - d0).flatten(), atol=1e-6)
    assert float(f[0, 1, 144:].norm()) == pytest.approx(0.1, abs=1e-5)   # the root's step
    # the same window turned about the vertical and moved in the room reads the same
    walk = torch.cumsum(torch.randn(2, 16, 25, 3) * 0.01, 1) + torch.randn(2, 1, 25, 3)
    rot = skeleton.rotation_y(torch.tensor(0.7))
    moved = walk @ rot.T + torch.tensor([1.5, 0.0, -2.0])
    assert torch.allclose(P.motion_features(walk), P.motion_features(moved), atol=1e-4)
    # without the root: the same features but the root's displacement
    assert torch.equal(P.motion_features(seq, root=False), f[..., :144])


def test_motion_verification_head_scores_every_pair_and_learns_a_sequence():
    """The head reads windows: a sequence property that no frame shows alone (two people who
    take the same poses at different speeds) is what it must learn to tell apart."""
    torch.manual_seed(0)
    head = P.MotionVerificationHead(4, d_hidden=16, d_embed=16)
    t = torch.linspace(0, 6.28, 32)

    def person(speed: float, n: int) -> torch.Tensor:  # [n, 32, 4]: one pose cycle, own speed
        phase = torch.rand(n, 1) * 6.28
        return torch.stack([torch.sin(speed * t + phase), torch.cos(speed * t + phase),
                            torch.zeros(n, 32), torch.zeros(n, 32)], -1)

    assert head(person(1.0, 3), person(1.0, 5)).shape == (3, 5)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(150):
        labels = torch.cat([torch.ones(8, 8), torch.zeros(8, 8)])  # a: the first, b: not
        loss, _ = P.verification_loss(head, person(1.0, 8), person(3.0, 8), person(1.0, 8),
                                      labels, torch.ones_like(labels, dtype=torch.bool))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        left = torch.cat([person(1.0, 16), person(3.0, 16)])
        scores = head(left, person(1.0, 4)).mean(1)
    labels = torch.cat([torch.ones(16), torch.zeros(16)])
    assert float(P.verification_auc(scores, labels)) > 0.95


# ------------------------------------------------------------------------------ pair stream


def test_pair_renders_one_content_for_two_fresh_people():
    item = render_pair(seed=3, index=7, dummy_lengths=DUMMY, window=64)
    for k in ("a", "b", "a2", "target"):
        assert item[k].shape == (64, 25, 3) and item[k].dtype == np.float32, k
    assert item["person_a"] != item["person_b"] and min(item["person_a"],
                                                        item["person_b"]) >= PERSON_BASE
    # different bodies: bone lengths differ; the one target is on the dummy's body
    len_a, len_b = (np.median(skeleton.bone_lengths(item[k]), 0) for k in ("a", "b"))
    assert np.abs(len_a - len_b).max() > 0.01
    assert np.allclose(skeleton.bone_lengths(item["target"]), DUMMY, atol=1e-4)
    # the same content, frame-aligned: with each render's mean posture removed, b's bone
    # directions follow the target's (and a's) over time more closely than a2's (the same
    # action by A, another instance) do
    near = [(_content_distance(it["a"], it["b"]), _content_distance(it["a"], it["a2"]),
             _content_distance(it["b"], it["target"]), _content_distance(it["a2"], it["target"]))
            for it in (render_pair(3, i, DUMMY) for i in range(5))]
    assert all(bt < a2t for _, _, bt, a2t in near)
    assert np.mean([bt / a2t for _, _, bt, a2t in near]) < 0.8
    assert np.mean([ab / aa2 for ab, aa2, _, _ in near]) < 0.9
    # different style: the mean bone directions differ beyond sensor noise
    dirs = {k: skeleton.bone_directions(item[k]).mean(0) for k in ("a", "b")}
    assert np.degrees(np.arccos(np.clip((dirs["a"] * dirs["b"]).sum(-1)[1:]
                                        / np.linalg.norm(dirs["a"][1:], axis=-1)
                                        / np.linalg.norm(dirs["b"][1:], axis=-1), -1, 1))
                      ).max() > 3.0


def _content_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Mean distance of the bone-direction trajectories with each one's time mean removed."""
    dx, dy = (skeleton.bone_directions(s)[:, 1:] for s in (x, y))
    return float(np.linalg.norm((dx - dx.mean(0)) - (dy - dy.mean(0)), axis=-1).mean())


def test_pair_stream_is_deterministic_and_every_item_new():
    one = pair_batch(5, np.arange(3), DUMMY, window=32, n_actions=4)
    assert set(one) == {"a", "b", "a2", "target", "action", "person_a", "person_b"}
    again = pair_batch(5, np.arange(3), DUMMY, window=32, n_actions=4)
    assert all(np.array_equal(one[k], again[k]) for k in one)
    people = np.concatenate([one["person_a"], one["person_b"]])
    assert len(set(people.tolist())) == 6
    assert one["a"].shape == (3, 32, 25, 3) and (one["action"] < 4).all()
    other = pair_batch(6, np.arange(3), DUMMY, window=32, n_actions=4)
    assert not np.array_equal(one["a"], other["a"])
    with pytest.raises(ValueError, match="n_actions"):
        render_pair(0, 0, DUMMY, n_actions=0)


@pytest.mark.skipif(not NTU.is_dir(), reason=f"{NTU} absent (real NTU samples not on this "
                    "machine)")
def test_ntu_windows_from_the_real_samples():
    w = ntu_windows(NTU, 32)
    assert w.shape[1:] == (32, 25, 3) and len(w) >= 4 and np.isfinite(w).all()


def test_ntu_windows_names_an_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        ntu_windows(tmp_path)


# ------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return synth.generate(tmp_path_factory.mktemp("synth") / "tiny", n_subjects=6, n_actions=3,
                          views=(0,), reps=2, seed=0, progress=False)


def _config(**sets: str):
    base = {"model.preset": "tiny", "train.init_from": "null", "train.batch_size": "4",
            "data.pairs_per_batch": "3", "train.stages[0].iterations": "5",
            "train.log_every": "1", "train.val_every": "5", "train.device": "cpu",
            "train.progress": "false", "data.max_val_windows": "8", "data.window": "32"}
    base.update(sets)
    return load_config(CONFIG, [f"{k}={v}" for k, v in base.items()])


def test_five_steps_with_every_privacy_term(store, tmp_path):
    real = {}
    if NTU.is_dir():
        real = {"data.real_dir": str(NTU), "data.real_per_batch": "2",
                "train.stages[0].weights.dyn": "0.1"}
    trainer = Trainer(_config(**real, **{"train.stages[0].weights.ver_dyn": "0.1",
                                         "train.stages[0].weights.ver_dyn_pose": "0.1"}),
                      store, tmp_path / "run")
    head0 = {k: v.clone() for k, v in trainer.curriculum.verifier.state_dict().items()}
    final = trainer.fit()
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "split" not in r]
    assert len(train) == 5
    terms = {"ver", "ver_auc", "ver_out", "ver_out_auc", "ver_dyn", "ver_dyn_auc",
             "ver_dyn_pose", "ver_dyn_pose_auc", "inv_h", "inv_out", "pair_mse",
             *(["dyn"] if real else [])}
    for r in train:
        assert terms <= set(r) and all(np.isfinite(r[k]) for k in terms), r
        assert 0.0 <= r["ver_auc"] <= 1.0
    # the verifier trains with the stage, and is not part of the saved model
    head1 = trainer.curriculum.verifier.state_dict()
    for head in ("ver.", "ver_out.", "ver_dyn.", "ver_dyn_pose."):
        assert any(not torch.equal(head0[k], head1[k]) for k in head0 if k.startswith(head))
    saved = load_file(str(final))
    assert set(saved) == set(trainer.model.state_dict())
    assert not any("verif" in k for k in saved)


def test_pairs_are_rendered_only_for_a_stage_with_a_pair_loss(store, tmp_path):
    """Fresh people's pairs cost about 0.1 s a batch to render: a stage without a pair loss
    gets none (in the 2026-12-04 lease they slowed every stage of a paper-size run fivefold),
    and the step's other random draws stay what they were."""
    import dataclasses

    trainer = Trainer(_config(**{"data.augment_posture": "0.1"}), store, tmp_path / "run")
    cur = trainer.curriculum
    with_pairs = cur.stages[0]
    assert {"ver", "inv_h"} <= set(with_pairs.active)
    without = dataclasses.replace(with_pairs, weights={"mse": 1.0, "bone": 0.5})
    batch = cur.prepare(encode_labels({k: v[:4] for k, v in trainer.data.val.items()},
                                      trainer.data.info))
    steps = []
    for stage in (with_pairs, without):
        torch.manual_seed(3)
        steps.append((cur.augment(batch, stage), torch.rand(4)))
    (a, after_a), (b, after_b) = steps
    pairs = {"pair_a", "pair_b", "pair_a2", "pair_target", "pair_action"}
    assert pairs <= set(a) and not pairs & set(b)
    assert torch.equal(a["source"], b["source"]) and torch.equal(after_a, after_b)
    assert not torch.equal(a["source"], batch["source"])  # the jitter ran


def test_pair_workers_render_the_same_pairs_side_by_side(store, tmp_path):
    """``data.pair_workers`` renders a step's pairs in a pool of processes: the same arrays as
    the training process renders alone."""
    batches = []
    for workers in ("0", "2"):
        trainer = Trainer(_config(**{"data.pair_workers": workers}), store, tmp_path / workers)
        cur = trainer.curriculum
        batch = cur.prepare(encode_labels({k: v[:4] for k, v in trainer.data.val.items()},
                                          trainer.data.info))
        torch.manual_seed(5)
        batches.append(cur.augment(batch, cur.stages[0]))
        assert (cur._pair_pool is None) == (workers == "0")
        if cur._pair_pool is not None:
            cur._pair_pool.shutdown()
    for key in ("pair_a", "pair_b", "pair_a2", "pair_target", "pair_action"):
        assert torch.equal(batches[0][key], batches[1][key]), key
    with pytest.raises(ConfigError, match="pair_workers"):
        _config(**{"data.pair_workers": "-1"})


def test_init_from_starts_from_the_checkpoint(store, tmp_path):
    cfg = _config()
    torch.manual_seed(1)
    model = build_model({**TMRCurriculum.model_config(cfg.model, _info(store)), "window": 32})
    path = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    trainer = Trainer(_config(**{"train.init_from": str(path)}), store, tmp_path / "run")
    for k, v in model.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[k], v), k
    wrong = tmp_path / "wrong.safetensors"
    save_file({"x": torch.zeros(1)}, str(wrong))
    with pytest.raises(ConfigError, match="does not fit"):
        Trainer(_config(**{"train.init_from": str(wrong)}), store, tmp_path / "run2")


def test_pair_losses_need_pairs(store, tmp_path):
    with pytest.raises(ConfigError, match="pairs_per_batch"):
        Trainer(_config(**{"data.pairs_per_batch": "0"}), store, tmp_path / "run")
    with pytest.raises(ConfigError, match="real_dir"):
        Trainer(_config(**{"train.stages[0].weights.dyn": "0.1"}), store, tmp_path / "run")


def _info(store: Path):
    from streamtmr.train.trainer import load_data
    return load_data(_config(), store).info


# ------------------------------------------------------------------ real people (UTKinect fold)


def test_person_pair_targets_generalise_the_fresh_people_targets():
    action = torch.tensor([0, 1, 0])
    fresh = torch.arange(6)  # a, b: six different people; a2 repeats a's people
    labels, mask = P.person_pair_targets(fresh, fresh[:3], torch.cat([action, action]), action)
    want_labels, want_mask = P.verification_targets(action)
    assert torch.equal(labels, want_labels) and torch.equal(mask, want_mask)
    # a real batch repeats people: item 2's anchor is item 0's person, so (2, 0) is a positive
    person = torch.tensor([5, 6, 5, 7, 8, 9])
    labels, _ = P.person_pair_targets(person, person[:3], torch.cat([action, action]), action)
    assert labels[2, 0] == 1 and labels[0, 2] == 1 and labels[1, 0] == 0


def test_real_people_triplets_pair_same_action_across_runs_and_people(tmp_path):
    root = utk_folder(tmp_path, np.random.default_rng(0), subjects=(1, 2, 3))
    people = utkinect_people(root, [1, 2], window=8, stride=4)
    assert set(people.subject.tolist()) == {1, 2} and people.joints.shape[1:] == (8, 25, 3)
    a, b, a2 = person_triplets(people, 16, np.random.default_rng(1))
    s, act, run = people.subject, people.action, people.execution
    assert np.array_equal(s[a], s[a2]) and np.all(run[a] != run[a2])  # same person, other run
    assert np.all(s[b] != s[a])                                       # another person
    assert np.array_equal(act[a], act[b]) and np.array_equal(act[a], act[a2])
    with pytest.raises(ValueError, match=r"subject\(s\) \[4\]"):
        utkinect_people(root, [1, 4])
    with pytest.raises(ValueError, match=">= 2 of the folder's subjects"):
        utkinect_people(root, [1])
    assert real_people_names(None, [2, 1]) == ["utkinect:s01", "utkinect:s02"]


def test_real_people_windows_run_on_the_sensor_clock(tmp_path):
    """UTKinect's recorder skipped Kinect frames: the windows are cut from the 30 Hz stream
    (the skipped frames interpolated), not from the rows played back to back."""
    root = utk_folder(tmp_path, np.random.default_rng(0), subjects=(1, 2))
    for f in root.glob("joints_*.txt"):  # keep every second Kinect frame, ids 2 apart
        rows = f.read_text().splitlines()
        f.write_text("\n".join(f"{2 * i + 1} {r.split(None, 1)[1]}" for i, r in enumerate(rows))
                     + "\n")
    label = root / "actionLabel.txt"
    label.write_text(label.read_text().replace("walk: 1 14", "walk: 1 27")
                     .replace("throw: 16 29", "throw: 31 57"))
    sensor = utkinect_people(root, [1, 2], window=8, stride=4)
    rows = utkinect_people(root, [1, 2], window=8, stride=4, clock="rows")
    assert len(sensor.subject) > len(rows.subject)  # about twice the frames
    first = sensor.joints[0]
    np.testing.assert_allclose(first[1], (rows.joints[0][0] + rows.joints[0][1]) / 2, atol=1e-6)
    np.testing.assert_array_equal(first[::2], rows.joints[0][:4])
    with pytest.raises(ValueError, match="clock 'hz'"):
        utkinect_people(root, [1, 2], clock="hz")


def test_ver_real_trains_on_the_fold_people_and_the_checkpoint_names_them(store, tmp_path):
    (tmp_path / "utk").mkdir()
    root = utk_folder(tmp_path / "utk", np.random.default_rng(0), subjects=(1, 2, 3))
    sets = {"data.real_utkinect": str(root), "data.real_utkinect_subjects": "[1,3]",
            "data.real_people_per_batch": "3", "data.real_people_window": "8",
            "train.stages[0].weights.ver_real": "0.5"}
    trainer = Trainer(_config(**sets), store, tmp_path / "run")
    head0 = {k: v.clone() for k, v in trainer.curriculum.verifier["ver_real"].state_dict().items()}
    final = trainer.fit()
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "split" not in r]
    assert all(np.isfinite(r["ver_real"]) and 0 <= r["ver_real_auc"] <= 1 for r in train)
    head1 = trainer.curriculum.verifier["ver_real"].state_dict()
    assert any(not torch.equal(head0[k], head1[k]) for k in head0)
    from streamtmr.models.checkpoint import read_metadata
    assert read_metadata(final)[1]["data"]["real_subjects"] == ["utkinect:s01", "utkinect:s03"]
    assert not any("verif" in k for k in load_file(str(final)))


def test_ver_real_needs_its_people(store, tmp_path):
    with pytest.raises(ConfigError, match="real_utkinect"):
        Trainer(_config(**{"train.stages[0].weights.ver_real": "0.5"}), store, tmp_path / "r")
    with pytest.raises(ConfigError, match="go together"):
        _config(**{"data.real_utkinect": str(tmp_path)})
    root = utk_folder(tmp_path, np.random.default_rng(0), subjects=(1, 2))
    sets = {"data.real_utkinect": str(root), "data.real_utkinect_subjects": "[1,9]",
            "train.stages[0].weights.ver_real": "0.5"}
    with pytest.raises(ConfigError, match=r"real_utkinect:.*\[9\]"):
        Trainer(_config(**sets), store, tmp_path / "r2")


# ------------------------------------------------------------- frozen action teacher (act_out)


def _teacher(store: Path):
    from streamtmr.data.datasets import load_windows
    from streamtmr.train.teacher import train_teacher

    w = load_windows(store, 32, stride=16)
    return train_teacher(np.asarray(w["joints"]), w["action"], 3, epochs=2, channels=8), w


def test_teacher_is_frozen_saved_safely_and_passes_gradients(store, tmp_path):
    from streamtmr.train.teacher import action_teacher_loss, load_teacher, save_teacher

    teacher, w = _teacher(store)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    x = torch.tensor(np.asarray(w["joints"][:4]), requires_grad=True)
    loss = action_teacher_loss(teacher, x, torch.as_tensor(w["action"][:4]))
    loss.backward()
    assert torch.isfinite(loss) and x.grad is not None and float(x.grad.abs().sum()) > 0
    path = save_teacher(teacher, tmp_path / "t.safetensors", {"test": True})
    again = load_teacher(path)
    with torch.no_grad():
        assert torch.allclose(again(x.detach()), teacher(x.detach()), atol=1e-6)
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(other))
    with pytest.raises(ValueError, match=r"other\.safetensors: not an action teacher"):
        load_teacher(other)


def test_act_out_trains_against_the_teacher(store, tmp_path):
    from streamtmr.train.teacher import save_teacher

    teacher, _ = _teacher(store)
    path = save_teacher(teacher, tmp_path / "t.safetensors", {})
    with pytest.raises(ConfigError, match="action_teacher"):
        Trainer(_config(**{"train.stages[0].weights.act_out": "0.1"}), store, tmp_path / "r")
    sets = {"train.action_teacher": str(path), "train.stages[0].weights.act_out": "0.1"}
    trainer = Trainer(_config(**sets), store, tmp_path / "run")
    final = trainer.fit()
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["act_out"]) for r in recs if "split" not in r)
    assert not any("teacher" in k for k in load_file(str(final)))


def test_source_stage_feeds_the_model_what_the_frozen_stage_publishes(store, tmp_path):
    from streamtmr.models.checkpoint import save_checkpoint

    torch.manual_seed(3)
    cls = model_class("tmr-stream")
    first = build_model({"method": cls.method, **cls.presets["tiny"], "window": 32})
    path = tmp_path / "first.safetensors"
    save_checkpoint(path, first, {})
    sets = {"data.source_stage": str(path), "data.augment_posture": "0.1"}
    trainer = Trainer(_config(**sets), store, tmp_path / "run")
    cur = trainer.curriculum
    assert not any(p.requires_grad for p in cur.stage.parameters())
    before = {k: v.clone() for k, v in cur.stage.state_dict().items()}
    # validation and training both see the stage's output, never the raw source
    raw = trainer.data.val[trainer.cfg.data.source_array][:3]
    batch = cur.prepare(encode_labels({k: v[:3] for k, v in trainer.data.val.items()},
                                      trainer.data.info))
    with torch.no_grad():
        want = first.eval().retarget(torch.as_tensor(np.asarray(raw)), batch["target_lengths"])
    assert torch.allclose(batch["source"], want, atol=1e-5)
    assert not torch.allclose(batch["source"], torch.as_tensor(np.asarray(raw)), atol=1e-2)
    torch.manual_seed(0)
    step = cur.augment(batch)
    assert "raw_source" not in step
    # the jittered source and the fresh people's pair items went through the stage: every
    # bone has the dummy's length, which neither raw input has
    lengths = batch["target_lengths"][0]
    for key in ("source", "pair_a", "pair_b", "pair_a2"):
        got = skeleton.bone_lengths(step[key])[..., 1:]
        assert torch.allclose(got, lengths[1:].expand_as(got), atol=2e-3), key
    trainer.fit()
    for k, v in cur.stage.state_dict().items():  # the stage stays frozen through training
        assert torch.equal(v, before[k]), k


def test_source_stage_must_be_a_streaming_checkpoint(store, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.source_stage: cannot load .*missing"):
        Trainer(_config(**{"data.source_stage": str(tmp_path / "missing.safetensors")}), store,
                tmp_path / "run")
