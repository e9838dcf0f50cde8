"""The live viewer: a web page served by the node, drawing the anonymized bodies in 3-D beside
the node's live metrics.

:class:`ViewerSink` is a :class:`~streamtmr.stream.sinks.Sink`: the Node hands it exactly the
frames it publishes (the objects every other sink sends, after the bone check), so the page can
only ever show anonymized output; raw input never reaches this module. An aiohttp server runs
in its own named thread with its own event loop. The Node's thread only stores a reference to
the newest frame (the Node never writes a published array again): it never encodes, blocks or
waits for a browser. The server's pump pushes the newest frame to every WebSocket client at
most ``frame_hz`` times a second and the metrics ``metrics_hz`` times a second, each client
through a bounded queue: a slow browser loses its oldest messages (counted as ``slow_client``)
and cannot grow memory or slow the node. Clients are capped (``max_clients``).

Transport policy as for the other sinks (:mod:`streamtmr.stream.security`): loopback by default;
a non-loopback address (plain HTTP, no authentication) needs ``insecure``. On a loopback address
requests must name a loopback host (no DNS rebinding); a WebSocket opened by a page of another
origin is refused; the page's Content-Security-Policy allows only its own scripts and socket.

Messages to the page: text JSON ``{"type": "hello", ...}`` once (skeleton topology, stages,
histogram bin edges), text JSON ``{"type": "metrics", ...}`` and binary frames laid out as
``u32 version, u32 n, f64 seq, u64 id × n, f32 joints [n, 25, 3]``, little endian.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from aiohttp import WSCloseCode, web

from streamtmr.net import is_loopback_host
from streamtmr.skeleton import JOINT_NAMES, NUM_JOINTS, PARENTS
from streamtmr.stream.frame import Frame
from streamtmr.stream.metrics import STAGES
from streamtmr.stream.sinks import Sink
from streamtmr.viewer import ViewerError

log = logging.getLogger(__name__)

VERSION = 1
_HEADER = struct.Struct("<IId")  # version, number of bodies, seq
#: Latency histogram bin edges (ms) sent to the page; the last bin holds everything over 1 s.
EDGES_MS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0,
            1000.0, 1e6)
#: The page's files, served from memory under these paths (nothing else is served).
ASSETS = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
          "/style.css": ("style.css", "text/css")}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
#: Frames the pump may send back to back after a late tick (the rate stays ``frame_hz``).
BURST = 2.0
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 1.5  # the node must still exit within 2 s of SIGTERM


def encode_frame(frame: Frame) -> bytes:
    """The binary WebSocket message for one published frame (see the module docstring)."""
    n = len(frame.bodies)
    ids = np.array([b.id for b in frame.bodies], "<u8")
    joints = (np.stack([b.joints for b in frame.bodies]).astype("<f4", copy=False) if n
              else np.zeros((0, NUM_JOINTS, 3), "<f4"))
    return _HEADER.pack(VERSION, n, float(frame.seq)) + ids.tobytes() + joints.tobytes()


def rate(samples: deque[tuple[float, int]], window_s: float = 1.0) -> float:
    """Events per second over the last ``window_s`` from ``(time, cumulative count)`` samples,
    oldest first: from the newest sample at least ``window_s`` old (else the oldest) to now."""
    if len(samples) < 2:
        return 0.0
    t1, n1 = samples[-1]
    t0, n0 = samples[0]
    for t, n in reversed(samples):
        if t1 - t >= window_s:
            t0, n0 = t, n
            break
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def model_card(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of the model: name, weights' SHA-256, engine, and the privacy card's
    numbers when the node reports one (``card`` in its info or in the engine's description)."""
    engine = snapshot.get("engine") or {}
    card = snapshot.get("card") or engine.get("card")
    return {"model": snapshot.get("model"), "sha256": engine.get("model_sha256"),
            "graph_sha256": snapshot.get("graph_sha256") or engine.get("graph_sha256"),
            "unevaluated": bool(snapshot.get("unevaluated") or engine.get("unevaluated")),
            "method": engine.get("method"), "backend": engine.get("backend"),
            "device": engine.get("device"), "card": card if isinstance(card, dict) else None}


