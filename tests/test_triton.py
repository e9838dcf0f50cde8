"""Triton serving on loopback: one ``streamtmr serve`` server (PyTriton, in the serving
environment) and several nodes. Outputs equal the in-process engine's, Triton's dynamic batcher
merges the nodes' requests, and a killed server makes the node hold or drop, count, and recover.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed "
                    "(pip install -e '.[dev]')")

from engines import EngineError, create_engine  # noqa: E402
from streamtmr import serve, skeleton  # noqa: E402
from streamtmr.dummy import default_dummy  # noqa: E402
from streamtmr.stream.frame import Body, Frame  # noqa: E402
from streamtmr.stream.node import Node, NodeConfig  # noqa: E402

SERVE_PYTHON = serve.serving_python()
pytestmark = pytest.mark.slow


def need_serving_environment() -> None:
    if SERVE_PYTHON is None or not SERVE_PYTHON.is_file():
        pytest.skip("no serving environment: .venv-serve/bin/python or $STREAMTMR_SERVE_PYTHON "
                    "with nvidia-pytriton and numpy<2 (.ci/run creates it)")
ROOT = Path(__file__).resolve().parents[1]
W = 32  # the window of the tiny TMR preset the windowed server runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``streamtmr serve`` in its own process group (killed as a whole, like a crash)."""

    def __init__(self, log: Path, *extra: str, query: str = ""):
        self.port, self.http, self.metrics = free_port(), free_port(), free_port()
        self.url = f"triton://127.0.0.1:{self.port}"
        self.query = query  # the client's TLS options, if any
        self.log, self.extra, self.proc = log, extra, None

    def start(self) -> Server:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [str(SERVE_PYTHON), "-m", "streamtmr", "serve", "--port", str(self.port),
             "--http-port", str(self.http), "--metrics-port", str(self.metrics),
             "--engine", "onnxruntime", "--queue-delay-us", "2000", "--workspace",
             str(self.log.parent / f"workspace-{time.monotonic_ns()}"), *self.extra],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = 150.0):
        """A connected client engine once the server answers (fails with the log's tail)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                return create_engine(f"{self.url}?timeout_ms=5000&retry_ms=100{self.query}",
                                     window=None)
            except EngineError:
                time.sleep(0.5)
        pytest.fail(f"server not ready after {timeout_s} s:\n{self.tail()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def windowed_model(tmp_path_factory) -> Path:
    """A windowed model (TMR, tiny preset, fixed weights) with a privacy card bound to it, so
    the tests do not depend on which model is the shipped default."""
    import torch

    from engines.card import write_card
    from streamtmr.models.checkpoint import save_checkpoint
    from streamtmr.models.registry import model_class
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path_factory.mktemp("windowed") / "tmr_tiny.safetensors",
                           model_class("tmr").from_preset("tiny"))
    write_card(path, {"command": "a test card"}, name="tmr tiny (test)")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, windowed_model):
    need_serving_environment()
    s = Server(tmp_path_factory.mktemp("triton") / "serve.log", "--model",
               str(windowed_model), "--window", str(W)).start()
    try:
        yield s
    finally:
        s.kill()


@pytest.fixture(scope="module")
def client(server):
    engine = server.wait_ready()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def local(windowed_model):
    return create_engine("onnxruntime", model=windowed_model, window=W, max_batch=8)


def moving_windows(n: int, window: int = 32, seed: int = 0) -> np.ndarray:
    """People of different sizes waving: [n, window, 25, 3] float32."""
    rng = np.random.default_rng(seed)
    pose = default_dummy().rest_pose()
    t = np.arange(window, dtype=np.float32)[:, None, None] / 30
    out = []
    for i in range(n):
        body = pose * (0.9 + 0.2 * rng.random()) + np.array([0.5 * i, 0, 3.0], np.float32)
        wave = 0.15 * np.sin(2 * np.pi * (0.3 + 0.2 * rng.random()) * t)
        body = np.broadcast_to(body, (window, 25, 3)).copy()
        arm = [skeleton.JOINT[j] for j in ("ElbowRight", "WristRight", "HandRight")]
        body[:, arm, 1] += wave[:, :, 0]
        out.append(body)
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def test_output_equals_the_in_process_engine(client, local):
    x = moving_windows(5)
    np.testing.assert_allclose(client.run(x), local.run(x), atol=1e-5, rtol=0)
    np.testing.assert_allclose(client.run_latest(x[:2], 1), local.run_latest(x[:2], 1),
                               atol=1e-5, rtol=0)


def test_the_privacy_card_and_identity_travel_to_the_node(client, local):
    d = client.describe()
    assert d["backend"] == "triton" and d["server"] == client.url.split("?")[0]
    assert d["model_sha256"] == local.source.sha256
    assert client.card is not None and client.card["sha256"] == local.source.sha256
    assert "privacy" in client.card and client.unevaluated is False
    assert np.allclose(client.dummy_lengths, local.dummy_lengths)
    node = Node(client, [], NodeConfig(budget_ms=5000))
    try:
        stats = node.stats()
    finally:
        node.close()
    assert stats["card"]["sha256"] == local.source.sha256
    assert stats["engine"]["server"].startswith("triton://127.0.0.1:")


def test_client_refuses_bad_urls_and_clear_text_over_the_network():
    for url in ("triton://", "triton://127.0.0.1", "triton://127.0.0.1:1?colour=red"):
        with pytest.raises(ValueError):
            create_engine(url)
    with pytest.raises(ValueError, match="clear text"):
        create_engine("triton://192.0.2.1:8001")
    cfg = serve.ServeConfig(host="0.0.0.0")
    with pytest.raises(serve.ServeError, match="--insecure"):
        serve.check_security(cfg)
    serve.check_security(serve.ServeConfig(host="0.0.0.0", insecure=True))


def test_serve_command_refuses_clear_text_on_the_network_and_names_the_missing_env(
        monkeypatch, capsys, tmp_path):
    from streamtmr.cli import main
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--insecure" in capsys.readouterr().err
    monkeypatch.setenv(serve.PYTHON_ENV, str(tmp_path / "no-such-python"))
    assert main(["serve", "--port", "1"]) == 2
    assert ".venv-serve" in capsys.readouterr().err


def test_a_server_serving_another_window_is_refused(client, server):
    with pytest.raises(EngineError, match=f"window {W}"):
        create_engine(server.url, window=2 * W)


def run_node(url: str, stats: Path, frames: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "streamtmr", "run", "--engine", url, "--window", str(W),
         "--source", "synthetic", "--fast", "--max-frames", str(frames), "--budget-ms", "2000",
         "--stats-json", str(stats), "--sink", f"zmq://127.0.0.1:{free_port()}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_three_node_processes_are_batched_together(client, server, tmp_path):
    before = serve.statistics(server.metrics)
    nodes = [run_node(server.url, tmp_path / f"node{i}.json", 150) for i in range(3)]
    logs = [p.communicate(timeout=180)[0] for p in nodes]
    after = serve.statistics(server.metrics)
    for p, log in zip(nodes, logs):
        assert p.returncode == 0, log[-2000:]
    for i in range(3):
        s = json.loads((tmp_path / f"node{i}.json").read_text())
        assert s["counters"].get("engine_errors", 0) == 0
        assert s["counters"]["bodies_out"] > 0
        assert s["card"]["sha256"] == client.source.sha256
    requests = after["requests"] - before["requests"]
    executions = after["executions"] - before["executions"]
    assert requests >= 3 * 100
    assert requests / executions > 1.0, (requests, executions)


def person_frame(seq: int) -> Frame:
    pose = default_dummy().rest_pose() * 1.1 + np.array([0, 0, 3.0], np.float32)
    pose[skeleton.JOINT["WristRight"], 1] += 0.2 * np.sin(seq / 5)
    return Frame(seq, int(seq * 1e9 / 30), [Body(1, pose.astype(np.float32))], "test")


def test_killed_server_holds_counts_and_recovers(server, tmp_path):
    engine = server.wait_ready()
    node = Node(engine, [], NodeConfig(budget_ms=3000, overrun="hold", hold_ms=60_000,
                                       gap_ms=60_000))
    seq = 0
    try:
        for _ in range(5):
            seq += 1
            out = node.step(person_frame(seq))
        assert out and out[0].bodies
        last = out[0].bodies[0].joints.copy()
        server.kill()
        errors = node.stats()["counters"].get("engine_errors", 0)
        for _ in range(3):
            seq += 1
            for f in node.step(person_frame(seq)):  # held frames or nothing, never raw
                for b in f.bodies:
                    np.testing.assert_array_equal(b.joints, last)
        assert node.stats()["counters"].get("engine_errors", 0) > errors
        assert engine.errors > 0
        server.start()
        server.wait_ready().close()
        deadline = time.monotonic() + 30
        while engine.reconnects == 0 and time.monotonic() < deadline:
            seq += 1
            node.step(person_frame(seq))
            time.sleep(0.05)
        assert engine.reconnects >= 1
        before = node.stats()["counters"].get("engine_errors", 0)
        fresh = []
        for _ in range(3):
            seq += 1
            fresh += node.step(person_frame(seq))
        assert node.stats()["counters"].get("engine_errors", 0) == before
        assert any(not np.array_equal(b.joints, last) for f in fresh for b in f.bodies)
    finally:
        node.close()
        engine.close()


# -- streaming models: frames and each body's state in and out ---------------------------------

@pytest.fixture(scope="module")
def stream_model(tmp_path_factory):
    import torch

    from streamtmr.models.checkpoint import save_checkpoint
    from streamtmr.models.registry import model_class
    torch.manual_seed(0)
    model = model_class("tmr-stream").from_preset("tiny")
    return save_checkpoint(tmp_path_factory.mktemp("stream") / "tiny_stream.safetensors", model)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a node's client certificate (openssl)."""
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("node", "extendedKeyUsage=clientAuth")):
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
            f"{name}.key", "-out", f"{name}.csr")
        (folder / f"{name}.ext").write_text(ext + "\n")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return {n: folder / n for n in ("ca.pem", "server.pem", "server.key", "node.pem",
                                    "node.key")}


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory, stream_model):
    """The streaming server, over TLS with client certificates (mutual authentication)."""
    need_serving_environment()
    folder = tmp_path_factory.mktemp("triton_stream")
    c = make_certificates(folder)
    s = Server(folder / "serve.log", "--model", str(stream_model), "--allow-unevaluated",
               "--state-dtype", "fp32", "--tls-cert", str(c["server.pem"]), "--tls-key",
               str(c["server.key"]), "--tls-client-ca", str(c["ca.pem"]),
               query=f"&ca={c['ca.pem']}&cert={c['node.pem']}&key={c['node.key']}").start()
    s.certificates = c
    try:
        yield s
    finally:
        s.kill()


