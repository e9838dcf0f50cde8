"""The whole ``streamtmr bench`` run: engines, steps, node, offline — one JSON-ready result.

Every model and engine is measured in the same run on the same machine, so the comparisons
(``rel_model``, ``rel_engine``) are ratios of figures taken minutes apart under the load that
was recorded with them. Every row names the exact model (label and sha256 prefix of its
weights). ``duration`` scales the time slices:

* engine cell (one model × engine × batch of windows): ``0.3 × duration`` s, at least 5 calls
  (2 with ``quick``); a model × engine pair stops after ``2.5 × 0.3 × duration × #batches`` s;
* step cell (streaming models: one frame of N bodies per call): at least 600 calls (so that
  p99 is a percentile) and ``0.5 × duration`` s; a pair stops after ``30 × duration`` s per
  body count;
* node scenario: ``node_frames`` (600) measured frames at the fixed rate and as many closed
  loop (at most ``30 × duration`` s), each after a warm-up of ``0.3`` s (``0.1`` s and 20
  frames with ``quick``);
* offline: ``1.5 × duration`` s per model × engine, 64 sequences per call.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bench import PARTS
from bench.engines import (
    STEP_BATCHES,
    EngineSpec,
    bench_engines,
    bench_steps,
    build_engine,
    is_streaming,
    parse_engine_specs,
    set_torch_threads,
    use_threads,
)
from bench.machine import describe_machine, load_average
from bench.models import DEFAULT_MODELS, BenchModel, resolve_model_spec
from bench.motion import motion_clips, sample_windows
from bench.node import late_count
from bench.stats import MIN_P99_SAMPLES

#: Sequences anonymized per offline call (150–300 frames each).
OFFLINE_SEQUENCES = 64

SCHEMA = 2
#: Aims recorded against the first model (not assertions: what a run reaches). Step and node
#: latencies are p99 in ms; CPU rows use ONNX Runtime or PyTorch CPU.
TARGETS = {"step_1_body_p99_ms": 0.8, "step_6_bodies_p99_ms": 2.0,
           "step_256_bodies_gpu_p99_ms": 1.0, "latency_1_body_p99_ms": 3.0,
           "latency_6_bodies_p99_ms": 5.0, "offline_frames_per_s": 50_000.0}
#: Back ends that run on a GPU (their rows do not count for the CPU aims, and vice versa).
GPU_ENGINES = ("tensorrt", "onnxruntime-cuda", "torch-cuda")


@dataclass
class BenchOptions:
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    engines: list[str] | None = None         # None: every back end present
    batches: list[int] = field(default_factory=lambda: list(range(1, 9)))
    step_batches: list[int] = field(default_factory=lambda: list(STEP_BATCHES))
    bodies: list[int] = field(default_factory=lambda: [1, 6])
    rate_hz: float = 30.0
    duration: float = 1.0
    node_frames: int = 600                   # measured frames per node scenario
    node_models: list[str] | None = None     # None: the first of ``models``
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    budget_ms: float = 10.0
    stagger_search: bool = False             # the node's and the step cells' (NodeConfig)
    quick: bool = False

    def validate(self) -> BenchOptions:
        if not self.models:
            raise ValueError("--models: at least one model")
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"--batches must be positive integers, got {self.batches}")
        if not self.step_batches or min(self.step_batches) < 1:
            raise ValueError(f"--step-batches must be positive integers, got "
                             f"{self.step_batches}")
        if not self.bodies or min(self.bodies) < 1 or max(self.bodies) > 64:
            raise ValueError(f"--bodies must be in 1..64, got {self.bodies}")
        if self.rate_hz <= 0 or self.duration <= 0 or self.budget_ms <= 0:
            raise ValueError("--rate, --duration and --budget-ms must be > 0")
        if self.node_frames < 1:
            raise ValueError(f"--node-frames must be >= 1, got {self.node_frames}")
        unknown = set(self.parts) - set(PARTS)
        if unknown or not self.parts:
            raise ValueError(f"--parts: choose from {', '.join(PARTS)}, got {self.parts}")
        return self


@dataclass
class _Run:
    """What every part of one run shares."""

    opts: BenchOptions
    specs: list[EngineSpec]
    models: list[BenchModel]
    node_models: list[BenchModel]
    clips: list[np.ndarray]
    torch_threads: int
    log: Callable[[str], None]


def _elapsed(t0: float) -> float:
    return round(time.perf_counter() - t0, 2)


def run_bench(opts: BenchOptions, log: Callable[[str], None] = lambda s: None,
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the selected parts. Returns ``(result, samples)``: the JSON-ready result and the raw
    latency samples (ns) for plotting, keyed ``engine``, ``step`` and ``node``."""
    opts.validate()
    t_start = time.perf_counter()
    run, result = _prepare(opts, log)
    samples: dict[str, Any] = {"engine": {}, "step": {}, "node": {}}
    for part in PARTS:
        if part in opts.parts:
            t0 = time.perf_counter()
            result[part] = PART_RUNNERS[part](run, samples)
            result[part]["seconds"] = _elapsed(t0)
    result["targets"] = evaluate_targets(result)
    name_models(result, run.models + run.node_models)
    result["load_average_end"] = load_average()
    result["seconds"] = _elapsed(t_start)
    return result, samples


