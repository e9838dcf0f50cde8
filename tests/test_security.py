"""Security: loopback by default, CURVE with an allow-list elsewhere (over real tcp), no
unpickling of model files, malicious models cannot publish raw joints, input caps."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import zmq

from engines import create_engine
from engines.onnx_export import export_onnx
from engines.source import resolve_source
from sensors.base import SourceError
from sensors.zmq_source import ZmqSource
from streamtmr import skeleton
from streamtmr.cli import main
from streamtmr.dummy import default_dummy
from streamtmr.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
)
from streamtmr.models.registry import build_model
from streamtmr.stream import security, wire
from streamtmr.stream.frame import Body, Frame
from streamtmr.stream.node import Node, NodeConfig
from streamtmr.stream.outputs import open_sinks
from streamtmr.stream.security import Security, SecurityError, generate_keypair
from streamtmr.stream.sinks import ZmqPubSink

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
LENGTHS = default_dummy().lengths
REST = default_dummy().rest_pose()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Key pairs: the node, an allowed subscriber, a stranger, a sensor publisher; and the
    allow-list folder holding only the allowed subscriber's public key."""
    d = tmp_path_factory.mktemp("keys")
    out = {n: generate_keypair(d, n) for n in ("node", "viewer", "stranger", "sensor")}
    allow = d / "allow"
    allow.mkdir()
    (allow / "viewer.key").write_bytes(out["viewer"][0].read_bytes())
    return {**out, "allow": allow}




def person(seq: int) -> np.ndarray:
    pose = REST * 0.9 + np.array([0.3, 0, 3], np.float32)
    pose[5:12, 1] += 0.1 * np.sin(seq / 4)
    return pose.astype(np.float32)


def frame(seq: int) -> Frame:
    return Frame(seq, int(seq * 1e9 / 30), [Body(4, person(seq))], "sensor")


def _client(ctx, endpoint: str, keypair=None, server_public: bytes | None = None):
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    if keypair is not None:
        public, secret = zmq.auth.load_certificate(keypair)
        sub.curve_secretkey, sub.curve_publickey = secret, public
        sub.curve_serverkey = server_public
    sub.connect(endpoint)
    return sub


# ------------------------------------------------------------------------------------------
# Endpoint classification
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint,local", [
    ("tcp://127.0.0.1:5556", True), ("tcp://127.3.2.1:1", True), ("tcp://localhost:5556", True),
    ("tcp://[::1]:5556", True), ("ipc:///tmp/x", True), ("inproc://x", True),
    ("tcp://lo:5556", True), ("tcp://192.0.2.1;127.0.0.1:5556", True),
    ("tcp://0.0.0.0:5556", False), ("tcp://*:5556", False), ("tcp://[::]:1", False),
    ("tcp://192.168.1.20:5556", False), ("tcp://eth0:5556", False),
    ("tcp://127.0.0.1;192.0.2.1:5556", False), ("epgm://eth0;239.1.1.1:5555", False),
    ("tcp://no-such-host.invalid:1", False),
])
def test_endpoint_classification(endpoint, local):
    assert security.is_local_endpoint(endpoint) is local


# ------------------------------------------------------------------------------------------
# CURVE over real tcp
# ------------------------------------------------------------------------------------------

