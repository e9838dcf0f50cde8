"""Fuzz the wire decoder and the Node loop with hostile messages and check the invariants.

Every message goes through the same :class:`~streamtmr.stream.wire.Decoder` the ZeroMQ source
uses, then (when it decodes) through :meth:`Node.step` with a real engine (the naive retarget
by default). Checked on every message, and raised as a failure ("crash") when broken:

* nothing escapes but the decoder's counted drops: no exception from decode or the Node;
* every published message decodes, is marked anonymized, and each body in it has the dummy's
  bone lengths; no published body equals any input body ever seen (SHA-1 of the joint bytes)
  nor is close to the input body of the same id in the current frame (raw frames never leak),
  nor tracks that input's bone directions (median angle below the leak guard's frame margin;
  issue 11: pass-through models);
* a collapsed body beside good ones (``poison``) never blanks them: every good body of such a
  frame is published;
* the ledger adds up: ``messages == decoded + Σ dropped[reason]``, ``decoded == frames_in ==
  frames_out + frames_rejected + frames_lost + frames_pending``, ``frames_rejected`` equals the
  window's frame-level reasons, ``bodies_in == bodies_out + bodies_lost`` and the sink received
  exactly ``frames_out`` messages.

Two ways to generate messages: ``mutate`` (a seeded generator mixing a coherent stream with
truncations, bit flips, random bytes, huge array/map/bin headers, wrong types, NaN/Inf,
negative and huge ints, 7 to 10,000 bodies, deep nesting, wrong bin lengths, extension types,
oversized messages and decodable-but-hostile frames: sequence restarts, duplicates, time jumps,
source switches, id churn, extreme and degenerate poses) and ``atheris`` (coverage-guided
libFuzzer over the Python code of ``streamtmr.stream`` and ``sensors``, seeded with the
generator's output; each input is raw bytes or a structured message built from it). Any
failing input is saved under ``tests/fuzz_corpus/`` and replayed by ``tests/test_fuzz.py``.

The engine (``--engine``): ``default`` (the shipped model through the guarded
``engines.open_engine``, leak guard on), ``naive`` (the naive retarget, guard off: the old
target, fast), ``leaky`` (the default, but every 7th call returns the naive retarget of its
input — a model that leaks now and then: the leak guard must refuse those frames).

    python -m bench.fuzz_wire --messages 100000 [--mode auto|mutate|atheris|both] [--record]
        [--engine default|naive|leaky]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from bench.machine import describe_machine
from streamtmr.leak_guard import FRAME_MARGIN_DEG, frame_angles

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "fuzz_corpus"
RESULTS = ROOT / "bench" / "results"

#: Window reasons that drop a whole frame (the others drop one body of a frame).
FRAME_REASONS = ("duplicate", "out_of_order", "foreign_src")

#: Message categories of the mutation generator and their weights.
CATEGORIES: dict[str, float] = {
    "valid": 12, "semantic": 14, "truncated": 8, "bitflip": 10, "random_bytes": 5,
    "huge_header": 4, "wrong_types": 8, "nan_inf": 5, "bad_id": 4, "many_bodies": 4,
    "deep_nesting": 3, "huge_ints": 4, "bad_bin_len": 5, "ext_types": 4, "oversized": 2,
    "bad_str": 2, "anon_input": 2, "poison": 4,
}
#: Bone-direction angle (degrees, median over bones) under which a published body counts as
#: tracking its input: the leak guard's frame margin. (Issue 11's 10° would flag good output:
#: the ideal SynthKinect output sits at a median 5.6°, and the fuzz bodies stand near the
#: dummy's rest pose, where any faithful retarget is within a few degrees of the source.)
TRACKING_DEG = FRAME_MARGIN_DEG


def _digest(joints: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(joints, "<f4").tobytes()).digest()


class FuzzFailure(AssertionError):
    """An invariant broke (the message says which)."""


# ------------------------------------------------------------------------------------------
# The harness: decoder → Node → a sink that checks everything published
# ------------------------------------------------------------------------------------------

class Harness:
    """Feeds raw messages through the decoder and the Node; checks what the sink receives."""

    def __init__(self, engine: Any, config: Any = None, max_bodies: int = 6,
                 check_every: int = 1000, check_poison: bool = True):
        from streamtmr.stream import wire
        from streamtmr.stream.node import Node, NodeConfig
        from streamtmr.stream.sinks import Sink

        self.wire = wire
        self.lengths = np.asarray(engine.dummy_lengths, np.float32)
        cfg = config or NodeConfig(budget_ms=1000.0, hang_ms=5000.0, stats_interval_s=3600.0)
        if cfg.hop != 1:
            raise ValueError("the fuzz harness checks the per-body ledger, which needs hop 1")
        self.decoder = wire.Decoder("fuzz", max_bodies=max_bodies)
        self.raw: set[bytes] = set()
        self.current: dict[int, np.ndarray] = {}
        harness = self

        class CheckingSink(Sink):
            name = "check"

            def send(self, frame, payload: bytes) -> bool:
                # the Node contains sink exceptions, so findings are collected, not raised
                harness.violations.extend(harness._check_published(payload))
                self.sent += 1
                return True

        self.sink = CheckingSink()
        self.node = Node(engine, [self.sink], cfg)
        self.guarded = cfg.leak_guard
        self.check_poison = check_poison  # off for engines that fail on their own (chaos)
        self.tol = cfg.bone_tol * 1.01 + 1e-6
        self.check_every = check_every
        self.messages = 0
        self.published_bodies = 0
        self.violations: list[str] = []
        self.categories: Counter[str] = Counter()

    def _check_published(self, payload: bytes) -> list[str]:
        """What is wrong with one published message (nothing, normally)."""
        from streamtmr import skeleton
        try:
            msg = self.wire.decode_message(payload)
        except self.wire.WireError as e:
            return [f"the node published an invalid message ({e})"]
        if msg.anon is None:
            return ["the node published a message not marked anonymized"]
        bad = []
        for b in msg.frame.bodies:
            self.published_bodies += 1
            err = float(np.abs(skeleton.bone_lengths(b.joints)[1:] - self.lengths[1:]).max())
            if not err <= self.tol:
                bad.append(f"published body {b.id} has bone error {err:.2e} m")
            if _digest(b.joints) in self.raw:
                bad.append(f"published body {b.id} equals an input body (raw leak)")
            raw = self.current.get(b.id)
            if raw is not None and np.allclose(b.joints, raw, atol=1e-4):
                bad.append(f"published body {b.id} is its raw input")
            if raw is not None and self.guarded and \
                    float(frame_angles(b.joints, raw)) < TRACKING_DEG:
                bad.append(f"published body {b.id} tracks its input's bone directions")
        return bad

    def feed(self, data: bytes, category: str = "") -> None:
        """One message through decode and (when valid) the Node; raises on a broken
        invariant. Other exceptions escaping here are crashes too."""
        self.messages += 1
        if category:
            self.categories[category] += 1
        frame = self.decoder(data)
        self.current = {}
        if frame is not None:
            for b in frame.bodies:
                self.raw.add(_digest(b.joints))
                self.current[b.id] = np.array(b.joints)
            m = self.node.metrics
            before = (m.counters["engine_errors"], m.dropped["bad_output"],
                      m.dropped["bone_check"])
            self.node.step(frame)
            if category == "poison" and self.check_poison:  # only the collapsed body may fail
                after = (m.counters["engine_errors"], m.dropped["bad_output"],
                         m.dropped["bone_check"])
                # (an engine that raised fails the whole call by itself: not the poison's doing)
                if after[0] == before[0] and sum(after[1:]) - sum(before[1:]) > 1:
                    self.violations.append("a collapsed body made other bodies fail "
                                           f"(engine_errors/bad_output/bone_check {before} → "
                                           f"{after})")
        if self.violations:
            found, self.violations = self.violations, []
            raise FuzzFailure("; ".join(found[:3]))
        if self.check_every and self.messages % self.check_every == 0:
            self.check_ledger()

    def ledger(self) -> dict[str, Any]:
        """The counters and the equations between them (each True when it holds)."""
        s = self.node.stats()
        c, d = Counter(s["counters"]), Counter(s["dropped"])
        dec = self.decoder
        decode_drops = sum(dec.dropped.values())
        window_frame = sum(d[f"window:{r}"] for r in FRAME_REASONS)
        checks = {
            "messages = decoded + decode drops": self.messages == dec.decoded + decode_drops
            and dec.received == self.messages,
            "decoded = frames_in": dec.decoded == c["frames_in"],
            "frames_in = out + rejected + lost + pending":
                c["frames_in"] == c["frames_out"] + c["frames_rejected"] + c["frames_lost"]
                + c["frames_pending"],
            "frames_rejected = window frame reasons": c["frames_rejected"] == window_frame,
            "frames_lost = overrun_frame": c["frames_lost"] == d["overrun_frame"],
            "bodies_in = bodies_out + bodies_lost":
                c["bodies_in"] == c["bodies_out"] + c["bodies_lost"],
            "sink received = frames_out": self.sink.sent == c["frames_out"],
            "bodies checked = bodies_out": self.published_bodies == c["bodies_out"],
        }
        return {"checks": checks, "counters": dict(c), "dropped": dict(d),
                "decode_dropped": dict(dec.dropped), "decoded": dec.decoded}

    def check_ledger(self) -> None:
        led = self.ledger()
        broken = [k for k, ok in led["checks"].items() if not ok]
        if broken:
            raise FuzzFailure(f"ledger broken after {self.messages} messages: {broken}; "
                              f"counters {led['counters']}, decode drops {led['decode_dropped']}")

    def close(self) -> dict[str, Any]:
        self.node.close()
        self.check_ledger()
        return self.ledger()


# ------------------------------------------------------------------------------------------
# The mutation-based generator
# ------------------------------------------------------------------------------------------

class HostileStream:
    """A seeded stream of (category, message bytes): a coherent sensor stream of marker
    bodies (never the dummy's proportions) interleaved with malformed and hostile messages."""

    def __init__(self, seed: int = 0, max_bodies: int = 6):
        from streamtmr.dummy import default_dummy
        self.rng = np.random.default_rng(seed)
        self.rest = default_dummy().rest_pose().astype(np.float32)
        self.max_bodies = max_bodies
        self.seq, self.t_ns, self.src = 0, 0, "kinect-fuzz"
        self.ids = [int(i) for i in self.rng.integers(1, 2**63, 3)]
        self.scales = {i: self._scale() for i in self.ids}
        self.recent: list[bytes] = []
        names = list(CATEGORIES)
        w = np.array([CATEGORIES[n] for n in names], float)
        self.names, self.p = names, w / w.sum()

    def _scale(self) -> float:
        s = float(self.rng.uniform(0.8, 0.95))
        return s if self.rng.random() < 0.5 else 2.0 - s + 0.1  # 1.15 .. 1.3

    def _pose(self, bid: int) -> np.ndarray:
        scale = self.scales.setdefault(bid, self._scale())
        t = self.t_ns / 1e9
        pose = self.rest * scale + np.array([0.6 * (bid % 5) - 1.2, 0.0, 3.0], np.float32)
        wave = 0.15 * np.sin(2 * np.pi * 0.7 * t + bid % 7)
        pose[5:12, 1] += wave  # the left arm moves
        pose += self.rng.normal(0, 0.002, pose.shape).astype(np.float32)
        return pose.astype(np.float32)

    def _body(self, bid: int, joints: np.ndarray | None = None) -> dict[str, Any]:
        j = self._pose(bid) if joints is None else joints
        return {"id": bid, "joints": np.ascontiguousarray(j, "<f4").tobytes(),
                "state": bytes(self.rng.integers(0, 3, 25).astype(np.uint8))}

    def _msg(self, bodies: list[dict[str, Any]] | None = None, **over: Any) -> dict[str, Any]:
        if bodies is None:
            if self.rng.random() < 0.05:  # people leave and arrive
                k = int(self.rng.integers(len(self.ids)))
                self.ids[k] = int(self.rng.integers(1, 2**63))
            n = int(self.rng.integers(0, min(len(self.ids), self.max_bodies) + 1))
            bodies = [self._body(i) for i in self.ids[:max(n, 1)]]
        m = {"v": 1, "src": self.src, "seq": self.seq, "t_ns": self.t_ns,
             "skeleton": "kinect_v2", "bodies": bodies}
        m.update(over)
        return m

    def _advance(self) -> None:
        self.seq += 1
        self.t_ns += 33_333_333

    def _pack(self, obj: Any) -> bytes:
        return msgpack.packb(obj, use_bin_type=True)

    def valid(self) -> bytes:
        self._advance()
        data = self._pack(self._msg())
        self.recent = (self.recent + [data])[-16:]
        return data

    def _base(self) -> bytes:
        return self.recent[int(self.rng.integers(len(self.recent)))] if self.recent else \
            self.valid()

    # -- categories ---------------------------------------------------------------------------

    def semantic(self) -> bytes:
        """Decodable, but hostile to the Node's state."""
        r, k = self.rng, int(self.rng.integers(14))
        if k == 0:                           # sequence restart (a restarted publisher)
            self.seq, self.t_ns = int(r.integers(0, 5)), int(r.integers(0, 10**9))
        elif k == 1:                         # duplicate
            pass
        elif k == 2:                         # one late frame (the stream goes on after it)
            late = max(self.seq - int(r.integers(1, 50)), 0)
            return self._pack(self._msg(seq=late, t_ns=max(self.t_ns - 10**8, 0)))
        elif k == 3:                         # far jump forward
            self.seq += int(r.integers(2, 2**40))
            self.t_ns += int(r.integers(0, 2**50))
        elif k == 4:                         # time goes backwards, or does not move
            self.t_ns = max(self.t_ns - int(r.integers(0, 10**10)), 0)
            self.seq += 1
        elif k == 5:                         # another source interjects, or takes over
            src = str(r.choice(["intruder", "", "k" * 200]))
            if r.random() < 0.97:
                return self._pack(self._msg(src=src, seq=int(r.integers(0, 2**20))))
            self.src = src
            self._advance()
        elif k == 6:                         # id churn: all new bodies
            self.ids = [int(i) for i in r.integers(0, 2**63, 6)]
            self._advance()
        elif k == 7:                         # extreme but in-range coordinates
            self._advance()
            j = r.uniform(-99.9, 99.9, (25, 3)).astype(np.float32)
            return self._pack(self._msg([self._body(self.ids[0], j)]))
        elif k == 8:                         # degenerate: every joint at one point
            self._advance()
            j = np.tile(r.uniform(-5, 5, 3).astype(np.float32), (25, 1))
            return self._pack(self._msg([self._body(self.ids[0], j)]))
        elif k == 9:                         # tiny or huge body (collapsed / stretched bones)
            self._advance()
            j = (self.rest * float(r.choice([1e-6, 1e-3, 30.0]))).astype(np.float32)
            return self._pack(self._msg([self._body(self.ids[0], j)]))
        elif k == 10:                        # boundary ids and the max number of bodies
            self._advance()
            ids = [0, 2**64 - 1, 2**63, 1, 2, 3][:self.max_bodies]
            return self._pack(self._msg([self._body(i) for i in ids]))
        elif k == 11:                        # no bodies; unknown keys
            self._advance()
            return self._pack(self._msg([], future={"x": [1, 2]}, zz=None))
        elif k == 12:                        # huge valid seq / t_ns
            self.seq = int(r.integers(2**62, 2**63 - 10))
            self.t_ns = int(r.integers(2**62, 2**63 - 10**12))
        else:                                # denormals and signed zeros in the joints
            self._advance()
            j = self._pose(self.ids[0])
            j[int(r.integers(25))] = [np.float32(1e-45), -0.0, np.float32(-1e-40)]
            return self._pack(self._msg([self._body(self.ids[0], j)]))
        return self._pack(self._msg())

    def truncated(self) -> bytes:
        b = self._base()
        return b[:int(self.rng.integers(0, len(b)))]

    def bitflip(self) -> bytes:
        b = bytearray(self._base())
        for _ in range(int(self.rng.integers(1, 9))):
            i = int(self.rng.integers(len(b)))
            if self.rng.random() < 0.5:
                b[i] ^= 1 << int(self.rng.integers(8))
            else:
                b[i] = int(self.rng.integers(256))
        return bytes(b)

    def random_bytes(self) -> bytes:
        return self.rng.bytes(int(self.rng.integers(0, 2048)))

    def huge_header(self) -> bytes:
        """Tiny messages announcing huge arrays, maps, strings, bins or exts."""
        heads = [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\x7f\xff\xff\xff",
                 b"\xc6\x7f\xff\xff\xff", b"\xc9\x7f\xff\xff\xff\x01", b"\xdc\xff\xff"]
        head = heads[int(self.rng.integers(len(heads)))]
        prefix = b"" if self.rng.random() < 0.5 else b"\x81\xa6bodies"  # {"bodies": <head>
        return prefix + head + self.rng.bytes(int(self.rng.integers(0, 64)))

    def wrong_types(self) -> bytes:
        self._advance()
        m = self._msg()
        bad = [None, True, 1.5, -1, "x", b"\x00" * 3, [1, 2], {"a": 1}, 2**64 - 1, float("nan")]
        target = str(self.rng.choice(["v", "src", "seq", "t_ns", "skeleton", "bodies", "body",
                                      "id", "joints", "state", "anon", "root"]))
        val = bad[int(self.rng.integers(len(bad)))]
        if target == "root":
            return self._pack(val)
        if target in ("body", "id", "joints", "state"):
            if not m["bodies"]:
                m["bodies"] = [self._body(self.ids[0])]
            if target == "body":
                m["bodies"][0] = val
            else:
                m["bodies"][0][target] = val
        else:
            m[target] = val
        if self.rng.random() < 0.2:  # or a required field missing
            m.pop(str(self.rng.choice(["v", "src", "seq", "t_ns", "skeleton", "bodies"])))
        return self._pack(m)

    def nan_inf(self) -> bytes:
        self._advance()
        j = self._pose(self.ids[0])
        j[int(self.rng.integers(25)), int(self.rng.integers(3))] = \
            self.rng.choice([np.nan, np.inf, -np.inf, 1e30, -3e38])
        return self._pack(self._msg([self._body(self.ids[0], j)]))

    def bad_id(self) -> bytes:
        self._advance()
        body = self._body(self.ids[0])
        body["id"] = int(self.rng.choice([-1, -(2**63), -int(self.rng.integers(1, 2**62))]))
        if self.rng.random() < 0.3:
            body = dict(body)
            return self._pack(self._msg([self._body(self.ids[0]), body | {"id": self.ids[0]}]))
        return self._pack(self._msg([body]))

    def many_bodies(self) -> bytes:
        n = int(self.rng.choice([7, 16, 17, 100, 1000, 10_000]))
        small = self.rng.random() < 0.5  # id-only bodies fit many into the size cap
        body = {"id": 1} if small else self._body(self.ids[0])
        self._advance()
        return self._pack(self._msg([body | {"id": i} for i in range(n)]))

    def deep_nesting(self) -> bytes:
        depth = int(self.rng.choice([40, 200, 1000, 5000, 30_000]))
        if self.rng.random() < 0.5:
            inner = b"\x81\xa1a" * depth + b"\xc0"                      # {"a": {"a": ... nil}}
        else:
            inner = b"\x91" * depth + b"\x00"                           # [[[...0]]]
        return b"\x81\xa6bodies" + inner if self.rng.random() < 0.5 else inner

    def huge_ints(self) -> bytes:
        self._advance()
        big = [2**64 - 1, 2**63, 2**63 - 1, -(2**63), -1]
        key = str(self.rng.choice(["seq", "t_ns", "v", "lat_ns", "id"]))
        val = big[int(self.rng.integers(len(big)))]
        m = self._msg()
        if key == "id":
            m["bodies"] = [self._body(self.ids[0]) | {"id": val}]
        elif key == "lat_ns":
            m.update(anon=True, model="m", lat_ns=val)
        else:
            m[key] = val
        data = self._pack(m)
        if self.rng.random() < 0.3:  # a uint64 header carrying a > 2^64 payload cannot exist;
            data = data.replace(b"\xcf", b"\xd3", 1)  # flip its signedness instead
        return data

    def bad_bin_len(self) -> bytes:
        self._advance()
        body = self._body(self.ids[0])
        which = "joints" if self.rng.random() < 0.6 else "state"
        n = int(self.rng.choice([0, 1, 24, 26, 299, 301, 600, 1200, 40_000]))
        body[which] = self.rng.bytes(n)
        if self.rng.random() < 0.2:
            body[which] = body[which].decode("latin-1")  # str, not bin
        return self._pack(self._msg([body]))

    def ext_types(self) -> bytes:
        """Extension types (any code, including the reserved negative ones such as -1, the
        timestamp) at the root, in a field, or in place of the joints."""
        code = int(self.rng.integers(-128, 128))
        n = int(self.rng.choice([0, 1, 2, 4, 8, 16, 40]))
        fixed = {1: b"\xd4", 2: b"\xd5", 4: b"\xd6", 8: b"\xd7", 16: b"\xd8"}
        head = fixed.get(n, b"\xc7" + bytes([n]))
        ext = head + struct.pack("b", code) + self.rng.bytes(n)
        self._advance()
        m = self._msg()
        where = int(self.rng.integers(4))
        if where == 0:
            return ext
        sentinel = b"\xee\xbf" + self.rng.bytes(6)
        if where == 1:
            m["seq"] = sentinel
        elif where == 2 and m["bodies"]:
            m["bodies"][0]["joints"] = sentinel
        else:
            m["t_ns"] = sentinel
        return self._pack(m).replace(b"\xc4\x08" + sentinel, ext, 1)

    def oversized(self) -> bytes:
        self._advance()
        pad = int(self.rng.choice([65_537, 70_000, 300_000]))
        return self._pack(self._msg(pad="x" * pad)) if self.rng.random() < 0.5 else \
            self._base() + b"\x00" * pad

    def bad_str(self) -> bytes:
        """Invalid UTF-8 in a str, non-str map keys."""
        b = self._base()
        if self.rng.random() < 0.5:
            return b.replace(b"\xa3src", b"\xa3\xff\xfe\xfd", 1)
        return b"\x81\x01\x02" if self.rng.random() < 0.5 else b"\x81\xc0\xc0"

    def anon_input(self) -> bytes:
        """An input claiming to be anonymized already: it is anonymized again regardless."""
        self._advance()
        return self._pack(self._msg(anon=True, model="trust-me", lat_ns=1))

    def poison(self) -> bytes:
        """A collapsed body (every joint at one point: valid on the wire, NaN for many models)
        beside fresh good bodies (new ids: clean windows), all in one frame."""
        self._advance()
        collapsed = np.tile(self.rng.uniform(-2, 2, 3).astype(np.float32) + [0, 0, 3], (25, 1))
        ids = [int(i) for i in self.rng.integers(2**62, 2**63, 3)]
        bodies = [self._body(ids[0], collapsed.astype(np.float32))]
        bodies += [self._body(i) for i in ids[1:]]
        return self._pack(self._msg(bodies))

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        while True:
            name = self.names[int(self.rng.choice(len(self.names), p=self.p))]
            yield name, getattr(self, name)()


# ------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------

ENGINES = ("default", "naive", "leaky")


class LeakyEngine:
    """The shipped model, except that every ``every``-th call returns the naive retarget of its
    input (dummy bone lengths, the source's directions): a model that leaks now and then."""

    def __init__(self, engine: Any, naive: Any, every: int = 7):
        self.inner, self.naive, self.every, self.calls = engine, naive, every, 0
        self.window, self.dummy_lengths = engine.window, engine.dummy_lengths
        self.streaming = False

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "model": "leaky (default + naive every "
                f"{self.every}th call)"}

    def run_latest(self, x: np.ndarray, k: int = 1) -> np.ndarray:
        self.calls += 1
        if self.calls % self.every == 0:
            return self.naive.run_latest(x, k)
        return self.inner.run_latest(x, k)


