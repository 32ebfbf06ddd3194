"""The session store: its own settings (lookup timeout, the positive cache, the activity refresh)
and an embedded store that never keeps the process from exiting."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from datetime import datetime

import psycopg2

from support.database import delete_session
from support.handshake import handshake


async def test_a_store_that_never_answers_gives_503_within_the_timeout(gateway_factory, make_token):
    # A listener that accepts TCP and never says anything: a hung database, not a refused one.
    with socket.create_server(("127.0.0.1", 0), backlog=64) as blackhole:
        port = blackhole.getsockname()[1]
        gateway = gateway_factory(
            DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/none",
            SESSION_STORE_TIMEOUT="1",
        )
        started = time.monotonic()
        answer = await handshake(f"{gateway.http_url}/ws?token={make_token()}")
        elapsed = time.monotonic() - started
    assert answer.status == 503
    assert answer.text == "Service temporarily unavailable, please retry"
    assert 0.9 <= elapsed < 2.5


async def test_revoked_token_refused_once_the_cache_forgets_it(
    gateway_factory, database_url, make_token
) -> None:
    gateway = gateway_factory(SESSION_CACHE_TTL="1.5", SESSION_RECHECK_INTERVAL="3600")
    token = make_token(user_id=61)
    assert (await handshake(f"{gateway.http_url}/ws?token={token}")).status == 101
    delete_session(database_url, token)
    # Within SESSION_CACHE_TTL the cached answer may still admit it (documented)...
    assert (await handshake(f"{gateway.http_url}/ws?token={token}")).status == 101
    await asyncio.sleep(1.7)
    # ...after it, the revocation wins.
    assert (await handshake(f"{gateway.http_url}/ws?token={token}")).status == 401


# Any refresh made by this test run is later than this; the aged value is earlier.
RECENT = datetime(2020, 1, 1)


def _last_activity(url: str, token: str) -> datetime:
    with psycopg2.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT last_activity_at FROM sessions WHERE token = %s", (token,))
        value = cursor.fetchone()[0]
    conn.close()
    return value


def _age_activity(url: str, token: str) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(
            "UPDATE sessions SET last_activity_at = '2000-01-01' WHERE token = %s", (token,)
        )
    conn.close()


async def test_last_activity_refreshed_at_most_once_per_interval(
    gateway_factory, database_url, make_token
) -> None:
    gateway = gateway_factory(SESSION_TOUCH_INTERVAL="60", SESSION_CACHE_TTL="0")
    token, other = make_token(user_id=62), make_token(user_id=63)
    for value in (token, other):
        _age_activity(database_url, value)
    assert (await handshake(f"{gateway.http_url}/ws?token={token}")).status == 101
    await asyncio.sleep(1.5)  # the refresh is batched, off the handshake path
    assert _last_activity(database_url, token) > RECENT
    _age_activity(database_url, token)
    assert (await handshake(f"{gateway.http_url}/ws?token={token}")).status == 101
    assert (await handshake(f"{gateway.http_url}/ws?token={other}")).status == 101
    await asyncio.sleep(1.5)
    assert _last_activity(database_url, token) < RECENT  # not again within 60 s
    assert _last_activity(database_url, other) > RECENT


def test_an_embedded_store_left_open_does_not_keep_the_process_alive(tmp_path) -> None:
    # The shutdown path closes the store, but a crash path may not: aiosqlite's worker thread
    # then waits for work forever, and a non-daemon one blocks the interpreter's exit.
    environ = {"EMBEDDED_DB_PATH": str(tmp_path / "s.db")}
    script = (
        "import asyncio\n"
        "from yektaws.sessions.embedded import EmbeddedStore\n"
        "from yektaws.settings import load_settings\n"
        f"settings = load_settings({environ!r}, dotenv=None)\n"
        "store = EmbeddedStore(settings)\n"  # still referenced when the interpreter exits
        "asyncio.run(store.open())\n"
        "print('opened', flush=True)\n"
    )
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "opened\n"


async def test_the_embedded_store_sees_sessions_created_elsewhere_after_a_health_check(
    tmp_path,
) -> None:
    # aiosqlite's worker thread keeps the last result alive until the next call has run: a read
    # left unfinished (a health check's "SELECT 1 ... LIMIT 1") kept its transaction open
    # through the next lookup, which then read the old snapshot and refused a session that
    # `yektaws sessions create` (another process) had just written. Seen as a flaky 401.
    from yektaws.sessions.embedded import EmbeddedStore
    from yektaws.settings import load_settings

    settings = load_settings({"EMBEDDED_DB_PATH": str(tmp_path / "s.db")}, dotenv=None)
    gateway_store, cli_store = EmbeddedStore(settings), EmbeddedStore(settings)
    await gateway_store.open()
    await cli_store.open()
    try:
        await cli_store.create(user_id=1, logged_in=True, ttl_seconds=60)  # a row to find
        for check in (gateway_store.ping, lambda: gateway_store.valid_tokens(["x"])):
            await check()
            created = await cli_store.create(user_id=2, logged_in=True, ttl_seconds=60)
            found = await gateway_store.lookup_many([created])
            assert created in found, check
    finally:
        await gateway_store.close()
        await cli_store.close()
