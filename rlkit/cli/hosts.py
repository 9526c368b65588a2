"""The host a server binds (`rlkit ui`, `rlkit serve`): resolved up front, loopback or not, shown in a URL.

A name that does not resolve is one line; an IPv6 address (::1) works and is shown in brackets; a host
that is not loopback gets a warning that the server is reachable from the network.
"""
from __future__ import annotations

import ipaddress
import socket

from rlkit.core.errors import RlkitError


def addresses(host: str, port: int = 0, key: str = "--host") -> list[tuple]:
    """getaddrinfo's (family, type, proto, canonname, sockaddr) for a TCP server on host:port."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        reason = e.strerror if isinstance(e, socket.gaierror) else str(e)
        raise RlkitError(f"{key} {host}: does not resolve to an address ({reason}); use 127.0.0.1 or ::1 (this "
                         "machine only), or a name or address of this machine") from None


def is_loopback(host: str) -> bool:
    """Whether every address `host` resolves to is a loopback one (False if it does not resolve)."""
    try:
        return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in addresses(host))
    except (RlkitError, ValueError):
        return False


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to (host, port); port 0 picks a free one."""
    family, kind, proto, _, addr = addresses(host, port)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise RlkitError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); pick another port "
                         "(--port 0 takes a free one)") from None
    return sock
