"""A PostgreSQL database of the test run's own, with the ``sessions`` table as the API has it.

``TEST_DATABASE_URL`` names the server (default: the local one, trust auth); when nothing answers
there, the suite starts a throwaway server (:mod:`support.postgres`). Each run creates a fresh
database on it and drops it afterwards, so runs never see each other's sessions.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg2

from yektaws.sessions.schema import POSTGRES_SESSIONS_TABLE

__all__ = [
    "answers",
    "configured_server_url",
    "delete_session",
    "insert_session",
    "temporary_database",
]

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/test"


def configured_server_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", DEFAULT_SERVER_URL)


def answers(url: str) -> bool:
    """Whether a PostgreSQL server accepts connections at ``url`` right now."""
    try:
        psycopg2.connect(url, connect_timeout=3).close()
    except psycopg2.OperationalError:
        return False
    return True


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def _admin(server: str, statement: str) -> None:
    # A connection per statement: the server may have been restarted in between (outage tests).
    admin = psycopg2.connect(server)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(statement)
    finally:
        admin.close()


@contextmanager
def temporary_database(server: str) -> Iterator[str]:
    """Create a database with the sessions table on ``server``; yield its URL; drop it."""
    name = f"yektaws_test_{secrets.token_hex(4)}"
    _admin(server, f'CREATE DATABASE "{name}"')
    try:
        url = _with_database(server, name)
        with psycopg2.connect(url) as conn, conn.cursor() as cursor:
            cursor.execute(POSTGRES_SESSIONS_TABLE)
        conn.close()
        yield url
    finally:
        _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def insert_session(
    url: str, *, user_id: int | None = None, logged_in: bool = False, ttl_seconds: float = 3600
) -> str:
    """Insert a session as the YektaYar API does (UTC wall-clock timestamps); return its token."""
    token = secrets.token_urlsafe(32)
    with psycopg2.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(
            "INSERT INTO sessions (token, user_id, is_logged_in, expires_at) VALUES "
            "(%s, %s, %s, (NOW() AT TIME ZONE 'UTC') + make_interval(secs => %s))",
            (token, user_id, logged_in, ttl_seconds),
        )
    conn.close()
    return token


def delete_session(url: str, token: str) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute("DELETE FROM sessions WHERE token = %s", (token,))
    conn.close()
