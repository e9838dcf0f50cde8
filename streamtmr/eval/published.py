"""The recordings the evaluation attacks, produced by the node's own path.

Every anonymized recording goes through :class:`streamtmr.stream.node.Node` frame by frame:
state slots (streaming models) or per-body windows (windowed models), one batched engine call
per frame, the per-body checks on what the engine returned (finite, in range, the dummy's bone
lengths, the leak guard), smoothing — with no deadline (a budget no call reaches, so no frame
is an overrun) and the published frames collected in memory. What is attacked is what a VR
client would have received.

Many recordings share one node, as a room full of people shares a sensor: they play side by
side as bodies of the same frames (up to :data:`LANES`, the node's cap), each recording a new
body id that starts a fresh track (new state or window) where the previous recording of its
lane ended. The node's batch of bodies changes nothing per body (each body's output depends on
its own track only), so this is the path of one recording at a time, faster.

A body-frame the node withholds (the leak guard or a check refused the output and no held frame
was left) is what a client never received; the evaluation fills it with the last frame the
client did receive for that recording (or, before the first, the first one), and counts it in
:attr:`Published.withheld`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Recordings played side by side through one node (its body cap).
LANES = 64
#: The node's budget when there is no deadline: an hour per frame, never reached.
NO_DEADLINE_MS = 3_600_000.0
#: Frame rate of the played recordings (their timestamps; smoothing reads them).
FPS = 30.0


@dataclass
class Published:
    """What the node published for each recording, ``[L_i, 25, 3]`` each, and its ledger."""

    outputs: list[np.ndarray]
    frames: int                       # body-frames played
    withheld: int                     # body-frames the node published nothing for (filled)
    held: int                         # body-frames published as a held (earlier) frame
    node: dict[str, Any] = field(default_factory=dict)  # the node's final counters and drops

    @property
    def withheld_fraction(self) -> float:
        return self.withheld / self.frames if self.frames else 0.0


def plan_lanes(lengths: list[int], lanes: int) -> list[list[int]]:
    """Recordings (indices) per lane, longest first onto the least loaded lane, so that all
    lanes end at about the same frame."""
    plan: list[list[int]] = [[] for _ in range(max(1, min(lanes, len(lengths))))]
    load = [0] * len(plan)
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        lane = int(np.argmin(load))
        plan[lane].append(i)
        load[lane] += lengths[i]
    return plan


def _timeline(plan: list[list[int]], lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per lane and frame: which recording plays (``-1``: none) and its frame index."""
    total = max(sum(lengths[i] for i in lane) for lane in plan)
    owner = np.full((len(plan), total), -1, np.int64)
    pos = np.zeros((len(plan), total), np.int64)
    for lane, items in enumerate(plan):
        t = 0
        for i in items:
            owner[lane, t:t + lengths[i]] = i
            pos[lane, t:t + lengths[i]] = np.arange(lengths[i])
            t += lengths[i]
    return owner, pos


def node_config(lanes: int, leak_guard: bool, smoothing: str | None = None):
    """The node's settings for the evaluation: its defaults, no deadline, ``lanes`` bodies."""
    from streamtmr.stream.node import NodeConfig

    extra = {} if smoothing is None else {"smoothing": smoothing}
    return NodeConfig(budget_ms=NO_DEADLINE_MS, hang_ms=NO_DEADLINE_MS, hold_ms=NO_DEADLINE_MS,
                      max_bodies=lanes, leak_guard=leak_guard, stats_interval_s=1e9,
                      **extra).validate()


def publish_sequences(engine, sequences: list[np.ndarray], *, leak_guard: bool = True,
                      smoothing: str | None = None, lanes: int = LANES, fps: float = FPS,
                      ) -> Published:
    """Play ``sequences`` (``[L_i, 25, 3]`` each) through a Node on ``engine`` and return what
    it published for each (see the module docstring). ``leak_guard=False`` only for baselines
    that are measured as such (naive retarget, noise)."""
    from streamtmr.stream.frame import Body, Frame
    from streamtmr.stream.node import Node

    seqs = [np.ascontiguousarray(s, dtype=np.float32) for s in sequences]
    if not seqs or min(len(s) for s in seqs) < 1:
        raise ValueError("publish_sequences: need at least one non-empty sequence")
    lengths = [len(s) for s in seqs]
    plan = plan_lanes(lengths, lanes)
    owner, pos = _timeline(plan, lengths)
    out = [np.zeros_like(s) for s in seqs]
    got = [np.zeros(len(s), bool) for s in seqs]
    node = Node(engine, [], node_config(len(plan), leak_guard, smoothing),
                model_name="evaluation")
    node_log = logging.getLogger("streamtmr.stream.node")
    level = node_log.level
    node_log.setLevel(logging.ERROR)  # refusals are counted below, not logged per frame
    try:
        for t in range(owner.shape[1]):
            where = {int(owner[lane, t]): int(pos[lane, t])
                     for lane in np.flatnonzero(owner[:, t] >= 0)}
            bodies = [Body(i + 1, seqs[i][k]) for i, k in where.items()]
            for frame in node.step(Frame(t, int(t * 1e9 / fps), bodies, "evaluation")):
                for b in frame.bodies:
                    out[b.id - 1][where[b.id - 1]] = b.joints
                    got[b.id - 1][where[b.id - 1]] = True
    finally:
        stats = node.close()
        node_log.setLevel(level)
    withheld = sum(int((~g).sum()) for g in got)
    for i, g in enumerate(got):
        _fill_withheld(out[i], g, i)
    counters = stats.get("counters", {})
    return Published(out, int(sum(lengths)), withheld, int(counters.get("bodies_held", 0)),
                     {"counters": counters, "dropped": stats.get("dropped", {})})


def _fill_withheld(y: np.ndarray, got: np.ndarray, index: int) -> None:
    """In place: each withheld frame becomes the last received one (before the first: the
    first received one). A recording of which nothing was received is an error."""
    if got.all():
        return
    if not got.any():
        raise ValueError(f"the node published nothing for recording {index} ({len(y)} frames):"
                         " every output was refused (a leak-guard trip? see the node's drops)")
    idx = np.where(got, np.arange(len(y)), -1)
    idx = np.maximum.accumulate(idx)
    idx[idx < 0] = int(np.flatnonzero(got)[0])
    y[:] = y[idx]


def windows_of(outputs: list[np.ndarray], sequence: np.ndarray, start: np.ndarray,
               window: int, rows: dict[int, int]) -> np.ndarray:
    """The windows ``[N, window, 25, 3]`` of published recordings at the places the source
    windows were cut (``sequence``: store row, ``start``: first frame; ``rows``: store row →
    index into ``outputs``), padded by holding the last frame as the source windows were."""
    out = np.empty((len(start), window, *outputs[0].shape[1:]), np.float32)
    for n, (row, s) in enumerate(zip(sequence.tolist(), start.tolist(), strict=True)):
        y = outputs[rows[row]][s:s + window]
        out[n, :len(y)] = y
        out[n, len(y):] = y[-1]
    return out
