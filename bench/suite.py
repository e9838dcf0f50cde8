"""The whole ``streamtmr bench`` run: engines, node, offline — one JSON-ready result.

Every model and engine is measured in the same run on the same machine, so the comparisons
(``rel_model``, ``rel_engine``) are ratios of figures taken minutes apart under the load that
was recorded with them. ``duration`` scales every time slice:

* engine cell (one model × engine × batch size): ``0.3 × duration`` s, at least 5 calls
  (2 with ``quick``); a model × engine pair stops after ``2.5 × 0.3 × duration × #batches`` s;
* node scenario: ``2 × duration`` s at the fixed rate, ``duration`` s closed loop, each after a
  warm-up of ``0.3`` s (``0.1`` s with ``quick``);
* offline: ``1.5 × duration`` s per model × engine.
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
    bench_engines,
    build_engine,
    parse_engine_specs,
    set_torch_threads,
    use_threads,
)
from bench.machine import describe_machine, load_average
from bench.models import DEFAULT_MODELS, resolve_model_spec
from bench.motion import motion_clips, sample_windows

SCHEMA = 1
#: Targets recorded against the default model (not assertions: what a run reaches).
TARGETS = {"latency_1_body_p99_ms": 3.0, "latency_6_bodies_p99_ms": 10.0,
           "offline_frames_per_s": 20_000.0}


@dataclass
class BenchOptions:
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    engines: list[str] | None = None         # None: every back end present
    batches: list[int] = field(default_factory=lambda: list(range(1, 9)))
    bodies: list[int] = field(default_factory=lambda: list(range(1, 7)))
    rate_hz: float = 30.0
    duration: float = 1.0
    node_models: list[str] | None = None     # None: the first of ``models``
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    budget_ms: float = 10.0
    quick: bool = False

    def validate(self) -> BenchOptions:
        if not self.models:
            raise ValueError("--models: at least one model")
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"--batches must be positive integers, got {self.batches}")
        if not self.bodies or min(self.bodies) < 1 or max(self.bodies) > 64:
            raise ValueError(f"--bodies must be in 1..64, got {self.bodies}")
        if self.rate_hz <= 0 or self.duration <= 0 or self.budget_ms <= 0:
            raise ValueError("--rate, --duration and --budget-ms must be > 0")
        unknown = set(self.parts) - set(PARTS)
        if unknown or not self.parts:
            raise ValueError(f"--parts: choose from {', '.join(PARTS)}, got {self.parts}")
        return self


def _elapsed(t0: float) -> float:
    return round(time.perf_counter() - t0, 2)


def run_bench(opts: BenchOptions, log: Callable[[str], None] = lambda s: None,
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the selected parts. Returns ``(result, samples)``: the JSON-ready result and the raw
    latency samples (ns) for plotting, keyed ``engine`` and ``node``."""
    import torch

    opts.validate()
    t_start = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc)
    machine = describe_machine()
    log(f"machine: {machine['cpu']}, {machine['cores_available']} cores, load "
        f"{machine['load_average']}")
    specs, skipped = parse_engine_specs(opts.engines)
    if not specs:
        raise ValueError("no engine can run here: " + "; ".join(f"{k}: {v}"
                                                                 for k, v in skipped.items()))
    models = [resolve_model_spec(m) for m in opts.models]
    node_specs = opts.node_models or [opts.models[0]]
    node_models = [next((m for m in models if m.spec == s), None) or resolve_model_spec(s)
                   for s in node_specs]
    D = opts.duration
    clips = motion_clips(max(max(opts.bodies), 8), seed=0)
    windows = {w: sample_windows(clips, max(opts.batches), w, seed=1)
               for w in {m.window for m in models + node_models}}
    torch_threads = torch.get_num_threads()

    result: dict[str, Any] = {
        "schema": SCHEMA, "started": started.isoformat(timespec="seconds"),
        "machine": machine, "options": asdict(opts),
        "models": [m.describe() for m in models],
        "engines": {"benchmarked": [s.label for s in specs], "unavailable": skipped},
    }
    samples: dict[str, Any] = {"engine": {}, "node": {}}

    if "engine" in opts.parts:
        t0 = time.perf_counter()
        pairs, built = [], []
        for m in models:
            for s in specs:
                try:
                    e = build_engine(m, s, max_batch=max(opts.batches))
                except Exception as err:  # a model some back end cannot run is a result
                    built.append({"model": m.label, "engine": s.label,
                                  "error": f"{type(err).__name__}: {err}"})
                    log(f"engine {m.label} / {s.label}: cannot build ({err})")
                    continue
                finally:
                    set_torch_threads(torch_threads)
                built.append({"model": m.label, "engine": s.label,
                              **_describe(e, s, torch_threads)})
                pairs.append((m, s, e))
        cell_s = 0.3 * D
        rows, samples["engine"] = bench_engines(
            pairs, sorted(set(opts.batches)), windows, cell_s=cell_s,
            min_iters=2 if opts.quick else 5,
            pair_budget_s=2.5 * cell_s * len(set(opts.batches)), torch_threads=torch_threads,
            log=log)
        for _, _, e in pairs:
            e.close()
        result["engine"] = {"built": built, "rows": rows, "seconds": _elapsed(t0)}

    if "node" in opts.parts:
        from bench.node import bench_node
        t0 = time.perf_counter()
        runs = []
        spec = specs[0]
        for m in node_models:
            engine = build_engine(m, spec, max_batch=max(8, max(opts.bodies)))
            use_threads(spec, torch_threads)
            engine.warmup(sorted(set(range(1, max(opts.bodies) + 1))))
            section, s = bench_node(engine, clips, sorted(set(opts.bodies)), opts.rate_hz,
                                    rate_s=2 * D, max_s=D, warmup_s=0.1 if opts.quick else 0.3,
                                    budget_ms=opts.budget_ms, log=log)
            engine.close()
            set_torch_threads(torch_threads)
            runs.append({"model": m.label, "engine": spec.label, **section})
            samples["node"][m.label] = s
        result["node"] = {"runs": runs, "seconds": _elapsed(t0)}

    if "offline" in opts.parts:
        from bench.offline import OFFLINE_BATCH, bench_offline
        t0 = time.perf_counter()
        sequences = [np.ascontiguousarray(c[:n]) for c, n in
                     zip(clips, [150, 300, 120, 240, 180, 270, 210, 160])]
        rows = []
        for m in models:
            for s in specs:
                row: dict[str, Any] = {"model": m.label, "engine": s.label}
                try:
                    e = build_engine(m, s, max_batch=OFFLINE_BATCH)
                    use_threads(s, torch_threads)
                    row.update(bench_offline(e, sequences, 1.5 * D))
                    e.close()
                except Exception as err:  # as above: recorded, the run goes on
                    row["skipped"] = f"failed: {type(err).__name__}: {err}"
                set_torch_threads(torch_threads)
                rows.append(row)
                if "frames_per_s" in row:
                    log(f"offline {m.label} / {s.label}: {row['frames_per_s']:.0f} frames/s")
        _offline_ratios(rows)
        result["offline"] = {"rows": rows, "seconds": _elapsed(t0)}

    result["targets"] = evaluate_targets(result)
    result["load_average_end"] = load_average()
    result["seconds"] = _elapsed(t_start)
    return result, samples


