"""Rotation solving of streamtmr.stream.vmc (scipy) against the hand-written quaternion code it
replaced: ``tests/data/vmc_reference.npz`` holds that code's outputs (positions, local and
global rotations, Unity Euler angles) for 16 random poses, 4 turned T-poses and 64 random
quaternions, recorded before the old code was removed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from streamtmr import skeleton
from streamtmr.dummy import default_dummy
from streamtmr.stream import vmc

REF = np.load(Path(__file__).parent / "data" / "vmc_reference.npz")
LENGTHS = default_dummy().lengths


def same_rotation(a: np.ndarray, b: np.ndarray, atol: float) -> bool:
    """Quaternions equal up to sign (q and -q are one rotation)."""
    d = np.minimum(np.abs(a - b).max(-1), np.abs(a + b).max(-1))
    return bool((d < atol).all())


def test_solve_matches_the_replaced_code():
    for k, joints in enumerate(REF["joints"]):
        pos, local, world = vmc.solve(joints)
        np.testing.assert_allclose(pos, REF["positions"][k], atol=1e-12)
        assert same_rotation(local, REF["local"][k], 1e-9), k
        assert same_rotation(world, REF["world"][k], 1e-9), k


def test_unity_euler_matches_the_replaced_code():
    got = vmc.unity_euler(REF["quats"])
    diff = (got - REF["quat_euler"] + 180.0) % 360.0 - 180.0  # 359.99… and 0 are one angle
    assert np.abs(diff).max() < 1e-7
    for k in range(len(REF["joints"])):
        _, _, world = vmc.solve(REF["joints"][k])
        diff = (vmc.unity_euler(world) - REF["euler"][k] + 180.0) % 360.0 - 180.0
        assert np.abs(diff).max() < 1e-6, k


def test_unity_euler_conventions():
    """Z first, then X, then Y; Quaternion.Euler is its inverse; 90° about Y is (0, 90, 0)."""
    q90y = Rotation.from_euler("y", 90, degrees=True).as_quat()
    np.testing.assert_allclose(vmc.unity_euler(q90y), [0, 90, 0], atol=1e-9)
    m = (Rotation.from_euler("y", 20, degrees=True) * Rotation.from_euler("x", 10, degrees=True)
         * Rotation.from_euler("z", 30, degrees=True))
    np.testing.assert_allclose(vmc.unity_euler(m.as_quat()), [10, 20, 30], atol=1e-9)
    q = Rotation.random(50, random_state=3).as_quat()
    back = vmc.euler_to_quat(vmc.unity_euler(q))
    assert same_rotation(back, q, 1e-9)


def test_swing_is_shortest_and_handles_opposite_and_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(100, 3))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = rng.normal(size=(100, 3))
    r = vmc.swing(a, b)
    np.testing.assert_allclose(r.apply(a), b / np.linalg.norm(b, axis=1, keepdims=True),
                               atol=1e-12)
    axis = r.as_rotvec()
    np.testing.assert_allclose(np.einsum("ij,ij->i", axis, a), 0, atol=1e-12)  # no twist
    np.testing.assert_allclose(vmc.swing(a, -a).apply(a), -a, atol=1e-12)
    np.testing.assert_allclose(vmc.swing(a[:3], np.zeros((3, 3))).as_quat(),
                               np.tile([0, 0, 0, 1.0], (3, 1)), atol=1e-12)


def test_plan_solves_whole_sequences_at_once():
    """Batched over frames: the same rotations as one frame at a time."""
    seq = REF["joints"][:6]
    local, world = vmc.solve_plan(vmc.to_unity(seq.astype(float)), vmc.VMC)
    for k in range(len(seq)):
        _, l1, w1 = vmc.solve(seq[k])
        assert same_rotation(local[k], l1, 1e-12) and same_rotation(world[k], w1, 1e-12)


def test_rest_offsets_are_the_dummy_bones():
    off = vmc.rest_offsets(LENGTHS)
    for i, (_, at, _child, parent) in enumerate(vmc.BONES):
        if parent is not None and vmc.BONES[vmc.BONE_NAMES.index(parent)][2] == at:
            np.testing.assert_allclose(np.linalg.norm(off[i]), LENGTHS[skeleton.JOINT[at]],
                                       rtol=1e-6)


def test_solve_many_equals_one_at_a_time_and_reuses_the_last_call():
    bodies = [REF["joints"][k].copy() for k in range(4)]
    many = vmc.solve_many(bodies)
    again = vmc.solve_many(bodies)
    assert all(a is b for a, b in zip(many, again))  # same arrays, same frame: reused
    bodies[1][3, 1] += 0.1  # changed in place: solved again
    changed = vmc.solve_many(bodies)
    assert changed[0] is many[0] and changed[1] is not many[1]
    for j, (pos, local, world) in zip(bodies, changed):
        vmc._cache.clear()
        p1, l1, w1 = vmc.solve(j)
        np.testing.assert_allclose(pos, p1, atol=1e-12)
        assert same_rotation(local, l1, 1e-12) and same_rotation(world, w1, 1e-12)