def test_wire_sends_rings_as_fp16_and_counters_exactly():
    spec = {"t": ((1,), np.float32), "prev": ((2, 25, 3), np.float32),
            "kv_k": ((1, 64, 64), np.float32), "steps": ((512,), np.int64)}
    wire = serve.wire_spec(spec, "fp16")
    assert wire["t"][1] == np.float32 and wire["prev"][1] == np.float32
    assert wire["kv_k"] == ((1, 64, 64), np.dtype(np.float16))
    assert wire["steps"][1] == np.int64
    assert all(dt == np.float32 for name, (_, dt) in serve.wire_spec(spec, "fp32").items()
               if name != "steps")
    with pytest.raises(serve.ServeError, match="state-dtype"):
        serve.wire_spec(spec, "int8")


def test_a_served_matcher_tells_the_node_its_search_phase():
    """The node behind a Triton server staggers a matcher's bodies as an in-process one does:
    the served info names the phase entry, and the client's source takes it (checked)."""
    from engines.triton_engine import _parse_info
    from streamtmr.models.registry import model_class

    eng = create_engine("torch", model=model_class("motion_match").from_preset("tiny"),
                        window=None)
    info = json.loads(json.dumps(serve.model_info(eng, "fp32", 8)))   # as it travels
    assert info["stagger"] == ["since_search", eng.stagger[1]]
    source, _, _ = _parse_info(info)
    assert source.stagger == eng.stagger
    info["stagger"] = ["anchor", 5]                                      # not a scalar
    with pytest.raises(ValueError, match="stagger"):
        _parse_info(info)


