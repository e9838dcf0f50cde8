"""Which body a one-person output drives: VMC and VRChat avatars, LSL outlets.

Such an output carries one body. :class:`Follow` chooses it for one output (``outputs=1``) or
hands bodies to several outputs (``outputs=N``, one avatar per port):

* ``first`` (default): the body followed so far while it stays in the stream, else the first
  body of the frame;
* ``nearest``: the body nearest the sensor (horizontal distance of its SpineBase from the
  camera origin), kept until it leaves or another one is nearer by more than
  :data:`HYSTERESIS_M` (no flicker between two people at similar distances);
* an integer body id: that body only; the output is idle while it is absent.

With several outputs each body keeps the output it got on first sight until it leaves; new
bodies take the free outputs in order of appearance (``first``) or of distance (``nearest``).
Sink specifications spell this ``?body=first|nearest|ID`` and ``?fanout=N``
(:func:`from_query`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from streamtmr.skeleton import ROOT
from streamtmr.stream.frame import Body, Frame

MODES = ("first", "nearest")
#: How much nearer (metres) another body must be before ``nearest`` switches to it.
HYSTERESIS_M = 0.2
#: Most outputs one sink may fan out to.
MAX_OUTPUTS = 16


def _distance(body: Body) -> float:
    x, _, z = body.joints[ROOT]
    return float(np.hypot(x, z))


class Follow:
    """Assigns the bodies of each frame to ``outputs`` one-body outputs (see the module)."""

    def __init__(self, mode: str | int = "first", outputs: int = 1):
        if not (isinstance(mode, int) or mode in MODES):
            raise ValueError(f"body={mode!r}: expected first, nearest or a body id")
        if not 1 <= outputs <= MAX_OUTPUTS:
            raise ValueError(f"fanout={outputs}: expected 1..{MAX_OUTPUTS}")
        if isinstance(mode, int) and outputs > 1:
            raise ValueError("body=ID follows one body: it cannot fan out")
        self.mode, self.outputs = mode, outputs
        self._held: list[int | None] = [None] * outputs

    def assign(self, frame: Frame) -> list[Body | None]:
        """One entry per output: the body it drives in this frame, or None."""
        by_id = {b.id: b for b in frame.bodies}
        if isinstance(self.mode, int):
            return [by_id.get(self.mode)]
        held = [h if h in by_id else None for h in self._held]
        if self.mode == "nearest" and self.outputs == 1 and held[0] is not None:
            best = min(frame.bodies, key=_distance)
            if _distance(best) < _distance(by_id[held[0]]) - HYSTERESIS_M:
                held[0] = best.id
        waiting = [b for b in frame.bodies if b.id not in held]
        if self.mode == "nearest":
            waiting.sort(key=_distance)
        for slot in range(self.outputs):
            if held[slot] is None and waiting:
                held[slot] = waiting.pop(0).id
        self._held = held
        return [None if h is None else by_id[h] for h in held]


def from_query(query: Mapping[str, list[str]]) -> Follow:
    """``body`` and ``fanout`` of a parsed sink query (``urllib.parse.parse_qs``)."""
    mode: str | int = query.get("body", ["first"])[-1]
    if mode not in MODES:
        try:
            mode = int(mode)
        except ValueError:
            raise ValueError(f"body={mode!r}: expected first, nearest or a body id") from None
    raw = query.get("fanout", ["1"])[-1]
    try:
        outputs = int(raw)
    except ValueError:
        raise ValueError(f"fanout={raw!r}: expected a number of outputs") from None
    return Follow(mode, outputs)
