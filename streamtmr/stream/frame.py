"""In-memory frames: what sources yield and what the Node consumes and publishes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamtmr.skeleton import NUM_JOINTS

#: Kinect v2 TrackingState values.
NOT_TRACKED, INFERRED, TRACKED = 0, 1, 2


@dataclass
class Body:
    """One tracked body: ``joints`` float32 ``[25, 3]`` metres, ``state`` uint8 ``[25]``."""

    id: int
    joints: np.ndarray
    state: np.ndarray = field(default_factory=lambda: np.full(NUM_JOINTS, TRACKED, np.uint8))


@dataclass
class Frame:
    """One sensor frame with every tracked body."""

    seq: int
    t_ns: int
    bodies: list[Body]
    src: str = ""