def _prepare(opts: BenchOptions, log: Callable[[str], None]) -> tuple[_Run, dict[str, Any]]:
    """Machine, engines, models and motion of the run, and the result's header."""
    import torch

    started = _dt.datetime.now(_dt.timezone.utc)
    machine = describe_machine()
    log(f"machine: {machine['cpu']}, {machine['cores_available']} cores, load "
        f"{machine['load_average']}")
    specs, skipped = parse_engine_specs(opts.engines)
    if not specs:
        raise ValueError("no engine can run here: " + "; ".join(f"{k}: {v}"
                                                                 for k, v in skipped.items()))
    models = [resolve_model_spec(m) for m in opts.models]
    node_models = [next((m for m in models if m.spec == s), None) or resolve_model_spec(s)
                   for s in (opts.node_models or [opts.models[0]])]
    clips = motion_clips(max(max(opts.bodies), 8), seed=0)
    run = _Run(opts, specs, models, node_models, clips, torch.get_num_threads(), log)
    result: dict[str, Any] = {
        "schema": SCHEMA, "started": started.isoformat(timespec="seconds"),
        "machine": machine, "options": asdict(opts),
        "models": [m.describe() for m in models],
        "engines": {"benchmarked": [s.label for s in specs], "unavailable": skipped},
    }
    return run, result


def _build_pairs(run: _Run, max_batch: int) -> tuple[list[tuple], list[dict[str, Any]]]:
    """One engine per model × back end: ``(model, spec, engine)`` triples, and what was built
    (or why not: a model some back end cannot run is a result, the run goes on)."""
    pairs, built = [], []
    for m in run.models:
        for s in run.specs:
            try:
                e = build_engine(m, s, max_batch=max_batch)
            except Exception as err:
                built.append({"model": m.label, "engine": s.label,
                              "error": f"{type(err).__name__}: {err}"})
                run.log(f"engine {m.label} / {s.label}: cannot build ({err})")
                continue
            finally:
                set_torch_threads(run.torch_threads)
            built.append({"model": m.label, "engine": s.label,
                          **_describe(e, s, run.torch_threads)})
            pairs.append((m, s, e))
    return pairs, built


def run_engine_part(run: _Run, samples: dict[str, Any]) -> dict[str, Any]:
    """Window engines: latency per call at every batch size (streaming models too, where their
    engine runs whole windows)."""
    opts, batches = run.opts, sorted(set(run.opts.batches))
    pairs, built = _build_pairs(run, max(batches))
    windows = {w: sample_windows(run.clips, max(batches), w, seed=1)
               for w in {e.window for _, _, e in pairs}}
    cell_s = 0.3 * opts.duration
    try:
        rows, samples["engine"] = bench_engines(
            pairs, batches, windows, cell_s=cell_s, min_iters=2 if opts.quick else 5,
            pair_budget_s=2.5 * cell_s * len(batches), torch_threads=run.torch_threads,
            log=run.log)
    finally:
        for _, _, e in pairs:
            e.close()
    return {"built": built, "rows": rows}


def run_step_part(run: _Run, samples: dict[str, Any]) -> dict[str, Any]:
    """Streaming engines: latency of one ``step`` (one frame of every body) per number of
    bodies per call; at least :data:`bench.stats.MIN_P99_SAMPLES` calls per cell."""
    opts, batches = run.opts, sorted(set(run.opts.step_batches))
    pairs, built = _build_pairs(run, max(batches))
    streaming = [p for p in pairs if is_streaming(p[2])]
    for m, s, e in pairs:
        if not is_streaming(e):
            run.log(f"step {m.label} / {s.label}: windowed model, no step")
            e.close()
    min_iters = 20 if opts.quick else MIN_P99_SAMPLES
    try:
        rows, samples["step"] = bench_steps(
            streaming, batches, run.clips, cell_s=0.5 * opts.duration, min_iters=min_iters,
            pair_budget_s=30.0 * opts.duration * len(batches), torch_threads=run.torch_threads,
            log=run.log, staggered=opts.stagger_search)
    finally:
        for _, _, e in streaming:
            e.close()
    windowed = sorted({m.label for m, _, e in pairs if not is_streaming(e)})
    return {"built": built, "rows": rows, "windowed_models": windowed}


