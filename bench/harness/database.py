"""The PostgreSQL side of the yektaws rows: a database of its own, a sessions table, tokens.

Everything goes through ``psql`` so that the runner needs nothing beyond the standard library.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# The table yektaws reads sessions from (the old server's schema).
SESSIONS_TABLE = """
CREATE TABLE IF NOT EXISTS sessions (
    id SERIAL PRIMARY KEY,
    token VARCHAR(255) UNIQUE NOT NULL,
    user_id INTEGER NULL,
    is_logged_in BOOLEAN DEFAULT FALSE,
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMP DEFAULT NOW(),
    expires_at TIMESTAMP NOT NULL,
    last_activity_at TIMESTAMP DEFAULT NOW()
);
"""


@dataclass(frozen=True)
class TokenPools:
    """Token files, one pool per phase so that no phase finds its sessions already cached."""

    echo: Path
    idle: Path
    handshake: Path


def _psql(url: str, script: str) -> str:
    result = subprocess.run(
        ["psql", "--no-psqlrc", "--quiet", "--tuples-only", "-v", "ON_ERROR_STOP=1", url],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"psql {url}: {result.stderr.strip()}")
    return result.stdout


def prepare(server_url: str, database: str, sizes: dict[str, int], directory: Path) -> TokenPools:
    """Create ``database`` on ``server_url`` if needed, refill its sessions, write token files.

    ``server_url`` names any database on the server (``postgresql://user@host:port/db``); each
    session belongs to a distinct logged-in user and expires in a day.
    """
    return TokenPools(**token_files(server_url, database, sizes, directory))


def token_files(
    server_url: str,
    database: str,
    sizes: dict[str, int],
    directory: Path,
    *,
    user_id: int | None = None,
) -> dict[str, Path]:
    """:func:`prepare` for any pools: the token file of each, by name. With ``user_id``, every
    session belongs to that one user (all of them in its ``user:<id>`` room), else each to a
    user of its own."""
    if shutil.which("psql") is None:
        raise RuntimeError("psql is not installed (Debian: apt-get install postgresql-client)")
    exists = _psql(server_url, f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if not exists.strip():
        _psql(server_url, f'CREATE DATABASE "{database}";')
    pools: dict[str, list[str]] = {
        name: [secrets.token_urlsafe(32) for _ in range(size)] for name, size in sizes.items()
    }
    rows = "\n".join(
        f"{token}\t{user_id or number}"
        for number, token in enumerate((t for pool in pools.values() for t in pool), start=1)
    )
    _psql(
        database_url(server_url, database),
        SESSIONS_TABLE
        + "TRUNCATE sessions;\n"
        + "CREATE TEMP TABLE fresh (token text, user_id integer);\n"
        + f"COPY fresh FROM STDIN;\n{rows}\n\\.\n"
        + "INSERT INTO sessions (token, user_id, is_logged_in, expires_at)"
        + " SELECT token, user_id, TRUE, NOW() + INTERVAL '1 day' FROM fresh;\n",
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, tokens in pools.items():
        files[name] = directory / f"tokens-{name}.txt"
        files[name].write_text("\n".join(tokens) + "\n")
    return files


def database_url(server_url: str, database: str) -> str:
    """``server_url`` with its database name replaced by ``database``."""
    return f"{server_url.rsplit('/', 1)[0]}/{database}"
