"""CONTRACT section 2: every token source of both protocols and every outcome, on PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import socketio

from support.clients import SocketIOClient, connect
from support.database import insert_session, temporary_database
from support.gateway import Gateway, start_gateway
from support.handshake import handshake
from support.postgres import PostgresCluster
from yektaws.sessions.postgres import FAILURE_HOLD

RETRY_TEXT = "Service temporarily unavailable, please retry"


async def native_handshake(url: str, **kwargs: Any) -> tuple[int, str, str | None]:
    """(status, body, selected subprotocol) of a native handshake; 101 when it upgraded."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url, **kwargs) as ws:
                first = await ws.receive_json(timeout=5)
                assert first["event"] == "connected"
                return 101, "", ws.protocol
        except aiohttp.WSServerHandshakeError as exc:
            answer = await handshake(url, kwargs.get("headers"))
            return exc.status, answer.text, None


async def socketio_refusal(url: str, **kwargs: Any) -> dict[str, Any]:
    """The CONNECT_ERROR payload a python-socketio client receives."""
    client = socketio.AsyncClient(reconnection=False)
    refusal: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    client.on("connect_error", lambda data: refusal.done() or refusal.set_result(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(url, wait_timeout=5, **kwargs)
    await client.disconnect()
    return await asyncio.wait_for(refusal, 5)


# -- where the token may come from -------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "expected_protocol"),
    [
        ("query", None),
        ("bearer", None),
        ("lowercase-bearer", None),
        ("bare-header", None),
        ("subprotocol", "yektaws.v1"),
    ],
)
async def test_native_token_sources(gateway: Gateway, make_token, how, expected_protocol) -> None:
    token = make_token(user_id=3, logged_in=True)
    url, options = f"{gateway.ws_url}/ws", {}
    if how == "query":
        url += f"?token={token}"
    elif how == "bearer":
        options["headers"] = {"Authorization": f"Bearer {token}"}
    elif how == "lowercase-bearer":
        options["headers"] = {"Authorization": f"bearer {token}"}
    elif how == "bare-header":
        options["headers"] = {"Authorization": token}
    else:
        options["protocols"] = ("yektaws.v1", f"bearer.{token}")
    status, _, selected = await native_handshake(url, **options)
    assert status == 101
    assert selected == expected_protocol


@pytest.mark.parametrize("path", ["/", "/ws", "/anything/at/all"])
async def test_native_upgrades_at_any_path(gateway: Gateway, make_token, path: str) -> None:
    status, _, _ = await native_handshake(f"{gateway.ws_url}{path}?token={make_token()}")
    assert status == 101


@pytest.mark.parametrize("how", ["auth", "query", "header"])
async def test_socketio_token_sources(gateway: Gateway, make_token, how: str) -> None:
    token = make_token(user_id=4, logged_in=True)
    url, options = gateway.http_url, {}
    if how == "auth":
        options["auth"] = {"token": token}
    elif how == "query":
        url += f"?token={token}"
    else:
        options["headers"] = {"Authorization": f"Bearer {token}"}
    client = socketio.AsyncClient(reconnection=False)
    greeted: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    client.on("connected", lambda data: greeted.done() or greeted.set_result(data))
    await client.connect(url, wait_timeout=5, **options)
    try:
        assert (await asyncio.wait_for(greeted, 5))["isLoggedIn"] is True
    finally:
        await client.disconnect()


async def test_socketio_auth_wins_over_query(gateway: Gateway, make_token) -> None:
    good = make_token(user_id=8, logged_in=True)
    async with await SocketIOClient.open(f"{gateway.http_url}?token=not-a-token", token=good) as c:
        status = await c.request("status")
    assert status["connection"]["userId"] == "8"


# -- refusals ----------------------------------------------------------------------------------


@pytest.fixture(params=["missing", "unknown", "expired"])
def bad_token(request: pytest.FixtureRequest, make_token) -> tuple[str | None, str]:
    if request.param == "missing":
        return None, "Authentication token required"
    if request.param == "unknown":
        return "x" * 43, "Invalid or expired session token"
    return make_token(user_id=9, ttl_seconds=-5), "Invalid or expired session token"


async def test_native_refusal(gateway: Gateway, bad_token) -> None:
    token, message = bad_token
    query = f"?token={token}" if token else ""
    status, body, _ = await native_handshake(f"{gateway.ws_url}/ws{query}")
    assert (status, body) == (401, message)


async def test_socketio_refusal(gateway: Gateway, bad_token) -> None:
    token, message = bad_token
    refusal = await socketio_refusal(gateway.http_url, auth={"token": token} if token else None)
    assert refusal == {"message": message}


async def test_a_storm_of_handshakes_each_gets_its_own_answer(gateway: Gateway, make_token) -> None:
    # Lookups arriving together share one query (auth._LookupGroups): each handshake must still
    # get the answer of its own token, the same token twice included.
    valid = [make_token(user_id=n, logged_in=True) for n in range(30)]
    expired = [make_token(user_id=100 + n, ttl_seconds=-5) for n in range(10)]
    unknown = [f"unknown-{n:02d}-" + "x" * 32 for n in range(10)]
    tokens = valid + expired + unknown + valid[:5]

    async def user_of(token: str) -> int | str:
        async with aiohttp.ClientSession() as http:
            try:
                async with http.ws_connect(f"{gateway.ws_url}/ws?token={token}") as ws:
                    await ws.receive_json(timeout=10)  # connected
                    await ws.send_json({"event": "status"})
                    status = await ws.receive_json(timeout=10)
                    return int(status["data"]["connection"]["userId"])
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    answers = await asyncio.gather(*(user_of(token) for token in tokens))
    assert answers == [*range(30), *[401] * 20, *range(5)]


# -- expiry is compared in SQL, in the API's time zone ------------------------------------------


@pytest.mark.parametrize("zone", ["Asia/Tehran", "America/Los_Angeles"])
async def test_expiry_honoured_whatever_the_database_timezone(database_url: str, zone: str) -> None:
    options = quote(f"-c TimeZone={zone}")
    gateway = start_gateway({"DATABASE_URL": f"{database_url}?options={options}"})
    try:
        valid = insert_session(database_url, user_id=1, ttl_seconds=3600)
        expired = insert_session(database_url, user_id=1, ttl_seconds=-3600)
        assert (await native_handshake(f"{gateway.ws_url}/ws?token={valid}"))[0] == 101
        assert (await native_handshake(f"{gateway.ws_url}/ws?token={expired}"))[0] == 401
    finally:
        gateway.stop()


# -- a database outage is "retry later", never "invalid token" ----------------------------------


async def test_outage_gives_503_and_recovers_without_restart(own_postgres: PostgresCluster) -> None:
    with temporary_database(own_postgres.url) as url:
        gateway = start_gateway({"DATABASE_URL": url})
        try:
            # Fresh tokens for each phase: a token seen before may be answered from the cache.
            before, during_native, during_sio, after = (
                insert_session(url, user_id=2) for _ in range(4)
            )
            assert (await native_handshake(f"{gateway.ws_url}/ws?token={before}"))[0] == 101

            own_postgres.stop()
            status, body, _ = await native_handshake(f"{gateway.ws_url}/ws?token={during_native}")
            assert (status, body) == (503, RETRY_TEXT)
            refusal = await socketio_refusal(gateway.http_url, auth={"token": during_sio})
            assert refusal == {"message": RETRY_TEXT, "data": {"retryable": True}}
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{gateway.http_url}/ready") as ready:
                    assert ready.status == 503
                    assert "unavailable" in (await ready.json())["checks"]["sessionStore"]
                async with http.get(f"{gateway.http_url}/health") as health:
                    assert health.status == 200

            own_postgres.start()
            # Statements after a failure fail at once for FAILURE_HOLD: the database is asked
            # again at most that long after it answers.
            await asyncio.sleep(FAILURE_HOLD)
            assert (await native_handshake(f"{gateway.ws_url}/ws?token={after}"))[0] == 101
            async with await connect("socket.io", gateway.http_url, during_sio) as client:
                assert (await client.expect("connected"))["isLoggedIn"] is False
            async with aiohttp.ClientSession() as http, http.get(f"{gateway.http_url}/ready") as r:
                assert r.status == 200
        finally:
            assert gateway.stop() == 0


async def test_retry_after_header_on_outage(own_postgres: PostgresCluster) -> None:
    with temporary_database(own_postgres.url) as url:
        gateway = start_gateway({"DATABASE_URL": url})
        token = insert_session(url)
        own_postgres.stop()
        try:
            answer = await handshake(f"{gateway.http_url}/ws?token={token}")
            assert answer.status == 503
            assert int(answer.headers["Retry-After"]) > 0
            assert "Authentication" not in answer.text and "token" not in answer.text
        finally:
            own_postgres.start()
            gateway.stop()
