"""Sessions in the YektaYar PostgreSQL database, through an aiopg connection pool.

The table is the API's (see :mod:`yektaws.sessions.schema`): timestamps *without* time zone, holding
wall-clock times in ``SESSION_TIMEZONE`` (UTC for the YektaYar API). Expiry is therefore compared as
``expires_at > (NOW() AT TIME ZONE <zone>)``: a plain ``expires_at > NOW()`` would reinterpret the
stored wall clock in the database session's ``TimeZone`` and expire sessions hours early or late
wherever that is not UTC.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiopg
import psycopg2  # type: ignore[import-untyped]

from yektaws.sessions import Session, StoreUnavailable, new_token
from yektaws.sessions.schema import POSTGRES_SESSIONS_TABLE
from yektaws.settings import Settings

__all__ = ["FAILURE_HOLD", "PostgresStore", "describe_url"]

#: Seconds after a statement failed (the retry on a fresh connection included) during which the
#: next ones fail at once with the same error instead of trying. One gateway's handshakes asked
#: for about 1,500 new connections a second of a database that was down or starting up (each
#: attempt a backend process forked and refused there); now at most two per hold. A recovered
#: database is used again this long after it answers, at most.
FAILURE_HOLD = 0.2

# aiopg turns "always" on for its own ResourceWarnings, and warns "Unclosed connection" for
# every connection attempt that failed half-way, which it then closes itself: during a
# database outage a raw, multi-line stderr warning per handshake. What failed is logged by the
# gateway, once per interval (yektaws.auth).
warnings.filterwarnings("ignore", "Unclosed connection", ResourceWarning, r"aiopg(\.\w+)+")


def _aiopg_cleanup(context: dict[str, Any]) -> bool:
    """Whether an event-loop exception report is aiopg tidying up after a failed connection
    attempt: the half-made connection it closes when collected, and the waiter it fails then,
    which nobody awaits any more. Two error lines per failed attempt, saying nothing the
    store's own error does not."""
    if isinstance(context.get("connection"), aiopg.Connection):
        return context.get("message") == "Unclosed connection"
    return isinstance(context.get("exception"), psycopg2.Error) and context.get(
        "message", ""
    ).startswith("Future exception was never retrieved")


_LOOKUP = (
    "SELECT token, user_id, is_logged_in FROM sessions "
    "WHERE token = ANY(%s) AND expires_at > (NOW() AT TIME ZONE %s)"
)
_VALID_TOKENS = (
    "SELECT token FROM sessions WHERE token = ANY(%s) AND expires_at > (NOW() AT TIME ZONE %s)"
)
_TOUCH = "UPDATE sessions SET last_activity_at = (NOW() AT TIME ZONE %s) WHERE token = ANY(%s)"
_CREATE = (
    "INSERT INTO sessions (token, user_id, is_logged_in, metadata, created_at, expires_at, "
    "last_activity_at) VALUES (%s, %s, %s, '{}'::jsonb, (NOW() AT TIME ZONE %s), "
    "(NOW() AT TIME ZONE %s) + make_interval(secs => %s), (NOW() AT TIME ZONE %s))"
)


