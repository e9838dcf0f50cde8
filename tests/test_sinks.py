"""Sinks: VMC and VRChat over a real python-osc server, rotation solving, ZeroMQ bounds."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import zmq
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import ThreadingOSCUDPServer
from scipy.spatial.transform import Rotation

from streamtmr import skeleton
from streamtmr.dummy import default_dummy
from streamtmr.stream import follow, vmc, wire
from streamtmr.stream.follow import Follow
from streamtmr.stream.frame import Body, Frame
from streamtmr.stream.outputs import open_sink, open_sinks
from streamtmr.stream.sinks import (
    SinkError,
    VmcSink,
    VrchatSink,
    ZmqPubSink,
)

LENGTHS = default_dummy().lengths
SWING = [b for b in vmc.BONES if b[2] is not None and b[0] not in ("Hips", "Chest")]


def rotation(axis, deg: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    return Rotation.from_rotvec(a * np.radians(deg)).as_matrix()


def rot(q: np.ndarray) -> Rotation:
    return Rotation.from_quat(q)


def t_pose_kinect(yaw_deg: float = 0.0) -> np.ndarray:
    """The dummy in the solver's rest pose (Unity T-pose facing +Z), in Kinect axes."""
    unity = skeleton.forward_kinematics(np.array([0.0, 1.0, 2.5]), vmc.REST_DIRECTIONS,
                                        LENGTHS.astype(float))
    unity = (unity - unity[0]) @ rotation([0, 1, 0], yaw_deg).T + unity[0]
    return vmc.to_unity(unity).astype(np.float32)  # negating X is its own inverse


def random_pose(seed: int) -> np.ndarray:
    """A random plausible pose with the dummy's bone lengths, Kinect axes."""
    rng = np.random.default_rng(seed)
    d = vmc.REST_DIRECTIONS + rng.normal(0, 0.35, vmc.REST_DIRECTIONS.shape)
    d /= np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-9)
    r = rotation(rng.normal(size=3), rng.uniform(-180, 180))
    j = skeleton.forward_kinematics(rng.normal(0, 0.5, 3), d @ r.T, LENGTHS.astype(float))
    return vmc.to_unity(j).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Rotation math
# ------------------------------------------------------------------------------------------

def test_rest_pose_gives_identity_rotations():
    _, local, world = vmc.solve(t_pose_kinect())
    assert np.allclose(np.abs(local[:, 3]), 1, atol=1e-6)
    assert np.allclose(np.abs(world[:, 3]), 1, atol=1e-6)


def test_facing_the_sensor_is_half_turn_about_y():
    # A person facing the Kinect (its left hip at -X, feet towards the sensor) faces -Z in Unity.
    _, local, world = vmc.solve(t_pose_kinect(yaw_deg=180))
    assert np.allclose(vmc.unity_euler(world[0]), [0, 180, 0], atol=1e-4)
    assert np.allclose(np.abs(local[1:, 3]), 1, atol=1e-6)  # the rest stays in rest pose


@pytest.mark.parametrize("seed", range(5))
def test_solved_rotations_reproduce_bone_directions(seed):
    joints = random_pose(seed)
    pos, _, world = vmc.solve(joints)
    np.testing.assert_allclose(pos, vmc.to_unity(joints.astype(float)), atol=1e-6)
    for i, (_, at, child, _) in enumerate(vmc.BONES):
        if child is None:
            continue
        c = skeleton.JOINT[child]
        cur = pos[c] - pos[skeleton.JOINT[at]]
        got = rot(world[i]).apply(vmc.REST_DIRECTIONS[c])
        np.testing.assert_allclose(got, cur / np.linalg.norm(cur), atol=1e-5)


def test_hierarchy_with_local_rotations_rebuilds_torso_and_arms():
    """Offsets + local rotations (what a VMC receiver applies) rebuild the joint positions."""
    joints = random_pose(7)
    pos, local, _ = vmc.solve(joints)
    offsets = vmc.rest_offsets(LENGTHS)
    world, placed = {}, {}
    for i, (name, _at, _, parent) in enumerate(vmc.BONES):
        if parent is None:
            world[name], placed[name] = rot(local[i]), pos[0]
            continue
        world[name] = world[parent] * rot(local[i])
        placed[name] = placed[parent] + world[parent].apply(offsets[i])
    for name, at, _, _ in vmc.BONES:
        if "Leg" in name or "Foot" in name:
            continue  # the hip joints hang off the Hips frame: only their directions are exact
        np.testing.assert_allclose(placed[name], pos[skeleton.JOINT[at]], atol=1e-5)


