"""The session store: where a token is looked up, whatever database holds it.

Two implementations share the small :class:`SessionStore` interface:

- :class:`~yektaws.sessions.postgres.PostgresStore` reads the YektaYar API's own ``sessions`` table
  through aiopg when ``DATABASE_URL`` is set;
- :class:`~yektaws.sessions.embedded.EmbeddedStore` keeps the same table in a SQLite file, so that
  ``yektaws serve`` runs on a fresh machine with nothing else installed.

Both raise :class:`StoreUnavailable` for every failure that is not "no such valid token": an outage
must reach the client as *retry later*, never as *invalid token*.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

from yektaws.settings import Settings

__all__ = ["Session", "SessionStore", "StoreUnavailable", "new_token", "open_store"]


class StoreUnavailable(Exception):
    """The store could not answer (down, unreachable, too slow, or failing)."""


@dataclass(frozen=True, slots=True)
class Session:
    """A valid session as a connection carries it."""

    token: str
    user_id: str | None
    is_logged_in: bool

    @classmethod
    def from_row(cls, token: str, user_id: int | None, is_logged_in: object) -> Session:
        """A session from the ``user_id, is_logged_in`` columns of its row."""
        return cls(token, None if user_id is None else str(user_id), bool(is_logged_in))

    @property
    def owner(self) -> str:
        """Whom per-owner limits count: the user, or for an anonymous session its token."""
        return f"user:{self.user_id}" if self.user_id is not None else f"token:{self.token}"


def new_token() -> str:
    """A fresh token shaped like the YektaYar API's: 32 random bytes, 43 base64url characters."""
    return secrets.token_urlsafe(32)


class SessionStore(Protocol):
    """What the gateway needs from a session store."""

    #: For the startup log line: the kind of store and where it is, password masked.
    description: str

    async def open(self) -> None:
        """Connect. Raises :class:`StoreUnavailable` only for settings that can never work."""

    async def close(self) -> None:
        """Release connections."""

    async def lookup_many(self, tokens: list[str]) -> dict[str, Session]:
        """The sessions of those of ``tokens`` that exist and have not expired (compared in
        SQL), by token, in one query: handshakes arriving together are looked up together."""

    async def valid_tokens(self, tokens: list[str]) -> set[str]:
        """Which of ``tokens`` are still valid, in one query (for re-checking open connections)."""

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers a trivial query now."""

    async def touch(self, tokens: list[str]) -> None:
        """Set ``last_activity_at`` to now for ``tokens`` in one statement."""

    async def create(self, *, user_id: int | None, logged_in: bool, ttl_seconds: int) -> str:
        """Insert a new session and return its token (the ``sessions create`` command)."""

    async def init_schema(self) -> None:
        """Create the ``sessions`` table where it is missing (``yektaws db init``)."""


def open_store(settings: Settings) -> SessionStore:
    """The store ``settings`` ask for (not yet opened)."""
    if settings.database_url:
        from yektaws.sessions.postgres import PostgresStore

        return PostgresStore(settings)
    from yektaws.sessions.embedded import EmbeddedStore

    return EmbeddedStore(settings)
