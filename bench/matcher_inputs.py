"""Where a cascade's matcher loses the pose: its motion-matching stage fed different inputs.

For SynthKinect's unseen people (frontal camera, first repetition, every ``--every``-th
recording), the model is stepped from a fresh state over whole recordings and its output
compared with the own-tempo target (``target_sync``: the dummy's neutral performance at the
person's tempo) by the root-aligned pose MPJPE, after the tenth frame. ``--inputs`` names the
store arrays fed in (``target_sync``: the query the matcher should get; ``clean``: the
person's noise-free motion; ``joints``: the sensor recording). ``--last`` runs only the
model's last (motion-matching) stage, as if its first stage were not there; also the share of
frames on which the playing database frame is not the next one (jumps).

    python -m bench.matcher_inputs --data data/synthkinect --model matcher \\
        --last --inputs target_sync clean joints --out bench/results/matcher-inputs-....json
    python -m bench.matcher_inputs --data data/synthkinect --model matcher --inputs joints
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from streamtmr.eval.report import machine


@torch.no_grad()
def screen(data: str, spec: str, inputs: list[str], last: bool, every: int) -> dict:
    from streamtmr.data.store import SkeletonStore
    from streamtmr.data.windows import pad_to
    from streamtmr.eval import metrics
    from streamtmr.models.cascade import last_stage_key
    from streamtmr.models.checkpoint import resolve_model

    store = SkeletonStore(data)
    ev = set(store.meta["splits"]["eval"])
    rows = [i for i, r in enumerate(store.rows)
            if r["subject"] in ev and r["view"] == 1 and r["rep"] == 0][::every]
    model = resolve_model(spec).eval()
    stages = list(getattr(model, "stages", [model]))
    if last:
        model, stages = stages[-1], stages[-1:]
    if stages[-1].method != "motion_match":
        raise SystemExit(f"{spec}: its last stage is not motion matching")
    key = last_stage_key(model, "cur")
    module = model.for_dummy(torch.as_tensor(stages[-1].config["dummy_lengths"])).eval()
    refs = [np.array(store[i].arrays["target_sync"], np.float32) for i in rows]
    out = {"recordings": len(rows)}
    for name in inputs:
        xs = [np.array(store[i].arrays[name], np.float32) for i in rows]
        T = max(len(x) for x in xs)
        x = torch.as_tensor(np.stack([pad_to(c, T) for c in xs]))
        state, ys, cur = module.init_state(len(xs)), [], []
        for t in range(T):
            y, state = module.step(x[:, t], state)
            ys.append(y)
            cur.append(state[key].long())
        y, cur = torch.stack(ys, 1).numpy(), torch.stack(cur, 1).numpy()
        pose = [metrics.pose_mpjpe_mm(y[k:k + 1, 10:len(r)], r[None, 10:])
                for k, r in enumerate(refs)]
        jumps = [float(np.mean(np.diff(cur[k, :len(r)]) != 1)) for k, r in enumerate(refs)]
        out[name] = {"pose_mpjpe_sync_mm": float(np.mean(pose)),
                     "jump_share": float(np.mean(jumps))}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--inputs", nargs="+", default=["joints"])
    p.add_argument("--last", action="store_true",
                   help="only the model's last (motion-matching) stage")
    p.add_argument("--every", type=int, default=2, help="every k-th recording")
    p.add_argument("--out", type=Path, default=None)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from streamtmr.cache import file_sha256
    from streamtmr.models.checkpoint import model_path

    res = screen(args.data, args.model, args.inputs, args.last, args.every)
    for name in args.inputs:
        print(f"{args.model}{' (last stage)' if args.last else ''} fed {name}: pose "
              f"{res[name]['pose_mpjpe_sync_mm']:.1f} mm, jumps on "
              f"{100 * res[name]['jump_share']:.1f} % of frames")
    if args.out:
        record = {"machine": machine(), "model": args.model,
                  "sha256": file_sha256(model_path(args.model)), "last_stage_only": args.last,
                  "command": "python -m bench.matcher_inputs " + " ".join(argv), **res}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
