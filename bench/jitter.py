"""How much a model's published pose shakes: the frame-to-frame jitter of its output on people it
never saw, against the sensor's and the ground truth's.

Jitter of a joint at a frame is the distance from its position to the mean of its positions in
the frames before and after (the second difference, halved; `docs/synthkinect.md` measures
real recordings the same way), in mm. Per recording: the mean over every joint and frame, and
the 95th percentile over the hands and hand tips (the end of the chain, where a jump between
two poses shows most). Recordings: the first ``--recordings`` camera-0 performances of a
SynthKinect store's ``eval`` people, each streamed as one track from its first frame (the
parallel form, which ``tests/test_tmr_stream.py`` checks equals stepping). The rows ``source``
(what the sensor delivers) and ``own-tempo target`` (the dummy's neutral performance) frame
the models'.

    python -m bench.jitter --data data/synthkinect --models default runs/atoms256/model.safetensors
(written to ``bench/results/jitter-<date>-<host>.json`` unless ``--out`` says where)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import sys

import numpy as np
import torch

from bench.capped_search import store_tracks
from bench.machine import describe_machine, write_record

HANDS = (7, 11, 21, 23)  # HandLeft, HandRight, HandTipLeft, HandTipRight


def jitter_mm(y: np.ndarray) -> tuple[float, float]:
    """(mean over joints and frames, p95 over the hands) of the jitter of ``y [T, 25, 3]``."""
    d = np.linalg.norm(y[1:-1] - 0.5 * (y[:-2] + y[2:]), axis=-1) * 1000.0   # [T-2, 25]
    return float(d.mean()), float(np.percentile(d[:, HANDS], 95))


def summary(tracks: list[np.ndarray]) -> dict:
    per = np.array([jitter_mm(t) for t in tracks])
    return {"jitter_mean_mm": round(float(per[:, 0].mean()), 2),
            "hands_p95_mm": round(float(per[:, 1].mean()), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a SynthKinect store")
    p.add_argument("--models", nargs="+", required=True,
                   help="streaming checkpoints or shipped names")
    p.add_argument("--recordings", type=int, default=60)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from streamtmr.dummy import default_dummy
    from streamtmr.models.checkpoint import load_checkpoint, model_path

    sources = store_tracks(a.data, a.recordings)
    targets = store_tracks(a.data, a.recordings, "target_sync")
    rows = [{"output": "source (sensor)", **summary(sources)},
            {"output": "own-tempo target", **summary(targets)}]
    lengths = torch.from_numpy(default_dummy().lengths.copy())
    for spec in a.models:
        path = model_path(spec)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        dm = load_checkpoint(path).eval().for_dummy(lengths).eval()
        if not getattr(dm, "streaming", False):
            p.error(f"--models {spec}: not a streaming model")
        with torch.no_grad():
            outs = [dm(torch.from_numpy(np.ascontiguousarray(s))[None])[0].numpy()
                    for s in sources]
        rows.append({"output": f"{spec} sha256:{digest}", **summary(outs)})
    record = {"what": "frame-to-frame jitter of published poses (mm)",
              "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
              "machine": describe_machine(), "recordings": len(sources),
              "command": "python -m bench.jitter " + " ".join(argv or sys.argv[1:]),
              "rows": rows}
    for r in rows:
        print(f"{r['output']:60s} jitter {r['jitter_mean_mm']:6.2f} mm, hands p95 "
              f"{r['hands_p95_mm']:6.2f} mm")
    print(f"wrote {write_record(record, a.out, 'jitter')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
