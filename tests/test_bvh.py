"""BVH export: files parsed back by a small reader written here (independent of the writer),
forward kinematics from its HIERARCHY and MOTION reproduce the anonymized positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamtmr import bvh, skeleton
from streamtmr.cli import main
from streamtmr.dummy import default_dummy

LENGTHS = default_dummy().lengths
NTU = Path(__file__).resolve().parents[2] / "shared/data/real/ntu_samples"


# ------------------------------------------------------------------------------------------
# An independent reader: tokens → joints (offset, channels, parent) → FK per frame
# ------------------------------------------------------------------------------------------

def _axis(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = {"X": (1, 2), "Y": (2, 0), "Z": (0, 1)}[axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def read_bvh(path: Path):
    """(joints: list of (name, parent index, offset, channels)), frame time, motion [T, C])."""
    tokens = path.read_text().split()
    joints, stack, k = [], [], 0
    while tokens[k] != "MOTION":
        t = tokens[k]
        if t in ("ROOT", "JOINT"):
            joints.append([tokens[k + 1], stack[-1] if stack else -1, None, []])
            k += 2
        elif t == "End":  # End Site: a pseudo-joint without channels
            joints.append([None, stack[-1], None, []])
            k += 2
        elif t == "{":
            stack.append(len(joints) - 1)
            k += 1
        elif t == "}":
            stack.pop()
            k += 1
        elif t == "OFFSET":
            joints[stack[-1]][2] = np.array([float(v) for v in tokens[k + 1:k + 4]])
            k += 4
        elif t == "CHANNELS":
            n = int(tokens[k + 1])
            joints[stack[-1]][3] = tokens[k + 2:k + 2 + n]
            k += 2 + n
        else:
            k += 1  # HIERARCHY
    assert tokens[k + 1] == "Frames:" and tokens[k + 3:k + 5] == ["Frame", "Time:"]
    frames, frame_time = int(tokens[k + 2]), float(tokens[k + 5])
    values = np.array([float(v) for v in tokens[k + 6:]])
    return joints, frame_time, values.reshape(frames, -1)


def forward_kinematics(joints, motion: np.ndarray) -> dict[str, np.ndarray]:
    """Global position of every named joint per frame ``{name: [T, 3]}``."""
    out: dict[str, np.ndarray] = {}
    for row in motion:
        pos, rot, c = {}, {}, 0
        for i, (name, parent, offset, channels) in enumerate(joints):
            p = np.zeros(3) if parent < 0 else pos[parent] + rot[parent] @ offset
            r = np.eye(3) if parent < 0 else rot[parent].copy()
            if parent < 0:
                p = p + offset
            for ch in channels:
                if ch.endswith("position"):
                    p = p + np.eye(3)["XYZ".index(ch[0])] * row[c]
                else:
                    r = r @ _axis(ch[0], row[c])
                c += 1
            pos[i], rot[i] = p, r
            if name is not None:
                out.setdefault(name, []).append(p)
    return {k: np.array(v) for k, v in out.items()}


def positions(path: Path) -> tuple[np.ndarray, float]:
    """The 25 Kinect joints per frame ``[T, 25, 3]`` in metres, and the frame time."""
    joints, frame_time, motion = read_bvh(path)
    fk = forward_kinematics(joints, motion)
    return np.stack([fk[n] for n in skeleton.JOINT_NAMES], axis=1) / 100.0, frame_time


# ------------------------------------------------------------------------------------------

def _random_sequence(seed: int, frames: int = 12) -> np.ndarray:
    """Random poses with the dummy's bone lengths, turned every which way."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(frames, 25, 3))
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    root = rng.normal(0, 1, (frames, 3)) + [0, 0, 3]
    return skeleton.forward_kinematics(root, d, LENGTHS.astype(float)).astype(np.float32)


