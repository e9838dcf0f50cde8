"""Cross-identity pairs from an unbounded SynthKinect population, rendered on the fly.

A training set of 40 fixed people lets an in-model adversary learn *those* people; the encoder
then learns to fool that classifier without dropping identity in general. Here every pair item
draws **fresh people** (person ids are positions in an endless stream: ``(seed, index)`` decides
who they are, nobody repeats within a run), and renders with :mod:`streamtmr.data.synth`:

* ``a``  — content ``c`` performed by person A;
* ``b``  — the *same* content ``c`` (action, keyframe seed, timing, camera/view) performed by
  person B, who gets A's tempo so that both renders are frame-aligned;
* ``a2`` — person A again in *another instance of the same action* (new keyframe seed, timing and
  camera): the verification positive. ``(a, a2)`` and ``(b, a2)`` differ only in who ``a``/``b``
  is, so a verifier cannot tell them apart by content;
* ``target`` — ``c`` performed by the dummy in the neutral style at A's (= B's) tempo, i.e. the
  ``target_sync`` of both ``a`` and ``b``: the same target for both renders.

All three sources carry sensor noise drawn independently, exactly as SynthKinect's ``joints``.
Each array is one ``window``-frame crop (the same frames for ``a``, ``b`` and ``target``) of a
2–5 s performance, padded by holding the last pose when shorter (as :mod:`streamtmr.data.windows`).
Rendering is cheap enough (milliseconds per performance) to run inside every training step.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import replace

import numpy as np

from streamtmr.data import synth
from streamtmr.data.windows import crop

#: Person ids of the pair stream start here, far from any SynthKinect store's subject ids.
PERSON_BASE = 1_000_000


def fresh_person(seed: int, index: int) -> synth.Identity:
    """Person ``index`` of the endless stream ``seed`` (deterministic, never a store subject)."""
    rng = np.random.default_rng([seed, index, 0xFA1E])
    return synth.sample_identity(PERSON_BASE + index, rng)


def render_pair(seed: int, index: int, dummy_lengths: np.ndarray, window: int = 64,
                n_actions: int | None = None) -> dict[str, np.ndarray | int]:
    """Pair item ``index`` of stream ``seed`` (see the module docstring).

    Returns float32 ``a``, ``b``, ``a2``, ``target`` ``[window, 25, 3]`` (camera space, m),
    the action index ``action`` (of all four) and the person ids ``person_a`` /
    ``person_b``.
    """
    n_actions = len(synth.ACTIONS) if n_actions is None else int(n_actions)
    if not 1 <= n_actions <= len(synth.ACTIONS):
        raise ValueError(f"pairs: n_actions must be in 1..{len(synth.ACTIONS)}, got {n_actions}")
    rng = np.random.default_rng([seed, index, 0x9A12])
    person_a = fresh_person(seed, 2 * index)
    person_b = replace(fresh_person(seed, 2 * index + 1), tempo=person_a.tempo)
    action = int(rng.integers(n_actions))
    side = "left" if person_a.left_handed == (rng.random() < 0.9) else "right"
    content = synth.sample_content(synth.ACTIONS[action], rng, side=side)
    content2 = synth.sample_content(synth.ACTIONS[action], rng, side=side)
    view, view2 = (float(v) for v in rng.choice([-45.0, 0.0, 45.0], 2))
    (camera,) = synth.sample_cameras([view], rng, content.action)
    (camera2,) = synth.sample_cameras([view2], rng, content2.action)
    body = synth.neutral_identity(dummy_lengths)
    target = camera.project(synth.world_motion(content, replace(body, tempo=person_a.tempo)))
    target = target.astype(np.float32)
    a = _observe(camera, synth.world_motion(content, person_a), rng)
    b = _observe(camera, synth.world_motion(content, person_b), rng)
    a2 = _observe(camera2, synth.world_motion(content2, person_a), rng)
    start = int(rng.integers(0, max(len(target) - window, 0) + 1))
    first = {k: crop(v[start:], window, "start") for k, v in
             (("a", a), ("b", b), ("target", target))}
    return {**first, "a2": crop(a2, window, "random", rng), "action": action,
            "person_a": person_a.subject, "person_b": person_b.subject}


def _observe(camera: synth.Camera, world: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    joints, _ = synth.sensor_model(camera.project(world), rng, camera.view_deg)
    return joints.astype(np.float32)


def pair_batch(seed: int, indices: np.ndarray, dummy_lengths: np.ndarray, window: int = 64,
               n_actions: int | None = None, pool: Executor | None = None,
               ) -> dict[str, np.ndarray]:
    """:func:`render_pair` of every index, stacked: arrays ``[B, window, 25, 3]``, ids ``[B]``.

    ``pool`` (a process pool) renders the items side by side: the same arrays, since every
    item depends only on ``(seed, index)``."""
    args = [(seed, int(i), dummy_lengths, window, n_actions) for i in indices]
    items = list(pool.map(render_pair, *zip(*args, strict=True)) if pool is not None
                 else (render_pair(*a) for a in args))
    return {k: np.stack([np.asarray(it[k]) for it in items]) for k in items[0]}
