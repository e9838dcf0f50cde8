"""``--sink`` specifications → sinks: one table from scheme to factory.

The table (:data:`SINKS`) is the single list of what ``--sink`` accepts: :func:`sink_help`
renders it for the CLI, :func:`open_sink` dispatches on it and names it in its errors. The sink
modules never import this module (the same rule as ``sensors.open`` for sources), so adding a
sink is a module plus one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import zmq

from streamtmr.stream import follow
from streamtmr.stream.security import Security
from streamtmr.stream.sinks import (
    DEFAULT_VMC,
    DEFAULT_VRCHAT,
    Sink,
    SinkError,
    VmcSink,
    VrchatSink,
    ZmqPubSink,
)


@dataclass(frozen=True)
class SinkKind:
    """One accepted form of ``--sink``: ``schemes`` are the URL schemes it answers to;
    ``make(spec, options)`` builds the sink."""

    spec: str                  # as shown to the user, e.g. "vmc://HOST:PORT"
    schemes: tuple[str, ...]
    make: Callable[[str, dict[str, Any]], Sink]
    summary: str


def _host_port(spec: str, default: tuple[str, int]) -> tuple[str, int]:
    u = urlsplit(spec)
    try:
        port = u.port
    except ValueError:
        raise SinkError(f"--sink {spec}: invalid port") from None
    return (u.hostname or default[0]), (port if port is not None else default[1])


def _zmq(spec: str, o: dict[str, Any]) -> Sink:
    if spec.startswith("zmq://"):
        host, port = _host_port(spec, ("127.0.0.1", 5556))
        host = f"[{host}]" if ":" in host else host
        spec = f"tcp://{host}:{port}"
    return ZmqPubSink(spec, context=o["context"], security=o["security"])


def _avatar(spec: str, o: dict[str, Any]) -> Sink:
    vmc = spec.startswith("vmc://")
    host, port = _host_port(spec, DEFAULT_VMC if vmc else DEFAULT_VRCHAT)
    o["security"].check_osc(spec, host)
    try:
        chooser = follow.from_query(parse_qs(urlsplit(spec).query))
    except ValueError as e:
        raise SinkError(f"--sink {spec}: {e}") from None
    return VmcSink(o["lengths"], host, port, chooser) if vmc else VrchatSink(host, port, chooser)


def _lsl(spec: str, o: dict[str, Any]) -> Sink:
    from streamtmr.stream.lsl import open_lsl_sink  # pylsl only when asked for
    return open_lsl_sink(spec)


SINKS: tuple[SinkKind, ...] = (
    SinkKind("zmq://HOST:PORT", ("zmq", "tcp", "ipc", "inproc"), _zmq,
             "ZeroMQ PUB of wire messages (default port 5556)"),
    SinkKind("vmc://HOST:PORT", ("vmc",), _avatar,
             "OSC in the VMC protocol (default port 39539; ?body=first|nearest|ID, ?fanout=N)"),
    SinkKind("vrchat://HOST:PORT", ("vrchat",), _avatar,
             "VRChat OSC trackers (default port 9000; ?body=…, ?fanout=N)"),
    SinkKind("lsl://NAME", ("lsl",), _lsl,
             "a Lab Streaming Layer MoCap outlet (needs the lsl extra; ?body=…)"),
)

#: What ``--sink`` accepts, for help and error messages.
SINK_SPECS = tuple(k.spec for k in SINKS)


def sink_help() -> str:
    """The accepted ``--sink`` forms, one clause each, for argparse help."""
    return "; ".join(f"{k.spec} ({k.summary})" for k in SINKS)


def open_sink(spec: str, lengths: np.ndarray, context: zmq.Context | None = None,
              security: Security | None = None) -> Sink:
    """Build a sink from a ``--sink`` specification (see :data:`SINKS`). ``security``
    (default: loopback only, no keys) is enforced for every kind."""
    scheme = spec.split("://", 1)[0] if "://" in spec else ""
    options = {"lengths": lengths, "context": context, "security": security or Security()}
    for kind in SINKS:
        if scheme in kind.schemes:
            return kind.make(spec, options)
    raise SinkError(f"--sink {spec!r}: expected one of {', '.join(SINK_SPECS)}")


def open_sinks(specs: str | list[str], lengths: np.ndarray,
               context: zmq.Context | None = None,
               security: Security | None = None) -> list[Sink]:
    """Comma-separated (or listed) sink specifications → sinks (closed again on error)."""
    if isinstance(specs, str):
        specs = [s.strip() for s in specs.split(",") if s.strip()]
    sinks: list[Sink] = []
    try:
        for s in specs:
            sinks.append(open_sink(s, lengths, context, security))
    except Exception:
        for k in sinks:
            k.close()
        raise
    return sinks
