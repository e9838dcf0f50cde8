"""Where anonymized frames go: ZeroMQ PUB (the wire format), OSC in the VMC protocol, and
VRChat's OSC trackers.

A sink never blocks the Node: ZeroMQ sends are non-blocking with a bounded high-water mark
(a stalled subscriber loses messages, counted, instead of growing a queue) and OSC goes over
UDP. An avatar sink drives one avatar per port: the body it follows is chosen with
``?body=first|nearest|ID`` (default ``first``: the first body seen, for as long as it stays in
the stream), or ``?fanout=N`` drives N avatars on ports PORT..PORT+N-1, one body each (see
:mod:`streamtmr.stream.follow`). python-osc rejects numpy scalars, so every
argument is converted to a Python ``int``/``float``/``str``.

Every sink follows the transport policy of :mod:`streamtmr.stream.security`: clear text on
loopback; a non-loopback ZeroMQ bind needs CURVE keys and an allow-list, a non-loopback OSC
destination needs ``insecure`` (or is refused with :class:`SecurityError`).
"""

from __future__ import annotations

import abc
import ctypes
import ctypes.util
import functools
import logging
import time
from collections import Counter

import numpy as np
import zmq
from pythonosc import osc_bundle_builder, osc_message_builder
from pythonosc.udp_client import UDPClient

from streamtmr.skeleton import JOINT
from streamtmr.stream import follow, vmc
from streamtmr.stream.frame import Body, Frame
from streamtmr.stream.security import Security

log = logging.getLogger(__name__)

DEFAULT_ZMQ = "tcp://127.0.0.1:5556"
DEFAULT_VMC = ("127.0.0.1", 39539)
DEFAULT_VRCHAT = ("127.0.0.1", 9000)


class SinkError(ValueError):
    """A sink specification is invalid (the message names it)."""


class Sink(abc.ABC):
    """Receives every published frame with its encoded wire message."""

    name: str = "sink"

    def __init__(self) -> None:
        self.sent = 0
        self.dropped: Counter[str] = Counter()

    @abc.abstractmethod
    def send(self, frame: Frame, payload: bytes) -> bool:
        """Publish one anonymized frame; False when it was dropped (counted in ``dropped``)."""

    def close(self) -> None:  # noqa: B027 - sinks without resources need not override it
        """Release sockets."""


