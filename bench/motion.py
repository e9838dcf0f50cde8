"""Benchmark input: SynthKinect motion, so engines see realistic windows (not a rest pose).

Generated once per run from a fixed seed: each body is a different SynthKinect person
performing a different action, seen by a Kinect-like sensor.
"""

from __future__ import annotations

import numpy as np

from streamtmr import skeleton

#: Lateral offsets (m) of the benchmark's bodies, so that several people share the view.
LANES = (0.0, -0.9, 0.9, -1.8, 1.8, 2.7, -2.7, 3.6)


def motion_clips(n: int, seed: int = 0, min_frames: int = 120) -> list[np.ndarray]:
    """``n`` clips ``float32 [L_i, 25, 3]`` (``L_i >= min_frames``), one person and lane each.

    Each clip chains actions of its person until it is long enough, so a looped clip stays
    plausible motion.
    """
    from streamtmr.data import synth
    if n < 1:
        raise ValueError(f"need at least one clip, got n={n}")
    rng = np.random.default_rng(seed)
    people = synth.sample_population(n, seed)
    clips = []
    for i in range(n):
        parts: list[np.ndarray] = []
        while sum(len(p) for p in parts) < min_frames:
            action = synth.ACTIONS[int(rng.integers(len(synth.ACTIONS)))]
            j, _ = synth.render(synth.sample_content(action, rng), people[i],
                                view_deg=float(rng.uniform(-20, 20)), distance=3.0, rng=rng)
            if parts:  # continue where the previous action ended (floor plane only)
                shift = parts[-1][-1, skeleton.ROOT] - j[0, skeleton.ROOT]
                shift[1] = 0.0
                j = j + shift
            parts.append(j)
        clip = np.concatenate(parts).astype(np.float32)
        clip[..., 0] += LANES[i % len(LANES)] - clip[0, skeleton.ROOT, 0]
        clips.append(np.ascontiguousarray(clip))
    return clips


def pingpong(clip: np.ndarray) -> np.ndarray:
    """The clip played forward then backward: loops without a jump."""
    return np.ascontiguousarray(np.concatenate([clip, clip[-2:0:-1]]))


def sample_windows(clips: list[np.ndarray], count: int, window: int,
                   seed: int = 0) -> np.ndarray:
    """``count`` windows ``float32 [count, window, 25, 3]`` cut at random from the clips
    (looped ping-pong where a clip is shorter than the window)."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, window, skeleton.NUM_JOINTS, 3), np.float32)
    for i in range(count):
        c = pingpong(clips[i % len(clips)])
        start = int(rng.integers(len(c)))
        idx = (start + np.arange(window)) % len(c)
        out[i] = c[idx]
    return out
