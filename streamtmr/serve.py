"""``streamtmr serve``: the anonymizer hosted in Triton Inference Server (PyTriton).

One server, many nodes: every node sends its frame's batch (windows for a windowed model; frames
plus each body's state for a streaming model) and Triton's dynamic batcher merges the requests
of all nodes into one engine call. The server holds no per-body state, so any model instance can
take any body, and a restarted server loses nothing.

Two Triton models are bound:

* ``streamtmr`` — the anonymizer. Windowed: ``windows`` FP32 [T, 25, 3] → ``anonymized`` FP32
  [T, 25, 3]. Streaming: ``frames`` FP32 [25, 3] and ``state_in.<name>`` → ``anonymized`` FP32
  [25, 3] and ``state_out.<name>``, the state in its *wire* dtype (``--state-dtype fp16``, the
  default, sends the rings and caches as FP16: half the bytes per body, see :func:`wire_spec`;
  ``fp32`` sends the state exactly). Batch axis 0.
* ``streamtmr_info`` — one JSON document (:func:`model_info`): model name and SHA-256, method,
  window, the dummy's bone lengths, the privacy card bound to the served weights (found by
  ``engines.open_engine``; ``unevaluated`` when served with ``--allow-unevaluated``), the state
  spec and one body's initial state. Nodes read it on connect and again after every
  reconnect, so a node never mixes two models and carries the card into its stats.

PyTriton 0.7 needs numpy < 2, the project's main environment has numpy 2: the server runs in an
environment of its own (:func:`serving_python`), its Python backend stub with the running
interpreter's ``libpython`` first on ``LD_LIBRARY_PATH`` (the bundled server otherwise loads the
system's, which breaks a virtualenv built from another Python build).

Security as on the ZeroMQ side: gRPC listens on loopback by default; any other address needs
TLS (``--tls-cert``/``--tls-key``, with ``--tls-client-ca`` to admit only clients holding a
certificate signed by that CA) or ``--insecure``. HTTP and metrics always stay on loopback.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MODEL = "streamtmr"
INFO_MODEL = "streamtmr_info"
#: The interpreter of the serving environment (nvidia-pytriton, numpy < 2).
PYTHON_ENV = "STREAMTMR_SERVE_PYTHON"
#: Wire dtypes of the streaming state (float tensors only; integer state keeps its dtype).
STATE_DTYPES = {"fp32": np.float32, "fp16": np.float16}
#: State tensors smaller than this (elements per body) always travel in their own dtype.
WIRE_MIN_ELEMENTS = 256


class ServeError(RuntimeError):
    """The server cannot start (the message names the option or the missing piece)."""


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8001                 # gRPC, what nodes connect to
    http_port: int = 8000            # loopback only: health, statistics
    metrics_port: int = 8002         # loopback only: Prometheus metrics
    engine: str = "auto"
    model: str = "default"
    dummy: str = "default"
    window: int | None = 64
    max_batch: int = 64              # bodies per engine call, summed over all nodes
    queue_delay_us: int = 100        # how long the batcher waits to fill a batch
    instances: int = 1               # model instances (engines), each takes any request
    state_dtype: str = "fp16"
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    insecure: bool = False
    allow_unevaluated: bool = False  # serve a model without a privacy card (nodes are told)
    workspace: str | None = None     # PyTriton's sockets and model store (default: a temp one)


def check_security(cfg: ServeConfig) -> None:
    """Loopback, or TLS, or ``--insecure``: raises :class:`ServeError` otherwise."""
    from streamtmr.net import is_loopback_host
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ServeError("--tls-cert and --tls-key go together")
    if cfg.tls_client_ca and not cfg.tls_cert:
        raise ServeError("--tls-client-ca needs --tls-cert and --tls-key")
    for opt, path in (("--tls-cert", cfg.tls_cert), ("--tls-key", cfg.tls_key),
                      ("--tls-client-ca", cfg.tls_client_ca)):
        if path and not Path(path).is_file():
            raise ServeError(f"{opt} {path}: no such file")
    if not is_loopback_host(cfg.host) and not cfg.tls_cert and not cfg.insecure:
        raise ServeError(f"--host {cfg.host} is not loopback: skeletons would cross the network "
                         "in clear text; pass --tls-cert/--tls-key (and --tls-client-ca to "
                         "authenticate nodes) or --insecure")


# ------------------------------------------------------------------------------------------
# The serving environment
# ------------------------------------------------------------------------------------------

def pytriton_missing() -> str | None:
    """Why PyTriton cannot serve from this interpreter (None when it can)."""
    try:
        import pytriton.triton  # noqa: F401
    except ImportError as e:
        return f"nvidia-pytriton is not importable here ({e})"
    return None


def serving_python() -> Path | None:
    """The interpreter of the serving environment: ``$STREAMTMR_SERVE_PYTHON``, else
    ``.venv-serve/bin/python`` next to this source tree (an editable install); None if neither."""
    if env := os.environ.get(PYTHON_ENV):
        return Path(env)
    candidate = Path(__file__).resolve().parents[1] / ".venv-serve" / "bin" / "python"
    return candidate if candidate.is_file() else None


def reexec_in_serving_env(argv: list[str]) -> None:
    """Replace this process with ``python -m streamtmr serve ARGV`` in the serving environment
    (does not return), or raise :class:`ServeError` saying how to make one."""
    python = serving_python()
    if python is None or not python.is_file():
        raise ServeError(
            f"{pytriton_missing()}; nvidia-pytriton 0.7 needs numpy < 2, so the server runs in "
            f"an environment of its own: python -m venv .venv-serve && .venv-serve/bin/pip "
            f"install 'numpy<2' nvidia-pytriton -e . (or set {PYTHON_ENV} to its python)")
    if os.path.abspath(sys.executable) == os.path.abspath(python):  # symlinks kept: venvs
        raise ServeError(f"{python}: {pytriton_missing()}")
    log.info("re-executing in the serving environment %s", python)
    os.execv(str(python), [str(python), "-m", "streamtmr", "serve", *argv])


def _environment_for_backend_stub() -> None:
    """Put this interpreter's libpython first for the Triton Python backend stub, and pass
    tensors between the stub and this process inline over PyTriton's socket instead of its
    shared-memory tensor store (one 64-frame window per call on the 2-core CPU: p50 6.84 vs
    8.02 ms, bench/results/triton-transport-2026-12-02-cpu-2c.json; the tensors here are tens
    of KB). ``PYTRITON_NO_TENSORSTORE=`` (empty) in the environment keeps the store."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        old = os.environ.get("LD_LIBRARY_PATH")
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{old}" if old else libdir
    os.environ.setdefault("PYTRITON_NO_TENSORSTORE", "1")


