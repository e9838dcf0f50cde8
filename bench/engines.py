"""Engine micro-benchmark: latency per call and windows/s for every model × engine × batch.

All engines are built first and then timed batch size by batch size, each (model, engine)
pair in turn, so a change of background load during the run spreads over every pair instead
of biasing one. torch's thread count is process-wide, so it is set for each torch cell. Each
cell warms up, then calls ``engine.run(x, out=buf)`` (the hot path's
no-allocation form) until both a time slice and a minimum number of calls are reached. A pair
that has used its time budget skips its remaining (larger) batch sizes, recorded as skipped,
and a cell of a slow pair stops at the budget after as few as one timed call (``n`` says).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.models import BenchModel
from bench.stats import summarize_ns

#: Idle time before each cell: thread pools still spinning after the previous engine's last
#: call (ONNX Runtime's intra-op pool, OpenMP in torch) park instead of competing with it.
PAUSE_S = 0.02
#: Preferred order of back ends (as the automatic choice, then PyTorch CPU last).
ORDER = ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime", "torch")


class EngineSpecError(ValueError):
    """An ``--engines`` entry that names no back end (the message lists them)."""


@dataclass(frozen=True)
class EngineSpec:
    """A back end, optionally with its CPU thread count (``onnxruntime@1``); ONNX Runtime's
    ``/general`` runs one body per call on the general session too, not the batch-1 one
    (``onnxruntime@1/general``: the engine's ``single=False``)."""

    backend: str
    threads: int | None = None
    general: bool = False

    @property
    def label(self) -> str:
        label = self.backend if self.threads is None else f"{self.backend}@{self.threads}"
        return label + GENERAL if self.general else label

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {} if self.threads is None else {"threads": self.threads}
        return {**options, "single": False} if self.general else options


GENERAL = "/general"


def present_backends() -> tuple[list[str], dict[str, str]]:
    """Back ends that can run here (in :data:`ORDER`) and, for the others, why not."""
    from engines import unavailable_reason
    present, skipped = [], {}
    for backend in ORDER:
        reason = unavailable_reason(backend)
        if reason is None:
            present.append(backend)
        else:
            skipped[backend] = reason
    return present, skipped


def parse_engine_specs(items: list[str] | None) -> tuple[list[EngineSpec], dict[str, str]]:
    """``--engines`` entries (``NAME`` or ``NAME@THREADS``, ONNX Runtime's optionally with
    ``/general``; None or ``all``: every present back end) → specs, plus the back ends skipped
    because they cannot run here."""
    present, skipped = present_backends()
    if not items or items == ["all"]:
        return [EngineSpec(b) for b in present], skipped
    specs = []
    for item in items:
        general = item.endswith(GENERAL)
        name, _, threads = item.removesuffix(GENERAL).partition("@")
        if general and not name.startswith("onnxruntime"):
            raise EngineSpecError(f"--engines {item}: {GENERAL} is an ONNX Runtime option")
        if name not in ORDER:
            raise EngineSpecError(f"--engines {item}: unknown back end (choose from "
                                  f"{', '.join(ORDER)}, optionally @THREADS)")
        if threads and (not threads.isdigit() or int(threads) < 1):
            raise EngineSpecError(f"--engines {item}: threads must be a positive integer")
        if name not in present:
            raise EngineSpecError(f"--engines {item}: {skipped[name]}")
        specs.append(EngineSpec(name, int(threads) if threads else None, general))
    return specs, {k: v for k, v in skipped.items() if k not in {s.backend for s in specs}}


def build_engine(model: BenchModel, spec: EngineSpec, max_batch: int = 8):
    """The engine for ``model`` on ``spec`` (``window`` from the model)."""
    from engines import create_engine
    return create_engine(spec.backend, model=model.for_engine(), window=None,
                         max_batch=max_batch, **spec.options())


def set_torch_threads(n: int) -> None:
    """torch's thread count is global to the process (the torch engine's ``threads`` option
    sets it when the engine is built), so it is set again before each torch measurement."""
    import torch
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def use_threads(spec: EngineSpec, default_torch_threads: int) -> None:
    """Before timing ``spec``: its torch thread count (``@N``, else the process default)."""
    if spec.backend.startswith("torch"):
        set_torch_threads(spec.threads or default_torch_threads)


def time_cell(engine, x: np.ndarray, out: np.ndarray, cell_s: float, min_iters: int,
              max_s: float | None = None, max_iters: int = 100_000) -> np.ndarray:
    """Latencies (ns) of ``engine.run(x, out=out)`` after warm-up: until ``cell_s`` seconds and
    ``min_iters`` calls, or — for a slow engine — ``max_s`` seconds and at least one call."""
    t0 = time.perf_counter()
    engine.run(x, out=out)
    if time.perf_counter() - t0 < cell_s / 4:  # a second warm-up call where it is cheap
        engine.run(x, out=out)
    samples = []
    start = time.perf_counter_ns()
    deadline = start + int(cell_s * 1e9)
    hard = start + int(max(max_s or cell_s, cell_s) * 1e9)
    while len(samples) < max_iters:
        t0 = time.perf_counter_ns()
        engine.run(x, out=out)
        t1 = time.perf_counter_ns()
        samples.append(t1 - t0)
        if t1 >= hard or (t1 >= deadline and len(samples) >= min_iters):
            break
    return np.asarray(samples, np.int64)


def time_grid(pairs: list[tuple[BenchModel, EngineSpec, Any]], sizes: list[int], size_key: str,
              timer: Callable[[Any, int, float], np.ndarray], pair_budget_s: float,
              torch_threads: int) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
    """The one timing loop of the engine and step benchmarks: every built ``(model, spec,
    engine)`` pair at every size, each pair within ``pair_budget_s``. ``timer(engine, size,
    max_s)`` returns the latencies (ns) of one cell. Yields each row (``skipped`` with a reason
    when the budget is spent or the engine failed) with its samples (None when skipped)."""
    spent = {i: 0.0 for i in range(len(pairs))}
    for n in sizes:
        for i, (model, spec, engine) in enumerate(pairs):
            row: dict[str, Any] = {"model": model.label, "engine": spec.label, size_key: n}
            if spent[i] > pair_budget_s:
                row["skipped"] = f"time budget ({pair_budget_s:.1f} s per model × engine) spent"
                yield row, None
                continue
            use_threads(spec, torch_threads)
            time.sleep(PAUSE_S)
            t0 = time.perf_counter()
            try:
                s = timer(engine, n, pair_budget_s - spent[i])
            except Exception as e:  # an engine failing at one size is a result too
                row["skipped"] = f"failed: {type(e).__name__}: {e}"
                yield row, None
                continue
            finally:
                spent[i] += time.perf_counter() - t0
            row.update(summarize_ns(s))
            yield row, s
    set_torch_threads(torch_threads)


def bench_engines(pairs: list[tuple[BenchModel, EngineSpec, Any]], batches: list[int],
                  windows: dict[int, np.ndarray], cell_s: float, min_iters: int,
                  pair_budget_s: float, torch_threads: int,
                  log: Callable[[str], None] = lambda s: None,
                  ) -> tuple[list[dict[str, Any]], dict[tuple[str, str, int], np.ndarray]]:
    """Time every built ``(model, spec, engine)`` pair at every batch size.

    ``windows[T]`` holds at least ``max(batches)`` motion windows of ``T`` frames. Returns
    one row per cell (latency summary, windows/s, or ``skipped`` with a reason) and the raw
    samples keyed by (model label, engine label, batch).
    """
    def timer(engine, b: int, max_s: float) -> np.ndarray:
        x = np.ascontiguousarray(windows[engine.window][:b])
        return time_cell(engine, x, np.empty_like(x), cell_s, min_iters, max_s=max_s)

    rows: list[dict[str, Any]] = []
    samples: dict[tuple[str, str, int], np.ndarray] = {}
    for row, s in time_grid(pairs, batches, "batch", timer, pair_budget_s, torch_threads):
        rows.append(row)
        if s is None:
            continue
        b = row["batch"]
        row["windows_per_s"] = round(b * len(s) / (s.sum() / 1e9), 1)
        samples[(row["model"], row["engine"], b)] = s
        log(f"engine {row['model']} / {row['engine']} batch {b}: p50 {row['p50_ms']:.2f} ms, "
            f"p99 {row['p99_ms']:.2f} ms, {row['windows_per_s']:.0f} windows/s")
    add_ratios(rows)
    return rows, samples


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``rel_model``: p50 ÷ the first model's on the same engine and batch; ``rel_engine``:
    p50 ÷ the first engine's for the same model and batch (ratios within this run)."""
    done = [r for r in rows if "p50_ms" in r]
    if not done:
        return
    first_model = done[0]["model"]
    first_engine = done[0]["engine"]
    by = {(r["model"], r["engine"], r["batch"]): r["p50_ms"] for r in done}
    for r in done:
        base = by.get((first_model, r["engine"], r["batch"]))
        r["rel_model"] = round(r["p50_ms"] / base, 3) if base else None
        base = by.get((r["model"], first_engine, r["batch"]))
        r["rel_engine"] = round(r["p50_ms"] / base, 3) if base else None


# ------------------------------------------------------------------------------------------
# Streaming engines: one step per frame
# ------------------------------------------------------------------------------------------

#: Bodies per ``engine.step`` call that ``streamtmr bench`` times by default.
STEP_BATCHES = (1, 6, 32, 256)
#: Frames of motion cycled through by a step cell (each body its own SynthKinect clip).
STEP_FRAMES = 240


def is_streaming(engine) -> bool:
    """Whether ``engine`` serves a streaming model (``step(frames, state)``)."""
    return bool(getattr(engine, "streaming", False))


def step_inputs(clips: list[np.ndarray], bodies: int, frames: int = STEP_FRAMES) -> np.ndarray:
    """``float32 [frames, bodies, 25, 3]``: body ``i`` plays clip ``i mod len(clips)`` (looped
    ping-pong), so every step sees real, continuing motion."""
    from bench.motion import pingpong
    tracks = [pingpong(clips[i % len(clips)]) for i in range(min(bodies, len(clips)))]
    t = np.arange(frames)
    out = np.stack([tracks[i % len(tracks)][(t + 7 * i) % len(tracks[i % len(tracks)])]
                    for i in range(bodies)], axis=1)
    return np.ascontiguousarray(out, dtype=np.float32)


def fresh_states(engine, bodies: int, staggered: bool = False) -> dict[str, np.ndarray]:
    """The states the node hands the engine for ``bodies`` tracks that start on the same frame
    (:class:`~streamtmr.stream.state.StateSlots`): all zero (a matcher's bodies then all
    search on the same frames, the worst case), or with ``staggered`` (the node's
    ``stagger_search``) their search phases spread."""
    from streamtmr.stream.state import StateSlots
    slots = StateSlots(engine, bodies, stagger=staggered)
    return slots.gather(list(range(bodies)), [0] * bodies)


def time_steps(engine, frames: np.ndarray, cell_s: float, min_iters: int,
               max_s: float | None = None, max_iters: int = 100_000,
               staggered: bool = False) -> np.ndarray:
    """Latencies (ns) of ``engine.step`` on consecutive frames ``[F, B, 25, 3]`` of ``B``
    tracks, the state carried from call to call (a fresh track per body at the start,
    :func:`fresh_states`): until ``cell_s`` seconds and ``min_iters`` calls, or ``max_s``
    seconds and at least one call."""
    state = fresh_states(engine, frames.shape[1], staggered)
    for k in range(2):  # warm-up: allocations, first-call costs
        _, state = engine.step(frames[k], state)
    samples = []
    start = time.perf_counter_ns()
    deadline = start + int(cell_s * 1e9)
    hard = start + int(max(max_s or cell_s, cell_s) * 1e9)
    k = 2
    while len(samples) < max_iters:
        x = frames[k % len(frames)]
        t0 = time.perf_counter_ns()
        _, state = engine.step(x, state)
        t1 = time.perf_counter_ns()
        samples.append(t1 - t0)
        k += 1
        if t1 >= hard or (t1 >= deadline and len(samples) >= min_iters):
            break
    return np.asarray(samples, np.int64)


def bench_steps(pairs: list[tuple[BenchModel, EngineSpec, Any]], batches: list[int],
                clips: list[np.ndarray], cell_s: float, min_iters: int, pair_budget_s: float,
                torch_threads: int, log: Callable[[str], None] = lambda s: None,
                staggered: bool = False,
                ) -> tuple[list[dict[str, Any]], dict[tuple[str, str, int], np.ndarray]]:
    """Time ``engine.step`` of every streaming ``(model, spec, engine)`` pair at every number
    of bodies per call. Rows carry the latency summary per call and bodies (frames) per
    second; raw samples are keyed by (model label, engine label, bodies)."""
    inputs = {b: step_inputs(clips, b) for b in batches}

    def timer(engine, b: int, max_s: float) -> np.ndarray:
        return time_steps(engine, inputs[b], cell_s, min_iters, max_s=max_s,
                          staggered=staggered)

    rows: list[dict[str, Any]] = []
    samples: dict[tuple[str, str, int], np.ndarray] = {}
    for row, s in time_grid(pairs, batches, "bodies", timer, pair_budget_s, torch_threads):
        rows.append(row)
        if s is None:
            continue
        b = row["bodies"]
        row["states"] = "search phases staggered" if staggered else "all in phase"
        row["bodies_per_s"] = round(b * len(s) / (s.sum() / 1e9), 1)
        samples[(row["model"], row["engine"], b)] = s
        log(f"step {row['model']} / {row['engine']} {b} bodies: p50 {row['p50_ms']:.3f} ms, "
            f"p99 {row['p99_ms']:.3f} ms ({row['n']} calls)")
    return rows, samples
