"""The ``triton`` scenario: per-frame engine latency of 1, 2 and 4 nodes, in process and through
one ``streamtmr serve`` server, in one run; plus the batch latencies the capacity model of
docs/scaling.md is built from.

Each node is a process that calls its engine once per frame at 30 Hz (one sensor frame, its
bodies' windows → the newest anonymized frame: ``run_latest(windows, 1)``, exactly the node's
engine call) and records the call's latency. In process, every node has its own engine; with
Triton, all nodes share the server and its dynamic batcher. The nodes of one cell start
together. Triton's counters (requests, engine calls) give the mean batch per cell.

    python -m bench.triton [--seconds 20] [--engine onnxruntime] [--bodies 1] [--save]

Saved as ``bench/results/triton-<date>-<host-kind>.json`` (the streaming part alone:
``triton-stream-<dtype>-…``) with the machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe_machine, host_kind, load_average
from bench.stats import summarize_ns

FPS = 30.0
NODES = (1, 2, 4)
BATCHES = (1, 2, 4, 8, 16, 32, 64)
RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def windows(bodies: int, window: int = 64, seed: int = 0) -> np.ndarray:
    """``bodies`` moving people: the dummy's rest pose, scaled, offset and jittered."""
    from streamtmr.dummy import default_dummy
    rng = np.random.default_rng(seed)
    pose = default_dummy().rest_pose()
    x = pose[None, None] * rng.uniform(0.9, 1.1, (bodies, 1, 1, 1))
    x = x + rng.normal(0.0, 0.01, (bodies, window, 25, 3)) + np.array([0.0, 0.0, 3.0])
    return np.ascontiguousarray(x, dtype=np.float32)


# ------------------------------------------------------------------------------------------
# One node (a worker process)
# ------------------------------------------------------------------------------------------

def frame_call(engine: Any, bodies: int, seed: int = 0):
    """The node's engine call for one frame of ``bodies`` bodies: the newest frame of their
    windows (windowed model) or one step of their frames with the state carried (streaming)."""
    if not engine.streaming:
        x = windows(bodies, engine.window, seed=seed)
        return lambda: engine.run_latest(x, 1)
    frames = motion(bodies, 300, seed=seed)
    track = {"state": engine.init_state(bodies), "t": 0}

    def step() -> None:
        t = track["t"] % frames.shape[1]
        _, track["state"] = engine.step(np.ascontiguousarray(frames[:, t]), track["state"])
        track["t"] += 1
    return step


def node_worker(engine_spec: str, model: str, bodies: int, seconds: float, start_at: float,
                out: Path) -> None:
    """Call the engine at 30 Hz from ``start_at`` (wall clock) for ``seconds``; save the
    latencies (ns) to ``out`` (.npy)."""
    from engines import create_engine
    remote = engine_spec.startswith("triton://")  # the server names the model
    engine = create_engine(engine_spec, model=None if remote else model, window=None,
                           max_batch=max(8, bodies))
    call = frame_call(engine, bodies, seed=os.getpid() % 1000)
    for _ in range(10):
        call()
    time.sleep(max(0.0, start_at - time.time()))
    period = 1.0 / FPS
    t_next, end = time.monotonic(), time.monotonic() + seconds
    lat = []
    while time.monotonic() < end:
        t0 = time.perf_counter_ns()
        call()
        lat.append(time.perf_counter_ns() - t0)
        t_next += period
        time.sleep(max(0.0, t_next - time.monotonic()))
    engine.close()
    np.save(out, np.asarray(lat, np.int64))


def run_cell(engine_spec: str, model: str, nodes: int, bodies: int,
             seconds: float) -> list[np.ndarray]:
    """``nodes`` worker processes started together; their latency samples (ns)."""
    with tempfile.TemporaryDirectory() as tmp:
        start_at = time.time() + 8.0 + 2.0 * nodes  # imports and warm-up of every worker
        procs, outs = [], []
        for i in range(nodes):
            outs.append(Path(tmp) / f"node{i}.npy")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.triton", "--worker", engine_spec,
                 "--model", model, "--bodies", str(bodies), "--seconds", str(seconds), "--start-at",
                 str(start_at), "--out", str(outs[-1])], cwd=ROOT))
        for p in procs:
            if p.wait(timeout=seconds + 180) != 0:
                raise RuntimeError(f"node worker failed ({p.returncode}) for {engine_spec}")
        return [np.load(o) for o in outs]