def _describe(engine, spec, torch_threads: int) -> dict[str, Any]:
    d = engine.describe()
    keep = ("backend", "device", "precision", "threads", "io_binding", "window", "max_batch")
    out = {k: d[k] for k in keep if k in d}
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


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's latency and throughput targets against this run's figures for the first
    model (the default model when run without ``--models``)."""
    out: list[dict[str, Any]] = []
    models = result.get("models") or []
    if not models:
        return out
    first = models[0]["label"]
    for run in (result.get("node") or {}).get("runs", []):
        if run["model"] != first:
            continue
        rate = [s for s in run["scenarios"] if s["mode"] != "max"]
        for n, key, target in ((1, "latency_1_body_p99_ms", "p99 <= 3 ms"),
                               (6, "latency_6_bodies_p99_ms", "p99 <= 10 ms, no budget overrun")):
            row = next((s for s in rate if s["bodies"] == n), None)
            if row is None or "p99_ms" not in row["latency"]:
                continue
            p99 = row["latency"]["p99_ms"]
            late = row["overruns"] + row["over_budget"]
            met = p99 <= TARGETS[key] and (n == 1 or late == 0)
            out.append({"target": f"{n} bod{'y' if n == 1 else 'ies'} @ {row['mode']}: "
                                  f"{target}", "model": first, "engine": run["engine"],
                        "measured": f"p99 {p99:.2f} ms, {row['overruns']} overruns + "
                                    f"{row['over_budget']} over budget",
                        "met": bool(met)})
    cpu_rows = [r for r in (result.get("offline") or {}).get("rows", [])
                if r["model"] == first and "frames_per_s" in r and "cuda" not in r["engine"]
                and r["engine"] != "tensorrt"]
    if cpu_rows:
        best = max(cpu_rows, key=lambda r: r["frames_per_s"])
        out.append({"target": "offline on CPU: >= 20,000 frames/s", "model": first,
                    "engine": best["engine"], "measured": f"{best['frames_per_s']:.0f} frames/s",
                    "met": best["frames_per_s"] >= TARGETS["offline_frames_per_s"]})
    return out


def run_samples_for_plot(samples: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Flatten raw samples into ``{"engine": {label: ns}, "node": {label: ns}}`` for plots."""
    eng = {f"{m} / {e} b{b}": s for (m, e, b), s in samples.get("engine", {}).items() if b == 1}
    node = {}
    for model, d in samples.get("node", {}).items():
        for (n, mode), s in d.items():
            node[f"{model}: {n} bod{'y' if n == 1 else 'ies'} @ {mode}"] = s
    return {"engine": eng, "node": node}