#: Largest message a subscriber may send to the ZeroMQ sink (a longer one makes libzmq drop
#: that subscriber): every client subscribes to b"" (the whole stream); the CURVE handshake
#: needs a few hundred bytes.
MAX_SUBSCRIPTION_BYTES = 512
#: Subscription messages accepted per socket before it is rebound (see ZmqPubSink).
SUBSCRIPTION_CAP = 500
#: Subscription messages libzmq queues for the sink before it stops reading a subscriber.
SUBSCRIPTION_QUEUE = 100
#: Subscription messages handled per published frame (the rest wait for the next frame).
SUBSCRIPTIONS_PER_SEND = 100_000
#: Seconds after a rebind or a subscriber's disconnect before free heap is handed back (libzmq
#: frees the connection's buffers on its own threads, shortly after the event).
TRIM_DELAY_S = 0.25
#: Least seconds between two hand-backs (a subscriber reconnecting in a loop costs at most one
#: ``malloc_trim`` per this interval).
TRIM_EVERY_S = 1.0


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None elsewhere (looked up once: ``find_library`` runs
    ``ldconfig``)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def _release_freed_memory() -> None:
    """Hand the heap pages a flood left free back to the system (glibc ``malloc_trim``; a no-op
    elsewhere), so that the memory a dropped flooder cost does not stay in the allocator's
    arenas and add up over repeated floods."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class ZmqPubSink(Sink):
    """Binds a publishing socket and sends one wire message per ZeroMQ frame, never blocking.

    Subscriptions are bounded and counted. libzmq keeps every distinct topic a subscriber
    sends in a trie, in a PUB socket as in an XPUB (measured: 20,000 topics of 8 KB +374 MB;
    20,000 of 200 B +200 MB). So the socket is an XPUB in manual mode: subscription messages
    come to the sink, which subscribes the sender to the whole stream (b"", its SUB filters
    locally) and counts them (``subscriptions``); a subscription message over
    :data:`MAX_SUBSCRIPTION_BYTES` makes libzmq drop that subscriber; libzmq reads at most
    :data:`SUBSCRIPTION_QUEUE` of them ahead; and after :data:`SUBSCRIPTION_CAP` subscription
    messages the socket is closed and bound again (``output_rebinds``), which frees the trie.
    Subscribers reconnect and subscribe again by themselves (ZeroMQ does that), losing the
    frames of the reconnect interval; a flooder can make that happen again, not grow the node.
    What a dropped or departed subscriber cost is freed by libzmq's threads into the
    allocator's arenas, where it would stay as resident memory (+5 to +37 MB measured after a
    flood, varying with the timing); so :data:`TRIM_DELAY_S` after a rebind or a disconnect
    (seen on the socket's monitor) the sink hands free heap pages back to the system
    (``malloc_trim``, at most once per :data:`TRIM_EVERY_S`): eight floods of 5,000 × 8 KB,
    5,000 × 500 B and 20,000 × 200 B topics left the node +0.1 to +1.7 MB once it had gone on
    publishing for 1.5 s (tests/test_failclosed_io.py; the good subscriber kept receiving).

    ``security`` decides whether the socket is a CURVE server (only allow-listed subscribers
    receive anything) or clear text, which it allows on loopback only unless ``insecure``
    (see :mod:`streamtmr.stream.security`; raises :class:`SecurityError` otherwise).
    """

    def __init__(self, endpoint: str = DEFAULT_ZMQ, hwm: int = 64,
                 context: zmq.Context | None = None, linger_ms: int = 200,
                 security: Security | None = None):
        super().__init__()
        self.endpoint = endpoint
        self.name = f"zmq({endpoint})"
        self._ctx = context or zmq.Context.instance()
        self.curve = (security or Security()).server(endpoint, self._ctx)
        if self.curve is not None:
            self.name = f"zmq+curve({endpoint})"
        self._hwm, self._linger_ms = hwm, linger_ms
        self.subscriptions = 0
        self.rebinds = 0
        self._since_bind = 0
        self._trim_at: float | None = None     # when free heap is next handed back
        self._last_trim = -TRIM_EVERY_S
        _malloc_trim()  # looked up now (ldconfig), not in the middle of a stream
        try:
            self.socket = self._open(endpoint)
        except zmq.ZMQError as e:
            raise SinkError(f"--sink {endpoint}: cannot bind ({e})") from None
        #: The endpoint actually bound (resolves a wildcard port such as ``tcp://127.0.0.1:*``).
        self.bound = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _open(self, endpoint: str) -> zmq.Socket:
        sock = self._ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_MANUAL, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
        sock.setsockopt(zmq.RCVHWM, SUBSCRIPTION_QUEUE)  # subscriptions libzmq reads ahead
        sock.setsockopt(zmq.SNDHWM, self._hwm)
        sock.setsockopt(zmq.LINGER, self._linger_ms)
        sock.setsockopt(zmq.SNDTIMEO, 0)
        if self.curve is not None:
            self.curve.apply(sock)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError:
            sock.close(0)
            raise
        self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        return sock

    def _close_socket(self, linger: int | None = 0) -> None:
        self.socket.disable_monitor()
        self._monitor.close(0)
        self.socket.close(linger)

    def _schedule_trim(self) -> None:
        """Hand free heap back soon (after libzmq's threads freed what they hold)."""
        if self._trim_at is None:
            self._trim_at = max(time.monotonic() + TRIM_DELAY_S, self._last_trim + TRIM_EVERY_S)

    def _trim_when_due(self) -> None:
        while True:  # every disconnect since the last frame (the monitor's messages: 2 frames)
            try:
                self._monitor.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._schedule_trim()
        if self._trim_at is not None and time.monotonic() >= self._trim_at:
            _release_freed_memory()
            self._trim_at, self._last_trim = None, time.monotonic()

    def _rebind(self) -> None:
        """Drop every subscriber (and libzmq's subscription trie) and bind again."""
        self._close_socket()
        self._schedule_trim()
        self.rebinds += 1
        self._since_bind = 0
        log.warning("%s: over %d subscription messages: rebinding the output (%d so far)",
                    self.name, SUBSCRIPTION_CAP, self.rebinds)
        for _ in range(50):  # the old listener is released asynchronously
            try:
                self.socket = self._open(self.bound)
                return
            except zmq.ZMQError:
                time.sleep(0.01)
        self.socket = self._open(self.bound)

    def serve_subscriptions(self) -> int:
        """Handle pending subscription messages (at most :data:`SUBSCRIPTIONS_PER_SEND`), and
        hand free heap back when it is due."""
        self._trim_when_due()
        n = 0
        while n < SUBSCRIPTIONS_PER_SEND:
            try:
                msg = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
            if msg[:1] == b"\x01":  # subscribe: that subscriber gets the whole stream
                self.socket.setsockopt(zmq.SUBSCRIBE, b"")
                self.subscriptions += 1
                self._since_bind += 1
                if self._since_bind > SUBSCRIPTION_CAP:
                    self._rebind()
                    break
        return n

    def send(self, frame: Frame, payload: bytes) -> bool:
        self.serve_subscriptions()
        try:
            self.socket.send(payload, zmq.NOBLOCK, copy=len(payload) < 4096)
        except zmq.Again:
            self.dropped["hwm"] += 1
            return False
        self.sent += 1
        return True

    @property
    def counters(self) -> dict[str, int]:
        """Subscriptions handled; subscribers admitted and refused by the CURVE allow-list."""
        if self.curve is None:
            return {"subscriptions": self.subscriptions, "output_rebinds": self.rebinds}
        return {"subscriptions": self.subscriptions, "output_rebinds": self.rebinds,
                "curve_allowed": self.curve.allow.allowed,
                "curve_denied": self.curve.allow.denied}

    def close(self) -> None:
        self._close_socket(linger=None)  # the socket's own linger (``linger_ms``)


class _AvatarSink(Sink):
    """Common part of the OSC sinks: one UDP client per avatar (``host:port``, then
    ``port + 1``, … when fanning out) and the choice of the body each avatar follows
    (:class:`~streamtmr.stream.follow.Follow`: ``?body=first|nearest|ID``, ``?fanout=N``)."""

    def __init__(self, host: str, port: int, chooser: follow.Follow | None = None):
        super().__init__()
        self.host, self.port = host, int(port)
        self.follow = chooser or follow.Follow()
        n = self.follow.outputs
        if self.port + n - 1 > 65535:
            raise SinkError(f"{type(self).__name__}: ports {port}-{self.port + n - 1} "
                            f"exceed 65535")
        try:
            self.clients = [UDPClient(host, self.port + k) for k in range(n)]
        except OSError as e:
            raise SinkError(f"{type(self).__name__}: cannot resolve {host}:{port} ({e})") from None
        self.ports = f"{self.port}" if n == 1 else f"{self.port}-{self.port + n - 1}"

    def _send(self, client: UDPClient, content) -> bool:
        try:
            client.send(content)
        except OSError as e:
            self.dropped["os_error"] += 1
            log.debug("%s: send failed: %s", self.name, e)
            return False
        return True

    def close(self) -> None:
        for client in self.clients:
            sock = getattr(client, "_sock", None)
            if sock is not None:
                sock.close()


def _message(address: str, *args: object):
    b = osc_message_builder.OscMessageBuilder(address=address)
    for a in args:
        b.add_arg(a)
    return b.build()


def _floats(a: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(a, np.float64).ravel()]


class VmcSink(_AvatarSink):
    """VMC protocol (performer → marionette): one OSC bundle per frame with ``/VMC/Ext/Root/Pos``,
    one ``/VMC/Ext/Bone/Pos`` per humanoid bone (local position and rotation in Unity axes),
    ``/VMC/Ext/OK`` and ``/VMC/Ext/T``. Bone offsets are the dummy's T-pose offsets; the Hips
    carry the root position. See :mod:`streamtmr.stream.vmc` for axes and rotations."""

    def __init__(self, lengths: np.ndarray, host: str = DEFAULT_VMC[0],
                 port: int = DEFAULT_VMC[1], chooser: follow.Follow | None = None):
        super().__init__(host, port, chooser)
        self.name = f"vmc({host}:{self.ports})"
        self.offsets = vmc.rest_offsets(lengths)
        self._t0 = time.monotonic()

    def bundle(self, body: Body | None):
        """The OSC bundle for one body (``None``: only the status messages)."""
        bb = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
        if body is not None:
            pos, local, _ = vmc.solve(body.joints)
            bb.add_content(_message("/VMC/Ext/Root/Pos", "root", 0.0, 0.0, 0.0,
                                    0.0, 0.0, 0.0, 1.0))
            root = pos[0]
            for i, name in enumerate(vmc.BONE_NAMES):
                p = root if name == "Hips" else self.offsets[i]
                bb.add_content(_message("/VMC/Ext/Bone/Pos", name, *_floats(p),
                                        *_floats(local[i])))
        bb.add_content(_message("/VMC/Ext/OK", 1 if body is not None else 0))
        bb.add_content(_message("/VMC/Ext/T", float(time.monotonic() - self._t0)))
        return bb.build()

    def send(self, frame: Frame, payload: bytes) -> bool:
        """One bundle per avatar; an avatar without a body gets ``/VMC/Ext/OK 0``."""
        bodies = self.follow.assign(frame)
        vmc.solve_many([b.joints for b in bodies if b is not None])  # all avatars in one solve
        ok = all([self._send(c, self.bundle(b)) for c, b in zip(self.clients, bodies)])
        self.sent += ok
        return ok


#: VRChat OSC tracker slots: tracker name → (Kinect joint for the position, bone for rotation).
VRCHAT_TRACKERS: tuple[tuple[str, str, str], ...] = (
    ("1", "SpineBase", "Hips"), ("2", "SpineShoulder", "Chest"),
    ("3", "AnkleLeft", "LeftFoot"), ("4", "AnkleRight", "RightFoot"),
    ("5", "KneeLeft", "LeftLowerLeg"), ("6", "KneeRight", "RightLowerLeg"),
    ("7", "ElbowLeft", "LeftUpperArm"), ("8", "ElbowRight", "RightUpperArm"),
    ("head", "Head", "Head"),
)


class VrchatSink(_AvatarSink):
    """VRChat OSC trackers: ``/tracking/trackers/<1..8|head>/position`` and ``/rotation``, each
    three floats: world position in metres and Unity Euler angles in degrees (Z, X, Y order).
    Trackers 1–8 are hip, chest, left/right foot, left/right knee, left/right elbow."""

    def __init__(self, host: str = DEFAULT_VRCHAT[0], port: int = DEFAULT_VRCHAT[1],
                 chooser: follow.Follow | None = None):
        super().__init__(host, port, chooser)
        self.name = f"vrchat({host}:{self.ports})"

    def messages(self, body: Body) -> list:
        pos, _, world = vmc.solve(body.joints)
        out = []
        for tracker, joint, bone in VRCHAT_TRACKERS:
            base = f"/tracking/trackers/{tracker}"
            out.append(_message(f"{base}/position", *_floats(pos[JOINT[joint]])))
            out.append(_message(f"{base}/rotation",
                                *_floats(vmc.unity_euler(world[vmc.BONE_NAMES.index(bone)]))))
        return out

    def send(self, frame: Frame, payload: bytes) -> bool:
        """The trackers of each avatar's body; an avatar without one gets nothing."""
        bodies = self.follow.assign(frame)
        vmc.solve_many([b.joints for b in bodies if b is not None])  # all avatars in one solve
        ok = all([self._send(c, m) for c, b in zip(self.clients, bodies)
                  if b is not None for m in self.messages(b)])
        self.sent += ok
        return ok