# ------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------

def start_server(engine: str, port: int, http: int, metrics: int, log: Path,
                 queue_delay_us: int, workspace: Path, *extra: str) -> subprocess.Popen:
    from streamtmr.serve import serving_python
    python = serving_python()
    if python is None:
        raise SystemExit("no serving environment (.venv-serve or $STREAMTMR_SERVE_PYTHON)")
    return subprocess.Popen(
        [str(python), "-m", "streamtmr", "serve", "--engine", engine, "--port", str(port),
         "--http-port", str(http), "--metrics-port", str(metrics), "--queue-delay-us",
         str(queue_delay_us), "--workspace", str(workspace), *extra], stdout=log.open("wb"),
        stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def served(model: str, local: Any, state_dtype: str = "fp32") -> list[str]:
    """``streamtmr serve`` options for the model the in-process engine runs (a benchmark
    publishes nothing, so a model without a card is served too)."""
    return ["--model", str(model), "--window", str(local.window), "--allow-unevaluated",
            "--state-dtype", state_dtype]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 180.0):
    from engines import EngineError, create_engine
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            return create_engine(url, window=None)
        except EngineError:
            time.sleep(0.5)
    raise RuntimeError(f"the server did not answer within {timeout_s} s")


def batch_latencies(engines: dict[str, Any], reps: int) -> dict[str, list[dict[str, Any]]]:
    """Latency of each engine's frame call (:func:`frame_call`) at each batch size of
    :data:`BATCHES`, one caller, the engines' calls interleaved so both see the same load."""
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in engines}
    for b in BATCHES:
        calls = {k: frame_call(e, b, seed=b) for k, e in engines.items()}
        lat: dict[str, list[int]] = {k: [] for k in engines}
        for _ in range(reps + 1):
            for k, call in calls.items():
                t0 = time.perf_counter_ns()
                call()
                lat[k].append(time.perf_counter_ns() - t0)
        for k in engines:
            rows[k].append({"batch": b, **summarize_ns(lat[k][1:])})  # the first is warm-up
    return rows


# ------------------------------------------------------------------------------------------
# The scenario
# ------------------------------------------------------------------------------------------

def parity(client: Any, local: Any) -> float:
    """Largest |Triton − in process| (m): 8 windows, or 3 tracks of 100 steps (streaming)."""
    if not local.streaming:
        x = windows(8, local.window, seed=1)
        return float(np.abs(client.run(x) - local.run(x)).max())
    x, worst = motion(3, 100, seed=1), 0.0
    sc, sl = client.init_state(3), local.init_state(3)
    for t in range(x.shape[1]):
        yc, sc = client.step(np.ascontiguousarray(x[:, t]), sc)
        yl, sl = local.step(np.ascontiguousarray(x[:, t]), sl)
        worst = max(worst, float(np.abs(yc - yl).max()))
    return worst


def cell_row(mode: str, nodes: int, bodies: int, samples: list[np.ndarray],
             server: dict[str, float] | None = None) -> dict[str, Any]:
    row = {"mode": mode, "nodes": nodes, "bodies_per_node": bodies,
           "latency": summarize_ns(np.concatenate(samples)),
           "per_node_p50_ms": [summarize_ns(s)["p50_ms"] for s in samples]}
    if server is not None:
        row["server"] = server
    return row


def _free_ports(n: int) -> list[int]:
    import socket
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    d = {k: after[k] - before[k] for k in ("requests", "inferences", "executions", "queue_us",
                                           "request_us")}
    ex = d["executions"]
    d["requests_per_exec"] = round(d["requests"] / ex, 3) if ex else 0.0
    d["bodies_per_exec"] = round(d["inferences"] / ex, 3) if ex else 0.0
    d["queue_ms_mean"] = round(d["queue_us"] / d["requests"] / 1e3, 3) if d["requests"] else 0.0
    return d


