"""``streamtmr serve``: host the anonymizer in Triton Inference Server for many nodes."""

from __future__ import annotations

import argparse
from typing import Any

from streamtmr.commands import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="host the anonymizer in Triton Inference Server (nodes use "
                      "--engine triton://HOST:PORT)",
        description="Serve the anonymizer with PyTriton and dynamic batching across nodes. "
                    "Runs in the serving environment (nvidia-pytriton needs numpy < 2): when "
                    "PyTriton is not importable here, the command re-executes itself with "
                    "$STREAMTMR_SERVE_PYTHON or ./.venv-serve/bin/python.")
    p.add_argument("--host", default="127.0.0.1",
                   help="gRPC address; non-loopback needs --tls-cert/--tls-key or --insecure "
                        "[127.0.0.1]")
    p.add_argument("--port", type=int, default=8001, help="gRPC port (nodes connect here) [8001]")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port, loopback only [8000]")
    p.add_argument("--metrics-port", type=int, default=8002,
                   help="Prometheus metrics port, loopback only [8002]")
    p.add_argument("--engine", default="auto", help="back end that runs the model [auto]")
    p.add_argument("--model", default="default",
                   help="checkpoint, exported model, or a shipped model: default, matcher "
                        "[default]")
    p.add_argument("--dummy", default="default", help="dummy JSON file [default]")
    p.add_argument("--window", type=int, default=64, help="frames per window (windowed) [64]")
    p.add_argument("--max-batch", type=int, default=64,
                   help="bodies per engine call, summed over all nodes [64]")
    p.add_argument("--queue-delay-us", type=int, default=100,
                   help="how long the dynamic batcher waits to fill a batch (GPU servers with "
                        "many nodes: ~1000, see docs/scaling.md) [100]")
    p.add_argument("--instances", type=int, default=1, help="model instances [1]")
    p.add_argument("--state-dtype", choices=("fp16", "fp32"), default="fp16",
                   help="streaming models: float state on the wire [fp16]")
    p.add_argument("--allow-unevaluated", action="store_true",
                   help="serve a model without a privacy card (nodes then need it too)")
    p.add_argument("--workspace", default=None, metavar="DIR",
                   help="PyTriton's sockets and model store, created (must not exist) "
                        "[a temporary folder]")
    sec = p.add_argument_group("transport security")
    sec.add_argument("--tls-cert", default=None, metavar="PEM", help="server certificate")
    sec.add_argument("--tls-key", default=None, metavar="PEM", help="server private key")
    sec.add_argument("--tls-client-ca", default=None, metavar="PEM",
                     help="admit only nodes with a client certificate signed by this CA")
    sec.add_argument("--insecure", action="store_true",
                     help="allow clear-text gRPC on a non-loopback address")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamtmr import serve

    for name in ("port", "http_port", "metrics_port"):
        if not 0 < getattr(args, name) < 65536:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: not a port")
    for name in ("window", "max_batch", "instances"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.queue_delay_us < 0:
        raise UserError("--queue-delay-us must be >= 0")
    cfg = serve.ServeConfig(
        host=args.host, port=args.port, http_port=args.http_port, metrics_port=args.metrics_port,
        engine=args.engine, model=args.model, dummy=args.dummy, window=args.window,
        max_batch=args.max_batch, queue_delay_us=args.queue_delay_us, instances=args.instances,
        state_dtype=args.state_dtype, tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca, insecure=args.insecure,
        allow_unevaluated=args.allow_unevaluated, workspace=args.workspace)
    try:
        serve.check_security(cfg)
        if serve.pytriton_missing():
            serve.reexec_in_serving_env(_argv(args))
        serve.serve(cfg)
    except serve.ServeError as e:
        raise UserError(str(e)) from None
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """The parsed options as a command line again (for the re-execution)."""
    argv = [f"--{f.replace('_', '-')}" for f in ("insecure", "allow_unevaluated")
            if getattr(args, f)]
    for name in ("host", "port", "http_port", "metrics_port", "engine", "model", "dummy",
                 "window", "max_batch", "queue_delay_us", "instances", "state_dtype",
                 "tls_cert", "tls_key", "tls_client_ca", "workspace"):
        if (value := getattr(args, name)) is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv
