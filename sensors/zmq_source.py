"""Frames from an external publisher speaking the wire format, over a ZeroMQ SUB socket.

The SUB socket connects (the sensor process binds its PUB). Receiving is bounded: a receive
high-water mark caps the queue, a hard size cap bounds each message part, and with
``conflate=True`` only the newest message is kept (lowest latency when the consumer falls
behind). Malformed messages are dropped and counted by their
:class:`~streamtmr.stream.wire.WireError` reason; extra parts of a multipart message are
discarded (``multipart``).

A part over the hard cap makes libzmq drop the connection (ZMQ_MAXMSGSIZE), and libzmq does not
re-establish a connection it dropped for a protocol error (measured: 0 of 294 later frames).
A socket monitor sees the disconnect; the source then reconnects at once and counts it
(``reconnects``, reported by the node as ``input:reconnects``; a publisher that stops is
counted there too), so one oversized message
costs that message (and whatever was in flight), not the stream.

Residual risk, measured (``bench/input_floods.py``, bench/results/input-floods-*.json): libzmq
assembles a whole multipart message before the application sees a part, and ZMQ_MAXMSGSIZE
bounds each part, not their number. Parts over the cap are cut at the first part (3 × 512
parts of 1 MiB: +0 MB, was +525 MiB); parts just under the cap still reach memory (3 × 512
parts of 127 KiB: +75 MB peak), and the source then discards them (``multipart``). Only
authenticated publishers (CURVE, ``--curve-server-key``) close that; clear text is allowed
on loopback only.

The generator returns control (``None``) at least every :data:`TICK_S` even under a flood of
malformed messages, so the node's stats and signals are never starved.

A non-loopback publisher must be reached over CURVE (``security`` with the publisher's public
key); an unencrypted non-loopback connect is refused unless ``insecure`` (raw skeletons are
biometric data, see :mod:`streamtmr.stream.security`).
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
from streamtmr.stream.security import Security, SecurityError

log = logging.getLogger(__name__)

#: Longest the receive loop keeps control without yielding (seconds).
TICK_S = 0.05
#: Bytes a part may exceed the decoder's size cap by before libzmq cuts the peer (a message
#: between the two is received and counted ``oversized`` by the decoder).
HARD_CAP_SLACK = 64 * 1024


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
        # Bound what one part can allocate. Parts up to this hard cap reach the decoder and
        # are dropped there as "oversized" (counted); libzmq cuts a peer that sends more than
        # the hard cap, and the monitor below reconnects (see the module docstring).
        self.hard_cap = max_bytes + HARD_CAP_SLACK
        self.socket.setsockopt(zmq.MAXMSGSIZE, self.hard_cap)
        self.monitor = self.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.reconnects = 0
        if conflate:
            self.socket.setsockopt(zmq.CONFLATE, 1)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            self.socket.connect(self.endpoint)
        except zmq.ZMQError as e:
            self._close_sockets()
            raise SourceError(f"--source {endpoint}: cannot connect ({e})") from None

    @property
    def counters(self) -> dict[str, int]:
        """Events that are not messages: reconnects after libzmq dropped the publisher."""
        return {"reconnects": self.reconnects}

    @property
    def received(self) -> int:
        """Messages received (decoded + dropped)."""
        return self.decoder.received

    def _reconnect(self) -> None:
        """The peer was dropped (an oversized part): connect again and count it."""
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor.poll(0):
            recv_monitor_message(self.monitor)
        self.reconnects += 1
        if self.reconnects <= 5:
            log.warning("%s: the publisher was disconnected (a message part over %d bytes?); "
                        "reconnecting", self.name, self.hard_cap)
        self.socket.disconnect(self.endpoint)
        self.socket.connect(self.endpoint)

    def _receive(self) -> Frame | None:
        """One message (its first part decoded, further parts discarded and counted)."""
        data = self.socket.recv(zmq.NOBLOCK, copy=True)
        if self.socket.getsockopt(zmq.RCVMORE):
            while self.socket.getsockopt(zmq.RCVMORE):
                self.socket.recv(zmq.NOBLOCK, copy=False)
            self.decoder.received += 1
            self.dropped["multipart"] += 1
            return None
        return self.decoder(data)

    def frames(self) -> Iterator[Frame | None]:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        last_yield = time.monotonic()
        while not self.closed:
            try:
                events = dict(poller.poll(self.idle_ms))
                if self.monitor in events:
                    self._reconnect()
                if self.socket not in events:
                    last_yield = time.monotonic()
                    yield None
                    continue
                frame = self._receive()
            except zmq.Again:
                continue
            except zmq.ZMQError:
                if self.closed:
                    return
                raise
            if frame is None:
                if time.monotonic() - last_yield >= TICK_S:  # a flood of bad messages
                    last_yield = time.monotonic()
                    yield None
                continue
            self.last_decode_ns = self.decoder.last_decode_ns
            last_yield = time.monotonic()
            yield frame

    def _close_sockets(self) -> None:
        try:
            self.socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(0)
        self.socket.close(0)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._close_sockets()
