"""``streamtmr run``: the streaming node — a source in, anonymized frames out to sinks."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
from typing import Any

from streamtmr.commands import UserError

log = logging.getLogger("streamtmr.run")


def _positive(kind: type, name: str):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: not a number: {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{name}: must be > 0, got {text}")
        return v
    return parse


def register(subparsers: Any) -> None:
    from sensors.open import source_help
    from streamtmr.stream.outputs import sink_help
    p = subparsers.add_parser(
        "run", help="run the streaming node (source → anonymizer → sinks)",
        description="Anonymize a live skeleton stream: read frames from a source, retarget "
                    "every tracked body onto the dummy, publish to ZeroMQ / OSC sinks.")
    p.add_argument("--source", default="synthetic", help=f"{source_help()} [synthetic]")
    p.add_argument("--sink", default="zmq://127.0.0.1:5556",
                   help=f"comma-separated: {sink_help()} [zmq://127.0.0.1:5556]")
    p.add_argument("--engine", default="auto", help="auto | tensorrt | onnxruntime | "
                   "onnxruntime-cuda | torch | torch-cuda | triton://HOST:PORT (a `streamtmr "
                   "serve` server) [auto]")
    p.add_argument("--model", default="default",
                   help="checkpoint, exported model, or a shipped model: default, matcher "
                        "[default]")
    p.add_argument("--dummy", default="default", help="dummy JSON file [default]")
    p.add_argument("--allow-unevaluated", action="store_true",
                   help="run a model without a privacy card (logged; every output message "
                        "is marked \"unevaluated\": true)")
    p.add_argument("--window", type=_positive(int, "--window"), default=64,
                   help="frames per window [64]")
    p.add_argument("--hop", type=_positive(int, "--hop"), default=1,
                   help="frames between engine calls [1]")
    p.add_argument("--budget-ms", type=_positive(float, "--budget-ms"), default=10.0,
                   help="latency budget per frame in ms [10]")
    p.add_argument("--overrun", choices=("hold", "drop"), default="hold",
                   help="on overrun: republish the held anonymized frame, or drop [hold]")
    p.add_argument("--smoothing", choices=("one_euro", "ema", "none"), default="one_euro")
    p.add_argument("--max-bodies", type=_positive(int, "--max-bodies"), default=6)
    p.add_argument("--gap-ms", type=_positive(float, "--gap-ms"), default=250.0,
                   help="a body absent this long restarts its window [250]")
    p.add_argument("--fill-dropped", type=int, default=7, metavar="K",
                   help="step a streaming model through up to K sensor frames the source "
                        "dropped (interpolated, not published); 0: off [7]")
    p.add_argument("--stagger-search", action="store_true",
                   help="a motion matcher's bodies that enter on the same frame search on "
                        "different frames: lower tail latency with several people, but their "
                        "first search comes up to 2 frames off the schedule its privacy card "
                        "measured (docs/motion_matching.md)")
    p.add_argument("--duration", type=_positive(float, "--duration"), default=None,
                   metavar="S", help="stop after S seconds")
    p.add_argument("--max-frames", type=_positive(int, "--max-frames"), default=None,
                   metavar="N", help="stop after N input frames")
    p.add_argument("--record", default=None, metavar="PATH",
                   help="also record the anonymized stream (replayable with replay:PATH)")
    p.add_argument("--stats-json", default=None, metavar="PATH",
                   help="write counters and latencies here periodically and at exit")
    p.add_argument("--viewer", default=None, metavar="[HOST:]PORT",
                   help="serve a live web viewer of the anonymized stream and the node's "
                        "metrics (host 127.0.0.1 unless named; needs the viewer extra)")
    p.add_argument("--stats-interval", type=_positive(float, "--stats-interval"), default=5.0,
                   metavar="S", help="seconds between stats lines [5]")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=True,
                      help="play synthetic/replay sources at their frame rate (default)")
    pace.add_argument("--fast", dest="realtime", action="store_false",
                      help="play synthetic/replay sources as fast as possible")
    p.add_argument("--speed", type=_positive(float, "--speed"), default=1.0,
                   help="replay speed factor [1]")
    p.add_argument("--loop", action="store_true", help="replay: start over at the end")
    p.add_argument("--seed", type=int, default=0, help="synthetic source seed [0]")
    sec = p.add_argument_group(
        "transport security", "Loopback endpoints may run in clear text; any other ZeroMQ "
        "endpoint needs CURVE keys (make them with `streamtmr keys`) or --insecure.")
    sec.add_argument("--curve-secret-key", default=None, metavar="PATH",
                     help="this node's key pair (NAME.key_secret): encrypts the ZeroMQ sink "
                          "and authenticates the node to a CURVE publisher")
    sec.add_argument("--curve-allow", default=None, metavar="DIR",
                     help="folder of subscriber public keys (*.key) allowed to receive from "
                          "the ZeroMQ sink")
    sec.add_argument("--curve-server-key", default=None, metavar="PATH",
                     help="the sensor publisher's public key: connect to --source over CURVE")
    sec.add_argument("--insecure", action="store_true",
                     help="allow unencrypted ZeroMQ / OSC on non-loopback addresses")
    p.set_defaults(func=run)


def _engine(args: argparse.Namespace):
    """Load the anonymizer through the guarded door (:func:`engines.open_engine`: file checks,
    privacy card, leak guard); every failure is one line naming what was refused."""
    from engines import BACKENDS, ModelRefused, open_engine
    from streamtmr.dummy import DummyError

    if args.engine != "auto" and args.engine not in BACKENDS and not (
            args.engine.startswith("triton://")):  # a `streamtmr serve` server
        raise UserError(f"--engine {args.engine!r}: choose auto or one of {', '.join(BACKENDS)}")
    try:
        return open_engine(args.engine, model=args.model, dummy=args.dummy,
                           window=args.window, max_batch=max(8, args.max_bodies),
                           allow_unevaluated=args.allow_unevaluated)
    except ModelRefused as e:
        raise UserError(f"--model {args.model}: {e}") from None
    except DummyError as e:
        raise UserError(f"--dummy {args.dummy}: {e}") from None
    except Exception as e:  # the model or back end cannot run: nothing has been published
        raise UserError(f"--engine {args.engine} --model {args.model}: cannot load the "
                        f"anonymizer ({type(e).__name__}: {e})") from None


def _viewer_address(args: argparse.Namespace) -> tuple[str, int] | None:
    if args.viewer is None:
        return None
    from streamtmr.viewer import ViewerError, viewer_address
    try:
        return viewer_address(args.viewer, args.insecure)
    except ViewerError as e:
        raise UserError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    from streamtmr.stream.node import Node

    config = _node_config(args)
    security = _security(args)
    viewer_at = _viewer_address(args)
    engine = _engine(args)  # a model that fails to load stops here: nothing was published
    if getattr(engine, "streaming", False) and args.hop != 1:
        engine.close()
        raise UserError(f"--hop {args.hop}: {engine.source.name} is a streaming model, it steps "
                        "every frame (--hop 1)")
    sinks, source, recorder = _open_io(args, engine, security, viewer_at)
    node = Node(engine, sinks, config, recorder=recorder)
    for sink in sinks:
        if hasattr(sink, "attach"):  # the viewer shows the node's metrics
            sink.attach(node)
    log.info("streaming %s → %s with %s (window %d, hop %d, budget %.1f ms)", args.source,
             ", ".join(s.name for s in sinks), node.model_name, args.window, args.hop,
             args.budget_ms)
    try:
        stats, failure = _serve(node, source, args)
    finally:
        security.close()
        if not node.abandoned:  # never close a session under a running engine call
            engine.close()
    _summary(stats)
    if failure is not None:
        raise UserError(failure)
    _exit_without_teardown(node)
    return 0


def _node_config(args: argparse.Namespace):
    from streamtmr.stream.node import NodeConfig
    try:
        config = NodeConfig(hop=args.hop, budget_ms=args.budget_ms, overrun=args.overrun,
                            max_bodies=args.max_bodies, gap_ms=args.gap_ms,
                            fill_dropped=args.fill_dropped,
                            stagger_search=args.stagger_search,
                            smoothing=args.smoothing, stats_interval_s=args.stats_interval,
                            stats_json=args.stats_json).validate()
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.hop > args.window:
        raise UserError(f"--hop {args.hop} must not exceed --window {args.window}")
    return config


def _security(args: argparse.Namespace):
    from streamtmr.stream.security import Security, SecurityError
    try:
        return Security(args.curve_secret_key, args.curve_allow, args.curve_server_key,
                        args.insecure)
    except SecurityError as e:
        raise UserError(str(e)) from None


def _open_io(args: argparse.Namespace, engine: Any, security: Any,
             viewer_at: tuple[str, int] | None) -> tuple[list, Any, Any]:
    """Sinks (and the viewer), the source and the recording; on any failure everything
    opened so far is closed again and the error is one line."""
    from sensors.base import SourceError
    from sensors.open import open_source
    from streamtmr.stream.outputs import open_sinks
    from streamtmr.stream.security import SecurityError
    from streamtmr.stream.sinks import SinkError
    from streamtmr.stream.wire import Recorder

    sinks, source, recorder = [], None, None
    try:
        try:
            sinks = open_sinks(args.sink, engine.dummy_lengths, security=security)
            if viewer_at is not None:
                from streamtmr.viewer.server import ViewerSink
                sinks.append(ViewerSink(*viewer_at))
        except (SinkError, SecurityError) as e:
            raise UserError(str(e)) from None
        if not sinks:
            raise UserError("--sink: at least one sink is needed")
        try:
            source = open_source(args.source, realtime=args.realtime, speed=args.speed,
                                 loop=args.loop, max_bodies=args.max_bodies, seed=args.seed,
                                 security=security)
        except SourceError as e:
            raise UserError(str(e)) from None
        if args.record:
            try:
                recorder = Recorder(args.record)
            except OSError as e:
                raise UserError(f"--record {args.record}: {e}") from None
    except BaseException:
        for s in sinks:
            s.close()
        if source is not None:
            source.close()
        security.close()
        engine.close()
        raise
    return sinks, source, recorder


def _serve(node: Any, source: Any, args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """Run the node until the source ends, the duration/frame limit or a stop signal
    (SIGINT, SIGTERM, SIGBREAK on Windows; a second signal stops at once). Returns the final
    stats and a one-line failure of the source, if any."""
    from sensors.base import SourceError

    def on_signal(signum: int, _frame: Any) -> None:
        if node.stopping:  # second signal: stop now
            raise KeyboardInterrupt
        log.info("signal %d: finishing", signum)
        node.request_stop()

    stops = (signal.SIGINT, signal.SIGTERM, *filter(None, [getattr(signal, "SIGBREAK", None)]))
    previous = {s: signal.signal(s, on_signal) for s in stops}  # SIGBREAK: Ctrl+Break (Windows)
    failure = None
    try:
        node.run(source, max_frames=args.max_frames, duration_s=args.duration)
    except (SourceError, ValueError, OSError) as e:  # e.g. a truncated replay file
        failure = f"--source {args.source}: {e}"
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        source.close()
        stats = node.close()
    return stats, failure


def _exit_without_teardown(node: Any) -> None:
    """With an engine call still running (abandoned at shutdown), exit now rather than tear
    down under it. Otherwise skip the slow collection of torch / ONNX Runtime objects at exit
    (~2 s on 2 shared cores, measured after SIGTERM)."""
    if node.abandoned:
        log.warning("exiting with an engine call still running (abandoned)")
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)
    gc.freeze()


def _summary(stats: dict[str, Any]) -> None:
    c = stats["counters"]
    print(json.dumps({"frames_in": c.get("frames_in", 0), "frames_out": c.get("frames_out", 0),
                      "bodies_out": c.get("bodies_out", 0), "overruns": c.get("overruns", 0),
                      "engine_errors": c.get("engine_errors", 0),
                      "engine_hangs": c.get("engine_hangs", 0), "dropped": stats["dropped"],
                      "latency_ms": {k: {q: v[q] for q in ("p50_ms", "p99_ms") if q in v}
                                     for k, v in stats["latency"].items()}}),
          file=sys.stdout)
