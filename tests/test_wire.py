"""Wire protocol: round trips, every rejection reason, fuzzing, recordings."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamtmr.stream import wire
from streamtmr.stream.frame import Body, Frame


def _frame(n_bodies: int = 2, seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed)
    bodies = [Body(100 + i, rng.normal(0, 1, (25, 3)).astype(np.float32),
                   rng.integers(0, 3, 25).astype(np.uint8)) for i in range(n_bodies)]
    return Frame(seq=7, t_ns=123_456_789, bodies=bodies, src="kinect-1")


def _msg(**over) -> dict:
    m = msgpack.unpackb(wire.encode(_frame(1)), raw=False)
    m.update(over)
    return m


def _reason(obj) -> str:
    data = obj if isinstance(obj, bytes) else msgpack.packb(obj, use_bin_type=True)
    with pytest.raises(wire.WireError) as e:
        wire.decode(data)
    assert e.value.reason in wire.REASONS
    return e.value.reason


def test_roundtrip_exact():
    f = _frame(3)
    g = wire.decode(wire.encode(f))
    assert (g.seq, g.t_ns, g.src) == (f.seq, f.t_ns, f.src)
    assert [b.id for b in g.bodies] == [b.id for b in f.bodies]
    for a, b in zip(f.bodies, g.bodies):
        np.testing.assert_array_equal(a.joints, b.joints)
        np.testing.assert_array_equal(a.state, b.state)
        assert b.joints.dtype == np.float32 and b.state.dtype == np.uint8


def test_anon_fields_and_schema():
    data = wire.encode(_frame(1), wire.AnonInfo("tmr-small", 4_200_000))
    raw = msgpack.unpackb(data, raw=False)
    assert raw["v"] == 1 and raw["skeleton"] == "kinect_v2" and raw["anon"] is True
    assert raw["model"] == "tmr-small" and raw["lat_ns"] == 4_200_000
    assert isinstance(raw["bodies"][0]["joints"], bytes) and len(raw["bodies"][0]["joints"]) == 300
    msg = wire.decode_message(data)
    assert msg.anon == wire.AnonInfo("tmr-small", 4_200_000)
    assert wire.decode_message(wire.encode(_frame(1))).anon is None


def test_empty_frame_and_big_ids():
    f = Frame(0, 0, [], "")
    assert wire.decode(wire.encode(f)).bodies == []
    g = _frame(1)
    g.bodies[0].id = 2**64 - 1  # Kinect tracking ids are unsigned 64-bit
    assert wire.decode(wire.encode(g)).bodies[0].id == 2**64 - 1


def test_little_endian_layout():
    f = _frame(1)
    raw = msgpack.unpackb(wire.encode(f), raw=False)
    np.testing.assert_array_equal(
        np.frombuffer(raw["bodies"][0]["joints"], "<f4").reshape(25, 3), f.bodies[0].joints)


def test_rejection_reasons():
    body = _msg()["bodies"][0]
    assert _reason(b"\xc1") == "bad_msgpack"
    assert _reason(b"\x92\x01") == "bad_msgpack"  # truncated array
    assert _reason([1, 2]) == "not_map"
    assert _reason({k: v for k, v in _msg().items() if k != "v"}) == "missing_field"
    assert _reason(_msg(v=2)) == "bad_version"
    assert _reason(_msg(v="1")) == "bad_version"
    assert _reason({k: v for k, v in _msg().items() if k != "t_ns"}) == "missing_field"
    assert _reason(_msg(seq=-1)) == "bad_type"
    assert _reason(_msg(seq=1.5)) == "bad_type"
    assert _reason(_msg(src=5)) == "bad_type"
    assert _reason(_msg(skeleton="azure")) == "bad_skeleton"
    assert _reason(_msg(bodies={})) == "bad_type"
    assert _reason(_msg(bodies=[5])) == "bad_type"
    assert _reason(_msg(bodies=[{**body, "joints": body["joints"][:-4]}])) == "bad_shape"
    assert _reason(_msg(bodies=[{**body, "state": body["state"] + b"\0"}])) == "bad_shape"
    assert _reason(_msg(bodies=[{**body, "joints": list(range(10))}])) == "bad_type"
    nan = np.zeros((25, 3), "<f4")
    nan[3, 1] = np.nan
    assert _reason(_msg(bodies=[{**body, "joints": nan.tobytes()}])) == "non_finite"
    inf = np.zeros((25, 3), "<f4")
    inf[0, 0] = np.inf
    assert _reason(_msg(bodies=[{**body, "joints": inf.tobytes()}])) == "non_finite"
    far = np.full((25, 3), 1e6, "<f4")
    assert _reason(_msg(bodies=[{**body, "joints": far.tobytes()}])) == "out_of_range"
    assert _reason(_msg(bodies=[{**body, "state": bytes([3] * 25)}])) == "bad_state"
    assert _reason(_msg(bodies=[{**body, "id": -3}])) == "bad_id"
    assert _reason(_msg(bodies=[{**body, "id": "x"}])) == "bad_id"
    assert _reason(_msg(bodies=[body, body])) == "duplicate_id"
    many = [{**body, "id": i} for i in range(7)]
    assert _reason(_msg(bodies=many)) == "too_many_bodies"
    assert wire.decode(msgpack.packb(_msg(bodies=many)), max_bodies=7).bodies[6].id == 6
    assert _reason(_msg(anon=False)) == "bad_type"
    assert _reason(_msg(anon=True, model="m")) == "missing_field"


def test_size_caps():
    assert _reason(b"\x00" * (wire.MAX_MESSAGE_BYTES + 1)) == "oversized"
    # A small message announcing a huge blob or array is refused before allocating it.
    assert _reason(b"\xc6\x7f\xff\xff\xff" + b"\0" * 16) in ("oversized", "bad_msgpack")
    assert _reason(msgpack.packb(_msg(src="x" * 1000))) == "oversized"
    assert _reason(msgpack.packb(_msg(extra=list(range(100))))) == "oversized"


def test_unknown_keys_ignored():
    assert wire.decode(msgpack.packb(_msg(future="ok"), use_bin_type=True)).seq == 7


def test_decoded_arrays_are_readonly_views():
    f = wire.decode(wire.encode(_frame(1)))
    assert not f.bodies[0].joints.flags.writeable


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data):
    try:
        wire.decode(data)
    except wire.WireError as e:
        assert e.reason in wire.REASONS


_valid = wire.encode(_frame(2))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_valid) - 1), st.integers(0, 255)),
                min_size=1, max_size=8),
       st.integers(0, len(_valid)))
def test_fuzz_mutated_valid_message(edits, cut):
    data = bytearray(_valid)
    for pos, val in edits:
        data[pos] = val
    data = bytes(data[:cut]) if cut < len(data) else bytes(data)
    try:
        f = wire.decode(data)
    except wire.WireError as e:
        assert e.reason in wire.REASONS
        return
    for b in f.bodies:
        assert b.joints.shape == (25, 3) and np.isfinite(b.joints).all()
        assert b.state.shape == (25,) and b.state.max() <= 2


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=400),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8),
                                                                     children, max_size=5),
    max_leaves=8)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["v", "src", "seq", "t_ns", "skeleton", "bodies", "anon",
                                        "model", "lat_ns", "zz"]), _msgpack_values, max_size=9))
def test_fuzz_structured(fields):
    try:
        data = msgpack.packb(fields, use_bin_type=True)
    except (OverflowError, ValueError):
        return
    try:
        wire.decode(data)
    except wire.WireError as e:
        assert e.reason in wire.REASONS


def test_recording_roundtrip(tmp_path):
    path = tmp_path / "rec.stmr"
    frames = [_frame(i % 3, seed=i) for i in range(5)]
    with wire.Recorder(path) as rec:
        for i, f in enumerate(frames):
            f.seq = i
            rec.write(wire.encode(f, wire.AnonInfo("m", i)))
    assert wire.is_recording(path) and not wire.is_recording(tmp_path / "missing")
    got = [wire.decode_message(p) for p in wire.read_recording(path)]
    assert [m.frame.seq for m in got] == list(range(5))
    assert [len(m.frame.bodies) for m in got] == [i % 3 for i in range(5)]
    assert got[4].anon.lat_ns == 4


def test_recording_errors(tmp_path):
    bad = tmp_path / "bad.stmr"
    bad.write_bytes(b"NOTAREC!")
    with pytest.raises(ValueError, match="bad header"):
        list(wire.read_recording(bad))
    path = tmp_path / "trunc.stmr"
    with wire.Recorder(path) as rec:
        rec.write(wire.encode(_frame(1)))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated record at byte 8"):
        list(wire.read_recording(path))
