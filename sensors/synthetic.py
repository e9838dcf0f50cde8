"""A live SynthKinect scene: people walk in, perform a few actions, and leave.

Each visitor is a SynthKinect identity (its own body and motion style) performing a random
sequence of :data:`streamtmr.data.synth.ACTIONS`, rendered by a Kinect-like sensor model. The
clips of a visit are chained (each starts where the previous one ended) and placed in a free
lane of the room, so several people can be in view at once; each keeps one random 64-bit body
id for its whole visit, as a Kinect does. Frames come at 30 Hz (paced in real time or as fast
as possible). Deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from sensors.base import Pacer, Source, SourceError
from streamtmr.stream.frame import Body, Frame

FPS = 30
#: Lateral positions (m, camera X) people occupy.
LANES = (0.0, -0.9, 0.9, -1.8, 1.8, 2.7)


@dataclass
class _Visit:
    id: int
    lane: int
    joints: np.ndarray  # [T, 25, 3]
    state: np.ndarray   # [T, 25]
    k: int = 0


class SyntheticSource(Source):
    """SynthKinect people entering, acting and leaving; up to ``max_people`` at once."""

    name = "synthetic"

    def __init__(self, realtime: bool = True, speed: float = 1.0, max_bodies: int = 6,
                 max_people: int = 2, seed: int = 0, n_subjects: int = 20,
                 actions_per_visit: tuple[int, int] = (2, 4),
                 pause_s: tuple[float, float] = (0.5, 3.0), max_frames: int | None = None):
        super().__init__()
        if not 1 <= max_people <= min(max_bodies, len(LANES)):
            raise SourceError(f"synthetic: max_people must be in [1, "
                              f"{min(max_bodies, len(LANES))}], got {max_people}")
        lo, hi = actions_per_visit
        if not 1 <= lo <= hi:
            raise SourceError(f"synthetic: bad actions_per_visit {actions_per_visit}")
        from streamtmr.data import synth  # the generator; imported only when used
        self._synth = synth
        self.population = synth.sample_population(n_subjects, seed)
        self.max_people = max_people
        self.actions_per_visit = (lo, hi)
        self.pause = pause_s
        self.seed = seed
        self.max_frames = max_frames
        self.pacer = Pacer(FPS, speed, realtime)

    def _visit(self, rng: np.random.Generator, lane: int) -> _Visit:
        synth = self._synth
        identity = self.population[int(rng.integers(len(self.population)))]
        n = int(rng.integers(self.actions_per_visit[0], self.actions_per_visit[1] + 1))
        distance = float(rng.uniform(2.5, 3.5))
        clips, states = [], []
        for action in rng.choice(synth.ACTIONS, size=n):
            content = synth.sample_content(str(action), rng)
            j, s = synth.render(content, identity, view_deg=float(rng.uniform(-30, 30)),
                                distance=distance, rng=rng)
            if clips:  # continue from where the previous clip ended (floor plane only)
                shift = clips[-1][-1, 0] - j[0, 0]
                shift[1] = 0.0
                j = j + shift
            clips.append(j)
            states.append(s)
        joints = np.concatenate(clips)
        joints[..., 0] += LANES[lane] - joints[0, 0, 0]
        return _Visit(int(rng.integers(1 << 56, 1 << 60)), lane,
                      joints.astype(np.float32), np.concatenate(states))

    def frames(self) -> Iterator[Frame]:
        rng = np.random.default_rng(self.seed)
        people: list[_Visit] = []
        next_spawn, f = 0, 0
        while not self.closed and (self.max_frames is None or f < self.max_frames):
            if f >= next_spawn and len(people) < self.max_people:
                free = [i for i in range(self.max_people) if i not in {p.lane for p in people}]
                people.append(self._visit(rng, free[0]))
                next_spawn = f + int(FPS * rng.uniform(*self.pause))
            bodies = [Body(p.id, p.joints[p.k], p.state[p.k]) for p in people]
            self.pacer.wait()
            yield Frame(f, int(f * 1e9 / FPS), bodies, self.name)
            for p in people:
                p.k += 1
            people = [p for p in people if p.k < len(p.joints)]
            f += 1
