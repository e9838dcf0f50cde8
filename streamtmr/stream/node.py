"""The Node: frames in → per-body windows → one batched engine call per hop → smoothing →
bone check → sinks.

Fail-closed by construction: the only joint arrays that reach a sink are engine outputs that
passed the bone-length check (or held copies of such outputs). Input frames never do — not on
an overrun, an engine exception, a hung engine, a bad output, or at shutdown.

The engine runs in a worker thread and the Node waits for it at most until the frame's latency
budget is spent. A late call keeps running in the background; its result refreshes the held
frames when it arrives but is not published late. While the worker is busy (a slow or hung
engine) new frames are not submitted: each one is an overrun handled by the policy ("hold":
republish each present body's last anonymized frame, if not older than ``hold_ms``; "drop":
publish nothing for that frame). Everything is counted in :class:`Metrics`.

A streaming model keeps the sensor's clock when the source drops frames: a frame stamped k
frame periods after the previous one first steps the state of the bodies seen in both through
the k − 1 missing frames, linearly interpolated between the two and never published
(``fill_dropped``), as long as each such step should end within half the frame's budget.

The counters form a ledger: every input frame is published once, rejected by the window
(``frames_rejected``, reasons ``window:*``), lost to an overrun (``frames_lost``) or still
pending a hop, so ``frames_in == frames_out + frames_rejected + frames_lost + frames_pending``.
With ``hop == 1`` the same holds per body: ``bodies_in == bodies_out + bodies_lost`` (bodies
of accepted frames; a held substitute counts as out, the reasons of losses are in
``dropped``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamtmr.leak_guard import MARGIN_DEG
from streamtmr.skeleton import NUM_JOINTS
from streamtmr.stream import wire
from streamtmr.stream.frame import TRACKED, Body, Frame
from streamtmr.stream.gate import OutputGate, finite_rows, in_range
from streamtmr.stream.metrics import Metrics
from streamtmr.stream.sinks import Sink
from streamtmr.stream.smoothing import KINDS, Smoother
from streamtmr.stream.state import StateSlots
from streamtmr.stream.window import WindowBuffer

log = logging.getLogger(__name__)

OVERRUN_POLICIES = ("hold", "drop")


@dataclass
class NodeConfig:
    """Node settings. Times in milliseconds."""

    hop: int = 1                 # frames between engine calls (k newest outputs published)
    budget_ms: float = 10.0      # receive → publish deadline per frame
    overrun: str = "hold"        # "hold" or "drop"
    max_bodies: int = 6
    gap_ms: float = 250.0        # a body absent / a stream silent this long restarts windows
    min_frames: int = 1          # real frames a window needs before it is anonymized
    smoothing: str = "one_euro"  # "one_euro", "ema", "none"
    hang_ms: float = 2000.0      # an engine call running this long is reported hung
    hold_ms: float = 1000.0      # held frames older than this are no longer republished
    bone_tol: float = 1e-3       # metres: max |bone length − dummy| for a body to be published
    leak_guard: bool = True      # refuse output tracking the input (off: baselines only)
    leak_margin_deg: float = MARGIN_DEG
    stats_interval_s: float = 5.0
    stats_json: str | None = None
    # A streaming model's state is stepped through up to this many sensor frames the source
    # dropped (a frame arriving k frame periods after the last: k − 1 frames interpolated
    # between the two, stepped but not published), so that its clock stays the sensor's;
    # 0: off. Only while at most half the frame's budget is spent; windowed models: no effect.
    fill_dropped: int = 7
    frame_ms: float = 1000.0 / 30.0  # the sensor's frame period (Kinect v2: 30 Hz)
    # Bodies that start on the same frame get different search phases (a motion matcher's:
    # ``engine.stagger``; StateSlots), so that they do not all search on one frame. Off: every
    # body runs the evaluated schedule (docs/motion_matching.md, "Bodies that start together").
    stagger_search: bool = False

    def validate(self) -> NodeConfig:
        if self.hop < 1:
            raise ValueError(f"hop must be >= 1, got {self.hop}")
        if self.budget_ms <= 0:
            raise ValueError(f"budget_ms must be > 0, got {self.budget_ms}")
        if self.overrun not in OVERRUN_POLICIES:
            raise ValueError(f"overrun must be one of {OVERRUN_POLICIES}, got {self.overrun!r}")
        if not 1 <= self.max_bodies <= 64:
            raise ValueError(f"max_bodies must be in [1, 64], got {self.max_bodies}")
        if self.smoothing not in KINDS:
            raise ValueError(f"smoothing must be one of {KINDS}, got {self.smoothing!r}")
        if min(self.gap_ms, self.hang_ms, self.hold_ms, self.bone_tol) <= 0:
            raise ValueError("gap_ms, hang_ms, hold_ms and bone_tol must be > 0")
        if not 0 <= self.leak_margin_deg < 90:
            raise ValueError(f"leak_margin_deg must be in [0, 90), got {self.leak_margin_deg}")
        if self.fill_dropped < 0 or self.frame_ms <= 0:
            raise ValueError(f"fill_dropped must be >= 0 and frame_ms > 0, got "
                             f"{self.fill_dropped}, {self.frame_ms}")
        return self


class _Worker:
    """One engine call at a time in a daemon thread; the caller waits with a timeout.

    A call that outlives shutdown is abandoned, never interrupted: :meth:`stop` returns after
    its timeout with :attr:`abandoned` set, and the engine must then not be closed (closing an
    ONNX Runtime session under a running call aborts the process).
    """

    def __init__(self):
        self._cv = threading.Condition()
        self._job: tuple[Callable[[], Any], Any] | None = None
        self._result: tuple[Any, Any, BaseException | None] | None = None
        self.busy = False
        self.busy_since = 0
        self.abandoned = False
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="streamtmr-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._job is not None or self._stop)
                if self._stop:
                    return
                fn, tag = self._job
                self._job = None
            try:
                res = (tag, fn(), None)
            except BaseException as e:  # any failure of the engine is data for the Node
                res = (tag, None, e)
            with self._cv:
                self._result = res
                self.busy = False
                self._cv.notify_all()

    def submit(self, fn: Callable[[], Any], tag: Any) -> None:
        with self._cv:
            if self.busy:
                raise RuntimeError("engine worker is busy")
            self._result = None
            self._job = (fn, tag)
            self.busy = True
            self.busy_since = time.monotonic_ns()
            self._cv.notify_all()

    def wait(self, timeout_s: float):
        """The finished call's (tag, output, error), or None when still running."""
        with self._cv:
            self._cv.wait_for(lambda: not self.busy, max(timeout_s, 0.0))
            if self.busy:
                return None
            res, self._result = self._result, None
            return res

    def stop(self, timeout_s: float = 1.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout_s)  # a hung engine call keeps its daemon thread; we move on
        self.abandoned = self._thread.is_alive()


