"""Network address facts shared by every room that opens a socket (no project imports)."""

from __future__ import annotations

import ipaddress
import socket


def is_loopback_host(host: str | None) -> bool:
    """True when ``host`` (an IP address, a host name or an interface name) can only be
    reached from this machine. Wildcards (``*``, ``0.0.0.0``, ``::``) are not loopback; a host
    name is loopback only when every address it resolves to is."""
    if not host:
        return False
    host = host.strip("[]")
    if host in ("localhost", "lo"):
        return True
    if host == "*":
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False  # an interface name such as eth0, or an unknown host: assume network
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)
