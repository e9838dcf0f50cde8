"""``--source`` specifications → sources: one table from scheme to factory.

The table (:data:`SOURCES`) is the single list of what ``--source`` accepts: :func:`source_help`
renders it for the CLI, :func:`open_source` dispatches on it and names it in its errors. The
sensor modules never import this module, so adding a source is a module plus one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sensors.base import Source, SourceError
from sensors.kinect import AzureKinectSource, KinectSource
from sensors.lsl import open_lsl
from sensors.replay import ReplaySource
from sensors.synthetic import SyntheticSource
from sensors.zmq_source import ZmqSource


@dataclass(frozen=True)
class SourceKind:
    """One accepted form of ``--source``: ``prefixes`` match exactly when they end without
    ``:``/``://``, else as a prefix; ``make(spec, options)`` builds the source."""

    spec: str                   # as shown to the user, e.g. "replay:PATH"
    prefixes: tuple[str, ...]
    make: Callable[[str, dict[str, Any]], Source]
    summary: str

    def matches(self, spec: str) -> bool:
        return any(spec.startswith(p) if p.endswith(":") or p.endswith("://") else spec == p
                   for p in self.prefixes)


def _replay(spec: str, o: dict[str, Any]) -> Source:
    path = spec[len("replay:"):]
    if not path:
        raise SourceError("--source replay:PATH needs a path")
    return ReplaySource(path, realtime=o["realtime"], speed=o["speed"], loop=o["loop"])


SOURCES: tuple[SourceKind, ...] = (
    SourceKind("kinect", ("kinect",),
               lambda s, o: KinectSource(max_bodies=o["max_bodies"]), "Kinect v2 (Windows)"),
    SourceKind("azure", ("azure",),
               lambda s, o: AzureKinectSource(max_bodies=o["max_bodies"]), "Azure Kinect"),
    SourceKind("synthetic", ("synthetic",),
               lambda s, o: SyntheticSource(realtime=o["realtime"], speed=o["speed"],
                                            max_bodies=o["max_bodies"], seed=o["seed"]),
               "SynthKinect bodies generated live"),
    SourceKind("replay:PATH", ("replay:",), _replay,
               "a .skeleton file/folder, a converted store or a recording"),
    SourceKind("zmq://HOST:PORT", ("zmq://", "tcp://", "ipc://", "inproc://"),
               lambda s, o: ZmqSource(s, max_bodies=o["max_bodies"], security=o["security"]),
               "a ZeroMQ publisher of wire messages"),
    SourceKind("lsl://NAME", ("lsl://",), lambda s, o: open_lsl(s),
               "a Lab Streaming Layer MoCap stream, 75 channels (needs the lsl extra)"),
)

#: What ``--source`` accepts, for help and error messages.
SOURCE_SPECS = tuple(k.spec for k in SOURCES)


def source_help() -> str:
    """The accepted ``--source`` forms, one clause each, for argparse help."""
    return "; ".join(f"{k.spec} ({k.summary})" for k in SOURCES)


def open_source(spec: str, *, realtime: bool = True, speed: float = 1.0, loop: bool = False,
                max_bodies: int = 6, seed: int = 0, security=None) -> Source:
    """Build a source from a ``--source`` specification (see :data:`SOURCES`).
    ``security`` (a :class:`streamtmr.stream.security.Security`) applies to ZeroMQ sources."""
    for kind in SOURCES:
        if kind.matches(spec):
            return kind.make(spec, {"realtime": realtime, "speed": speed, "loop": loop,
                                    "max_bodies": max_bodies, "seed": seed,
                                    "security": security})
    raise SourceError(f"--source {spec!r}: expected one of {', '.join(SOURCE_SPECS)}")
