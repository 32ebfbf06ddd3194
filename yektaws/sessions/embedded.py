"""Sessions in a SQLite file of the gateway's own: the default when ``DATABASE_URL`` is empty.

It makes ``yektaws serve`` work on a fresh machine (create a token with ``yektaws sessions
create``, connect with it) and keeps the same table and the same expiry rule as PostgreSQL, with
UTC wall-clock timestamps stored as ISO text. aiosqlite runs SQLite on a thread of its own, so a
slow disk never stalls the event loop.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from yektaws.sessions import Session, StoreUnavailable, new_token
from yektaws.sessions.schema import SQLITE_SESSIONS_TABLE
from yektaws.settings import Settings

__all__ = ["EmbeddedStore"]

_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
# Less free space than this under the file, and a SQLite failure is reported as a full disk.
_FULL_DISK_BYTES = 64 * 1024


class EmbeddedStore:
    """A :class:`~yektaws.sessions.SessionStore` in one SQLite file, created on first start."""

    def __init__(self, settings: Settings) -> None:
        self._path = Path(settings.embedded_db_path)
        self._db: aiosqlite.Connection | None = None
        self.description = f"embedded sqlite {self._path.resolve()}"

    async def open(self) -> None:
        try:
            connection = aiosqlite.connect(self._path)
            # aiosqlite runs SQLite on a thread; a daemon one can never keep the process alive.
            # Since aiosqlite 0.22 the Connection holds that thread (it used to be the thread).
            connection._thread.daemon = True
            self._db = await connection
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute(SQLITE_SESSIONS_TABLE)
            await self._db.commit()
            # A first read maps the WAL index, which this connection then keeps for good: another
            # process closing the database (`yektaws sessions create`) leaves the -wal and -shm
            # files in place instead of removing them as the last user, and lookups go on
            # working when the disk fills up (re-creating the index needs space).
            await self._db.execute_fetchall("SELECT 1 FROM sessions LIMIT 1")
        except sqlite3.Error as exc:
            # Opened but unusable (a full disk refuses the WAL switch): closed here, since no
            # shutdown follows a start that failed.
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self.close()
            self._db = None
            raise StoreUnavailable(f"cannot open {self._path}: {self._explain(exc)}") from exc

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiosqlite.Connection]:
        if self._db is None:
            raise StoreUnavailable("session store is not open")
        try:
            yield self._db
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {self._explain(exc)}") from exc

    def _explain(self, exc: sqlite3.Error) -> str:
        """SQLite's message, and whether the disk under the file is full: SQLite says "disk I/O
        error" when it cannot create the WAL index of a full disk, which names no cause."""
        try:
            stat = os.statvfs(self._path.resolve().parent)
        except OSError:
            return str(exc)
        free = stat.f_bavail * stat.f_frsize
        if free >= _FULL_DISK_BYTES:
            return str(exc)
        return f"{exc} (disk full: {free} bytes free on the filesystem of {self._path})"

    async def lookup_many(self, tokens: list[str]) -> dict[str, Session]:
        if not tokens:
            return {}
        marks = ",".join("?" * len(tokens))
        rows = await self._read(
            "SELECT token, user_id, is_logged_in FROM sessions "
            f"WHERE token IN ({marks}) AND expires_at > {_NOW}",
            tokens,
        )
        return {row[0]: Session.from_row(*row) for row in rows}

    async def valid_tokens(self, tokens: list[str]) -> set[str]:
        if not tokens:
            return set()
        marks = ",".join("?" * len(tokens))
        rows = await self._read(
            f"SELECT token FROM sessions WHERE token IN ({marks}) AND expires_at > {_NOW}", tokens
        )
        return {row[0] for row in rows}

    async def ping(self) -> None:
        # Reads the table, not only the connection: on a full disk SQLite may be unable to read
        # it (the WAL index cannot be created), and /ready must say so.
        await self._read("SELECT 1 FROM sessions LIMIT 1", ())

    async def _read(self, sql: str, parameters: Sequence[Any]) -> list[sqlite3.Row]:
        """Every row of one query, read to the end on aiosqlite's thread.

        Never a cursor left for later: aiosqlite's thread keeps its last result alive until the
        next call has run, and an unfinished statement keeps its read transaction open, so the
        next query would read that old snapshot (a session another process had just created was
        refused as unknown).
        """
        async with self._connection() as db:
            return list(await db.execute_fetchall(sql, parameters))

    async def touch(self, tokens: list[str]) -> None:
        if not tokens:
            return
        marks = ",".join("?" * len(tokens))
        await self._write(
            f"UPDATE sessions SET last_activity_at = {_NOW} WHERE token IN ({marks})", tokens
        )

    async def create(self, *, user_id: int | None, logged_in: bool, ttl_seconds: int) -> str:
        token = new_token()
        await self._write(
            "INSERT INTO sessions (token, user_id, is_logged_in, expires_at) VALUES "
            "(?, ?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || ? || ' seconds'))",
            (token, user_id, logged_in, ttl_seconds),
        )
        return token

    async def _write(self, sql: str, parameters: Sequence[Any]) -> None:
        """Run one write and commit it; a write that fails (a full disk) is rolled back.

        Without the rollback, a failed commit left the connection inside its transaction, and
        every later lookup read that transaction's old snapshot: sessions created by another
        process after the disk had room again stayed invisible (refused as invalid tokens).
        """
        async with self._connection() as db:
            try:
                await db.execute(sql, parameters)
                await db.commit()
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    await db.rollback()
                raise

    async def init_schema(self) -> None:
        async with self._connection() as db:
            await db.execute(SQLITE_SESSIONS_TABLE)
            await db.commit()
