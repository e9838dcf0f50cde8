"""The live viewer (``streamtmr run --viewer [HOST:]PORT``): a web page served by the node that
draws the anonymized bodies in 3-D beside the node's metrics: :func:`viewer_address` checks
``--viewer``, :class:`streamtmr.viewer.server.ViewerSink` serves it.

The server needs aiohttp (the ``viewer`` extra); this module imports it only when a viewer is
asked for, so the node runs without it.
"""

from __future__ import annotations

from streamtmr.net import is_loopback_host
from streamtmr.stream.sinks import SinkError

DEFAULT_HOST = "127.0.0.1"


class ViewerError(SinkError):
    """The viewer cannot be served (the message names ``--viewer`` and the reason)."""


def viewer_address(spec: str, insecure: bool = False) -> tuple[str, int]:
    """``[HOST:]PORT`` → ``(host, port)``, loopback unless a host is named (IPv6 in brackets).
    A non-loopback host needs ``insecure``: the page and its socket are plain, unauthenticated
    HTTP. Also checks that aiohttp is installed. Raises :class:`ViewerError`."""
    host, sep, port_text = spec.strip().rpartition(":")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ViewerError(f"--viewer {spec}: write an IPv6 host in brackets, e.g. [::1]:8080")
    host = (host.strip("[]") or DEFAULT_HOST) if sep else DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise ViewerError(f"--viewer {spec}: expected [HOST:]PORT, e.g. 8080 or "
                          "127.0.0.1:8080") from None
    if not 0 <= port <= 65535:
        raise ViewerError(f"--viewer {spec}: port must be in [0, 65535], got {port}")
    if not is_loopback_host(host) and not insecure:
        raise ViewerError(f"--viewer {spec}: refusing to serve the viewer on the non-loopback "
                          f"host {host} (plain HTTP, no authentication); use 127.0.0.1 or pass "
                          "--insecure")
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise ViewerError("--viewer needs aiohttp: pip install 'streamtmr[viewer]'") from None
    return host, port


__all__ = ["DEFAULT_HOST", "ViewerError", "viewer_address"]