def scenario(opts: argparse.Namespace) -> dict[str, Any]:
    """Batch latencies in process and through Triton, then the 1/2/4-node cells."""
    from engines import create_engine
    from streamtmr.serve import statistics
    port, http, metrics = _free_ports(3)
    url = f"triton://127.0.0.1:{port}"
    log = Path(tempfile.gettempdir()) / f"streamtmr-bench-triton-{port}.log"
    result: dict[str, Any] = {
        "schema": 1, "scenario": "triton", "machine": describe_machine(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": {k: v for k, v in vars(opts).items() if k not in ("worker", "out")}}
    local = create_engine(opts.engine, model=opts.model, window=None, max_batch=max(BATCHES))
    result["model"] = {"name": local.source.name, "method": local.source.method,
                       "sha256": local.source.sha256, "engine": local.name,
                       "server_engine": opts.engine, "streaming": local.streaming,
                       "state_dtype": opts.state_dtype if local.streaming else None}
    workspace = tempfile.TemporaryDirectory(prefix="streamtmr-bench-triton-")
    server = start_server(opts.engine, port, http, metrics, log, opts.queue_delay_us,
                          Path(workspace.name) / "ws",
                          *served(opts.model, local, opts.state_dtype))
    try:
        client = wait_ready(url, server)
        result["parity_max_abs"] = parity(client, local)
        batches = batch_latencies({"in_process": local, "triton": client}, opts.reps)
        result["in_process_batches"], result["triton_batches"] = batches.values()
        client.close()
        cells = []
        for n in NODES:
            cells.append(cell_row("in-process", n, opts.bodies,
                                  run_cell(opts.engine, opts.model, n, opts.bodies,
                                           opts.seconds)))
            before = statistics(metrics)
            samples = run_cell(url, opts.model, n, opts.bodies, opts.seconds)
            cells.append(cell_row("triton", n, opts.bodies, samples,
                                  _delta(before, statistics(metrics))))
        result["cells"] = cells
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
        local.close()
        workspace.cleanup()
    result["aims"] = aims(result)
    result["load_average_end"] = load_average()
    return result


def motion(bodies: int, frames: int, seed: int = 0) -> np.ndarray:
    """People of different sizes walking and waving: ``[bodies, frames, 25, 3]`` float32."""
    from streamtmr import skeleton
    from streamtmr.dummy import default_dummy
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float32) / FPS
    out = []
    for i in range(bodies):
        x = np.broadcast_to(default_dummy().rest_pose() * rng.uniform(0.85, 1.15),
                            (frames, 25, 3)).copy()
        x += np.stack([0.6 * i + 0.3 * np.sin(0.4 * t), 0 * t, 3.0 + 0.5 * np.sin(0.2 * t)],
                      -1)[:, None]
        for j in ("ElbowRight", "WristRight", "HandRight", "HandTipRight", "ThumbRight"):
            x[:, skeleton.JOINT[j], 1] += 0.2 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t)
        out.append(x)
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def stream_part(opts: argparse.Namespace) -> dict[str, Any]:
    """A streaming model through Triton with its state on the wire (``--state-dtype``): the
    output against the in-process engine over a long track, the state bytes per body and the
    step latency of both (interleaved calls, one caller)."""
    from engines import create_engine
    from streamtmr.serve import wire_spec
    local = create_engine(opts.engine, model=opts.stream_model, window=None, max_batch=8)
    spec = local.state_spec()
    wire = wire_spec(spec, opts.state_dtype)
    nbytes = {d: int(sum(np.prod(s) * np.dtype(t).itemsize for s, t in sp.values()))
              for d, sp in (("fp32", spec), (opts.state_dtype, wire))}
    port, http, metrics = _free_ports(3)
    workspace = tempfile.TemporaryDirectory(prefix="streamtmr-bench-triton-")
    log = Path(tempfile.gettempdir()) / f"streamtmr-bench-triton-{port}.log"
    server = start_server(opts.engine, port, http, metrics, log, opts.queue_delay_us,
                          Path(workspace.name) / "ws", "--model", str(opts.stream_model),
                          "--allow-unevaluated", "--state-dtype", opts.state_dtype)
    try:
        client = wait_ready(f"triton://127.0.0.1:{port}", server)
        x = motion(opts.bodies_stream, opts.stream_frames)
        sc, sl = client.init_state(len(x)), local.init_state(len(x))
        diff, lat = [], {"in_process": [], "triton": []}
        for t in range(x.shape[1]):
            t0 = time.perf_counter_ns()
            yl, sl = local.step(x[:, t], sl)
            t1 = time.perf_counter_ns()
            yc, sc = client.step(x[:, t], sc)
            lat["triton"].append(time.perf_counter_ns() - t1)
            lat["in_process"].append(t1 - t0)
            diff.append(float(np.abs(yc - yl).max()))
        client.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
        local.close()
        workspace.cleanup()
    from streamtmr.cache import file_sha256
    return {"model": str(opts.stream_model), "sha256": file_sha256(opts.stream_model),
            "method": local.source.method, "state_dtype": opts.state_dtype,
            "state_bytes_per_body": nbytes, "bodies": len(x), "frames": int(x.shape[1]),
            "max_abs_diff_mm": round(1e3 * max(diff), 4),
            "max_abs_diff_mm_last_100": round(1e3 * max(diff[-100:]), 4),
            "step_latency": {k: summarize_ns(v[10:]) for k, v in lat.items()}}


