"""Frames from an external publisher speaking the wire format, over a ZeroMQ SUB socket.

The SUB socket connects (the sensor process binds its PUB). Receiving is bounded: a receive
high-water mark caps the queue, a hard message-size cap bounds each message, and with
``conflate=True`` only the newest message is kept (lowest latency when the consumer falls
behind). Malformed messages are dropped and counted
by their :class:`~streamtmr.stream.wire.WireError` reason.

A non-loopback publisher must be reached over CURVE (``security`` with the publisher's public
key); an unencrypted non-loopback connect is refused unless ``insecure`` (raw skeletons are
biometric data, see :mod:`streamtmr.stream.security`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from urllib.parse import urlsplit

import zmq

from sensors.base import Source, SourceError
from streamtmr.stream import wire
from streamtmr.stream.frame import Frame
from streamtmr.stream.security import Security, SecurityError

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
                 idle_ms: int = 100, context: zmq.Context | None = None,
                 security: Security | None = None):
        super().__init__()
        self.endpoint = endpoint_of(endpoint)
        self.name = f"zmq({self.endpoint})"
        self.max_bodies, self.max_bytes = max_bodies, max_bytes
        self.idle_ms = idle_ms
        try:
            self.curve = (security or Security()).client(self.endpoint)
        except SecurityError as e:
            raise SourceError(str(e)) from None
        self.decoder = wire.Decoder(self.name, max_bodies, max_bytes, dropped=self.dropped)
        self._ctx = context or zmq.Context.instance()
        self.socket = self._ctx.socket(zmq.SUB)
        if self.curve is not None:
            self.curve.apply(self.socket)
            self.name = f"zmq+curve({self.endpoint})"
            self.decoder.name = self.name
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

    @property
    def received(self) -> int:
        """Messages received (decoded + dropped)."""
        return self.decoder.received

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
            frame = self.decoder(data)
            if frame is None:
                continue
            self.last_decode_ns = self.decoder.last_decode_ns
            yield frame

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.socket.close(0)
