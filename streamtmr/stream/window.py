"""Sliding windows of the newest T frames per tracked body, in one preallocated ring buffer.

Each body slot owns ``2T`` frames of one array ``[max_bodies, 2T, 25, 3]``. A frame is written
twice, at ``head`` and ``head + T``, so the newest T frames are always the contiguous view
``buf[slot, head : head + T]`` (oldest first) and reading a window never copies. A body's first
frame fills its whole slot, which pads the window by repetition until T real frames arrived.

A slot is reset when its body reappears after a time gap beyond ``gap_ms`` and released when
the body has been absent that long. Frames whose sequence number repeats or goes backwards are
dropped and counted; a large backwards jump, or any backwards jump after the stream was
silent for longer than ``gap_ms`` (a restarted sensor), resets every slot instead.
Nothing on the push/gather path allocates arrays.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from streamtmr.skeleton import NUM_JOINTS
from streamtmr.stream.frame import Frame


class WindowBuffer:
    """Per-body ring buffers. After each accepted :meth:`push`, :attr:`active` lists the slots
    updated by that frame, in the frame's body order."""

    def __init__(self, window: int, max_bodies: int = 6, gap_ms: float = 250.0,
                 restart_seq: int = 300, min_frames: int = 1):
        if window < 1 or max_bodies < 1:
            raise ValueError(f"window ({window}) and max_bodies ({max_bodies}) must be >= 1")
        if not 1 <= min_frames <= window:
            raise ValueError(f"min_frames must be in [1, {window}], got {min_frames}")
        self.window = int(window)
        self.max_bodies = int(max_bodies)
        self.gap_ns = int(gap_ms * 1e6)
        self.restart_seq = int(restart_seq)
        self.min_frames = int(min_frames)
        self.buf = np.zeros((max_bodies, 2 * window, NUM_JOINTS, 3), np.float32)
        self.head = [0] * max_bodies
        self.filled = [0] * max_bodies
        self.last_t = [0] * max_bodies
        #: Incremented whenever a slot restarts, so per-slot state downstream can reset too.
        self.generation = [0] * max_bodies
        self.ids: list[int | None] = [None] * max_bodies
        self.slot_of: dict[int, int] = {}
        self.active: list[int] = []
        self.src: str | None = None
        self.last_seq: int | None = None
        self.last_t_ns: int | None = None
        self._last_accept = 0
        self.dropped: Counter[str] = Counter()  # frames or bodies dropped, by reason
        self.resets: Counter[str] = Counter()   # slot resets/releases, by reason

    # -- slots ----------------------------------------------------------------------------

    def release(self, slot: int) -> None:
        bid = self.ids[slot]
        if bid is not None:
            del self.slot_of[bid]
            self.ids[slot] = None
            self.filled[slot] = 0

    def clear(self) -> None:
        """Forget every body (the next frame of each body starts a fresh window)."""
        for s in range(self.max_bodies):
            self.release(s)
        self.active = []

    def _allocate(self, bid: int, t_ns: int, present: set[int]) -> int | None:
        for s in range(self.max_bodies):
            if self.ids[s] is None:
                break
        else:  # evict the body absent from this frame for longest
            absent = [s for s in range(self.max_bodies) if self.ids[s] not in present]
            if not absent:
                return None
            s = min(absent, key=lambda k: self.last_t[k])
            self.release(s)
            self.resets["evicted"] += 1
        self.ids[s] = bid
        self.slot_of[bid] = s
        return s

    def _restart(self, slot: int, joints: np.ndarray) -> None:
        self.buf[slot] = joints
        self.head[slot] = 0
        self.filled[slot] = 1
        self.generation[slot] += 1

    # -- frames ---------------------------------------------------------------------------

    def _accept_sequence(self, frame: Frame, now_ns: int) -> bool:
        if self.src is not None and frame.src != self.src:
            if now_ns - self._last_accept < self.gap_ns:
                self.dropped["foreign_src"] += 1
                return False
            self.clear()
            self.resets["new_src"] += 1
            self.last_seq = self.last_t_ns = None
        elif self.last_seq is not None and frame.seq <= self.last_seq:
            if frame.seq == self.last_seq:
                self.dropped["duplicate"] += 1
                return False
            if (self.last_seq - frame.seq <= self.restart_seq
                    and now_ns - self._last_accept <= self.gap_ns):
                self.dropped["out_of_order"] += 1
                return False
            self.clear()
            self.resets["restart"] += 1
            self.last_t_ns = None
        if self.last_t_ns is not None and not 0 <= frame.t_ns - self.last_t_ns <= self.gap_ns:
            self.clear()
            self.resets["gap"] += 1
        return True

    def push(self, frame: Frame, now_ns: int | None = None) -> bool:
        """Add one frame. Returns False (and counts why) when the whole frame is dropped."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        if not self._accept_sequence(frame, now_ns):
            return False
        self.src, self.last_seq, self.last_t_ns = frame.src, frame.seq, frame.t_ns
        self._last_accept = now_ns
        t = frame.t_ns
        T = self.window
        active = []
        present = {b.id for b in frame.bodies}
        for body in frame.bodies:
            j = body.joints
            if getattr(j, "shape", None) != (NUM_JOINTS, 3) or not np.isfinite(j).all():
                self.dropped["bad_body"] += 1
                continue
            slot = self.slot_of.get(body.id)
            if slot is None:
                slot = self._allocate(body.id, t, present)
                if slot is None:
                    self.dropped["body_cap"] += 1
                    continue
                self._restart(slot, j)
            elif slot in active:
                self.dropped["duplicate_id"] += 1
                continue
            elif t - self.last_t[slot] > self.gap_ns:
                self.resets["body_gap"] += 1
                self._restart(slot, j)
            else:
                h = self.head[slot]
                self.buf[slot, h] = j
                self.buf[slot, h + T] = j
                self.head[slot] = (h + 1) % T
                if self.filled[slot] < T:
                    self.filled[slot] += 1
            self.last_t[slot] = t
            active.append(slot)
        for s in range(self.max_bodies):  # bodies absent for longer than the gap are lost
            if self.ids[s] is not None and s not in active and t - self.last_t[s] > self.gap_ns:
                self.release(s)
                self.resets["lost"] += 1
        self.active = active
        return True

    # -- reading --------------------------------------------------------------------------

    def ready(self) -> list[int]:
        """Active slots whose window holds at least ``min_frames`` real frames."""
        return [s for s in self.active if self.filled[s] >= self.min_frames]

    def view(self, slot: int) -> np.ndarray:
        """The window of ``slot``, oldest frame first: a view ``[T, 25, 3]`` (no copy)."""
        h = self.head[slot]
        return self.buf[slot, h:h + self.window]

    def newest(self, slot: int) -> np.ndarray:
        """The newest frame of ``slot`` (a view)."""
        return self.buf[slot, self.head[slot] + self.window - 1]

    def gather(self, slots: list[int], out: np.ndarray) -> np.ndarray:
        """Copy the windows of ``slots`` into ``out[:len(slots)]`` (preallocated
        ``[>=len(slots), T, 25, 3]``) and return that view."""
        for i, s in enumerate(slots):
            np.copyto(out[i], self.view(s))
        return out[:len(slots)]
