"""Triton client engine: ``--engine triton://HOST:PORT`` runs the model that ``streamtmr serve``
hosts, so many nodes share one GPU (or one CPU server) through Triton's dynamic batcher.

The node uses it like any in-process engine. Windowed models: :meth:`run` / :meth:`run_latest`
send the windows. Streaming models (``streaming is True``): :meth:`step` sends the frames and
each body's state and gets both back — the server keeps nothing between calls, any instance
takes any body. The state travels in the server's wire dtype (float tensors as FP16 by default,
see :mod:`streamtmr.serve`); :meth:`init_state` and :meth:`state_spec` return that form, so the
node stores the state as small as it travels.

URL: ``triton://HOST:PORT[?ca=PEM&cert=PEM&key=PEM&insecure=1&timeout_ms=MS]``. A non-loopback
host needs TLS (``ca``: the server's CA; ``cert``/``key``: this node's client certificate when
the server authenticates nodes) or ``insecure=1``.

Fail-closed: an unreachable server, a timeout (``timeout_ms``, default 1000), a malformed or
non-finite answer all raise :class:`~engines.base.EngineError` (counted in :attr:`errors`; the
node then holds or drops). After a failure the next call reconnects (a new gRPC channel, at most
every ``retry_ms``) and re-reads the server's model info: a server that now serves another
model (weights SHA-256, window, dummy, form or card) is refused, never silently used.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from engines.base import BackendUnavailable, Engine, EngineError
from engines.source import ModelSource
from streamtmr import skeleton
from streamtmr.dummy import Dummy

log = logging.getLogger(__name__)

SCHEME = "triton://"
MODEL = "streamtmr"             # the names streamtmr.serve binds
INFO_MODEL = "streamtmr_info"
_URL_OPTIONS = ("ca", "cert", "key", "insecure", "timeout_ms", "retry_ms")


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure: bool = False
    timeout_ms: float = 1000.0
    retry_ms: float = 500.0

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_url(url: str) -> Target:
    """``triton://HOST:PORT?...`` → :class:`Target` (ValueError naming the bad part)."""
    if not url.startswith(SCHEME):
        raise ValueError(f"engine {url!r}: expected {SCHEME}HOST:PORT")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ValueError(f"engine {url!r}: expected {SCHEME}HOST:PORT (e.g. triton://"
                         "127.0.0.1:8001)")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    if unknown := sorted(set(query) - set(_URL_OPTIONS)):
        raise ValueError(f"engine {url!r}: unknown option(s) {unknown}; known: "
                         f"{', '.join(_URL_OPTIONS)}")
    for name in ("ca", "cert", "key"):
        if query.get(name) and not Path(query[name]).is_file():
            raise ValueError(f"engine {url!r}: {name}={query[name]}: no such file")
    if bool(query.get("cert")) != bool(query.get("key")):
        raise ValueError(f"engine {url!r}: cert and key go together")
    try:
        timing = {k: float(query[k]) for k in ("timeout_ms", "retry_ms") if k in query}
    except ValueError:
        raise ValueError(f"engine {url!r}: timeout_ms/retry_ms must be numbers") from None
    if any(v <= 0 for v in timing.values()):
        raise ValueError(f"engine {url!r}: timeout_ms/retry_ms must be > 0")
    return Target(parts.hostname, port, query.get("ca") or None, query.get("cert") or None,
                  query.get("key") or None, query.get("insecure", "0") in ("1", "true", "yes"),
                  **timing)


def check_security(t: Target) -> None:
    """Loopback, or TLS (``ca``), or ``insecure=1`` — else ValueError, as for ZeroMQ."""
    from streamtmr.net import is_loopback_host
    if not is_loopback_host(t.host) and not t.ca and not t.insecure:
        raise ValueError(f"engine triton://{t.address}: not loopback, so skeletons would cross "
                         "the network in clear text; add ?ca=SERVER_CA.pem (and cert=/key= "
                         "when the server authenticates nodes) or ?insecure=1")


