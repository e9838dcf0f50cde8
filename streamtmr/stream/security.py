"""Transport security for the node's sockets: loopback by default, CURVE everywhere else.

Raw skeletons are biometric data, so they must not cross a network in clear text. The rule the
node enforces (see ``docs/security.md``):

* A ZeroMQ endpoint on loopback (``127.0.0.0/8``, ``::1``, ``localhost``), ``ipc://`` or
  ``inproc://`` may run without encryption.
* Any other endpoint needs CURVE (ZeroMQ's public-key encryption and authentication): the
  PUB sink binds as a CURVE server with this node's key pair and a ZAP handler that admits only
  the subscriber public keys found in an allow-list folder; the SUB source connects as a CURVE
  client that knows the publisher's public key. An unencrypted non-loopback bind or connect is
  refused unless ``insecure`` is set explicitly. OSC (UDP) cannot be encrypted, so a
  non-loopback OSC destination also needs ``insecure``.

Keys are ZeroMQ certificate files (Z85 text, as written by :func:`zmq.auth.create_certificates`):
``NAME.key`` holds the public key, ``NAME.key_secret`` the key pair. :func:`generate_keypair`
writes both (the secret one readable by its owner only).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from streamtmr.model_files import MAX_DUMMY_BYTES  # noqa: F401  (a documented cap, see there)
from streamtmr.net import is_loopback_host  # noqa: F401  (re-exported: the one definition)

log = logging.getLogger(__name__)

#: Caps on what key loading reads: one certificate file, and the keys in an allow-list folder.
MAX_KEY_FILE_BYTES = 64 * 1024
MAX_ALLOWED_KEYS = 10_000
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


class SecurityError(ValueError):
    """An endpoint or key setup that the security policy refuses (the message says why and
    what to pass instead)."""


# ------------------------------------------------------------------------------------------
# Endpoints
# ------------------------------------------------------------------------------------------

def endpoint_host(endpoint: str) -> str | None:
    """The host part of a ``tcp://`` endpoint (the destination of ``tcp://SRC;DST:PORT``)."""
    rest = endpoint.split("://", 1)[1] if "://" in endpoint else endpoint
    rest = rest.rsplit(";", 1)[-1]
    if rest.startswith("["):
        return rest[1:rest.find("]")] if "]" in rest else rest[1:]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest


def is_local_endpoint(endpoint: str) -> bool:
    """True for ``ipc://``, ``inproc://`` and loopback ``tcp://`` endpoints."""
    scheme = endpoint.split("://", 1)[0].lower() if "://" in endpoint else ""
    if scheme in ("ipc", "inproc"):
        return True
    if scheme == "tcp":
        return is_loopback_host(endpoint_host(endpoint))
    return False  # pgm, epgm, udp, ws, ...: always network transports


def osc_host(spec: str) -> str | None:
    return urlsplit(spec).hostname


# ------------------------------------------------------------------------------------------
# Keys
# ------------------------------------------------------------------------------------------