def run_node_part(run: _Run, samples: dict[str, Any]) -> dict[str, Any]:
    """The node end to end over ZeroMQ loopback, on the first engine."""
    from bench.node import bench_node

    opts, spec = run.opts, run.specs[0]
    runs = []
    for m in run.node_models:
        engine = build_engine(m, spec, max_batch=max(8, max(opts.bodies)))
        try:
            use_threads(spec, run.torch_threads)
            engine.warmup(sorted(set(range(1, max(opts.bodies) + 1))))
            section, s = bench_node(engine, run.clips, sorted(set(opts.bodies)), opts.rate_hz,
                                    frames=opts.node_frames,
                                    max_s=30 * opts.duration,
                                    warmup_s=0.1 if opts.quick else 0.3,
                                    budget_ms=opts.budget_ms, log=run.log,
                                    stagger_search=opts.stagger_search)
        finally:
            engine.close()
            set_torch_threads(run.torch_threads)
        runs.append({"model": m.label, "engine": spec.label, **section})
        samples["node"][m.label] = s
    return {"runs": runs}


def offline_sequences(clips: list[np.ndarray], count: int = OFFLINE_SEQUENCES
                      ) -> list[np.ndarray]:
    """``count`` sequences of 150–300 frames cut from the looped clips at different offsets:
    many recordings anonymized in one batch, as ``streamtmr anonymize`` does with a folder."""
    from bench.motion import pingpong
    out = []
    for i in range(count):
        track = pingpong(clips[i % len(clips)])
        n = 150 + (37 * i) % 151
        idx = (17 * i + np.arange(n)) % len(track)
        out.append(np.ascontiguousarray(track[idx]))
    return out


def run_offline_part(run: _Run, samples: dict[str, Any]) -> dict[str, Any]:
    """Offline ``anonymize`` throughput of every model × back end, all sequences per call."""
    from bench.offline import OFFLINE_BATCH, bench_offline

    sequences = offline_sequences(run.clips, 8 if run.opts.quick else OFFLINE_SEQUENCES)
    rows = []
    for m in run.models:
        for s in run.specs:
            row: dict[str, Any] = {"model": m.label, "engine": s.label}
            try:
                e = build_engine(m, s, max_batch=OFFLINE_BATCH)
                try:
                    use_threads(s, run.torch_threads)
                    row.update(bench_offline(e, sequences, 1.5 * run.opts.duration))
                finally:
                    e.close()
            except Exception as err:  # as above: recorded, the run goes on
                row["skipped"] = f"failed: {type(err).__name__}: {err}"
            set_torch_threads(run.torch_threads)
            rows.append(row)
            if "frames_per_s" in row:
                run.log(f"offline {m.label} / {s.label}: {row['frames_per_s']:.0f} frames/s")
    _offline_ratios(rows)
    return {"rows": rows, "sequences": len(sequences),
            "frames_per_call": int(sum(len(q) for q in sequences))}


PART_RUNNERS: dict[str, Callable[[_Run, dict[str, Any]], dict[str, Any]]] = {
    "engine": run_engine_part, "step": run_step_part, "node": run_node_part,
    "offline": run_offline_part}


def name_models(result: dict[str, Any], models: list[BenchModel]) -> None:
    """Every recorded row (engine, step, node, offline) names the exact model it measured:
    ``model_sha256`` (prefix) and ``model_ident`` beside its label."""
    by_label = {m.label: m for m in models}

    def tag(row: dict[str, Any]) -> None:
        m = by_label.get(row.get("model"))
        if m is not None:
            row["model_sha256"] = m.sha256[:12]
            row["model_ident"] = m.ident

    for part in ("engine", "step", "offline"):
        for row in (result.get(part) or {}).get("rows", []):
            tag(row)
    for row in result.get("targets", []):
        tag(row)
    for run in (result.get("node") or {}).get("runs", []):
        tag(run)
    for row in (result.get("engine") or {}).get("built", []):
        tag(row)


def _describe(engine, spec, torch_threads: int) -> dict[str, Any]:
    d = engine.describe()
    keep = ("backend", "device", "precision", "threads", "io_binding", "window", "max_batch",
            "streaming", "graph_sha256")
    out = {k: d[k] for k in keep if k in d}
    out["streaming"] = is_streaming(engine)
    if spec.backend == "torch":  # CPU threads: process-wide, set for each measurement
        out["threads"] = spec.threads or torch_threads
    return out