class TritonEngine(Engine):
    """Client of a ``streamtmr serve`` server (see the module docstring)."""

    name = "triton"

    def __init__(self, url: str, max_batch: int | None = None):
        self.target = parse_url(url)
        check_security(self.target)
        self.url = f"{SCHEME}{self.target.address}"
        self.errors = 0
        self.reconnects = 0
        self._client: Any = None
        self._last_connect = 0.0
        self.info = info = self._connect()
        try:
            source, self._spec, self._init = _parse_info(info)
            server_max = int(info["max_batch"])
            self.device = f"{info['device']}@{self.target.address}"
            self.precision = str(info["precision"])
        except (KeyError, TypeError, ValueError) as e:
            self._close_client()
            raise EngineError(f"triton {self.target.address}: malformed model info "
                              f"({type(e).__name__}: {e})") from None
        super().__init__(source, max_batch=min(int(max_batch or server_max), server_max))
        self.streaming = source.streaming
        #: The privacy card of the served weights, as the server found it (None: unevaluated).
        self.card = info.get("card")
        self.graph_sha256 = info.get("graph_sha256")  # what the server loaded
        self.unevaluated = bool(info.get("unevaluated", self.card is None))

    # -- connection -------------------------------------------------------------------------

    def _new_client(self) -> Any:
        try:
            import tritonclient.grpc as grpcclient
        except ImportError as e:
            raise BackendUnavailable(f"triton: the Triton client is not installed ({e}); pip "
                                     "install 'tritonclient[grpc]' (the project's triton "
                                     "extra)") from None
        t = self.target  # the client reads the PEM files itself
        return grpcclient.InferenceServerClient(
            t.address, ssl=bool(t.ca), root_certificates=t.ca, private_key=t.key,
            certificate_chain=t.cert)

    def _connect(self) -> dict[str, Any]:
        """A fresh channel and the server's model info (EngineError when unreachable)."""
        import json

        import tritonclient.grpc as grpcclient
        self._last_connect = time.monotonic()
        if self._client is not None:
            self._close_client()
        self._client = self._new_client()
        query = grpcclient.InferInput("query", [1], "INT32")
        query.set_data_from_numpy(np.zeros(1, np.int32))
        res = self._call(INFO_MODEL, [query], ["info"])
        try:
            return json.loads(res.as_numpy("info")[0])
        except (TypeError, ValueError, IndexError) as e:
            raise EngineError(f"triton {self.target.address}: malformed model info ({e})") from e

    def _ensure_connected(self) -> None:
        """After a failure: reconnect (at most every ``retry_ms``) and check the model."""
        if self._client is not None:
            return
        wait = self.target.retry_ms / 1e3 - (time.monotonic() - self._last_connect)
        if wait > 0:
            raise EngineError(f"triton {self.target.address}: unreachable, next reconnect in "
                              f"{wait * 1e3:.0f} ms")
        try:
            info = self._connect()
        except EngineError:
            self._close_client()
            raise
        # the function served; the graph's hash may change (a server whose optimised-graph
        # cache was cold at its first start loads the cached graph after a restart)
        keys = ("model_sha256", "window", "dummy", "streaming", "state", "card")
        if any(info.get(k) != self.info.get(k) for k in keys):
            self._close_client()
            raise EngineError(f"triton {self.target.address}: the server now serves "
                              f"{info.get('model')} (sha256 {str(info.get('model_sha256'))[:12]}"
                              f"…), not {self.source.name} (sha256 {self.source.sha256[:12]}…);"
                              " restart the node to use it")
        self.reconnects += 1
        self.info, self.graph_sha256 = info, info.get("graph_sha256")
        log.info("triton %s: reconnected (%s)", self.target.address, self.source.name)

    def _call(self, model: str, inputs: list, outputs: list[str]) -> Any:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException
        try:
            return self._client.infer(
                model, inputs, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
                client_timeout=self.target.timeout_ms / 1e3)
        except InferenceServerException as e:
            self.errors += 1
            self._close_client()
            self._last_connect = time.monotonic()  # the next reconnect waits retry_ms
            raise EngineError(f"triton {self.target.address}: {model}: {e.message()}") from e

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as e:  # a half-dead channel: nothing more to release
                log.debug("closing the Triton client: %s", e)

    def _answer(self, res: Any, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        y = res.as_numpy(name)
        if y is None or y.shape != shape or y.dtype != dtype:
            self.errors += 1
            raise EngineError(f"triton {self.target.address}: {name} came back as "
                              f"{None if y is None else (y.dtype, list(y.shape))}, expected "
                              f"{np.dtype(dtype).name} {list(shape)}")
        if np.issubdtype(dtype, np.floating) and not np.isfinite(y.sum(dtype=np.float64)):
            self.errors += 1
            raise EngineError(f"triton {self.target.address}: {name} has non-finite values "
                              "(the server rejected the input or the model failed)")
        return y

    # -- windowed ---------------------------------------------------------------------------

    def _run_batch(self, x: np.ndarray, out: np.ndarray) -> None:
        import tritonclient.grpc as grpcclient
        if self.streaming:  # each window a track from a fresh state, as the in-process engines
            out[...] = self._run_tracks(x)
            return
        self._ensure_connected()
        inp = grpcclient.InferInput("windows", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = self._call(MODEL, [inp], ["anonymized"])
        out[...] = self._answer(res, "anonymized", x.shape, np.dtype(np.float32))

    # -- streaming --------------------------------------------------------------------------

    def state_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Per-body state shapes and their wire dtypes (what :meth:`step` takes and returns)."""
        return dict(self._spec)

    def init_state(self, n: int) -> dict[str, np.ndarray]:
        return {k: np.repeat(v[None], int(n), axis=0) for k, v in self._init.items()}

    def step(self, frames: np.ndarray, state: dict[str, np.ndarray]
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One frame per body: ``frames float32 [B, 25, 3]`` and each body's state → the
        anonymized frames and the new state (both from the server)."""
        if not self.streaming:
            raise EngineError(f"{self.source.name} is a windowed model: use run()")
        frames, state = self._check_step(frames, state)
        out = np.empty_like(frames)
        new = {n: np.empty_like(s) for n, s in state.items()}
        for i in range(0, frames.shape[0], self.max_batch):
            sl = slice(i, i + self.max_batch)
            o, s = self._step_batch(frames[sl], {n: v[sl] for n, v in state.items()})
            out[sl] = o
            for n in new:
                new[n][sl] = s[n]
        return out, new

    def _step(self, frames: np.ndarray, state: dict[str, np.ndarray]
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One batch of at most ``max_batch`` bodies (what :meth:`run_tracks` steps)."""
        return self._step_batch(frames, state)

    def _check_step(self, frames: Any, state: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if (not isinstance(frames, np.ndarray) or frames.dtype != np.float32
                or frames.ndim != 3 or frames.shape[1:] != (skeleton.NUM_JOINTS, 3)):
            raise ValueError(f"frames: expected float32 [B, 25, 3], got "
                             f"{getattr(frames, 'dtype', type(frames).__name__)} "
                             f"{list(getattr(frames, 'shape', []))}")
        if not np.isfinite(frames.sum(dtype=np.float64)):
            raise ValueError("frames: non-finite values")
        if not isinstance(state, dict) or set(state) != set(self._spec):
            raise ValueError(f"state: expected the tensors {sorted(self._spec)}, got "
                             f"{sorted(state) if isinstance(state, dict) else type(state)}")
        b = frames.shape[0]
        checked = {}
        for n, (shape, dt) in self._spec.items():
            s = np.asarray(state[n])
            if s.shape != (b, *shape):
                raise ValueError(f"state[{n!r}]: expected shape {[b, *shape]}, got "
                                 f"{list(s.shape)}")
            checked[n] = np.ascontiguousarray(s, dt)
        return np.ascontiguousarray(frames), checked

    def _step_batch(self, frames: np.ndarray, state: dict[str, np.ndarray]
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import np_to_triton_dtype
        self._ensure_connected()
        inputs = [grpcclient.InferInput("frames", list(frames.shape), "FP32")]
        inputs[0].set_data_from_numpy(frames)
        for n, s in state.items():
            inputs.append(grpcclient.InferInput(f"state_in.{n}", list(s.shape),
                                                np_to_triton_dtype(s.dtype)))
            inputs[-1].set_data_from_numpy(s)
        names = ["anonymized", *(f"state_out.{n}" for n in state)]
        res = self._call(MODEL, inputs, names)
        out = self._answer(res, "anonymized", frames.shape, np.dtype(np.float32))
        new = {n: self._answer(res, f"state_out.{n}", s.shape, s.dtype)
               for n, s in state.items()}
        return out, new

    # -- introspection ----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "server": self.url, "server_backend": self.info["backend"],
                "streaming": self.streaming, "card": self.info["card"],
                "state_wire": {n: dt.name for n, (_s, dt) in self._spec.items()},
                "errors": self.errors, "reconnects": self.reconnects,
                "timeout_ms": self.target.timeout_ms}

    def close(self) -> None:
        self._close_client()


def _parse_info(info: dict[str, Any]) -> tuple[ModelSource, dict, dict]:
    """The served model as a :class:`ModelSource` (no weights here), the state's wire spec
    and one body's initial state (KeyError/TypeError/ValueError when malformed)."""
    lengths = np.asarray(info["dummy"]["lengths"], np.float32)
    if lengths.shape != (skeleton.NUM_JOINTS,) or not np.isfinite(lengths).all():
        raise ValueError(f"dummy lengths of shape {list(lengths.shape)}")
    state = info.get("state") or {}
    spec = {n: (tuple(int(d) for d in s["shape"]), np.dtype(s["dtype"]))
            for n, s in state.items()}
    init = {n: np.frombuffer(base64.b64decode(s["init"]), spec[n][1]).reshape(spec[n][0])
            for n, s in state.items()}
    if bool(info["streaming"]) != bool(spec):
        raise ValueError("a streaming model needs a state spec, a windowed one has none")
    source = ModelSource(name=str(info["model"]), method=str(info["method"]),
                         config=dict(info["config"]), window=int(info["window"]),
                         dummy=Dummy(str(info["dummy"]["name"]), lengths),
                         sha256=str(info["model_sha256"]),
                         state_spec={n: shape for n, (shape, _) in spec.items()} or None,
                         stagger=_stagger(info.get("stagger"), spec))
    return source, spec, init


def _stagger(value: Any, spec: dict) -> tuple[str, int] | None:
    """The served model's search phase entry (``stagger``), checked against its state."""
    if value is None:
        return None
    name, period = value
    if name not in spec or spec[name][0] != () or int(period) < 1:
        raise ValueError(f"stagger {value!r}: not a scalar state entry with a period >= 1")
    return str(name), int(period)


def open_triton(url: str, model: Any = None, dummy: Any = None, window: int | None = None,
                max_batch: int | None = None, **options: Any) -> TritonEngine:
    """``create_engine("triton://…")``: connect, then check that what the caller asked for
    (a model file, dummy, window) is what the server serves."""
    if options:
        raise TypeError(f"triton engine: unknown option(s) {sorted(options)} (options go in "
                        f"the URL: {', '.join(_URL_OPTIONS)})")
    engine = TritonEngine(url, max_batch=max_batch)
    try:
        _check_matches(engine, model, dummy, window)
    except BaseException:
        engine.close()
        raise
    return engine


def _check_matches(engine: TritonEngine, model: Any, dummy: Any, window: int | None) -> None:
    from engines.source import as_dummy
    from streamtmr.cache import file_sha256
    from streamtmr.models.checkpoint import model_path
    where = f"triton {engine.target.address}"
    if isinstance(model, str | Path) and str(model) != "default":
        path = model_path(model)  # a shipped model's name is checked like its file
        if not path.is_file():
            raise FileNotFoundError(f"{model}: no such model file")
        if file_sha256(path) != engine.source.sha256:
            raise EngineError(f"{where} serves {engine.source.name} (sha256 "
                              f"{engine.source.sha256[:12]}…), not {model}")
    elif model is not None and str(model) != "default":
        raise EngineError(f"{where}: an in-memory model cannot be checked against the server")
    if dummy is not None and str(dummy) != "default":
        wanted = as_dummy(dummy)
        if not np.allclose(wanted.lengths, engine.dummy_lengths, atol=1e-6):
            raise EngineError(f"{where} serves dummy {engine.source.dummy.name!r}, not "
                              f"{wanted.name!r}")
    if window is not None and not engine.streaming and int(window) != engine.window:
        raise EngineError(f"{where} serves window {engine.window}, not {window} (pass "
                          f"--window {engine.window})")