#: Server settings compared by :func:`transport_part`: PyTriton's tensor transport between
#: Triton's Python backend stub and the server process, and the batcher's queue delay.
TRANSPORTS = {"tensor store, 300 us": ("", 300), "socket, 300 us": ("1", 300),
              "socket, 100 us": ("1", 100), "socket, 0 us": ("1", 0)}


def transport_part(opts: argparse.Namespace, calls: int = 400) -> dict[str, Any]:
    """Batch-1 latency through servers with each setting of :data:`TRANSPORTS` and in
    process, one caller, calls interleaved (10 ms apart) so that all see the same load."""
    from engines import create_engine
    local = create_engine(opts.engine, model=opts.model, window=None, max_batch=8)
    tmp = tempfile.TemporaryDirectory(prefix="streamtmr-bench-triton-")
    servers = {}
    for name, (no_store, delay) in TRANSPORTS.items():
        port, http, metrics = _free_ports(3)
        os.environ["PYTRITON_NO_TENSORSTORE"] = no_store  # inherited by that server only
        servers[name] = (f"triton://127.0.0.1:{port}", start_server(
            opts.engine, port, http, metrics, Path(tmp.name) / f"{port}.log", delay,
            Path(tmp.name) / f"ws{port}", *served(opts.model, local)))
    os.environ.pop("PYTRITON_NO_TENSORSTORE")
    try:
        engines = {name: wait_ready(url, proc) for name, (url, proc) in servers.items()}
        engines["in process"] = local
        frame = {k: frame_call(e, 1) for k, e in engines.items()}
        lat: dict[str, list[int]] = {k: [] for k in engines}
        for _ in range(calls):
            for k, call in frame.items():
                t0 = time.perf_counter_ns()
                call()
                lat[k].append(time.perf_counter_ns() - t0)
            time.sleep(0.01)
        for e in engines.values():
            e.close()
    finally:
        for _url, proc in servers.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for _url, proc in servers.values():
            proc.wait(60)
        tmp.cleanup()
    return {k: summarize_ns(v[20:]) for k, v in lat.items()}


