"""A PostgreSQL database of the test run's own, with the ``sessions`` table as the API has it.

``TEST_DATABASE_URL`` names the server (default: the local one, trust auth); each run creates a
fresh database there and drops it afterwards, so runs never see each other's sessions.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg2

from yektaws.sessions.schema import POSTGRES_SESSIONS_TABLE

__all__ = ["admin_url", "insert_session", "temporary_database"]

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/test"


def admin_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", DEFAULT_SERVER_URL)


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextmanager
def temporary_database() -> Iterator[str]:
    """Create a database with the sessions table; yield its URL; drop it."""
    server = admin_url()
    name = f"yektaws_test_{secrets.token_hex(4)}"
    admin = psycopg2.connect(server)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        url = _with_database(server, name)
        with psycopg2.connect(url) as conn, conn.cursor() as cursor:
            cursor.execute(POSTGRES_SESSIONS_TABLE)
        yield url
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


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