def _loopback_host_header(host: str) -> bool:
    """True when an HTTP Host header names this machine literally (no name resolution)."""
    try:
        name = urlsplit(f"//{host}").hostname or ""
    except ValueError:
        return False
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _same_origin(request: web.Request) -> bool:
    """A browser's WebSocket carries the opening page's Origin: it must be this server."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser; browsers always send Origin with a WebSocket handshake
    try:
        u = urlsplit(origin)
    except ValueError:
        return False
    return u.scheme in ("http", "https") and u.netloc.lower() == request.host.lower()


@dataclass(eq=False)  # hashed by identity: clients live in a set
class _Client:
    """One page: its socket and the bounded queue of messages not yet written to it."""

    ws: web.WebSocketResponse
    queue: deque
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0


class ViewerSink(Sink):
    """Serves the live viewer on ``http://HOST:PORT/`` (port 0: any free port, see ``port``).

    Starts its server thread at once (raises :class:`ViewerError` when it cannot listen).
    :meth:`attach` a Node for metrics; without one the page shows the bodies and fps only.
    Check the address first with :func:`streamtmr.viewer.viewer_address`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *, frame_hz: float = 30.0,
                 metrics_hz: float = 2.0, queue: int = 8, max_clients: int = 8):
        super().__init__()
        if frame_hz <= 0 or metrics_hz <= 0 or queue < 1 or max_clients < 1:
            raise ValueError("frame_hz, metrics_hz, queue and max_clients must be positive")
        self.host, self.port = host, int(port)
        self.frame_hz, self.metrics_hz = float(frame_hz), float(metrics_hz)
        self.queue_len, self.max_clients = int(queue), int(max_clients)
        self.loopback = is_loopback_host(host)
        self._assets = {path: (resources.files(__package__).joinpath("static", name)
                               .read_bytes(), ctype) for path, (name, ctype) in ASSETS.items()}
        self._latest: tuple[Frame | None, int] = (None, 0)  # (newest frame, its number)
        self._node: Any = None
        self._clients: set[_Client] = set()
        self.pushed = 0      # frame messages queued to clients
        self.throttled = 0   # published frames never shown (more than frame_hz)
        self.refused: dict[str, int] = {"too_many_clients": 0, "cross_origin": 0, "host": 0}
        self._rates: deque[tuple[float, int]] = deque(maxlen=int(6 * self.frame_hz) + 2)
        self._in_rates: deque[tuple[float, int]] = deque(maxlen=int(3 * self.metrics_hz) + 2)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        started = threading.Event()
        self._thread: threading.Thread | None = threading.Thread(
            target=self._serve, args=(started,), name="streamtmr-viewer", daemon=True)
        self._thread.start()
        if not started.wait(START_TIMEOUT_S) or self._error is not None:
            self.close()
            raise ViewerError(f"--viewer {host}:{port}: cannot listen "
                              f"({self._error or 'server did not start'})")
        self.name = f"viewer(http://{self.url_host}:{self.port}/)"
        log.info("live viewer on http://%s:%d/", self.url_host, self.port)

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def url(self) -> str:
        return f"http://{self.url_host}:{self.port}/"

    @property
    def counters(self) -> dict[str, int]:
        """Open pages, frames pushed to them, frames above the page rate, refused requests
        (the Node adds them to its stats)."""
        return {"pages": len(self._clients), "frames_pushed": self.pushed,
                "throttled": self.throttled,
                **{f"refused_{k}": v for k, v in self.refused.items()}}

    def client_stats(self) -> list[dict[str, int]]:
        """Per open page: messages waiting in its queue, messages dropped for it."""
        return [{"queued": len(c.queue), "dropped": c.dropped} for c in list(self._clients)]

    def attach(self, node: Any) -> None:
        """Show ``node``'s metrics (anything with ``stats()`` and ``metrics.histograms``)."""
        self._node = node

    # -- the Node's side: one reference store per frame -------------------------------------

    def send(self, frame: Frame, payload: bytes) -> bool:
        self._latest = (frame, self._latest[1] + 1)
        self.sent += 1
        return True

    def close(self) -> None:
        """Stop the server (pages get a going-away close) and join its thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop has ended already
                pass
        thread.join(STOP_TIMEOUT_S + 0.5)
        if thread.is_alive():
            log.warning("viewer thread did not stop within %.1f s", STOP_TIMEOUT_S + 0.5)

    # -- the server thread ---------------------------------------------------------------------

    def _serve(self, started: threading.Event) -> None:
        try:
            asyncio.run(self._main(started))
        except BaseException as e:  # the node goes on without its viewer, and says so
            if started.is_set():
                log.error("viewer stopped: %s: %s", type(e).__name__, e)
            self._error = e
        finally:
            started.set()

    async def _main(self, started: threading.Event) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        app = web.Application(middlewares=[self._guard])
        for path in ASSETS:
            app.router.add_get(path, self._asset)
        app.router.add_get("/ws", self._socket)
        runner = web.AppRunner(app, handle_signals=False, access_log=None,
                               shutdown_timeout=STOP_TIMEOUT_S / 3)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            self.port = int(runner.addresses[0][1])
        except OSError as e:
            self._error = e
            started.set()
            await runner.cleanup()
            return
        started.set()
        pump = asyncio.create_task(self._pump(), name="viewer-pump")
        try:
            await self._stop.wait()
        finally:
            pump.cancel()
            await asyncio.gather(*(self._goodbye(c) for c in list(self._clients)))
            await runner.cleanup()

    async def _goodbye(self, client: _Client) -> None:
        try:
            await asyncio.wait_for(client.ws.close(code=WSCloseCode.GOING_AWAY,
                                                   message=b"node stopping"),
                                   STOP_TIMEOUT_S / 3)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass  # a stalled page: the server's cleanup drops its connection

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.loopback and not _loopback_host_header(request.host):
            self.refused["host"] += 1
            raise web.HTTPMisdirectedRequest(text="viewer: Host must be a loopback address\n")
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def _asset(self, request: web.Request) -> web.Response:
        body, ctype = self._assets[request.path]
        return web.Response(body=body, content_type=ctype, charset="utf-8")

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        if not _same_origin(request):
            self.refused["cross_origin"] += 1
            raise web.HTTPForbidden(text="viewer: WebSocket from another origin refused\n")
        if len(self._clients) >= self.max_clients:
            self.refused["too_many_clients"] += 1
            raise web.HTTPServiceUnavailable(
                text=f"viewer: {self.max_clients} pages are open already (the cap)\n")
        ws = web.WebSocketResponse(heartbeat=10.0, compress=False, max_msg_size=4096,
                                   timeout=STOP_TIMEOUT_S / 3, writer_limit=1 << 16)
        await ws.prepare(request)
        client = _Client(ws, deque(maxlen=self.queue_len))
        writer = None
        try:
            await ws.send_str(json.dumps(self._hello()))
            self._clients.add(client)
            writer = asyncio.create_task(self._write(client), name="viewer-writer")
            async for _ in ws:  # the page sends nothing; reading answers pings and closes
                pass
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._clients.discard(client)
            if writer is not None:
                writer.cancel()
        return ws

    async def _write(self, client: _Client) -> None:
        try:
            while True:
                await client.ready.wait()
                client.ready.clear()
                while client.queue:
                    msg = client.queue.popleft()
                    if isinstance(msg, bytes):
                        await client.ws.send_bytes(msg)
                    else:
                        await client.ws.send_str(msg)
        except (ConnectionError, RuntimeError):
            pass  # the page went away; its handler ends with the connection

    def _broadcast(self, msg: bytes | str) -> None:
        for c in self._clients:
            if len(c.queue) == c.queue.maxlen:  # the oldest message is dropped, counted
                c.dropped += 1
                self.dropped["slow_client"] += 1
            c.queue.append(msg)
            c.ready.set()

    async def _pump(self) -> None:
        """The newest frame at most ``frame_hz`` times a second (a token bucket refilled at
        ``frame_hz``, ticking twice as often, so a stream at that rate passes whole despite
        jitter), the metrics ``metrics_hz`` times a second."""
        loop, period = asyncio.get_running_loop(), 0.5 / self.frame_hz
        shown, next_metrics, tick, tokens = 0, 0.0, loop.time(), 1.0
        while True:
            last, tick = tick, max(tick + period, loop.time() - period)  # steady, never a burst
            await asyncio.sleep(max(tick - loop.time(), 0.0))
            tokens = min(BURST, tokens + (tick - last) * self.frame_hz)
            now = time.monotonic()
            self._rates.append((now, self.sent))
            frame, number = self._latest
            if frame is not None and number != shown and tokens >= 1.0:
                tokens -= 1.0
                self.throttled += number - shown - 1
                shown = number
                if self._clients:
                    self._broadcast(encode_frame(frame))
                    self.pushed += 1
            if self._clients and now >= next_metrics:
                next_metrics = now + 1.0 / self.metrics_hz
                try:
                    self._broadcast(json.dumps(self._metrics(now)))
                except Exception as e:  # the node's stats are informative: frames go on
                    self.dropped["metrics_error"] += 1
                    if self.dropped["metrics_error"] <= 3:
                        log.error("viewer metrics: %s: %s", type(e).__name__, e)

    # -- messages ------------------------------------------------------------------------------

    def _hello(self) -> dict[str, Any]:
        return {"type": "hello", "version": VERSION, "joints": list(JOINT_NAMES),
                "parents": list(PARENTS), "stages": list(STAGES), "edges_ms": list(EDGES_MS),
                "frame_hz": self.frame_hz, "metrics_hz": self.metrics_hz}

    def _metrics(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "metrics", "fps": round(rate(self._rates), 2),
            "viewer": {"clients": self.client_stats(), "frames_pushed": self.pushed,
                       "throttled": self.throttled, "dropped": dict(self.dropped),
                       "refused": dict(self.refused)}}
        node = self._node
        if node is None:
            return out
        s = node.stats()
        self._in_rates.append((now, int(s["counters"].get("frames_in", 0))))
        out.update(fps_in=round(rate(self._in_rates), 2), elapsed_s=s.get("elapsed_s"),
                   counters=s["counters"], dropped=s["dropped"], latency=s["latency"],
                   histograms=node.metrics.histograms(list(EDGES_MS)), model=model_card(s))
        return out
