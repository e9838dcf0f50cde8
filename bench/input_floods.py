"""Input floods against the node's ZeroMQ source: resident memory and whether it keeps receiving.

Each scenario runs a :class:`sensors.zmq_source.ZmqSource` in this process (its RSS is what is
measured) fed by a publisher in a child process, then sends 30 valid frames and counts how many
come back. Scenarios (issue 11):

* ``multipart``: 3 messages of 512 parts, each part just under the source's hard cap (what
  libzmq assembles whole before the application sees a part: the residual risk of a clear-text
  local publisher; CURVE closes it);
* ``multipart_over_cap``: the same with 1 MiB parts (over the cap: libzmq drops the publisher at
  the first part; the source reconnects);
* ``garbage``: 200,000 malformed single-part messages.

    python -m bench.input_floods [--record]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import describe_machine
from bench.soak import rss_mb

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SCENARIOS = ("multipart", "multipart_over_cap", "garbage")

_PUBLISHER = """
import sys, time, zmq
from streamtmr.dummy import default_dummy
from streamtmr.stream import wire
from streamtmr.stream.frame import Body, Frame
import numpy as np
kind, port, part = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = zmq.Context(); pub = ctx.socket(zmq.PUB); pub.setsockopt(zmq.SNDHWM, 0)
pub.bind(f"tcp://127.0.0.1:{port}"); time.sleep(1.0)
if kind.startswith("multipart"):
    for _ in range(3):
        pub.send_multipart([b"\\x00" * part] * 512)
else:
    for k in range(200_000):
        pub.send(b"\\x93\\xff\\x00garbage" + bytes([k % 251]))
time.sleep(1.0)
rest = default_dummy().rest_pose() + np.array([0, 0, 3], np.float32)
for s in range(30):
    pub.send(wire.encode(Frame(s, s, [Body(1, rest, np.full(25, 2, np.uint8))], "f")))
    time.sleep(0.05)
time.sleep(1.0)
"""


def scenario(kind: str) -> dict:
    import zmq

    from sensors.zmq_source import ZmqSource

    probe = zmq.Context.instance().socket(zmq.PUB)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(0)
    time.sleep(0.1)
    src = ZmqSource(f"zmq://127.0.0.1:{port}", idle_ms=20)
    part = src.hard_cap - 1024 if kind == "multipart" else 1 << 20
    r0 = peak = rss_mb()
    proc = subprocess.Popen([sys.executable, "-c", _PUBLISHER, kind, str(port), str(part)],
                            cwd=ROOT)
    valid = 0
    t0 = time.monotonic()
    it = src.frames()
    while proc.poll() is None and time.monotonic() - t0 < 120:
        item = next(it)
        valid += item is not None
        peak = max(peak, rss_mb())
    src.close()
    return {"scenario": kind, "part_bytes": part if kind != "garbage" else None,
            "rss_start_mb": round(r0, 1), "rss_peak_growth_mb": round(peak - r0, 1),
            "valid_frames_back": valid, "valid_frames_sent": 30,
            "dropped": dict(src.dropped), "reconnects": src.reconnects,
            "received": src.received}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--record", action="store_true",
                   help="write bench/results/input-floods-<date>.json (with the machine)")
    args = p.parse_args(argv)
    res = {"kind": "input_floods", "date": _dt.datetime.now().isoformat(timespec="seconds"),
           "runs": [scenario(k) for k in SCENARIOS], "machine": describe_machine()}
    text = json.dumps(res, indent=1, default=str)
    print(text)
    if args.record:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"input-floods-{_dt.date.today().isoformat()}.json"
        path.write_text(text)
        print(f"recorded in {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