# ------------------------------------------------------------------------------------------
# Over a real OSC server
# ------------------------------------------------------------------------------------------

@pytest.fixture
def osc_server():
    received: list[tuple[str, tuple]] = []
    lock = threading.Lock()

    def handler(address, *args):
        with lock:
            received.append((address, args))
    d = Dispatcher()
    d.set_default_handler(handler)
    server = ThreadingOSCUDPServer(("127.0.0.1", 0), d)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    yield server.server_address[1], received
    server.shutdown()
    server.server_close()


def _wait(received, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while len(received) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(received)


def test_vmc_messages_over_udp(osc_server):
    port, received = osc_server
    sink = VmcSink(LENGTHS, "127.0.0.1", port)
    joints = random_pose(3)
    frame = Frame(1, 0, [Body(42, joints)])
    assert sink.send(frame, b"")
    n_bones = len(vmc.BONE_NAMES)
    msgs = _wait(received, n_bones + 3)
    sink.close()
    by_addr: dict[str, list[tuple]] = {}
    for addr, args in msgs:
        by_addr.setdefault(addr, []).append(args)
    assert by_addr["/VMC/Ext/OK"] == [(1,)]
    (t,), = by_addr["/VMC/Ext/T"]
    assert isinstance(t, float)
    (root,) = by_addr["/VMC/Ext/Root/Pos"]
    assert root[0] == "root" and all(isinstance(v, float) for v in root[1:]) and len(root) == 8
    bones = {a[0]: a[1:] for a in by_addr["/VMC/Ext/Bone/Pos"]}
    assert set(bones) == set(vmc.BONE_NAMES)
    pos, local, _ = vmc.solve(joints)
    for i, name in enumerate(vmc.BONE_NAMES):
        vals = bones[name]
        assert len(vals) == 7 and all(isinstance(v, float) for v in vals)
        np.testing.assert_allclose(vals[3:], local[i], atol=1e-6)  # OSC floats are float32
    np.testing.assert_allclose(bones["Hips"][:3], pos[0], atol=1e-6)
    np.testing.assert_allclose(bones["LeftLowerArm"][:3],
                               vmc.rest_offsets(LENGTHS)[vmc.BONE_NAMES.index("LeftLowerArm")],
                               atol=1e-6)


def test_vmc_without_bodies_reports_not_ok(osc_server):
    port, received = osc_server
    sink = VmcSink(LENGTHS, "127.0.0.1", port)
    sink.send(Frame(1, 0, []), b"")
    msgs = _wait(received, 2)
    sink.close()
    assert dict(msgs)["/VMC/Ext/OK"] == (0,)
    assert not any(a == "/VMC/Ext/Bone/Pos" for a, _ in msgs)


def test_vrchat_trackers_over_udp(osc_server):
    port, received = osc_server
    sink = VrchatSink("127.0.0.1", port)
    joints = random_pose(4)
    assert sink.send(Frame(1, 0, [Body(9, joints), Body(3, random_pose(5))]), b"")
    msgs = _wait(received, 18)
    sink.close()
    got = dict(msgs)
    expected = {f"/tracking/trackers/{t}/{k}" for t in [*map(str, range(1, 9)), "head"]
                for k in ("position", "rotation")}
    assert set(got) == expected
    pos, _, world = vmc.solve(joints)  # the first body is the one driven
    for tracker, joint, bone in [("1", "SpineBase", "Hips"), ("3", "AnkleLeft", "LeftFoot"),
                                 ("head", "Head", "Head")]:
        p = got[f"/tracking/trackers/{tracker}/position"]
        r = got[f"/tracking/trackers/{tracker}/rotation"]
        assert len(p) == 3 and all(isinstance(v, float) for v in p + r)
        np.testing.assert_allclose(p, pos[skeleton.JOINT[joint]], atol=1e-5)
        q = vmc.euler_to_quat(np.array(r))
        np.testing.assert_allclose(rot(q).as_matrix(),
                                   rot(world[vmc.BONE_NAMES.index(bone)]).as_matrix(),
                                   atol=1e-4)


def test_follow_first_keeps_one_body():
    f = Follow()
    a, b = Body(1, random_pose(0)), Body(2, random_pose(1))
    assert f.assign(Frame(0, 0, [a, b]))[0].id == 1
    assert f.assign(Frame(1, 0, [b, a]))[0].id == 1  # keeps following body 1
    assert f.assign(Frame(2, 0, [b]))[0].id == 2     # 1 left: switch
    assert f.assign(Frame(3, 0, [a, b]))[0].id == 2
    assert f.assign(Frame(4, 0, [])) == [None]


def _at(body_id: int, z: float) -> Body:
    j = random_pose(body_id)
    return Body(body_id, j - j[0] + np.array([0.0, 0.0, z], np.float32))


def test_follow_nearest_with_hysteresis_and_fixed_id():
    f = Follow("nearest")
    assert f.assign(Frame(0, 0, [_at(1, 3.0), _at(2, 2.0)]))[0].id == 2
    assert f.assign(Frame(1, 0, [_at(1, 1.9), _at(2, 2.0)]))[0].id == 2  # 10 cm: stays
    assert f.assign(Frame(2, 0, [_at(1, 1.5), _at(2, 2.0)]))[0].id == 1  # 50 cm: switches
    fixed = Follow(7)
    assert fixed.assign(Frame(0, 0, [_at(1, 1.0)])) == [None]
    assert fixed.assign(Frame(1, 0, [_at(1, 1.0), _at(7, 4.0)]))[0].id == 7


def test_follow_fanout_keeps_slots():
    f = Follow("first", outputs=2)
    ids = lambda bodies: [None if b is None else b.id for b in bodies]  # noqa: E731
    assert ids(f.assign(Frame(0, 0, [_at(4, 2.0)]))) == [4, None]
    assert ids(f.assign(Frame(1, 0, [_at(5, 2.0), _at(4, 2.0), _at(6, 2.0)]))) == [4, 5]
    assert ids(f.assign(Frame(2, 0, [_at(5, 2.0), _at(6, 2.0)]))) == [6, 5]  # 4 left: 6 in
    near = Follow("nearest", outputs=2)
    assert ids(near.assign(Frame(0, 0, [_at(1, 3.0), _at(2, 2.0), _at(3, 1.0)]))) == [3, 2]


def test_follow_query_errors():
    with pytest.raises(ValueError, match="fanout=0"):
        follow.from_query({"fanout": ["0"]})
    with pytest.raises(ValueError, match="cannot fan out"):
        follow.from_query({"body": ["3"], "fanout": ["2"]})
    with pytest.raises(ValueError, match="body='tallest'"):
        follow.from_query({"body": ["tallest"]})
    with pytest.raises(SinkError, match="fanout='many'"):
        open_sink("vmc://127.0.0.1:39540?fanout=many", LENGTHS)
    assert open_sink("vrchat://127.0.0.1?body=12", LENGTHS).follow.mode == 12


@pytest.fixture
def osc_servers():
    """Three python-osc servers on consecutive UDP ports (for fan-out)."""
    received: dict[int, list[tuple[str, tuple]]] = {}
    servers = []
    for _ in range(50):
        base = ThreadingOSCUDPServer(("127.0.0.1", 0), Dispatcher())
        port = base.server_address[1]
        base.server_close()
        try:
            for k in range(3):
                d = Dispatcher()
                got = received.setdefault(port + k, [])
                d.set_default_handler(lambda addr, *args, got=got: got.append((addr, args)))
                servers.append(ThreadingOSCUDPServer(("127.0.0.1", port + k), d))
            break
        except OSError:
            for srv in servers:
                srv.server_close()
            servers, received = [], {}
    threads = [threading.Thread(target=srv.serve_forever, daemon=True) for srv in servers]
    for t in threads:
        t.start()
    yield port, received
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_vmc_fanout_one_avatar_per_port(osc_servers):
    port, received = osc_servers
    sink = open_sink(f"vmc://127.0.0.1:{port}?fanout=3", LENGTHS)
    a, b = Body(11, random_pose(11)), Body(12, random_pose(12))
    assert sink.name == f"vmc(127.0.0.1:{port}-{port + 2})"
    assert sink.send(Frame(0, 0, [a, b]), b"")
    n = len(vmc.BONE_NAMES) + 3
    for k in range(2):
        _wait(received[port + k], n)
    _wait(received[port + 2], 2)
    sink.close()
    for k, body in enumerate((a, b)):
        msgs = dict(received[port + k])
        assert msgs["/VMC/Ext/OK"] == (1,)
        hips = [args for addr, args in received[port + k]
                if addr == "/VMC/Ext/Bone/Pos" and args[0] == "Hips"]
        np.testing.assert_allclose(hips[0][1:4], vmc.to_unity(body.joints[0]), atol=1e-6)
    assert dict(received[port + 2])["/VMC/Ext/OK"] == (0,)  # a free avatar: not tracked


def test_vrchat_follows_the_chosen_body(osc_servers):
    port, received = osc_servers
    sink = open_sink(f"vrchat://127.0.0.1:{port}?body=22", LENGTHS)
    mine = Body(22, random_pose(22))
    assert sink.send(Frame(0, 0, [Body(21, random_pose(21))]), b"")  # not there: nothing
    time.sleep(0.3)
    assert received[port] == []
    assert sink.send(Frame(1, 0, [Body(21, random_pose(21)), mine]), b"")
    msgs = _wait(received[port], 18)
    sink.close()
    assert len(msgs) == 18
    got = dict(msgs)
    np.testing.assert_allclose(got["/tracking/trackers/1/position"],
                               vmc.to_unity(mine.joints[0]), atol=1e-6)


# ------------------------------------------------------------------------------------------
# ZeroMQ PUB
# ------------------------------------------------------------------------------------------

def test_zmq_sink_delivers_one_frame_per_message():
    ctx = zmq.Context()
    sink = ZmqPubSink("tcp://127.0.0.1:*", context=ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(sink.bound)
    f = Frame(3, 99, [Body(1, random_pose(0))], "x")
    payload = wire.encode(f, wire.AnonInfo("m", 5))
    deadline, got = time.monotonic() + 5, None
    while got is None and time.monotonic() < deadline:
        sink.send(f, payload)
        if sub.poll(20):
            got = sub.recv_multipart()
    sink.close()
    sub.close(0)
    ctx.term()
    assert got is not None and len(got) == 1 and got[0] == payload


def test_zmq_sink_never_blocks_on_a_stalled_subscriber():
    ctx = zmq.Context()
    sink = ZmqPubSink("tcp://127.0.0.1:*", context=ctx, hwm=8, linger_ms=0)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 8)
    sub.setsockopt(zmq.RCVBUF, 16384)
    sub.connect(sink.bound)
    time.sleep(0.2)
    payload = b"x" * 2000
    n_sent = 20000  # 40 MB if anything queued them all
    t0 = time.monotonic()
    for _ in range(n_sent):
        sink.send(Frame(0, 0, []), payload)
    elapsed = time.monotonic() - t0
    time.sleep(0.2)
    n = 0
    while sub.poll(100):
        sub.recv()
        n += 1
    sink.close()
    sub.close(0)
    ctx.term()
    assert n < n_sent // 4, f"{n} of {n_sent} queued: the queue is not bounded"
    assert elapsed < 30


def test_open_sinks_parses_and_validates():
    ctx = zmq.Context()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sinks = open_sinks(f"zmq://127.0.0.1:{port}, vmc://127.0.0.1:39540,vrchat://localhost",
                       LENGTHS, context=ctx)
    assert [type(s).__name__ for s in sinks] == ["ZmqPubSink", "VmcSink", "VrchatSink"]
    assert sinks[0].endpoint == f"tcp://127.0.0.1:{port}"
    assert (sinks[1].port, sinks[2].port) == (39540, 9000)
    with pytest.raises(SinkError, match="cannot bind"):  # the port is taken by sinks[0]
        open_sink(f"zmq://127.0.0.1:{port}", LENGTHS, context=ctx)
    for s in sinks:
        s.close()
    with pytest.raises(SinkError, match="expected one of zmq://HOST:PORT, vmc://HOST:PORT, "
                                        "vrchat://HOST:PORT, lsl://NAME"):
        open_sink("http://x", LENGTHS)
    with pytest.raises(SinkError, match="invalid port"):
        open_sink("vmc://127.0.0.1:notaport", LENGTHS)
    ctx.term()
