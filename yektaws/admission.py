"""Admission: whether a handshake becomes a connection, decided the same way for both protocols.

The checks run cheapest first, so that abuse is turned away before it costs a database query:
draining, ``Origin``, the file-descriptor budget (:mod:`yektaws.descriptors`), the per-address
cap, the token's presence, then the session lookup (rate limited, see
:class:`~yektaws.auth.Authenticator`) and the per-owner cap. A refusal is a
:class:`Rejection`, which each transport renders its own way (an HTTP status and text for native,
a CONNECT_ERROR for Socket.IO).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from yektaws.auth import Authenticator, HandshakeBusy, InvalidToken
from yektaws.descriptors import DescriptorBudget
from yektaws.hub import Hub
from yektaws.sessions import Session, StoreUnavailable

__all__ = ["Admission", "OriginPolicy", "Refusal", "Rejection"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a handshake is refused. ``reason`` is the metrics/log label; ``message`` what the
    client reads.

    ``retryable`` refusals must not mention authentication or tokens: the YektaYar apps stop
    reconnecting on a connect error that does, and an outage must not log everyone out.
    """

    reason: str
    status: int
    message: str
    retryable: bool = False
    retry_after: int | None = None


class Rejection(Exception):
    """Raised by :meth:`Admission.admit`; carries the :class:`Refusal`."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


_RETRY = "Service temporarily unavailable, please retry"
NO_TOKEN = Refusal("no_token", 401, "Authentication token required")
INVALID_TOKEN = Refusal("invalid_token", 401, "Invalid or expired session token")
UNAVAILABLE = Refusal("store_unavailable", 503, _RETRY, retryable=True, retry_after=5)
BUSY = Refusal("busy", 503, _RETRY, retryable=True, retry_after=2)
DRAINING = Refusal("draining", 503, "Server is restarting, please reconnect", True, 1)
OUT_OF_DESCRIPTORS = Refusal("fd_limit", 503, _RETRY, retryable=True, retry_after=5)
FORBIDDEN_ORIGIN = Refusal("origin", 403, "Origin not allowed")
TOO_MANY_FROM_ADDRESS = Refusal(
    "address_limit", 429, "Too many connections from this address", True, 10
)
TOO_MANY_FOR_OWNER = Refusal("user_limit", 429, "Too many connections for this account", True, 10)


class OriginPolicy:
    """The one ``CORS_ORIGIN`` allow-list, for Socket.IO's CORS and the native ``Origin`` check."""

    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any_origin = "*" in origins
        self.origins = frozenset(origins) - {"*"}

    def allows(self, origin: str | None) -> bool:
        """A request without ``Origin`` (native apps, wscat) is always allowed."""
        if origin is None:
            return True
        return self.any_origin or origin.rstrip("/") in self.origins

    def for_socketio(self) -> str | list[str]:
        """The ``cors_allowed_origins`` argument meaning the same thing to python-engineio."""
        return "*" if self.any_origin else sorted(self.origins)


class Admission:
    """Decides handshakes; raises :class:`Rejection` or returns the session."""

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        hub: Hub,
        origins: OriginPolicy,
        max_per_address: int,
        max_per_owner: int,
        is_draining: Callable[[], bool],
        descriptors: DescriptorBudget | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._hub = hub
        self._origins = origins
        self._max_per_address = max_per_address
        self._max_per_owner = max_per_owner
        self._is_draining = is_draining
        self._descriptors = descriptors or DescriptorBudget()

    def check_origin(self, origin: str | None) -> None:
        if not self._origins.allows(origin):
            raise Rejection(FORBIDDEN_ORIGIN)

    def check_descriptors(self) -> None:
        """Refuse a new connection that would eat into the descriptor reserve."""
        if self._descriptors.exhausted():
            raise Rejection(OUT_OF_DESCRIPTORS)

    async def admit(self, *, token: str | None, peer: str) -> Session:
        """Run every check after ``Origin`` and the descriptors (which each transport applies at
        its own moment: Socket.IO when an Engine.IO session opens, before any namespace)."""
        if self._is_draining():
            raise Rejection(DRAINING)
        if self._hub.connections_from(peer) >= self._max_per_address:
            raise Rejection(TOO_MANY_FROM_ADDRESS)
        if not token:
            raise Rejection(NO_TOKEN)
        try:
            session = await self._authenticator.authenticate(token)
        except InvalidToken:
            raise Rejection(INVALID_TOKEN) from None
        except HandshakeBusy:
            raise Rejection(BUSY) from None
        except StoreUnavailable:
            raise Rejection(UNAVAILABLE) from None
        # No await between this check and the transport's Hub.add, so the cap cannot be overrun.
        if self._hub.connections_of_owner(session.owner) >= self._max_per_owner:
            raise Rejection(TOO_MANY_FOR_OWNER)
        return session
