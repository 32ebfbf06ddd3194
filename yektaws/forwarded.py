"""Who the client is behind a reverse proxy: its address, and the origin it used.

``X-Forwarded-For``, ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are believed only when the TCP
peer is in ``TRUSTED_PROXIES``; from anyone else they are ignored, so a client cannot forge its
address in our logs or its limits. The address taken is the right-most one in ``X-Forwarded-For``
that is not itself a trusted proxy (the left-most is whatever the client claims).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

__all__ = ["ClientView", "client_view"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ClientView:
    """The client as seen through trusted proxies."""

    address: str
    scheme: str  # "http" or "https": what the client used to reach the edge
    host: str  # the Host the client asked for

    @property
    def ws_scheme(self) -> str:
        return "wss" if self.scheme == "https" else "ws"


# Parsing an address is the dearest step here (ipaddress is pure Python), and the same few
# addresses come back all the time: the proxies', and each client's on every reconnect.
_parse_address = functools.lru_cache(maxsize=4096)(ipaddress.ip_address)


def _trusted(address: str | None, networks: Sequence[Network]) -> bool:
    if not address or not networks:
        return False
    try:
        ip = _parse_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_view(request: web.BaseRequest, trusted: Sequence[Network]) -> ClientView:
    """Resolve the client's address, scheme and host for ``request``."""
    peer = request.remote or "unknown"
    scheme = "https" if request.secure else "http"
    host = request.host
    if not _trusted(peer, trusted):
        return ClientView(peer, scheme, host)
    chain = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",")]
    for hop in reversed([hop for hop in chain if hop]):
        if not _trusted(hop, trusted):
            peer = hop
            break
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    if proto in {"http", "https"}:
        scheme = proto
    host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip() or host
    return ClientView(peer, scheme, host)