def _check_key_file(path: Path, what: str) -> None:
    try:
        st = path.stat()
    except OSError as e:
        raise SecurityError(f"{what} {path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecurityError(f"{what} {path}: not a file")
    if st.st_size > MAX_KEY_FILE_BYTES:
        raise SecurityError(f"{what} {path}: {st.st_size} bytes, not a key file "
                            f"(cap {MAX_KEY_FILE_BYTES})")


def _load(path: Path, what: str) -> tuple[bytes, bytes | None]:
    _check_key_file(path, what)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except Exception as e:  # pyzmq raises ValueError/OSError/UnicodeError for bad files
        raise SecurityError(f"{what} {path}: not a ZeroMQ certificate ({e}); create one with "
                            "`streamtmr keys`") from None
    if public is None or len(public) != 40:
        raise SecurityError(f"{what} {path}: no valid public-key entry")
    if secret is not None and len(secret) != 40:
        raise SecurityError(f"{what} {path}: malformed secret-key entry")
    return public, secret


def load_keypair(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` certificate. Warns when the file is
    readable by other users."""
    path = Path(path)
    public, secret = _load(path, "--curve-secret-key")
    if secret is None:
        raise SecurityError(f"--curve-secret-key {path}: holds no secret key (pass the "
                            f"{SECRET_SUFFIX} file, not the public {PUBLIC_SUFFIX} file)")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        log.warning("secret key %s is readable by other users; chmod 600 it", path)
    return public, secret


def load_public_key(path: str | Path) -> bytes:
    """The Z85 public key of a certificate file (public or secret)."""
    return _load(Path(path), "--curve-server-key")[0]


def load_allowed(directory: str | Path) -> set[bytes]:
    """The public keys of every ``*.key`` certificate in ``directory`` (the allow-list)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SecurityError(f"--curve-allow {directory}: not a folder of client public keys")
    files = sorted(directory.glob(f"*{PUBLIC_SUFFIX}"))
    if len(files) > MAX_ALLOWED_KEYS:
        raise SecurityError(f"--curve-allow {directory}: {len(files)} keys "
                            f"(cap {MAX_ALLOWED_KEYS})")
    keys = {_load(f, "--curve-allow")[0] for f in files}
    if not keys:
        raise SecurityError(f"--curve-allow {directory}: no client public keys "
                            f"(*{PUBLIC_SUFFIX}) in it; copy each subscriber's public key there")
    return keys


def generate_keypair(directory: str | Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600) into ``directory``;
    returns their paths. The secret file is never world-readable, not even briefly."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise SecurityError(f"key name {name!r}: use a plain file name such as 'node'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    if not force and (public.exists() or secret.exists()):
        raise SecurityError(f"{public} or {secret} exists already (pass --force to replace)")
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".keys-"))  # mode 0700
    try:
        pub_tmp, sec_tmp = (Path(p) for p in zmq.auth.create_certificates(tmp, name))
        os.chmod(sec_tmp, 0o600)
        os.chmod(pub_tmp, 0o644)
        os.replace(sec_tmp, secret)
        os.replace(pub_tmp, public)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return public, secret


# ------------------------------------------------------------------------------------------
# CURVE server (with ZAP allow-list) and client
# ------------------------------------------------------------------------------------------

class _AllowList:
    """ZAP credentials provider: admits the listed client keys, counts and logs the rest."""

    def __init__(self, keys: set[bytes]):
        self.keys = frozenset(keys)
        self.allowed = 0
        self.denied = 0
        self._lock = threading.Lock()

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.keys
        with self._lock:
            if ok:
                self.allowed += 1
            else:
                self.denied += 1
                n = self.denied
        if not ok and (n <= 5 or n % 1000 == 0):
            log.warning("CURVE: refused a client with a key not on the allow-list (%s) "
                        "(refusal %d)", key.decode("ascii", "replace"), n)
        return ok


class CurveServer:
    """This node's key pair and a ZAP authenticator (one per ZeroMQ context) admitting only
    the allow-listed client keys. :meth:`apply` makes a socket a CURVE server; :meth:`close`
    stops the authenticator (after the sockets are closed)."""

    def __init__(self, context: zmq.Context, secret_key: str | Path, allow_dir: str | Path):
        self.public, self.secret = load_keypair(secret_key)
        self.allow = _AllowList(load_allowed(allow_dir))
        self.context = context
        self.auth = ThreadAuthenticator(context, log=logging.getLogger(__name__ + ".zap"))
        self.auth.start()
        self.auth.configure_curve_callback(domain="*", credentials_provider=self.allow)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def close(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


@dataclass(frozen=True)
class CurveClient:
    """Keys for a CURVE client socket: its own pair and the server's public key."""

    public: bytes
    secret: bytes
    server: bytes

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server


# ------------------------------------------------------------------------------------------
# The policy the CLI builds from its flags
# ------------------------------------------------------------------------------------------

@dataclass
class Security:
    """Which sockets are encrypted, with which keys, and whether clear text off-loopback is
    allowed. ``secret_key``: this node's ``.key_secret``; ``allow``: folder of subscriber
    public keys (PUB sink); ``server_key``: the sensor publisher's public key (SUB source)."""

    secret_key: Path | None = None
    allow: Path | None = None
    server_key: Path | None = None
    insecure: bool = False
    _servers: dict[int, CurveServer] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("secret_key", "allow", "server_key"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, Path(v))
        if self.allow is not None and self.secret_key is None:
            raise SecurityError("--curve-allow needs --curve-secret-key (this node's key pair, "
                                "from `streamtmr keys`)")

    # -- PUB sink --------------------------------------------------------------------------

    def server(self, endpoint: str, context: zmq.Context) -> CurveServer | None:
        """The CURVE server setup for a PUB socket binding ``endpoint`` (None: clear text,
        allowed on loopback or with ``insecure``). Raises :class:`SecurityError` otherwise."""
        if self.secret_key is not None:
            if self.allow is None:
                raise SecurityError(f"--sink {endpoint}: CURVE needs --curve-allow DIR (the "
                                    "public keys of the subscribers allowed to receive)")
            srv = self._servers.get(id(context))
            if srv is None:
                srv = self._servers[id(context)] = CurveServer(context, self.secret_key,
                                                               self.allow)
            return srv
        if not is_local_endpoint(endpoint) and not self.insecure:
            raise SecurityError(
                f"--sink {endpoint}: refusing to publish unencrypted on a non-loopback address. "
                "Pass --curve-secret-key KEY --curve-allow DIR (see `streamtmr keys`), bind to "
                "127.0.0.1, or pass --insecure to allow clear text")
        if not is_local_endpoint(endpoint):
            log.warning("--insecure: publishing unencrypted on %s", endpoint)
        return None

    # -- SUB source ------------------------------------------------------------------------

    def client(self, endpoint: str) -> CurveClient | None:
        """The CURVE client setup for a SUB socket connecting to ``endpoint`` (None: clear
        text, allowed on loopback or with ``insecure``). Without ``secret_key`` the node uses
        a fresh key pair (encrypted, but the publisher cannot tell who connects)."""
        if self.server_key is not None:
            server = load_public_key(self.server_key)
            if self.secret_key is not None:
                public, secret = load_keypair(self.secret_key)
            else:
                public, secret = zmq.curve_keypair()
                log.info("CURVE client for %s with a one-time key pair (pass "
                         "--curve-secret-key to authenticate to the publisher)", endpoint)
            return CurveClient(public, secret, server)
        if not is_local_endpoint(endpoint) and not self.insecure:
            raise SecurityError(
                f"--source {endpoint}: refusing to receive raw skeletons unencrypted from a "
                "non-loopback address. Pass --curve-server-key PUBLISHER.key (and "
                "--curve-secret-key KEY), connect over 127.0.0.1, or pass --insecure")
        if not is_local_endpoint(endpoint):
            log.warning("--insecure: receiving raw skeletons unencrypted from %s", endpoint)
        return None

    # -- OSC sinks -------------------------------------------------------------------------

    def check_osc(self, spec: str, host: str) -> None:
        """OSC goes over plain UDP: a non-loopback destination needs ``insecure``."""
        if is_loopback_host(host):
            return
        if not self.insecure:
            raise SecurityError(
                f"--sink {spec}: OSC over UDP cannot be encrypted; sending to the non-loopback "
                f"host {host} needs --insecure (the frames are anonymized, but travel in clear)")
        log.warning("--insecure: sending OSC unencrypted to %s", host)

    @property
    def denied(self) -> int:
        """Subscribers refused by the allow-list so far."""
        return sum(s.allow.denied for s in self._servers.values())

    def close(self) -> None:
        """Stop the authenticators (call after the sockets they guard are closed)."""
        for srv in self._servers.values():
            srv.close()
        self._servers.clear()