@dataclass
class _Call:
    """What one engine call was about: the bodies, their slots and window generations, and
    the source frames the output must be checked against (``[B, k, 25, 3]``, a copy)."""

    ids: list[int]
    slots: list[int]
    gens: list[int]
    src: np.ndarray


def card_summary(card: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the node reports of the engine's privacy card: its binding and numbers."""
    if not isinstance(card, dict):
        return None
    return {k: card[k] for k in ("name", "method", "sha256", "graph_sha256", "privacy")
            if k in card}


def run_windows(engine: Any, x: np.ndarray, k: int) -> np.ndarray:
    """``engine.run_latest(x, k)``; when a batch of several bodies comes back non-finite for
    all of them (one body can poison a whole batch in a graph that mixes the batch), each is
    run again alone, so the good ones still get fresh output."""
    y = engine.run_latest(x, k)
    if len(x) > 1 and isinstance(y, np.ndarray) and y.shape[:1] == x.shape[:1]:
        if not finite_rows(y).any():
            y = np.array(y, copy=True)
            for i in range(len(x)):
                try:
                    y[i] = engine.run_latest(np.ascontiguousarray(x[i:i + 1]), k)[0]
                except Exception:  # stays non-finite: refused by the per-body check
                    continue
    return y


class Node:
    """Anonymizes a stream of frames with one engine (dependency-injected) into sinks.

    ``engine`` provides ``dummy_lengths`` and ``describe()`` and either ``window`` and
    ``run_latest(windows, k)`` (windowed models) or, with ``streaming = True``,
    ``init_state(n)`` and ``step(frames, state)`` (see :class:`engines.base.Engine`). Use
    :meth:`step` for one frame (returns what was published) or :meth:`run` to drain a source;
    :meth:`close` ends it.
    """

    def __init__(self, engine: Any, sinks: Iterable[Sink] = (),
                 config: NodeConfig | None = None, recorder: wire.Recorder | None = None,
                 metrics: Metrics | None = None, model_name: str | None = None):
        self.config = cfg = (config or NodeConfig()).validate()
        self.engine = engine
        self.streaming = bool(getattr(engine, "streaming", False))
        self.sinks = list(sinks)
        self.recorder = recorder
        self.metrics = metrics or Metrics()
        self.lengths = np.asarray(engine.dummy_lengths, np.float32)
        try:
            desc = dict(engine.describe())
        except Exception:  # describe() is informative only
            desc = {}
        self.model_name = model_name or str(desc.get("model") or getattr(engine, "name", "?"))
        self.unevaluated = bool(getattr(engine, "unevaluated", False))
        T = 1 if self.streaming else int(engine.window)
        if self.streaming and cfg.hop != 1:
            raise ValueError(f"a streaming model steps every frame: hop must be 1, got {cfg.hop}")
        self.window = WindowBuffer(T, cfg.max_bodies, cfg.gap_ms, min_frames=min(cfg.min_frames, T))
        if cfg.hop > T:
            raise ValueError(f"hop ({cfg.hop}) must not exceed the window ({T})")
        self.states = (StateSlots(engine, cfg.max_bodies, stagger=cfg.stagger_search)
                       if self.streaming else None)
        self.smoother = Smoother(self.lengths, cfg.max_bodies, cfg.smoothing)
        self.gate = OutputGate(self.lengths, cfg.max_bodies, cfg.bone_tol, cfg.leak_guard,
                               cfg.leak_margin_deg)
        self._batch = np.zeros((cfg.max_bodies, T, NUM_JOINTS, 3), np.float32)
        self._smoothed = np.zeros((cfg.max_bodies, NUM_JOINTS, 3), np.float32)
        self._held: dict[int, tuple[np.ndarray, int]] = {}  # body id → (joints, t monotonic)
        self._pending: deque[tuple[int, int, str]] = deque(maxlen=cfg.hop)  # (seq, t_ns, src)
        self._state = np.full(NUM_JOINTS, TRACKED, np.uint8)  # for bodies without a state
        self._state.setflags(write=False)
        self._in_states: dict[int, np.ndarray] = {}  # body id → its newest input joint states
        self._worker = _Worker()
        self._since_hop = 0
        self._step_ns = 0  # how long the last engine call took (ns): the fill's estimate
        self._hung_reported = False
        self._errors_logged = 0
        self._stop = threading.Event()
        self._last_stats = time.monotonic()
        self._closed = False
        self._source: Any = None
        self.metrics.info.update(
            model=self.model_name, engine=desc, config=asdict(cfg),
            graph_sha256=desc.get("graph_sha256"), unevaluated=self.unevaluated,
            card=card_summary(getattr(engine, "card", None)))
        card = self.metrics.info["card"]
        log.info("model %s, graph sha256 %s, privacy card: %s", self.model_name,
                 desc.get("graph_sha256"), "none" if card is None else
                 json.dumps(card.get("privacy"), sort_keys=True)[:300])
        if self.unevaluated:
            log.warning("model %s has no privacy card: every output message is marked "
                        "\"unevaluated\": true", self.model_name)
        if not cfg.leak_guard:
            log.warning("leak guard OFF: output that tracks the input is published (baseline "
                        "measurements only)")

    # -- control --------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask :meth:`run` to finish after the current frame (safe from signal handlers)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def abandoned(self) -> bool:
        """True after :meth:`close` left an engine call running (do not close the engine)."""
        return self._worker.abandoned

    # -- the pipeline ---------------------------------------------------------------------

    def step(self, frame: Frame | None, t_recv: int | None = None) -> list[Frame]:
        """Process one input frame (``None``: an idle tick). Returns the frames published."""
        now = time.monotonic_ns()
        t_recv = now if t_recv is None else t_recv
        self._maybe_stats()
        if frame is None:
            self._check_hang(now)
            return []
        m = self.metrics
        m.inc("frames_in")
        t0 = time.perf_counter_ns()
        dropped = self._dropped_frames(frame.t_ns)
        seen = self._seen_bodies() if dropped else {}  # (slot, generation, pose) by body id
        accepted = self.window.push(frame, now)
        m.time("window", time.perf_counter_ns() - t0)
        if not accepted:
            m.inc("frames_rejected")
            return []
        m.inc("bodies_in", len(frame.bodies))
        # each joint's tracking state (tracked / inferred) travels with the anonymized body:
        # VR inverse kinematics weighs inferred joints less
        self._in_states = {b.id: b.state for b in frame.bodies}
        if len(self.window.active) < len(frame.bodies):  # reasons in window.dropped
            m.inc("bodies_lost", len(frame.bodies) - len(self.window.active))
        self._pending.append((frame.seq, frame.t_ns, frame.src))
        self._since_hop += 1
        if self._since_hop < self.config.hop:
            return []
        self._since_hop = 0
        self._collect_late()
        slots = self.window.ready()
        if seen:
            self._fill_dropped(slots, seen, dropped, t_recv)
        if len(slots) < len(self.window.active):  # windows short of min_frames real frames
            m.drop("warming_up", len(self.window.active) - len(slots))
            m.inc("bodies_lost", len(self.window.active) - len(slots))
        ids = [self.window.ids[s] for s in slots]
        if self._worker.busy:
            m.inc("overruns")
            m.drop("engine_busy")
            self._check_hang(now)
            return self._fallback(ids, t_recv)
        if not slots:
            return self._publish_outputs(None, None, None, t_recv)
        call = self._submit(slots, ids)
        t0 = time.perf_counter_ns()
        budget_left = self.config.budget_ms / 1e3 - (time.monotonic_ns() - t_recv) / 1e9
        res = self._worker.wait(budget_left)
        if res is None:
            m.inc("overruns")
            m.drop("budget")
            return self._fallback(ids, t_recv)
        self._step_ns = time.perf_counter_ns() - t0
        m.time("infer", self._step_ns)
        self._hung_reported = False
        checked = self._check_output(res)
        if checked is None:
            return self._fallback(ids, t_recv)
        return self._publish_outputs(call, *checked, t_recv)

    def _submit(self, slots: list[int], ids: list[int]) -> _Call:
        """Start the engine call for ``slots`` (windows, or one step of the streaming state)."""
        x = self.window.gather(slots, self._batch)
        k = len(self._pending)
        gens = [self.window.generation[s] for s in slots]
        call = _Call(ids, slots, gens, np.array(x[:, x.shape[1] - k:]))
        if self.states is None:
            engine = self.engine
            self._worker.submit(lambda: run_windows(engine, x, k), call)
        else:
            frames = np.ascontiguousarray(x[:, -1])
            state = self.states.gather(slots, gens)
            step = self.engine.step
            self._worker.submit(lambda: step(frames, state), call)
        return call

    def _dropped_frames(self, t_ns: int) -> int:
        """Sensor frames missing between the stream's previous frame and one stamped ``t_ns``
        that a streaming model's state is to be stepped through (0: none, or filling off)."""
        cfg, t_prev = self.config, self.window.last_t_ns
        if self.states is None or cfg.fill_dropped < 1 or t_prev is None:
            return 0
        k = int(round((t_ns - t_prev) / (cfg.frame_ms * 1e6))) - 1
        return min(k, cfg.fill_dropped) if k >= 1 else 0

    def _seen_bodies(self) -> dict[int, tuple[int, int, np.ndarray]]:
        """Every tracked body's slot, window generation and newest input pose (a copy)."""
        w = self.window
        return {bid: (slot, w.generation[slot], w.newest(slot).copy())
                for bid, slot in w.slot_of.items()}

    def _fill_dropped(self, slots: list[int], seen: dict[int, tuple[int, int, np.ndarray]],
                      k: int, t_recv: int) -> None:
        """Step the streaming state of the bodies that continue from the previous frame
        (``seen`` before it, same slot and track now) through the ``k`` sensor frames dropped
        in between, linearly interpolated between the two poses. The outputs are discarded:
        only the state moves on, at the sensor's clock. Stops once half the frame's budget is
        spent; an engine error restarts those bodies' states (the frame's own call reports).
        Every dropped frame of a continuing body is counted once: ``frames_filled`` when its
        step was taken into the state, ``fill_skipped`` when none could be (the budget, an
        engine still busy with an earlier call, or a step that outran the frame's deadline)."""
        w = self.window
        cont = [s for s in slots if w.ids[s] in seen and seen[w.ids[s]][:2] == (
            s, w.generation[s])]
        if not cont:
            return
        if self._worker.busy:  # an earlier call still runs: no step can start
            self.metrics.inc("fill_skipped", len(cont) * k)
            return
        ids = [w.ids[s] for s in cont]
        gens = [w.generation[s] for s in cont]
        before = np.stack([seen[b][2] for b in ids])
        after = np.stack([w.newest(s) for s in cont])
        step, budget_ns = self.engine.step, self.config.budget_ms * 1e6
        for i in range(1, k + 1):  # a step starts only if it ends within half the budget
            t0 = time.monotonic_ns()
            if t0 - t_recv + self._step_ns > budget_ns / 2:
                self.metrics.inc("fill_skipped", len(cont) * (k + 1 - i))
                return
            a = np.float32(i / (k + 1))
            frames = np.ascontiguousarray(before * (1 - a) + after * a)
            state = self.states.gather(cont, gens)
            call = _Call(ids, cont, gens, frames[:, None])
            self._worker.submit(lambda f=frames, st=state: step(f, st), call)
            res = self._worker.wait((budget_ns - (time.monotonic_ns() - t_recv)) / 1e9)
            if res is None:  # still running: the frame's own call finds the worker busy
                self._step_ns = int(budget_ns)  # no filling until a call is seen faster
                self.metrics.inc("fill_skipped", len(cont) * (k + 1 - i))  # its state is lost
                return
            self._step_ns = time.monotonic_ns() - t0
            _, y, err = res
            if err is None:
                _, err = self.states.accept(call, y)
            if err is not None:
                self.metrics.inc("fill_errors")
                self.states.reset(cont)
                return
            self.metrics.inc("frames_filled", len(cont))

    def _check_output(self, res) -> tuple[np.ndarray, np.ndarray] | None:
        """Whole-call failures → None (every body falls back). Otherwise the output
        ``[B, k, 25, 3]`` and which bodies passed the per-body checks on what the engine
        returned: finite and in range, the dummy's bone lengths, the leak guard."""
        call, y, err = res
        n, k = call.src.shape[:2]
        if err is None and self.states is not None:
            y, err = self.states.accept(call, y)
        if err is not None:
            self.metrics.inc("engine_errors")
            self.metrics.drop("engine_error")
            self._log_error("engine raised %s: %s", type(err).__name__, err)
            return None
        if not isinstance(y, np.ndarray) or y.shape != (n, k, NUM_JOINTS, 3):
            self.metrics.inc("engine_errors")
            self.metrics.drop("bad_output")
            self._log_error("engine returned %s, expected [%d, %d, 25, 3]",
                            getattr(y, "shape", type(y).__name__), n, k)
            return None
        ok, refused = self.gate.check(y, call.src, call.slots, call.gens)
        for reason, bad in refused.items():
            if bad.any():
                self.metrics.drop(reason, int(bad.sum()))
                self._log_error("refused %d body output(s): %s (body ids %s)", int(bad.sum()),
                                reason, [call.ids[i] for i in np.flatnonzero(bad)][:6])
        if self.states is not None:
            self.states.reset([call.slots[i] for i in np.flatnonzero(~ok)])
        return y, ok

    def _collect_late(self) -> None:
        """A call that finished after its deadline refreshes the held frames (not published)."""
        res = self._worker.wait(0.0)
        if res is None:
            return
        checked = self._check_output(res)
        if checked is None:
            return
        y, ok = checked
        self.metrics.inc("late_results")
        now = time.monotonic_ns()
        for i in np.flatnonzero(ok):
            self._held[res[0].ids[i]] = (y[i, -1].copy(), now)

    def _fallback(self, ids: list[int], t_recv: int) -> list[Frame]:
        """Overrun or engine failure: held anonymized frames ("hold") or nothing ("drop")."""
        seq, t_ns, src = self._pending[-1]
        if len(self._pending) > 1:  # hop > 1: one substitute for the newest pending frame
            self.metrics.inc("frames_lost", len(self._pending) - 1)
        self._pending.clear()
        if self.config.overrun == "drop":
            self.metrics.drop("overrun_frame")
            self.metrics.inc("frames_lost")
            self.metrics.inc("bodies_lost", len(ids))
            return []
        bodies = [b for b in (self._held_body(bid) for bid in ids) if b is not None]
        return [self._emit(Frame(seq, t_ns, bodies, src), t_recv)]

    def _held_body(self, bid: int) -> Body | None:
        """The held anonymized frame of ``bid`` if fresh enough (counted), else None."""
        held = self._held.get(bid)
        if (self.config.overrun == "hold" and held is not None
                and time.monotonic_ns() - held[1] <= self.config.hold_ms * 1e6):
            self.metrics.inc("bodies_held")
            return Body(bid, held[0], self._in_states.get(bid, self._state))
        self.metrics.drop("no_held_frame")
        self.metrics.inc("bodies_lost")
        return None

    def _publish_outputs(self, call: _Call | None, y, ok, t_recv: int) -> list[Frame]:
        pending = list(self._pending)
        self._pending.clear()
        if call is None:
            return [self._emit(Frame(s, t, [], src), t_recv) for s, t, src in pending]
        now = time.monotonic_ns()
        self._prune_held(set(call.ids), now)
        good = np.flatnonzero(ok)
        g_slots = [call.slots[i] for i in good]
        g_gens = [call.gens[i] for i in good]
        published = []
        for i, (seq, t_ns, src) in enumerate(pending):
            t0 = time.perf_counter_ns()
            out = self.smoother.apply(g_slots, g_gens, y[good, i], t_ns / 1e9, self._smoothed)
            fine = in_range(out)
            self.metrics.time("smooth", time.perf_counter_ns() - t0)
            fresh = {int(good[j]): out[j] for j in range(len(good)) if fine[j]}
            if not fine.all():
                self.metrics.drop("out_of_range", int((~fine).sum()))
            bodies = []
            for b, bid in enumerate(call.ids):
                if b in fresh:
                    joints = fresh[b].copy()
                    self._held[bid] = (joints, now)
                    bodies.append(Body(bid, joints, self._in_states.get(bid, self._state)))
                elif (held := self._held_body(bid)) is not None:
                    bodies.append(held)
            published.append(self._emit(Frame(seq, t_ns, bodies, src), t_recv))
        return published

    def _prune_held(self, present: set[int], now: int) -> None:
        limit = self.config.hold_ms * 1e6
        for bid in [b for b, (_, t) in self._held.items() if b not in present and now - t > limit]:
            del self._held[bid]

    def _emit(self, frame: Frame, t_recv: int) -> Frame:
        """Encode and send one anonymized frame to every sink (and the recording)."""
        m = self.metrics
        t0 = time.perf_counter_ns()
        payload = wire.encode(frame, wire.AnonInfo(self.model_name, time.monotonic_ns() - t_recv,
                                                   unevaluated=self.unevaluated))
        t1 = time.perf_counter_ns()
        m.time("encode", t1 - t0)
        for sink in self.sinks:
            try:
                sink.send(frame, payload)
            except Exception as e:  # a broken sink must not stop the others
                m.drop(f"sink_error:{sink.name}")
                self._log_error("sink %s failed: %s", sink.name, e)
        if self.recorder is not None:
            self.recorder.write(payload)
        t2 = time.perf_counter_ns()
        m.time("send", t2 - t1)
        m.time("total", time.monotonic_ns() - t_recv)
        m.inc("frames_out")
        m.inc("bodies_out", len(frame.bodies))
        return frame

    def _check_hang(self, now: int) -> None:
        if (self._worker.busy and not self._hung_reported
                and now - self._worker.busy_since > self.config.hang_ms * 1e6):
            self._hung_reported = True
            self.metrics.inc("engine_hangs")
            log.error("engine call running for over %.0f ms: holding output (policy %s)",
                      self.config.hang_ms, self.config.overrun)

    def _log_error(self, fmt: str, *args: Any) -> None:
        self._errors_logged += 1
        n = self._errors_logged
        if n <= 5 or n % 1000 == 0:
            log.error(fmt + (f" (occurrence {n})" if n > 5 else ""), *args)

    # -- running ----------------------------------------------------------------------------

    def _sync_counts(self) -> None:
        m = self.metrics
        with m._lock:
            # list(...) copies in one step: these counters may be updated by another thread
            for reason, n in list(self.window.dropped.items()):
                m.dropped[f"window:{reason}"] = n
            for reason, n in list(self.window.resets.items()):
                m.counters[f"window_reset:{reason}"] = n
            for sink in self.sinks:
                for reason, n in list(sink.dropped.items()):
                    m.dropped[f"{sink.name}:{reason}"] = n
                for name, n in dict(getattr(sink, "counters", {})).items():
                    m.counters[f"{sink.name}:{name}"] = n
            m.counters["frames_pending"] = len(self._pending)
            src = self._source
            if src is not None:
                for reason, n in list(getattr(src, "dropped", {}).items()):
                    m.dropped[f"input:{reason}"] = n
                for name, n in dict(getattr(src, "counters", {})).items():
                    m.counters[f"input:{name}"] = n

    def stats(self) -> dict[str, Any]:
        """A snapshot of every counter and latency summary."""
        self._sync_counts()
        return self.metrics.snapshot()

    def _maybe_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_stats < self.config.stats_interval_s:
            return
        self._last_stats = now
        self._sync_counts()
        log.info("%s", self.metrics.line())
        if self.config.stats_json:
            try:
                self.metrics.write_json(self.config.stats_json)
            except OSError as e:
                log.warning("cannot write stats to %s: %s", self.config.stats_json, e)

    def run(self, source: Iterable[Frame | None], max_frames: int | None = None,
            duration_s: float | None = None) -> dict[str, Any]:
        """Process ``source`` until it ends, :meth:`request_stop`, ``max_frames`` input frames
        or ``duration_s`` seconds. Returns the final stats (the source is not closed)."""
        self._source = source
        end = None if duration_s is None else time.monotonic() + duration_s
        n = 0
        for item in source:
            if item is not None:
                t_recv = time.monotonic_ns()
                dec = getattr(source, "last_decode_ns", None)
                if dec is not None:
                    self.metrics.time("decode", dec)
                self.step(item, t_recv)
                n += 1
            else:
                self.step(None)
            if (self._stop.is_set() or (max_frames is not None and n >= max_frames)
                    or (end is not None and time.monotonic() >= end)):
                break
        return self.stats()

    def close(self) -> dict[str, Any]:
        """Stop the worker, flush and close sinks and the recording, write final stats."""
        if self._closed:
            return self.stats()
        self._closed = True
        self._worker.stop()
        if self._worker.abandoned:
            log.warning("an engine call is still running at shutdown: abandoned (the engine is "
                        "not closed under it)")
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:
                log.warning("closing %s: %s", sink.name, e)
        if self.recorder is not None:
            self.recorder.close()
        self._maybe_stats(force=True)
        if self.config.stats_json:
            log.info("stats written to %s", Path(self.config.stats_json))
        return self.stats()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