def test_curve_sink_only_allow_listed_clients_receive(keys):
    """The sink binds on all interfaces (non-loopback: allowed because it is encrypted); the
    allow-listed viewer receives, a stranger with valid keys and a clear-text client don't."""
    ctx = zmq.Context()
    sec = Security(secret_key=keys["node"][1], allow=keys["allow"])
    sink = ZmqPubSink("tcp://0.0.0.0:*", context=ctx, security=sec)
    port = sink.bound.rsplit(":", 1)[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    server_public = zmq.auth.load_certificate(keys["node"][0])[0]
    viewer = _client(ctx, endpoint, keys["viewer"][1], server_public)
    stranger = _client(ctx, endpoint, keys["stranger"][1], server_public)
    plain = _client(ctx, endpoint)
    payload = wire.encode(frame(0), wire.AnonInfo("m", 1))
    got = {"viewer": 0, "stranger": 0, "plain": 0}
    try:
        start = time.monotonic()  # at least 2 s: time for every client to try its handshake
        while time.monotonic() < start + 10 and (got["viewer"] < 20
                                                 or time.monotonic() < start + 2):
            sink.send(frame(0), payload)
            for name, s in (("viewer", viewer), ("stranger", stranger), ("plain", plain)):
                while s.poll(0):
                    assert s.recv() == payload
                    got[name] += 1
            time.sleep(0.01)
        counters = sink.counters
    finally:
        for s in (viewer, stranger, plain):
            s.close(0)
        sink.close()
        sec.close()
        ctx.term()
    assert sink.name.startswith("zmq+curve(")
    assert got["viewer"] >= 20 and got["stranger"] == 0 and got["plain"] == 0
    assert counters["curve_allowed"] >= 1 and counters["curve_denied"] >= 1


def test_curve_source_receives_from_keyed_publisher_only(keys, caplog):
    """The node's SUB connects over CURVE to a sensor publisher that allow-lists the node's
    key; with the wrong server key it receives nothing."""
    ctx = zmq.Context()
    from zmq.auth.thread import ThreadAuthenticator
    auth = ThreadAuthenticator(ctx)
    auth.start()
    allow = keys["allow"].parent / "sensor-allow"
    allow.mkdir(exist_ok=True)
    (allow / "node.key").write_bytes(keys["node"][0].read_bytes())
    auth.configure_curve(domain="*", location=str(allow))
    pub = ctx.socket(zmq.PUB)
    pub.curve_publickey, pub.curve_secretkey = zmq.auth.load_certificate(keys["sensor"][1])
    pub.curve_server = True
    port = pub.bind_to_random_port("tcp://0.0.0.0")
    good = ZmqSource(f"zmq://127.0.0.1:{port}", context=ctx, idle_ms=10, security=Security(
        secret_key=keys["node"][1], server_key=keys["sensor"][0]))
    wrong = ZmqSource(f"zmq://127.0.0.1:{port}", context=ctx, idle_ms=10, security=Security(
        secret_key=keys["node"][1], server_key=keys["stranger"][0]))
    frames = {"good": [], "wrong": []}

    def read(name, src):
        for f in src:
            if f is not None:
                frames[name].append(f)

    threads = [threading.Thread(target=read, args=a, daemon=True)
               for a in (("good", good), ("wrong", wrong))]
    for t in threads:
        t.start()
    try:
        deadline, seq = time.monotonic() + 10, 0
        while len(frames["good"]) < 10 and time.monotonic() < deadline:
            pub.send(wire.encode(frame(seq)))
            seq += 1
            time.sleep(0.02)
        for _ in range(20):
            pub.send(wire.encode(frame(seq)))
            seq += 1
            time.sleep(0.01)
    finally:
        good.close()
        wrong.close()
        for t in threads:
            t.join(2)
        pub.close(0)
        auth.stop()
        ctx.term()
    assert good.name.startswith("zmq+curve(")
    assert len(frames["good"]) >= 10 and frames["wrong"] == []
    np.testing.assert_array_equal(frames["good"][-1].bodies[0].joints,
                                  person(frames["good"][-1].seq))


def test_cli_end_to_end_curve_source_and_sink(keys, model_ckpt, capsys):
    """``streamtmr run`` with CURVE on both sides: a keyed sensor on loopback, the sink bound
    on all interfaces; the allow-listed viewer gets anonymized frames."""
    ctx = zmq.Context()
    from zmq.auth.thread import ThreadAuthenticator
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    pub = ctx.socket(zmq.PUB)
    pub.curve_publickey, pub.curve_secretkey = zmq.auth.load_certificate(keys["sensor"][1])
    pub.curve_server = True
    in_port = pub.bind_to_random_port("tcp://127.0.0.1")
    probe = ctx.socket(zmq.PUB)
    out_port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(0)
    # closing is asynchronous: a viewer connecting now can still reach the probe's listener,
    # fail the CURVE handshake against it and never retry; wait for the port to be free
    time.sleep(0.3)
    viewer = _client(ctx, f"tcp://127.0.0.1:{out_port}", keys["viewer"][1],
                     zmq.auth.load_certificate(keys["node"][0])[0])
    got, stop = [], threading.Event()

    def traffic():
        seq = 0
        while not stop.is_set():
            pub.send(wire.encode(frame(seq)))
            seq += 1
            time.sleep(0.01)  # ~1.5 s of stream: time for the CURVE handshakes under load
            while viewer.poll(15):
                got.append(wire.decode_message(viewer.recv()))

    th = threading.Thread(target=traffic, daemon=True)
    th.start()
    try:
        rc = main(["run", "--engine", "torch", "--model", str(model_ckpt), "--window", "16",
                   "--budget-ms", "1000", "--source", f"zmq://127.0.0.1:{in_port}",
                   "--sink", f"zmq://0.0.0.0:{out_port}", "--max-frames", "150",
                   "--curve-secret-key", str(keys["node"][1]),
                   "--curve-allow", str(keys["allow"]),
                   "--curve-server-key", str(keys["sensor"][0])])
        time.sleep(0.2)
    finally:
        stop.set()
        th.join(5)
        viewer.close(0)
        pub.close(0)
        auth.stop()
        ctx.term()
    assert rc == 0, capsys.readouterr().err[-2000:]
    assert len(got) >= 10
    for m in got:
        assert m.anon is not None
        b = m.frame.bodies[0]
        assert np.abs(skeleton.bone_lengths(b.joints)[1:] - LENGTHS[1:]).max() < 1e-3


# ------------------------------------------------------------------------------------------
# Refusing clear text off loopback
# ------------------------------------------------------------------------------------------

def test_non_loopback_bind_without_keys_refused():
    ctx = zmq.Context()
    with pytest.raises(SecurityError, match="refusing to publish unencrypted.*--insecure"):
        ZmqPubSink("tcp://0.0.0.0:*", context=ctx)
    with pytest.raises(SecurityError, match="OSC over UDP cannot be encrypted"):
        open_sinks("vrchat://192.0.2.7:9000", LENGTHS, context=ctx)
    with pytest.raises(SourceError, match="refusing to receive raw skeletons unencrypted"):
        ZmqSource("zmq://192.0.2.7:5555", context=ctx)
    sink = ZmqPubSink("tcp://127.0.0.1:*", context=ctx)  # loopback: clear text is fine
    sink.close()
    ctx.term()


def test_cli_non_loopback_refused_then_insecure_allows(model_ckpt, capsys, caplog):
    base = ["run", "--engine", "torch", "--model", str(model_ckpt), "--window", "16",
            "--max-frames", "20", "--budget-ms", "1000"]
    probe = zmq.Context.instance().socket(zmq.PUB)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(0)
    assert main([*base, "--sink", f"zmq://0.0.0.0:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"--sink tcp://0.0.0.0:{port}: refusing to publish unencrypted" in err
    assert "--curve-secret-key" in err and "--insecure" in err and "Traceback" not in err
    assert main([*base, "--source", "zmq://192.0.2.7:5555"]) == 2
    assert "refusing to receive raw skeletons unencrypted" in capsys.readouterr().err
    assert main([*base, "--sink", "vmc://192.0.2.7:39539"]) == 2
    assert "--insecure" in capsys.readouterr().err
    # --insecure: allowed (and a client on loopback receives)
    ctx = zmq.Context()
    sub = _client(ctx, f"tcp://127.0.0.1:{port}")
    got = []

    def receive():
        while sub.poll(3000):
            got.append(sub.recv())

    th = threading.Thread(target=receive, daemon=True)
    th.start()
    rc = main([*base, "--max-frames", "45", "--sink", f"zmq://0.0.0.0:{port}", "--insecure"])
    th.join(10)
    sub.close(0)
    ctx.term()
    assert rc == 0 and got
    assert "--insecure: publishing unencrypted" in caplog.text


@pytest.mark.parametrize("args,needle", [
    (lambda k: ["--curve-allow", str(k["allow"])], "--curve-allow needs --curve-secret-key"),
    (lambda k: ["--curve-secret-key", str(k["node"][0]), "--curve-allow", str(k["allow"])],
     "holds no secret key"),
    (lambda k: ["--curve-secret-key", str(k["node"][1]), "--curve-allow",
                str(k["allow"].parent / "nope")], "not a folder"),
    (lambda k: ["--curve-secret-key", str(k["node"][1])], "CURVE needs --curve-allow"),
    (lambda k: ["--curve-server-key", str(k["allow"].parent / "missing.key"),
                "--source", "zmq://127.0.0.1:1"], "missing.key: cannot read"),
])
def test_cli_key_errors_are_clear(keys, model_ckpt, capsys, args, needle):
    rc = main(["run", "--engine", "torch", "--model", str(model_ckpt), "--window", "16",
               "--fast", "--max-frames", "1", "--sink", "tcp://127.0.0.1:*", *args(keys)])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err


def test_key_file_checks(tmp_path, caplog):
    junk = tmp_path / "junk.key_secret"
    junk.write_text("not a certificate")
    with pytest.raises(SecurityError, match="junk.key_secret"):
        security.load_keypair(junk)
    big = tmp_path / "big.key"
    big.write_bytes(b"x" * (security.MAX_KEY_FILE_BYTES + 1))
    with pytest.raises(SecurityError, match="not a key file"):
        security.load_public_key(big)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SecurityError, match="no client public keys"):
        security.load_allowed(empty)
    public, secret = generate_keypair(tmp_path, "n")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    with pytest.raises(SecurityError, match="exists already"):
        generate_keypair(tmp_path, "n")
    os.chmod(secret, 0o644)
    with caplog.at_level(logging.WARNING):
        security.load_keypair(secret)
    assert "readable by other users" in caplog.text


def test_keys_command(tmp_path, capsys):
    assert main(["keys", "node", "viewer", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    pub = zmq.auth.load_certificate(tmp_path / "viewer.key")[0].decode()
    assert pub in out and (tmp_path / "node.key_secret").is_file()
    assert main(["keys", "--show", str(tmp_path / "viewer.key")]) == 0
    assert pub in capsys.readouterr().out
    assert main(["keys", "node", "--dir", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["keys", "node", "--dir", str(tmp_path), "--force"]) == 0


# ------------------------------------------------------------------------------------------
# Model files
# ------------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this runs code (it creates a file): what a malicious .pt would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["evil.pt", "evil.safetensors"])
def test_pickle_checkpoint_refused_never_unpickled(tmp_path, capsys, name):
    marker = tmp_path / "pwned"
    evil = tmp_path / name
    torch.save({"state_dict": _Payload(marker)}, evil)
    assert not marker.exists()
    rc = main(["run", "--engine", "torch", "--model", str(evil), "--window", "16", "--fast",
               "--max-frames", "1", "--sink", "tcp://127.0.0.1:*"])
    err = capsys.readouterr().err
    assert rc == 2 and str(evil) in err and "pickle" in err and "arbitrary code" in err
    with pytest.raises(CheckpointError, match=name):  # the library path refuses it too
        load_checkpoint(evil)
    with pytest.raises(CheckpointError):
        resolve_source(evil)
    assert not marker.exists(), "the pickle was executed"


def test_malicious_onnx_cannot_publish_raw_joints(tmp_path):
    """A model file with valid metadata whose graph returns its input: the node never
    publishes anything of it. The bone check runs on the engine's output before smoothing,
    so it fails with every smoothing (before the fix, One-Euro rebuilt the raw pose on the
    dummy's bones and published it)."""
    src = resolve_source(build_model({"method": "naive"}), None, 16)
    path = export_onnx(src, tmp_path / "evil.onnx")
    m = onnx.load(str(path))
    del m.graph.node[:]
    del m.graph.initializer[:]
    del m.graph.value_info[:]
    m.graph.node.append(onnx.helper.make_node("Identity", ["windows"], ["anonymized"]))
    onnx.save(m, str(path))
    engine = create_engine("onnxruntime", model=path, window=16, cache=False)
    for smoothing in ("none", "one_euro"):
        node = Node(engine, config=NodeConfig(leak_guard=False, budget_ms=1000,
                                              smoothing=smoothing))
        published = [b for s in range(20) for f in node.step(frame(s)) for b in f.bodies]
        stats = node.close()
        assert published == [] and stats["dropped"]["bone_check"] == 20


def test_oversized_dummy_file_refused(tmp_path, model_ckpt, capsys):
    big = tmp_path / "dummy.json"
    big.write_text('{"name": "x", "lengths": [' + "0.1, " * 300_000 + "0.1]}")
    rc = main(["run", "--engine", "torch", "--model", str(model_ckpt), "--dummy", str(big),
               "--sink", "tcp://127.0.0.1:*", "--max-frames", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "more than the cap" in err and str(big) in err


def test_documented_caps_match_the_code():
    doc = (ROOT / "docs" / "security.md").read_text()
    caps = {"MAX_MESSAGE_BYTES": wire.MAX_MESSAGE_BYTES, "MAX_BODIES": wire.MAX_BODIES,
            "MAX_ABS_COORD": wire.MAX_ABS_COORD, "MAX_STR": wire.MAX_STR,
            "MAX_KEY_FILE_BYTES": security.MAX_KEY_FILE_BYTES,
            "MAX_ALLOWED_KEYS": security.MAX_ALLOWED_KEYS,
            "MAX_DUMMY_BYTES": security.MAX_DUMMY_BYTES}
    for name, value in caps.items():
        v = int(value) if float(value).is_integer() else value
        assert f"`{name}` = {v}" in doc, f"docs/security.md does not state {name} = {v}"