def describe_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStore:
    """A :class:`~yektaws.sessions.SessionStore` over aiopg."""

    def __init__(self, settings: Settings) -> None:
        self._url = settings.database_url
        self._pool_size = settings.database_pool_size
        self._timeout = settings.session_store_timeout
        self._zone = settings.session_timezone
        self._pool: aiopg.Pool | None = None
        self.description = f"postgresql {describe_url(self._url)}"
        #: The last failure, and until when (time.monotonic()) statements fail with it untried.
        # Its text only: the exception's traceback would keep what failed (a half-made aiopg
        # connection among it) alive until the next failure or success.
        self._failure: str | None = None
        self._failing_until = 0.0
        self._probing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous_handler: Any = None

    async def open(self) -> None:
        # minsize=0: a database that is down at start must not stop the gateway from starting;
        # /ready reports it and connects fail with 503 until it answers.
        self._pool = await aiopg.create_pool(
            self._url,
            minsize=0,
            maxsize=self._pool_size,
            timeout=self._timeout,
            pool_recycle=300,
        )
        self._loop = asyncio.get_running_loop()
        self._previous_handler = self._loop.get_exception_handler()
        self._loop.set_exception_handler(self._report)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()
            self._pool = None
        if self._loop is not None:
            self._loop.set_exception_handler(self._previous_handler)
            self._loop = None

    def _report(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's exception handler while the store is open: aiopg's own tidying
        after failed connection attempts (:func:`_aiopg_cleanup`) is dropped, the rest goes on
        to the handler there was before."""
        if _aiopg_cleanup(context):
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    async def _execute(self, sql: str, params: tuple[Any, ...] = (), fetch: str = "") -> Any:
        """Run one statement; ``fetch`` is ``"one"``, ``"all"`` or nothing.

        For :data:`FAILURE_HOLD` after a failure, fail at once with it (the database is not
        asked again so soon); then one statement asks, and the others fail at once until it
        has its answer.
        """
        probe = self._failure is not None
        if probe:
            if self._probing or time.monotonic() < self._failing_until:
                raise StoreUnavailable(self._failure)
            self._probing = True  # this statement finds out; the others wait for its answer
        try:
            result = await self._execute_retried(sql, params, fetch)
        except StoreUnavailable as exc:
            self._failure, self._failing_until = str(exc), time.monotonic() + FAILURE_HOLD
            raise
        else:
            self._failure = None
        finally:
            if probe:  # not a statement that was already out when the failure came
                self._probing = False
        return result

    async def _execute_retried(self, sql: str, params: tuple[Any, ...], fetch: str) -> Any:
        """After a database restart the pool's idle connections are dead, and the first
        statement on each would fail. A failure that came quickly therefore empties the idle
        pool and tries once more on a fresh connection, so a recovered database is usable by the
        first statement that asks it, not after one failure per dead connection; a timeout is
        not retried (SESSION_STORE_TIMEOUT bounds the whole lookup)."""
        try:
            return await self._execute_once(sql, params, fetch)
        except StoreUnavailable as exc:
            if self._pool is None or isinstance(exc.__cause__, TimeoutError):
                raise
            await self._pool.clear()
            return await self._execute_once(sql, params, fetch)

    async def _execute_once(self, sql: str, params: tuple[Any, ...], fetch: str) -> Any:
        if self._pool is None:
            raise StoreUnavailable("session store is not open")
        try:
            async with asyncio.timeout(self._timeout):
                async with self._pool.acquire() as conn, conn.cursor() as cursor:
                    await cursor.execute(sql, params)
                    if fetch == "one":
                        return await cursor.fetchone()
                    if fetch == "all":
                        return await cursor.fetchall()
                    return None
        except Exception as exc:
            # Any failure here means "cannot answer now", never "no such token": psycopg2 errors,
            # timeouts, and the odd RuntimeError aiopg raises under uvloop while the server is
            # refusing connections (a reused file descriptor).
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}".strip()) from exc

    async def lookup_many(self, tokens: list[str]) -> dict[str, Session]:
        rows = await self._execute(_LOOKUP, (tokens, self._zone), "all")
        return {row[0]: Session.from_row(*row) for row in rows}

    async def valid_tokens(self, tokens: list[str]) -> set[str]:
        rows = await self._execute(_VALID_TOKENS, (tokens, self._zone), "all")
        return {row[0] for row in rows}

    async def ping(self) -> None:
        await self._execute("SELECT 1", (), "one")

    async def touch(self, tokens: list[str]) -> None:
        await self._execute(_TOUCH, (self._zone, tokens))

    async def create(self, *, user_id: int | None, logged_in: bool, ttl_seconds: int) -> str:
        token = new_token()
        zone = self._zone
        await self._execute(_CREATE, (token, user_id, logged_in, zone, zone, ttl_seconds, zone))
        return token

    async def init_schema(self) -> None:
        await self._execute(POSTGRES_SESSIONS_TABLE)
