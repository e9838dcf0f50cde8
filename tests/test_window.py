"""Window buffer: ring contents, warm-up padding, resets, drops, slots, no hot-path copies."""

from __future__ import annotations

import numpy as np
import pytest

from streamtmr.stream.frame import Body, Frame
from streamtmr.stream.window import WindowBuffer

MS = 1_000_000


def _j(v: float) -> np.ndarray:
    return np.full((25, 3), v, np.float32)


def _f(seq: int, bodies: dict[int, float], t_ms: float | None = None, src: str = "s") -> Frame:
    t = int((seq * 33 if t_ms is None else t_ms) * MS)
    return Frame(seq, t, [Body(i, _j(v)) for i, v in bodies.items()], src)


def _values(w: WindowBuffer, slot: int) -> list[float]:
    return [float(x) for x in w.view(slot)[:, 0, 0]]


def test_warmup_repeats_first_frame_then_slides():
    w = WindowBuffer(4)
    assert w.push(_f(0, {1: 10.0}))
    s = w.slot_of[1]
    assert w.ready() == [s] and _values(w, s) == [10, 10, 10, 10]
    for k in range(1, 7):
        w.push(_f(k, {1: 10.0 + k}))
    assert _values(w, s) == [13, 14, 15, 16]
    assert float(w.newest(s)[0, 0]) == 16
    assert w.filled[s] == 4


def test_view_is_contiguous_no_copy():
    w = WindowBuffer(8)
    for k in range(13):
        w.push(_f(k, {1: float(k)}))
    v = w.view(w.slot_of[1])
    assert v.base is w.buf and v.flags.c_contiguous
    assert _values(w, w.slot_of[1]) == [float(x) for x in range(5, 13)]


def test_buffer_is_preallocated_and_never_replaced():
    w = WindowBuffer(16, max_bodies=6)
    buf = w.buf
    assert buf.shape == (6, 32, 25, 3)
    for k in range(100):
        w.push(_f(k, {i: float(k) for i in range(6)}))
    assert w.buf is buf


def test_min_frames_delays_readiness():
    w = WindowBuffer(4, min_frames=3)
    w.push(_f(0, {1: 0.0}))
    w.push(_f(1, {1: 1.0}))
    assert w.ready() == []
    w.push(_f(2, {1: 2.0}))
    assert w.ready() == [w.slot_of[1]]


def test_duplicates_and_out_of_order_dropped():
    w = WindowBuffer(4)
    w.push(_f(5, {1: 5.0}))
    assert not w.push(_f(5, {1: 99.0}))
    assert not w.push(_f(4, {1: 99.0}))
    assert w.push(_f(6, {1: 6.0}))
    assert w.dropped == {"duplicate": 1, "out_of_order": 1}
    assert 99.0 not in _values(w, w.slot_of[1])


def test_sequence_restart_resets_all():
    w = WindowBuffer(4, restart_seq=100)
    w.push(_f(1000, {1: 1.0}, t_ms=0))
    gen = w.generation[w.slot_of[1]]
    assert w.push(_f(3, {1: 2.0}, t_ms=33))
    s = w.slot_of[1]
    assert w.resets["restart"] == 1 and w.generation[s] > gen
    assert _values(w, s) == [2, 2, 2, 2]


def test_time_gap_resets_window():
    w = WindowBuffer(4, gap_ms=100)
    for k in range(4):
        w.push(_f(k, {1: float(k)}, t_ms=k * 33))
    w.push(_f(4, {1: 50.0}, t_ms=3 * 33 + 500))
    assert w.resets["gap"] == 1
    assert _values(w, w.slot_of[1]) == [50, 50, 50, 50]
    w.push(_f(5, {1: 60.0}, t_ms=3 * 33 + 400))  # time going backwards is a gap too
    assert w.resets["gap"] == 2


def test_body_absent_briefly_continues_long_is_released():
    w = WindowBuffer(4, gap_ms=100)
    w.push(_f(0, {1: 0.0, 2: 0.0}, t_ms=0))
    w.push(_f(1, {1: 1.0}, t_ms=33))          # body 2 missing for one frame
    w.push(_f(2, {1: 2.0, 2: 2.0}, t_ms=66))
    assert _values(w, w.slot_of[2]) == [0, 0, 0, 2]
    assert w.active == [w.slot_of[1], w.slot_of[2]]
    for k in range(3, 10):
        w.push(_f(k, {1: float(k)}, t_ms=k * 33))
    assert 2 not in w.slot_of and w.resets["lost"] == 1
    w.push(_f(10, {1: 10.0, 2: 7.0}, t_ms=330))  # back: a fresh window
    assert _values(w, w.slot_of[2]) == [7, 7, 7, 7]


def test_body_gap_reset_within_timeout_window():
    w = WindowBuffer(4, gap_ms=100)
    w.push(_f(0, {1: 0.0, 2: 0.0}, t_ms=0))
    w.push(_f(1, {1: 1.0}, t_ms=60))
    w.push(_f(2, {1: 2.0, 2: 5.0}, t_ms=120))  # body 2 reappears after 120 ms > gap
    assert w.resets["body_gap"] == 1
    assert _values(w, w.slot_of[2]) == [5, 5, 5, 5]


def test_body_cap_and_eviction():
    w = WindowBuffer(4, max_bodies=2)
    w.push(_f(0, {1: 1.0, 2: 2.0, 3: 3.0}))
    assert sorted(w.slot_of) == [1, 2] and w.dropped["body_cap"] == 1
    w.push(_f(1, {1: 1.0, 3: 3.0}))  # 2 absent this frame: 3 takes its slot
    assert sorted(w.slot_of) == [1, 3] and w.resets["evicted"] == 1
    assert _values(w, w.slot_of[3]) == [3, 3, 3, 3]


def test_bad_bodies_and_duplicate_ids_dropped():
    w = WindowBuffer(4)
    bad = _j(1.0)
    bad[2, 1] = np.nan
    f = Frame(0, 0, [Body(1, bad), Body(2, _j(2.0)), Body(2, _j(9.0)),
                     Body(3, np.zeros((20, 3), np.float32))], "s")
    assert w.push(f)
    assert w.dropped == {"bad_body": 2, "duplicate_id": 1}
    assert list(w.slot_of) == [2] and _values(w, w.slot_of[2]) == [2, 2, 2, 2]


def test_foreign_source_dropped_then_switch(monkeypatch):
    w = WindowBuffer(4, gap_ms=100)
    w.push(_f(0, {1: 1.0}, src="a"), now_ns=0)
    assert not w.push(_f(1, {1: 2.0}, src="b"), now_ns=50 * MS)
    assert w.dropped["foreign_src"] == 1
    assert w.push(_f(0, {1: 3.0}, src="b"), now_ns=500 * MS)  # a went silent: switch
    assert w.resets["new_src"] == 1 and _values(w, w.slot_of[1]) == [3, 3, 3, 3]


def test_gather_into_preallocated_batch():
    w = WindowBuffer(4, max_bodies=3)
    for k in range(6):
        w.push(_f(k, {7: float(k), 8: 100.0 + k}))
    out = np.zeros((3, 4, 25, 3), np.float32)
    got = w.gather(w.ready(), out)
    assert got.base is out and got.shape == (2, 4, 25, 3)
    assert list(got[0, :, 0, 0]) == [2, 3, 4, 5] and list(got[1, :, 0, 0]) == [102, 103, 104, 105]


def test_invalid_arguments():
    with pytest.raises(ValueError):
        WindowBuffer(0)
    with pytest.raises(ValueError):
        WindowBuffer(4, min_frames=5)
