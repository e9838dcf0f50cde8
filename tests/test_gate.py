"""The output gate: the node's per-frame checks and their whole-track form agree exactly."""

from __future__ import annotations

import numpy as np

from streamtmr import skeleton
from streamtmr.dummy import default_dummy
from streamtmr.leak_guard import HISTORY, LeakGuard, pooled_scores
from streamtmr.stream.gate import REASONS, OutputGate, check_tracks

DUMMY = default_dummy()


def dummy_motion(frames: int, seed: int) -> np.ndarray:
    """The dummy's rest pose swaying: exact dummy bones, bone directions far from a source's."""
    rng = np.random.default_rng(seed)
    dirs = skeleton.bone_directions(DUMMY.rest_pose())
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    wobble = 0.3 * np.sin(0.2 * t + rng.uniform(0, 6, (1, 25, 1)))
    d = dirs[None] + wobble * rng.normal(size=(1, 25, 3))
    d /= np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-9)
    root = np.zeros((frames, 3), np.float32) + [0.0, 0.9, 3.0]
    return skeleton.forward_kinematics(root, d, DUMMY.lengths).astype(np.float32)


def tracks_with_failures():
    """Three tracks of different lengths whose output fails each check somewhere, and whose
    third track passes the source through (the leak guard must catch it) for a stretch."""
    lengths = np.array([70, 45, 60])
    src = np.stack([dummy_motion(70, s) * 1.1 for s in range(3)]).astype(np.float32)
    y = np.stack([dummy_motion(70, 10 + s) for s in range(3)])
    y[0, 12] = np.nan                      # bad_output
    y[0, 30, 7] += 0.2                     # bone_check
    y[1, 5:9, 3] += 0.05                   # bone_check, four frames
    y[2, 20:50] = skeleton.set_bone_lengths(src[2, 20:50], DUMMY.lengths)  # its directions
    y[1, 45:] = np.nan                     # past the end of track 1 (padding)
    return y, src, lengths


def test_pooled_scores_equal_the_guards_ring():
    rng = np.random.default_rng(0)
    angles = rng.uniform(0, 8, 50).astype(np.float32)
    guard = LeakGuard(1)
    ring = []
    for i in range(len(angles)):
        guard.update([0], [1], angles[i:i + 1, None])
        ring.append(float(guard.score([0])[0]))
    np.testing.assert_allclose(pooled_scores(angles), ring, rtol=0, atol=1e-6)
    assert pooled_scores(angles[:1])[0] == angles[0]
    assert np.isclose(pooled_scores(angles)[HISTORY + 3], np.median(angles[4:HISTORY + 4]))


def test_whole_track_checks_equal_the_nodes_frame_by_frame_gate():
    y, src, lengths = tracks_with_failures()
    for leak_guard in (True, False):
        gate = OutputGate(DUMMY.lengths, 3, 1e-3, leak_guard)
        stepped = np.zeros((3, y.shape[1]), bool)
        reasons = dict.fromkeys(REASONS, 0)
        for t in range(y.shape[1]):
            live = np.flatnonzero(lengths > t)
            ok, refused = gate.check(y[live, t:t + 1], src[live, t:t + 1], list(live),
                                     [1] * len(live))
            stepped[live, t] = ok
            for k, bad in refused.items():
                reasons[k] += int(bad.sum())
        whole = check_tracks(y, src, lengths, DUMMY.lengths, 1e-3, leak_guard)
        np.testing.assert_array_equal(whole, stepped)
        assert reasons["bad_output"] == 1 and reasons["bone_check"] == 5
        assert (reasons["leak_guard"] > 20) == leak_guard
        assert not whole[1, 45:].any()  # past the end
        assert whole[0, :12].all() and not whole[0, 12] and not whole[0, 30]
