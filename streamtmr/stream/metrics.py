"""Counters and per-stage latency histograms of the Node, with bounded memory.

Each stage keeps the newest ``capacity`` samples in a ring (percentiles describe recent
behaviour) plus running count, mean and max over the whole run.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

#: The stages the Node times, in pipeline order ("total": frame received → last sink sent).
STAGES = ("decode", "window", "infer", "smooth", "encode", "send", "total")


class LatencyHistogram:
    """Recent latency samples (ns) in a fixed ring, with p50/p95/p99 in milliseconds."""

    def __init__(self, capacity: int = 4096):
        self._ring = np.zeros(capacity, np.int64)
        self._n = 0
        self.count = 0
        self.total_ns = 0
        self.max_ns = 0

    def add(self, ns: int) -> None:
        self._ring[self._n % len(self._ring)] = ns
        self._n += 1
        self.count += 1
        self.total_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns

    def summary(self) -> dict[str, float]:
        if not self.count:
            return {"count": 0}
        recent = self._ring[:min(self._n, len(self._ring))]
        p50, p95, p99 = np.percentile(recent, [50, 95, 99]) / 1e6
        return {"count": self.count, "mean_ms": round(self.total_ns / self.count / 1e6, 4),
                "p50_ms": round(float(p50), 4), "p95_ms": round(float(p95), 4),
                "p99_ms": round(float(p99), 4), "max_ms": round(self.max_ns / 1e6, 4)}

    def copy(self) -> LatencyHistogram:
        """The recent samples and running totals, to summarise outside the owner's lock."""
        c = LatencyHistogram.__new__(LatencyHistogram)
        c._ring = self._ring[:min(self._n, len(self._ring))].copy()
        c._n, c.count, c.total_ns, c.max_ns = len(c._ring), self.count, self.total_ns, self.max_ns
        return c

    def histogram(self, edges_ns: np.ndarray) -> list[int]:
        """Counts of the recent samples between consecutive ``edges_ns``."""
        return np.histogram(self._ring[:min(self._n, len(self._ring))], edges_ns)[0].tolist()


class Metrics:
    """Counters (frames in/out, drops by reason, overruns, engine errors) and stage latencies.

    Thread-safe for the Node's loop plus an observer thread reading :meth:`snapshot`.
    """

    def __init__(self, capacity: int = 4096):
        self.counters: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.stages = {s: LatencyHistogram(capacity) for s in STAGES}
        self.started = time.time()
        self._lock = threading.Lock()
        self.info: dict[str, Any] = {}
        self._mark = (time.monotonic(), 0)  # (when, frames_out) of the last stats line

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def drop(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.dropped[reason] += n

    def time(self, stage: str, ns: int) -> None:
        with self._lock:
            self.stages[stage].add(ns)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            elapsed = time.time() - self.started
            out = {"elapsed_s": round(elapsed, 3), **self.info,
                   "counters": dict(self.counters), "dropped": dict(self.dropped)}
            stages = {s: h.copy() for s, h in self.stages.items()}  # summarised unlocked
        out["latency"] = {s: h.summary() for s, h in stages.items()}
        out["out_fps"] = round(self.counters["frames_out"] / elapsed, 2) if elapsed > 0 else 0.0
        return out

    def histograms(self, edges_ms: list[float]) -> dict[str, list[int]]:
        """Per stage, counts of the recent latencies between consecutive ``edges_ms``."""
        edges = np.asarray(edges_ms, np.float64) * 1e6
        with self._lock:
            stages = {s: h.copy() for s, h in self.stages.items()}
        return {s: h.histogram(edges) for s, h in stages.items()}

    def interval_fps(self) -> tuple[float, float]:
        """Output frames per second since the previous call (the first: since start), and
        that interval's length in seconds; starts the next interval."""
        now = time.monotonic()
        with self._lock:
            out = self.counters["frames_out"]
            (then, before), self._mark = self._mark, (now, out)
        dt = now - then
        return ((out - before) / dt if dt > 0 else 0.0), dt

    def line(self) -> str:
        """One log line: output fps over the interval since the previous line (and on
        average since start), drops and the key latencies."""
        fps, dt = self.interval_fps()
        s = self.snapshot()
        c, lat = s["counters"], s["latency"]

        def p(stage: str, q: str) -> str:
            v = lat[stage].get(q)
            return "-" if v is None else f"{v:.2f}"

        drops = ",".join(f"{k}={v}" for k, v in sorted(s["dropped"].items())) or "0"
        return (f"in={c.get('frames_in', 0)} out={c.get('frames_out', 0)} "
                f"({fps:.1f} fps over {dt:.1f} s, {s['out_fps']:.1f} since start) "
                f"bodies_out={c.get('bodies_out', 0)} "
                f"overruns={c.get('overruns', 0)} engine_errors={c.get('engine_errors', 0)} "
                f"dropped[{drops}] infer p50/p99={p('infer', 'p50_ms')}/{p('infer', 'p99_ms')} ms "
                f"total p50/p99={p('total', 'p50_ms')}/{p('total', 'p99_ms')} ms")

    def write_json(self, path: str | Path) -> None:
        """Write the snapshot atomically (readers never see a half-written file) through an
        exclusive temporary file with a random name beside ``path`` (``O_EXCL|O_NOFOLLOW``:
        a file or symlink planted there is never written through), then ``os.replace``,
        which replaces a link at ``path`` itself rather than its target."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.snapshot(), indent=1).encode()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