def test_streaming_step_through_triton_equals_in_process(stream_server, stream_model):
    client = stream_server.wait_ready()
    local = create_engine("onnxruntime", model=stream_model, window=None)
    try:
        assert client.streaming and client.unevaluated and client.card is None
        assert {k: s for k, (s, _) in client.state_spec().items()} == {
            k: s for k, (s, _) in local.state_spec().items()}
        x = moving_windows(3, 30, seed=2)
        sc, sl = client.init_state(3), local.init_state(3)
        for t in range(x.shape[1]):
            if t == 10:  # bodies travel in separate requests: each state stays its own
                y0, s0 = client.step(x[:1, t], {k: v[:1] for k, v in sc.items()})
                y12, s12 = client.step(x[1:, t], {k: v[1:] for k, v in sc.items()})
                yc = np.concatenate([y0, y12])
                sc = {k: np.concatenate([s0[k], s12[k]]) for k in sc}
            else:
                yc, sc = client.step(x[:, t], sc)
            yl, sl = local.step(x[:, t], sl)
            np.testing.assert_allclose(yc, yl, atol=1e-5, rtol=0)
        w = moving_windows(2, client.window, seed=3)  # run(): each window a fresh track
        sl, ref = local.init_state(2), []
        for t in range(w.shape[1]):
            y, sl = local.step(w[:, t], sl)
            ref.append(y)
        np.testing.assert_allclose(client.run(w), np.stack(ref, 1), atol=1e-5, rtol=0)
    finally:
        client.close()
        local.close()