# ------------------------------------------------------------------------------------------
# What the nodes learn about the model
# ------------------------------------------------------------------------------------------

def model_info(engine: Any, state_dtype: str, max_batch: int) -> dict[str, Any]:
    """The ``streamtmr_info`` document for ``engine`` (see the module docstring)."""
    src = engine.source
    info: dict[str, Any] = {
        "model": src.name, "method": src.method, "model_sha256": src.sha256,
        "config": src.config, "window": int(src.window), "max_batch": int(max_batch),
        "dummy": {"name": src.dummy.name,
                  "lengths": np.asarray(src.dummy.lengths, np.float32).tolist()},
        "backend": engine.name, "device": engine.device, "precision": engine.precision,
        "graph_sha256": getattr(engine, "graph_sha256", None) or src.sha256,
        "card": getattr(engine, "card", None),
        "unevaluated": bool(getattr(engine, "unevaluated", True)),
        "streaming": bool(getattr(engine, "streaming", False))}
    if info["streaming"]:
        wire = wire_spec(engine.state_spec(), state_dtype)
        init = engine.init_state(1)
        info["state"] = {name: {"shape": list(shape), "dtype": np.dtype(dt).name,
                                "init": base64.b64encode(np.ascontiguousarray(
                                    init[name][0], dt).tobytes()).decode()}
                         for name, (shape, dt) in wire.items()}
        if getattr(engine, "stagger", None) is not None:
            info["stagger"] = list(engine.stagger)     # the client's node phases fresh bodies
    return info


