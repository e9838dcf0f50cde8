"""Frames from an external publisher speaking the wire format, over a ZeroMQ SUB socket.

The SUB socket connects (the sensor process binds its PUB). Receiving is bounded: a receive
high-water mark caps the queue, a hard message-size cap bounds each message, and with
``conflate=True`` only the newest message is kept (lowest latency when the consumer falls
behind). Malformed messages are dropped and counted
by their :class:`~streamtmr.stream.wire.WireError` reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import zmq

from sensors.base import Source, SourceError
from streamtmr.stream import wire
from streamtmr.stream.frame import Frame

log = logging.getLogger(__name__)


def endpoint_of(spec: str) -> str:
    """``zmq://HOST:PORT`` → ``tcp://HOST:PORT``; ``tcp://``, ``ipc://``, ``inproc://`` pass."""
    if spec.startswith(("tcp://", "ipc://", "inproc://")):
        return spec
    u = urlsplit(spec)
    try:
        port = u.port
    except ValueError:
        port = None
    if u.scheme != "zmq" or not u.hostname or port is None:
        raise SourceError(f"--source {spec!r}: expected zmq://HOST:PORT")
    return f"tcp://{u.hostname}:{port}"


class ZmqSource(Source):
    """SUB socket connected to ``endpoint``; yields decoded frames, ``None`` when idle."""

    def __init__(self, endpoint: str, max_bodies: int = wire.MAX_BODIES,
                 max_bytes: int = wire.MAX_MESSAGE_BYTES, hwm: int = 64, conflate: bool = False,
                 idle_ms: int = 100, context: zmq.Context | None = None):
        super().__init__()
        self.endpoint = endpoint_of(endpoint)
        self.name = f"zmq({self.endpoint})"
        self.max_bodies, self.max_bytes = max_bodies, max_bytes
        self.idle_ms = idle_ms
        self._ctx = context or zmq.Context.instance()
        self.socket = self._ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        # Bound what one message can allocate. Messages up to this hard cap reach the decoder
        # and are dropped there as "oversized" (counted); libzmq cuts a peer that sends more
        # than the hard cap (a protocol error: that connection is not re-established).
        self.hard_cap = max(16 * max_bytes, 1 << 20)
        self.socket.setsockopt(zmq.MAXMSGSIZE, self.hard_cap)
        if conflate:
            self.socket.setsockopt(zmq.CONFLATE, 1)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            self.socket.connect(self.endpoint)
        except zmq.ZMQError as e:
            self.socket.close(0)
            raise SourceError(f"--source {endpoint}: cannot connect ({e})") from None
        self.received = 0
        self._logged = 0

    def frames(self) -> Iterator[Frame | None]:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while not self.closed:
            try:
                if not poller.poll(self.idle_ms):
                    yield None
                    continue
                data = self.socket.recv(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                continue
            except zmq.ZMQError:
                if self.closed:
                    return
                raise
            self.received += 1
            t0 = time.perf_counter_ns()
            try:
                frame = wire.decode(data, max_bodies=self.max_bodies, max_bytes=self.max_bytes)
            except wire.WireError as e:
                self.dropped[e.reason] += 1
                if self._logged < 10:
                    self._logged += 1
                    log.warning("%s: dropped a malformed message (%s)", self.name, e)
                continue
            self.last_decode_ns = time.perf_counter_ns() - t0
            yield frame

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.socket.close(0)