def make_engine(model: str | None = None, backend: str = "onnxruntime", window: int = 16,
                kind: str = "default"):
    """The engine the fuzz target runs (see the module docstring), with the node config it
    needs: ``(engine, NodeConfig)``. ``model`` (checkpoint/ONNX) replaces the default."""
    import torch

    from engines import create_engine, open_engine
    from streamtmr.models.registry import build_model
    from streamtmr.stream.node import NodeConfig
    torch.set_num_threads(1)
    cfg = NodeConfig(budget_ms=1000.0, hang_ms=5000.0, stats_interval_s=3600.0)
    if kind not in ENGINES:
        raise ValueError(f"engine kind must be one of {ENGINES}, got {kind!r}")
    if kind == "naive":
        from dataclasses import replace
        eng = create_engine("torch", model=build_model({"method": "naive"}), window=window)
        return eng, replace(cfg, leak_guard=False)
    # a bench run: a model without a card runs too (logged, output marked unevaluated)
    eng = open_engine(backend, model=model or "default", window=window, max_batch=8,
                      allow_unevaluated=True)
    if kind == "leaky":
        naive = create_engine("torch", model=build_model({"method": "naive"}), window=window)
        eng = LeakyEngine(eng, naive)
    return eng, cfg


def save_crash(data: bytes, corpus: Path = CORPUS) -> Path:
    corpus.mkdir(parents=True, exist_ok=True)
    path = corpus / f"crash-{hashlib.sha1(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    return path