def _offline_ratios(rows: list[dict[str, Any]]) -> None:
    done = [r for r in rows if "frames_per_s" in r]
    if not done:
        return
    first = done[0]["model"]
    base = {r["engine"]: r["frames_per_s"] for r in done if r["model"] == first}
    for r in done:
        b = base.get(r["engine"])
        r["rel_model"] = round(r["frames_per_s"] / b, 3) if b else None


# ------------------------------------------------------------------------------------------
# Aims
# ------------------------------------------------------------------------------------------

def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's latency and throughput aims against this run's figures for the first
    model (the default model when run without ``--models``)."""
    models = result.get("models") or []
    if not models:
        return []
    first = models[0]["label"]
    return (_step_targets(result, first) + _node_targets(result, first)
            + _offline_targets(result, first))


def _target(text: str, first: str, engine: str, measured: str, met: bool) -> dict[str, Any]:
    return {"target": text, "model": first, "engine": engine, "measured": measured,
            "met": bool(met)}


def _step_targets(result: dict[str, Any], first: str) -> list[dict[str, Any]]:
    out = []
    rows = [r for r in (result.get("step") or {}).get("rows", [])
            if r["model"] == first and "p99_ms" in r]
    aims = ((1, False, "step_1_body_p99_ms", "step, 1 body on CPU: p99 <= 0.8 ms"),
            (6, False, "step_6_bodies_p99_ms", "step, 6 bodies in one call on CPU: p99 <= 2 ms"),
            (256, True, "step_256_bodies_gpu_p99_ms", "step, 256 bodies on GPU: p99 <= 1 ms"))
    for bodies, gpu, key, text in aims:
        cands = [r for r in rows if r["bodies"] == bodies
                 and (r["engine"].split("@")[0] in GPU_ENGINES) == gpu]
        if cands:
            best = min(cands, key=lambda r: r["p99_ms"])
            out.append(_target(text, first, best["engine"], f"p99 {best['p99_ms']:.3f} ms "
                               f"({best['n']} calls)", best["p99_ms"] <= TARGETS[key]))
    return out


def _node_targets(result: dict[str, Any], first: str) -> list[dict[str, Any]]:
    out = []
    for run in (result.get("node") or {}).get("runs", []):
        if run["model"] != first:
            continue
        rate = [s for s in run["scenarios"] if s["mode"] != "max"]
        for n, key, text in ((1, "latency_1_body_p99_ms", "p99 <= 3 ms"),
                             (6, "latency_6_bodies_p99_ms", "p99 <= 5 ms, 0 frames late")):
            row = next((s for s in rate if s["bodies"] == n), None)
            if row is None or "p99_ms" not in row["latency"]:
                continue
            p99 = row["latency"]["p99_ms"]
            late = late_count(row)
            met = p99 <= TARGETS[key] and (n == 1 or late == 0)
            out.append(_target(f"{n} bod{'y' if n == 1 else 'ies'} @ {row['mode']}: {text}",
                               first, run["engine"],
                               f"p99 {p99:.2f} ms over {row['sent']} frames, {late} late",
                               met))
    return out


def _offline_targets(result: dict[str, Any], first: str) -> list[dict[str, Any]]:
    cpu_rows = [r for r in (result.get("offline") or {}).get("rows", [])
                if r["model"] == first and "frames_per_s" in r
                and r["engine"].split("@")[0] not in GPU_ENGINES]
    if not cpu_rows:
        return []
    best = max(cpu_rows, key=lambda r: r["frames_per_s"])
    return [_target("offline on CPU: >= 50,000 frames/s", first, best["engine"],
                    f"{best['frames_per_s']:.0f} frames/s",
                    best["frames_per_s"] >= TARGETS["offline_frames_per_s"])]


def run_samples_for_plot(samples: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Flatten raw samples into ``{"engine": {label: ns}, "node": {label: ns}}`` for plots."""
    eng = {f"{m} / {e} b{b}": s for (m, e, b), s in samples.get("engine", {}).items() if b == 1}
    eng.update({f"{m} / {e} step {b} bod{'y' if b == 1 else 'ies'}": s
                for (m, e, b), s in samples.get("step", {}).items() if b in (1, 6)})
    node = {}
    for model, d in samples.get("node", {}).items():
        for (n, mode), s in d.items():
            node[f"{model}: {n} bod{'y' if n == 1 else 'ies'} @ {mode}"] = s
    return {"engine": eng, "node": node}

