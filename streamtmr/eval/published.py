"""The recordings the evaluation attacks, produced by the node's own path.

Every anonymized recording goes through :func:`streamtmr.offline.publish_sequences` — exactly
the code of :class:`streamtmr.stream.node.Node`, frame by frame: state slots (streaming models)
or per-body windows (windowed models), one batched engine call per frame, the per-body checks on
what the engine returned (finite, in range, the dummy's bone lengths, the leak guard),
smoothing — with no deadline, so no frame is an overrun. What is attacked is what a VR client
would have received, and what ``streamtmr anonymize --streamed`` writes.

A body-frame the node withholds (the leak guard or a check refused the output and no held frame
was left) is what a client never received; the node's path fills it with the nearest published
frame of that recording, and the evaluation counts it (:attr:`Published.withheld`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

#: Frame rate of the played recordings (their timestamps; smoothing reads them).
FPS = 30.0


@dataclass
class Published:
    """What the node published for each recording, ``[L_i, 25, 3]`` each, and its ledger."""

    outputs: list[np.ndarray]
    frames: int                       # body-frames played
    withheld: int                     # body-frames the node published nothing for (filled)

    @property
    def withheld_fraction(self) -> float:
        return self.withheld / self.frames if self.frames else 0.0


def publish_sequences(engine, sequences: list[np.ndarray], *, leak_guard: bool = True,
                      smoothing: str | None = None, fps: float = FPS) -> Published:
    """Play ``sequences`` (``[L_i, 25, 3]`` each) through the node's path on ``engine`` with
    the node's default settings (``smoothing`` overrides its smoother) and return what it
    published. ``leak_guard=False`` only for baselines that are measured as such (naive
    retarget, noise): the node would refuse their output."""
    from streamtmr.offline import publish_sequences as node_path
    from streamtmr.stream.node import NodeConfig

    config = NodeConfig(leak_guard=leak_guard,
                        **({} if smoothing is None else {"smoothing": smoothing}))
    substituted: list[str] = []
    outputs = node_path(engine, sequences, config, fps=fps, substituted=substituted)
    withheld = sum(int(m.group(1)) for m in
                   (re.search(r": (\d+) frame\(s\) without", s) for s in substituted) if m)
    return Published(outputs, int(sum(len(s) for s in sequences)), withheld)


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