def test_forward_kinematics_reproduces_random_poses(tmp_path):
    seq = _random_sequence(0)
    path = bvh.write(tmp_path / "r.bvh", seq, LENGTHS)
    got, frame_time = positions(path)
    assert abs(frame_time - 1 / 30) < 1e-6
    assert np.abs(got - seq).max() < 1e-5  # metres: 0.01 mm


def test_hierarchy_is_the_dummy_in_rest_pose(tmp_path):
    """All-zero rotations give the dummy's T-pose with its bone lengths."""
    path = bvh.write(tmp_path / "r.bvh", _random_sequence(1, 1), LENGTHS)
    joints, _, motion = read_bvh(path)
    rest, _ = positions(path)
    motion[:] = 0
    fk = forward_kinematics(joints, motion)
    tpose = np.stack([fk[n][0] for n in skeleton.JOINT_NAMES]) / 100.0
    np.testing.assert_allclose(skeleton.bone_lengths(tpose)[1:], LENGTHS[1:], atol=1e-6)
    assert tpose[skeleton.JOINT["HandLeft"], 0] > 0.5 > -0.5 > tpose[skeleton.JOINT["HandRight"], 0]
    assert tpose[skeleton.JOINT["Head"], 1] > 0.5 and tpose[skeleton.JOINT["FootLeft"], 2] > 0
    names = [j[0] for j in joints if j[0]]
    assert names[0] == "SpineBase" and set(skeleton.JOINT_NAMES) <= set(names)
    assert path.read_text().startswith("HIERARCHY\nROOT SpineBase")


def test_bad_sequence_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"expected a sequence \[T, 25, 3\]"):
        bvh.write(tmp_path / "x.bvh", np.zeros((4, 20, 3)), LENGTHS)


@pytest.mark.parametrize("mode", [[], ["--streamed"]])
def test_anonymize_writes_one_file_per_body(tmp_path, capsys, mode):
    """An .npz of two sequences: x_body0.bvh and x_body1.bvh, each the anonymized body, as the
    .npz output of the same command (stitched windows, or the node's path with --streamed)."""
    src = tmp_path / "in.npz"
    np.savez(src, a=_random_sequence(2, 70), b=_random_sequence(3, 40))
    assert main(["anonymize", "--input", str(src), "--output", str(tmp_path / "x.npz"),
                 "--engine", "onnxruntime", "--no-progress", *mode]) == 0
    assert main(["anonymize", "--input", str(src), "--output", str(tmp_path / "x.bvh"),
                 "--engine", "onnxruntime", "--no-progress", *mode]) == 0
    out = capsys.readouterr().out
    assert "x_body0.bvh: a" in out and "x_body1.bvh: b" in out
    assert not (tmp_path / "x.bvh").exists()
    with np.load(tmp_path / "x.npz") as ref:
        for k, key in enumerate(("a", "b")):
            got, _ = positions(tmp_path / f"x_body{k}.bvh")
            assert got.shape == ref[key].shape
            assert np.abs(got - ref[key]).max() < 1e-3  # within 1 mm


@pytest.mark.skipif(not NTU.is_dir(), reason="real NTU samples not found")
def test_anonymize_real_ntu_to_bvh_within_a_millimetre(tmp_path):
    sample = sorted(NTU.glob("*A011*.skeleton"))[0]
    assert main(["anonymize", "--input", str(sample), "--output", str(tmp_path / "a.npy"),
                 "--engine", "onnxruntime", "--no-progress"]) == 0
    assert main(["anonymize", "--input", str(sample), "--output", str(tmp_path / "a.bvh"),
                 "--engine", "onnxruntime", "--no-progress"]) == 0
    (ref,) = np.load(tmp_path / "a.npy")  # [N = 1, T, 25, 3]
    got, frame_time = positions(tmp_path / "a.bvh")
    assert abs(frame_time - 1 / 30) < 1e-6 and got.shape == ref.shape and len(got) >= 60
    assert np.abs(got - ref).max() < 1e-3