def run_mutation(messages: int, seed: int = 0, engine: Any = None, config: Any = None,
                 corpus: Path | None = CORPUS, progress: bool = False,
                 kind: str = "default") -> dict[str, Any]:
    """Feed ``messages`` generated messages; returns the result (crashes listed, not raised)."""
    if engine is None:
        engine, config = make_engine(kind=kind)
    h = Harness(engine, config)
    stream = iter(HostileStream(seed))
    crashes: list[dict[str, str]] = []
    t0 = time.perf_counter()
    for i in range(messages):
        cat, data = next(stream)
        try:
            h.feed(data, cat)
        except Exception as e:  # a crash: keep the input, go on
            path = save_crash(data, corpus) if corpus is not None else None
            crashes.append({"category": cat, "error": f"{type(e).__name__}: {e}"[:400],
                            "input": str(path) if path else "", "trace":
                            traceback.format_exc(limit=6)[-1500:]})
        if progress and (i + 1) % 10_000 == 0:
            print(f"  {i + 1} messages, {len(crashes)} crashes, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    try:
        ledger = h.close()
    except FuzzFailure as e:
        crashes.append({"category": "ledger", "error": str(e)[:1000], "input": "", "trace": ""})
        ledger = h.ledger()
    res = _result("mutate", h, ledger, crashes, time.perf_counter() - t0)
    try:
        d = engine.describe()
        res["engine"] = (f"{kind}: {d.get('method')} {str(d.get('model_sha256'))[:12]} on "
                         f"{d.get('backend')}, window {d.get('window')}, leak guard "
                         f"{'on' if h.guarded else 'off'}")
    except Exception:  # describe() is informative only
        res["engine"] = kind
    return res


def _result(mode: str, h: Harness, ledger: dict[str, Any], crashes: list,
            elapsed: float) -> dict[str, Any]:
    c = ledger["counters"]
    return {"mode": mode, "messages": h.messages, "crashes": len(crashes),
            "crash_details": crashes[:20], "elapsed_s": round(elapsed, 1),
            "messages_per_s": round(h.messages / max(elapsed, 1e-9)),
            "categories": dict(sorted(h.categories.items())),
            "decoded": ledger["decoded"], "decode_dropped": ledger["decode_dropped"],
            "frames_in": c.get("frames_in", 0), "frames_out": c.get("frames_out", 0),
            "bodies_in": c.get("bodies_in", 0), "bodies_out": c.get("bodies_out", 0),
            "bodies_checked": h.published_bodies, "node_dropped": ledger["dropped"],
            "node_counters": c, "ledger": ledger["checks"],
            "raw_bodies_seen": len(h.raw)}


def _structured(data: bytes) -> bytes:
    """A wire-shaped message whose every field is chosen by the fuzzer's bytes."""
    import atheris
    fdp = atheris.FuzzedDataProvider(data)

    def value(depth: int = 0) -> Any:
        k = fdp.ConsumeIntInRange(0, 9 if depth < 3 else 6)
        if k == 0:
            return fdp.ConsumeInt(9)
        if k == 1:
            return fdp.ConsumeIntInRange(0, 2**63)
        if k == 2:
            return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat()
        if k == 3:
            return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
        if k == 4:
            return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 320))
        if k == 5:
            return None if fdp.ConsumeBool() else fdp.ConsumeBool()
        if k == 6:
            return msgpack.ExtType(fdp.ConsumeIntInRange(0, 127),
                                   fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8)))
        if k == 7:
            return [value(depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
        return {fdp.ConsumeUnicodeNoSurrogates(6): value(depth + 1)
                for _ in range(fdp.ConsumeIntInRange(0, 4))}

    def field(good: Any) -> Any:
        return good if fdp.ConsumeIntInRange(0, 7) else value()

    bodies = []
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        with np.errstate(over="ignore"):
            joints = np.frombuffer(fdp.ConsumeBytes(300).ljust(300, b"\0"), "<f4") \
                if fdp.ConsumeBool() else np.full(75, fdp.ConsumeRegularFloat(), "<f4")
        bodies.append({"id": field(fdp.ConsumeIntInRange(0, 2**64 - 1)),
                       "joints": field(joints.tobytes()),
                       "state": field(bytes(x % 3 for x in fdp.ConsumeBytes(25).ljust(25)))})
    m = {"v": field(1), "src": field("fuzz"), "seq": field(fdp.ConsumeIntInRange(0, 2**63 - 1)),
         "t_ns": field(fdp.ConsumeIntInRange(0, 2**63 - 1)), "skeleton": field("kinect_v2"),
         "bodies": field(bodies)}
    for key in ("anon", "model", "lat_ns"):
        if fdp.ConsumeIntInRange(0, 9) == 0:
            m[key] = value()
    try:
        return msgpack.packb(m, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return msgpack.packb(None)


def run_atheris(messages: int, seed: int = 0, corpus: Path = CORPUS,
                max_len: int = 8192, out: Path | None = None) -> None:
    """Coverage-guided run in this process (it ends the process). Writes the result JSON to
    ``out`` and exits 0 when everything held, 1 otherwise (libFuzzer saves a failing input
    under ``corpus`` as ``crash-*``)."""
    import atheris
    with atheris.instrument_imports(include=["streamtmr.stream", "sensors"]):
        import streamtmr.stream.node  # noqa: F401
        import streamtmr.stream.smoothing  # noqa: F401
        import streamtmr.stream.window  # noqa: F401
        import streamtmr.stream.wire  # noqa: F401
    engine, config = make_engine()
    h = Harness(engine, config, check_every=5000)
    t0 = time.perf_counter()
    seeds = Path(tempfile.mkdtemp(prefix="streamtmr-fuzz-seeds-"))
    stream = iter(HostileStream(seed))
    for i in range(400):  # the generator's messages seed the coverage-guided search
        cat, data = next(stream)
        (seeds / f"{i:04d}-{cat}").write_bytes(b"\x00" + data[:max_len - 1])
    rng = np.random.default_rng(seed)
    for i in range(200):  # and structured messages (first byte >= 128) built from random bytes
        (seeds / f"s{i:03d}").write_bytes(b"\xff" + rng.bytes(int(rng.integers(16, 2048))))
    for f in sorted(corpus.glob("*.bin")) if corpus.is_dir() else []:
        (seeds / f"corpus-{f.name}").write_bytes(b"\x00" + f.read_bytes()[:max_len - 1])

    def finish(code: int, error: str | None = None) -> None:
        try:
            ledger = h.close()
        except FuzzFailure as e:
            error, code, ledger = str(e), 1, h.ledger()
        res = _result("atheris", h, ledger, [{"error": error}] if error else [],
                      time.perf_counter() - t0)
        if out is not None:
            Path(out).write_text(json.dumps(res, indent=1, default=str))
        shutil.rmtree(seeds, ignore_errors=True)
        sys.stdout.flush()
        os._exit(code)

    def one_input(data: bytes) -> None:
        if not data:
            return
        # first byte: < 128 raw bytes, else a structured message built from the rest
        msg = data[1:] if data[0] < 128 else _structured(data[1:])
        h.feed(msg, "raw" if data[0] < 128 else "structured")
        if h.messages >= messages:
            finish(0)

    corpus.mkdir(parents=True, exist_ok=True)
    args = [sys.argv[0], f"-runs={messages + 1000}", f"-max_len={max_len}", f"-seed={seed + 1}",
            "-rss_limit_mb=6144", "-timeout=60", f"-artifact_prefix={corpus}/crash-",
            "-print_final_stats=1", str(seeds)]
    atheris.Setup(args, one_input)
    try:
        atheris.Fuzz()
    finally:
        finish(1, "libFuzzer stopped before the message count was reached")


# ------------------------------------------------------------------------------------------
# Recording and the command line
# ------------------------------------------------------------------------------------------

def record(results: list[dict[str, Any]], path: Path | None = None) -> Path:
    """Append the runs to ``bench/results/fuzz-<date>.md`` (with the machine)."""
    date = _dt.date.today().isoformat()
    path = path or RESULTS / f"fuzz-{date}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    m = describe_machine()
    lines = [] if path.exists() else [f"# Wire and Node fuzzing, {date}", ""]
    for r in results:
        ok = r["crashes"] == 0 and all(r["ledger"].values())
        lines += [f"## {r['mode']}: {r['messages']:,} messages — "
                  f"{'PASS' if ok else 'FAIL'}", "",
                  f"- run at {_dt.datetime.now().isoformat(timespec='seconds')} with "
                  f"`python -m bench.fuzz_wire --mode {r['mode']} --messages {r['messages']}`",
                  f"- machine: {m.get('cpu')}, {m.get('cores_available', m.get('cores'))} "
                  f"cores available, {m.get('os')}, Python {m.get('python')}, load "
                  f"{m.get('load_average')}",
                  f"- engine: {r.get('engine', '?')}",
                  f"- crashes: {r['crashes']}; elapsed {r['elapsed_s']} s "
                  f"({r['messages_per_s']} messages/s)",
                  f"- decoded {r['decoded']:,}; dropped by the decoder "
                  f"{sum(r['decode_dropped'].values()):,}: {r['decode_dropped']}",
                  f"- Node: frames in {r['frames_in']:,}, out {r['frames_out']:,}; bodies in "
                  f"{r['bodies_in']:,}, out {r['bodies_out']:,} (each checked: dummy bone "
                  f"lengths, not equal to any of {r['raw_bodies_seen']:,} distinct input "
                  "bodies)",
                  f"- Node drops: {r['node_dropped']}",
                  f"- ledger: {r['ledger']}"]
        if r.get("categories"):
            lines.append(f"- message categories: {r['categories']}")
        for c in r.get("crash_details", []):
            lines.append(f"- CRASH {c.get('category', '')}: {c.get('error')} "
                         f"(input {c.get('input', '')})")
        lines.append("")
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--mode", choices=("auto", "mutate", "atheris", "both"), default="auto",
                   help="auto: atheris when installed, else mutate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=ENGINES, default="default",
                   help="the model the node runs (module docstring) [default]")
    p.add_argument("--record", action="store_true",
                   help="append the result to bench/results/fuzz-<date>.md")
    p.add_argument("--json", type=Path, default=None, help="also write the result(s) here")
    p.add_argument("--atheris-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.atheris_child is not None:  # the coverage-guided run, in its own process
        run_atheris(args.messages, args.seed, out=args.atheris_child)
    mode = args.mode
    if mode == "auto":
        try:
            import atheris  # noqa: F401
            mode = "atheris"
        except ImportError:
            mode = "mutate"
    results = []
    if mode in ("mutate", "both"):
        print(f"mutation-based: {args.messages} messages", file=sys.stderr)
        results.append(run_mutation(args.messages, args.seed, progress=True,
                                    kind=args.engine))
    if mode in ("atheris", "both"):
        print(f"atheris (coverage-guided): {args.messages} messages", file=sys.stderr)
        out = Path(tempfile.mkstemp(suffix=".json")[1])
        import subprocess
        proc = subprocess.run([sys.executable, "-m", "bench.fuzz_wire", "--messages",
                               str(args.messages), "--seed", str(args.seed),
                               "--atheris-child", str(out)], cwd=ROOT)
        try:
            res = json.loads(out.read_text())
        except (OSError, json.JSONDecodeError):
            res = {"mode": "atheris", "messages": 0, "crashes": 1, "ledger": {},
                   "crash_details": [{"error": f"atheris run exited {proc.returncode} "
                                      "without a result (see its output; the failing input "
                                      f"is under {CORPUS})"}]}
        out.unlink(missing_ok=True)
        results.append(res)
    summary = [{k: r.get(k) for k in ("mode", "messages", "crashes", "elapsed_s",
                                       "frames_out", "bodies_out", "ledger")} for r in results]
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if args.record and all(r.get("decoded") is not None for r in results):
        print(f"recorded in {record(results)}", file=sys.stderr)
    ok = all(r["crashes"] == 0 and r.get("ledger") and all(r["ledger"].values())
             for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
