"""``streamtmr export``: a model for one dummy as ONNX (checked, verified) or TensorRT plan."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamtmr.commands import UserError

#: Largest |ONNX Runtime − PyTorch| accepted for a deterministic model (fp32).
PARITY_ATOL = 1e-4


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a model for one dummy (ONNX or TensorRT)",
        description="Export the fixed-dummy model: ONNX (input 'windows' [batch, T, 25, 3] "
                    "float32, output 'anonymized'; dynamic batch, streamtmr metadata) or a "
                    "TensorRT plan for this GPU (batch 1..--max-batch, with a SHA-256 sidecar).")
    p.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx")
    p.add_argument("--out", type=Path, required=True, help="output file (.onnx / .plan)")
    p.add_argument("--model", default=None,
                   help="checkpoint (.safetensors), a shipped model (default, matcher) or, "
                        "for tensorrt, an exported .onnx (default: default)")
    p.add_argument("--dummy", default=None, help="dummy JSON file (default: the shipped dummy)")
    p.add_argument("--window", type=int, default=None,
                   help="frames per window T (default: the model's own)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--max-batch", type=int, default=8, help="tensorrt: largest batch")
    p.add_argument("--fp32", action="store_true", help="tensorrt: build fp32 even if FP16 works")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from engines import BackendUnavailable, EngineError, resolve_source
    from engines.onnx_export import example_input, export_onnx, max_abs_error
    from engines.select import check_files
    from streamtmr.dummy import DummyError
    from streamtmr.models.checkpoint import CheckpointError

    try:
        weights = check_files(args.model, args.dummy)  # pickles, size caps (ModelRefused)
        source = resolve_source(args.model, args.dummy, args.window)
        if args.format == "tensorrt":
            from engines.tensorrt_engine import export_plan
            record = export_plan(source, args.out, max_batch=args.max_batch, fp16=not args.fp32)
            print(f"wrote {args.out} ({record['precision']}, {record['gpu']}, TensorRT "
                  f"{record['tensorrt']}, batch 1..{record['max_batch']}, window "
                  f"{record['window']})")
            return 0
        if source.module is None:
            raise UserError(f"{args.model} is already an ONNX model")
        path = export_onnx(source, args.out, opset=args.opset)
        rng = np.random.default_rng(0)
        inputs = np.concatenate([
            example_input(source, 3),
            rng.normal(0, 0.3, (2, source.window, 25, 3)).astype(np.float32)])
        if source.deterministic:
            err = max_abs_error(source, path, inputs)
            if err > PARITY_ATOL:
                raise UserError(f"{path}: ONNX Runtime differs from PyTorch by {err:.2e} "
                                f"(> {PARITY_ATOL:g})")
            parity = f"max |onnx - torch| {err:.1e}"
        else:
            parity = "parity not checked (stochastic method)"
        carded = embed_card(weights, path)
    except (CheckpointError, DummyError, FileNotFoundError, ValueError,
            BackendUnavailable, EngineError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {path} ({source.method}, window {source.window}, dummy {source.dummy.name}; "
          f"{parity}; {'privacy card embedded' if carded else 'no privacy card: unevaluated'})")
    return 0


def embed_card(weights, onnx_path) -> bool:
    """Carry the checkpoint's privacy card into the exported ONNX (metadata
    ``streamtmr.card``), bound to the exported graph's SHA-256 and naming the weights it was
    evaluated on. Returns False when the checkpoint has no card."""
    import json

    import onnx

    from engines.card import ONNX_KEY, find_card, sha256_bytes

    card = find_card(weights) if weights is not None else None
    if card is None:
        return False
    model = onnx.load(str(onnx_path))
    card = {**card, "weights_sha256": card.get("sha256"),
            "graph_sha256": sha256_bytes(model.graph.SerializeToString(deterministic=True))}
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_KEY, json.dumps(card)
    onnx.save(model, str(onnx_path))
    return True