def aims(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's aims, measured: parity, added p50 at 1 node, mean batch with >= 2 nodes."""
    cell = {(c["mode"], c["nodes"]): c for c in result["cells"]}
    added = (cell[("triton", 1)]["latency"]["p50_ms"]
             - cell[("in-process", 1)]["latency"]["p50_ms"])
    p = result["parity_max_abs"]
    exact = result["model"]["state_dtype"] in (None, "fp32")
    out = [{"aim": "identical output <= 1e-5", "measured": p, "met": p <= 1e-5} if exact else
           {"aim": "output with fp16 state rings, max |diff| in m (1e-5 needs --state-dtype "
                   "fp32)", "measured": p, "met": None},
           {"aim": "added latency at 1 node, p50 <= 5 ms", "measured": round(added, 3),
            "met": added <= 5.0}]
    for n in NODES[1:]:
        rpe = cell[("triton", n)]["server"]["requests_per_exec"]
        out.append({"aim": f"mean batch > 1 with {n} nodes (requests per engine call)",
                    "measured": rpe, "met": rpe > 1.0})
    return out


def report(result: dict[str, Any]) -> str:
    lines = [f"model {result['model']['name']} ({result['model']['method']}, sha256 "
             f"{result['model']['sha256'][:12]}…), engine {result['model']['server_engine']}",
             "mode        nodes  n      p50 ms  p99 ms  requests/engine call"]
    for c in result["cells"]:
        lat = c["latency"]
        rpe = c.get("server", {}).get("requests_per_exec", "")
        lines.append(f"{c['mode']:<11} {c['nodes']:>5}  {lat['n']:<6} {lat['p50_ms']:>6.2f}  "
                     f"{lat['p99_ms']:>6.2f}  {rpe}")
    lines.append("batch  in-process p50  triton p50 (ms)")
    for a, b in zip(result["in_process_batches"], result["triton_batches"]):
        lines.append(f"{a['batch']:>5}  {a['p50_ms']:>14.2f}  {b['p50_ms']:>10.2f}")
    lines += [f"{ {True: 'met ', False: 'MISS', None: 'info'}[a['met']]} {a['aim']}: "
              f"{a['measured']}"
              for a in result["aims"]]
    return "\n".join(lines)


def run(**overrides: Any) -> dict[str, Any]:
    """The scenario with the command line's defaults, ``overrides`` by option name (e.g.
    ``run(seconds=5, engine="torch-cuda")``): the door for ``bench.suite``."""
    opts = parser().parse_args([])
    unknown = set(overrides) - set(vars(opts))
    if unknown:
        raise TypeError(f"bench.triton.run: unknown option(s) {sorted(unknown)}")
    vars(opts).update(overrides)
    result = scenario(opts)
    if opts.stream_model:
        result["streaming"] = stream_part(opts)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.triton", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--engine", default="onnxruntime", help="server and in-process back end")
    p.add_argument("--model", default="default", help="checkpoint served and run [default]")
    p.add_argument("--seconds", type=float, default=20.0, help="per cell (600 frames at 20 s)")
    p.add_argument("--bodies", type=int, default=1, help="bodies per node and frame [1]")
    p.add_argument("--reps", type=int, default=100, help="calls per batch size [100]")
    p.add_argument("--queue-delay-us", type=int, default=100)
    p.add_argument("--stream-model", type=Path, default=None, metavar="CKPT",
                   help="also run this streaming checkpoint through Triton (state on the wire)")
    p.add_argument("--state-dtype", choices=("fp16", "fp32"), default="fp16")
    p.add_argument("--stream-frames", type=int, default=900, help="track length [900: 30 s]")
    p.add_argument("--bodies-stream", type=int, default=3, help="bodies per step [3]")
    p.add_argument("--stream-only", action="store_true", help="only the streaming part")
    p.add_argument("--transport", action="store_true",
                   help="only compare PyTriton's tensor transports and queue delays")
    p.add_argument("--save", action="store_true", help="write bench/results/triton-….json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if opts.worker:
        node_worker(opts.worker, opts.model, opts.bodies, opts.seconds, opts.start_at,
                    Path(opts.out))
        return 0
    if opts.transport:
        result = {"schema": 1, "scenario": "triton-transport", "machine": describe_machine(),
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "model": "default", "engine": opts.engine, "batch": 1,
                  "latency": transport_part(opts), "load_average_end": load_average()}
        print(json.dumps(result["latency"], indent=1))
        return _save(result) if opts.save else 0
    result = scenario(opts) if not opts.stream_only else {
        "schema": 1, "scenario": f"triton-stream-{opts.state_dtype}",
        "machine": describe_machine(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if opts.stream_model:
        result["streaming"] = stream_part(opts)
        print(json.dumps(result["streaming"], indent=1))
    if not opts.stream_only:
        print(report(result))
    return _save(result) if opts.save else 0


def _save(result: dict[str, Any]) -> int:
    day = result["started"][:10]
    path = RESULTS / f"{result['scenario']}-{day}-{host_kind(result['machine'])}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