def test_node_steps_a_streaming_model_through_triton(stream_server):
    client = stream_server.wait_ready()
    node = Node(client, [], NodeConfig(budget_ms=5000, leak_guard=False, bone_tol=1e-2))
    try:
        published = []
        for seq in range(1, 8):
            published += node.step(person_frame(seq))
        counters = node.stats()["counters"]
        assert counters.get("engine_errors", 0) == 0
        assert published and all(f.bodies for f in published[1:])
    finally:
        node.close()
        client.close()


def test_tls_server_refuses_nodes_without_a_client_certificate(stream_server):
    stream_server.wait_ready().close()  # with the CA and a client certificate: admitted
    c = stream_server.certificates
    with pytest.raises(EngineError):
        create_engine(f"{stream_server.url}?ca={c['ca.pem']}&timeout_ms=3000")
    with pytest.raises(EngineError):  # clear text to a TLS server
        create_engine(f"{stream_server.url}?timeout_ms=3000")


def test_open_engine_takes_the_servers_card_and_runs_the_leak_guard_remotely(stream_server):
    from engines import ModelRefused, open_engine
    stream_server.wait_ready().close()
    url = f"{stream_server.url}?timeout_ms=5000{stream_server.query}"
    with pytest.raises(ModelRefused, match="no privacy card"):
        open_engine(url)  # served with --allow-unevaluated: the node must allow it too
    engine = open_engine(url, allow_unevaluated=True)  # warm-up and leak guard by step()
    try:
        assert engine.streaming and engine.unevaluated and engine.card is None
    finally:
        engine.close()