def wire_spec(spec: dict[str, tuple[tuple[int, ...], Any]],
              state_dtype: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The state spec as it travels: float tensors of at least :data:`WIRE_MIN_ELEMENTS` per
    body (the attention rings and convolution caches: nearly all the bytes) in
    ``state_dtype``; the small ones — frame counter, reference, previous positions, recurrent
    cells — keep their dtype (an FP16 frame counter stops at 2048, FP16 positions at 3 m
    are 2 mm apart)."""
    if state_dtype not in STATE_DTYPES:
        raise ServeError(f"--state-dtype {state_dtype!r}: choose one of {sorted(STATE_DTYPES)}")
    wire = np.dtype(STATE_DTYPES[state_dtype])

    def travels_as(shape: tuple[int, ...], dt: Any) -> np.dtype:
        dt = np.dtype(dt)
        small = int(np.prod(shape, dtype=np.int64)) < WIRE_MIN_ELEMENTS
        return dt if small or not np.issubdtype(dt, np.floating) else wire
    return {name: (tuple(int(s) for s in shape), travels_as(shape, dt))
            for name, (shape, dt) in spec.items()}


# ------------------------------------------------------------------------------------------
# Inference functions (one list of requests per Triton batch)
# ------------------------------------------------------------------------------------------

def _finite(a: np.ndarray) -> np.ndarray:
    """Per-request mask: True where every value of ``a[i]`` is finite."""
    return np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)


def windows_infer(engine: Any):
    """Triton callable for a windowed engine. The requests of one batch are concatenated into
    one engine call; a request carrying a non-finite value gets NaN back (the client raises)
    and never spoils the other requests of its batch."""
    rest = np.asarray(engine.source.dummy.rest_pose(), np.float32)

    def infer(requests: list) -> list[dict[str, np.ndarray]]:
        sizes = [len(r["windows"]) for r in requests]
        x = np.concatenate([r["windows"] for r in requests]).astype(np.float32, copy=False)
        ok = _finite(x)
        if not ok.all():
            log.warning("%d window(s) with non-finite values answered with NaN", (~ok).sum())
            x = x.copy()
            x[~ok] = rest
        y = engine.run(np.ascontiguousarray(x))
        y[~ok] = np.nan
        return [{"anonymized": part} for part in np.split(y, np.cumsum(sizes)[:-1])]
    return infer


def step_infer(engine: Any, wire: dict[str, tuple[tuple[int, ...], np.dtype]]):
    """Triton callable for a streaming engine: frames and state in, output and state out."""
    spec = engine.state_spec()

    def infer(requests: list) -> list[dict[str, np.ndarray]]:
        sizes = [len(r["frames"]) for r in requests]
        frames = np.concatenate([r["frames"] for r in requests]).astype(np.float32, copy=False)
        state = {n: np.concatenate([r[f"state_in.{n}"] for r in requests]).astype(
            spec[n][1], copy=False) for n in spec}
        ok = _finite(frames)
        if not ok.all():
            log.warning("%d frame(s) with non-finite values answered with NaN", (~ok).sum())
            frames = frames.copy()
            frames[~ok] = np.asarray(engine.source.dummy.rest_pose(), np.float32)
        out, new = engine.step(np.ascontiguousarray(frames), state)
        out = np.array(out, np.float32)
        out[~ok] = np.nan
        cuts = np.cumsum(sizes)[:-1]
        parts = [{"anonymized": o} for o in np.split(out, cuts)]
        for n, (_shape, dt) in wire.items():
            for part, s in zip(parts, np.split(np.asarray(new[n]).astype(dt), cuts)):
                part[f"state_out.{n}"] = s
        return parts
    return infer


def info_infer(info: dict[str, Any]):
    blob = np.array([json.dumps(info, default=str).encode()], dtype=np.bytes_)

    def infer(requests: list) -> list[dict[str, np.ndarray]]:
        return [{"info": blob} for _ in requests]
    return infer


# ------------------------------------------------------------------------------------------
# Statistics (Prometheus metrics endpoint, loopback)
# ------------------------------------------------------------------------------------------

def statistics(metrics_port: int = 8002, host: str = "127.0.0.1", model: str = MODEL,
               timeout_s: float = 2.0) -> dict[str, float]:
    """Triton's counters for ``model`` from the metrics endpoint: requests, bodies
    (``inferences``), engine calls (``executions``) and the mean batch in requests and in
    bodies per engine call (dynamic batching at work when ``requests_per_exec`` > 1)."""
    import re
    from urllib.request import urlopen

    with urlopen(f"http://{host}:{metrics_port}/metrics", timeout=timeout_s) as r:
        text = r.read().decode()
    names = {"nv_inference_request_success": "requests", "nv_inference_count": "inferences",
             "nv_inference_exec_count": "executions",
             "nv_inference_queue_duration_us": "queue_us",
             "nv_inference_request_duration_us": "request_us"}
    out = dict.fromkeys(names.values(), 0.0)
    pattern = re.compile(r'^(\w+)\{([^}]*)\} ([0-9.eE+-]+)$')
    for line in text.splitlines():
        m = pattern.match(line)
        if m and m.group(1) in names and f'model="{model}"' in m.group(2):
            out[names[m.group(1)]] += float(m.group(3))
    ex = out["executions"]
    out["requests_per_exec"] = out["requests"] / ex if ex else 0.0
    out["bodies_per_exec"] = out["inferences"] / ex if ex else 0.0
    return out


# ------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------

def _tensors(engine: Any, wire: dict) -> tuple[list, list]:
    from pytriton.model_config import Tensor
    if not getattr(engine, "streaming", False):
        shape = (int(engine.window), 25, 3)
        return ([Tensor(name="windows", dtype=np.float32, shape=shape)],
                [Tensor(name="anonymized", dtype=np.float32, shape=shape)])
    state = [(n, shape, dt) for n, (shape, dt) in wire.items()]
    return ([Tensor(name="frames", dtype=np.float32, shape=(25, 3))]
            + [Tensor(name=f"state_in.{n}", dtype=dt, shape=s) for n, s, dt in state],
            [Tensor(name="anonymized", dtype=np.float32, shape=(25, 3))]
            + [Tensor(name=f"state_out.{n}", dtype=dt, shape=s) for n, s, dt in state])


def triton_config(cfg: ServeConfig):
    from pytriton.triton import TritonConfig
    tls = {}
    if cfg.tls_cert:
        tls = {"grpc_use_ssl": True, "grpc_server_cert": Path(cfg.tls_cert),
               "grpc_server_key": Path(cfg.tls_key)}
        if cfg.tls_client_ca:
            tls |= {"grpc_use_ssl_mutual": True, "grpc_root_cert": Path(cfg.tls_client_ca)}
    return TritonConfig(grpc_address=cfg.host, grpc_port=cfg.port, http_address="127.0.0.1",
                        http_port=cfg.http_port, metrics_address="127.0.0.1",
                        metrics_port=cfg.metrics_port, exit_on_error=True, log_verbose=0,
                        **tls)


def build_engines(cfg: ServeConfig, engine_factory: Any = None) -> list[Any]:
    """One engine per instance through the guarded door (``engines.open_engine``: file checks,
    privacy card, leak guard); ``engine_factory()`` replaces it when given."""
    if engine_factory is None:
        from engines import open_engine

        def engine_factory():
            return open_engine(cfg.engine, model=cfg.model, dummy=cfg.dummy, window=cfg.window,
                               max_batch=cfg.max_batch, allow_unevaluated=cfg.allow_unevaluated)
    engines = [engine_factory() for _ in range(max(1, int(cfg.instances)))]
    for e in engines:
        if getattr(e, "streaming", False):
            e.step(np.broadcast_to(np.asarray(e.source.dummy.rest_pose(), np.float32),
                                   (1, 25, 3)).copy(), e.init_state(1))
        else:
            e.warmup((1,))
    return engines


def serve(cfg: ServeConfig, engine_factory: Any = None) -> None:
    """Host the model until SIGINT/SIGTERM (blocking)."""
    check_security(cfg)
    if reason := pytriton_missing():
        raise ServeError(reason)
    engines = build_engines(cfg, engine_factory)
    wire = (wire_spec(engines[0].state_spec(), cfg.state_dtype)
            if getattr(engines[0], "streaming", False) else {})
    info = model_info(engines[0], cfg.state_dtype, cfg.max_batch)
    _environment_for_backend_stub()
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton

    fn = step_infer if info["streaming"] else windows_infer
    funcs = [fn(e, wire) if info["streaming"] else fn(e) for e in engines]
    inputs, outputs = _tensors(engines[0], wire)
    signal.signal(signal.SIGTERM, _interrupt)
    with Triton(config=triton_config(cfg), workspace=cfg.workspace) as triton:
        triton.bind(model_name=MODEL, infer_func=funcs, inputs=inputs, outputs=outputs,
                    config=ModelConfig(max_batch_size=cfg.max_batch, batcher=DynamicBatcher(
                        max_queue_delay_microseconds=cfg.queue_delay_us)), strict=True)
        triton.bind(model_name=INFO_MODEL, infer_func=info_infer(info),
                    inputs=[Tensor(name="query", dtype=np.int32, shape=(1,))],
                    outputs=[Tensor(name="info", dtype=np.bytes_, shape=(1,))],
                    config=ModelConfig(batching=False))
        log.info("serving %s (%s, sha256 %s…, %s, window %d) on %s:%d with %d instance(s), "
                 "max batch %d, queue delay %d µs", info["model"], info["method"],
                 info["model_sha256"][:12], "streaming" if info["streaming"] else "windowed",
                 info["window"], cfg.host, cfg.port, len(engines), cfg.max_batch,
                 cfg.queue_delay_us)
        triton.serve()
    for e in engines:
        e.close()


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt
