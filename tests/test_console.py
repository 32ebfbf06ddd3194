"""The operator console as an operator's browser meets it, without the browser (that is
test_console_browser.py): the login and its cookie, the JSON the page pulls, its pages across a
cluster of two real gateways on one Redis, and a disconnect with its audit line.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from support.clients import NativeClient, ProtocolClient, SocketIOClient, connect
from support.cluster import API_KEY, admin_port, call_api, two_nodes
from support.console import ConsoleClient
from support.gateway import Gateway, free_port, start_gateway

pytestmark = pytest.mark.timeout(90)

MakeToken = Callable[..., str]


@pytest.fixture(scope="module")
def cluster(database_url: str, redis_url: str) -> Iterator[tuple[Gateway, Gateway]]:
    with two_nodes(database_url, redis_url) as nodes:
        yield nodes


@pytest.fixture
async def operator(cluster: tuple[Gateway, Gateway]) -> AsyncIterator[ConsoleClient]:
    """An operator logged in to node B's console."""
    async with ConsoleClient(cluster[1]) as console:
        assert (await console.login(API_KEY)).status == 303
        yield console


async def until(probe: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """Poll ``probe`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        await asyncio.sleep(0.2)


async def opened(protocol: str, gateway: Gateway, token: str) -> tuple[ProtocolClient, str]:
    client = await connect(protocol, gateway.http_url, token)
    return client, (await client.expect("connected"))["socketId"]


# -- logging in ------------------------------------------------------------------------------------


async def test_login_sets_a_signed_strict_httponly_cookie_and_never_logs_the_key(
    cluster: tuple[Gateway, Gateway],
) -> None:
    node = cluster[0]
    async with ConsoleClient(node) as console:
        async with console.http.get(console.url.rstrip("/"), allow_redirects=False) as bare:
            assert (bare.status, bare.headers["Location"]) == (303, "/console/")
        status, page = await console.page()
        assert status == 200 and 'name="key"' in page  # the login form, no data
        wrong = await console.login("not-the-key")
        assert wrong.status == 401
        assert "Set-Cookie" not in wrong.headers
        assert "That is not the server API key." in await wrong.text()

        right = await console.login(API_KEY)

        assert right.status == 303
        assert right.headers["Location"] == "/console/"
        cookie = right.cookies["yektaws_console"]
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Strict"
        assert cookie["path"] == "/console"
        assert int(cookie["max-age"]) == 8 * 3600
        assert API_KEY not in cookie.value
        status, page = await console.page()
        assert status == 200 and 'id="nodes"' in page  # now the console itself
        assert right.headers["Content-Security-Policy"].startswith("default-src 'none'")

    assert API_KEY not in node.log_text()
    node.wait_for_log("console_login", outcome="ok", operator="127.0.0.1")
    node.wait_for_log("console_login", outcome="wrong_key", operator="127.0.0.1")


async def test_the_api_takes_the_cookie_or_the_key_and_the_server_api_only_the_key(
    cluster: tuple[Gateway, Gateway], operator: ConsoleClient
) -> None:
    node_b = cluster[1]
    assert (await operator.get("api/stats"))[0] == 200
    # The bearer key still works for scripts.
    status, _ = await call_api(node_b, "GET", "/console/api/stats")
    assert status == 200
    # The cookie opens the console only: the services' API stays bearer-only.
    async with operator.http.get(
        f"http://127.0.0.1:{admin_port(node_b)}/users/1/connections"
    ) as response:
        assert response.status == 401

    async with ConsoleClient(node_b) as stranger:
        assert await stranger.get("api/stats") == (401, {"error": "Log in to the console first"})
        value = operator.cookie()
        expiry, nonce, signature = value.split(".")
        for forged in (
            f"{int(expiry) + 3600}.{nonce}.{signature}",  # a longer life, same signature
            f"{expiry}.{nonce}.{'0' * 64}",
            "garbage",
            f"{expiry}.{nonce}.{signature}é",
        ):
            stranger.set_cookie(forged)
            assert (await stranger.get("api/stats"))[0] == 401, forged


async def test_logout_revokes_the_cookie(cluster: tuple[Gateway, Gateway]) -> None:
    node = cluster[0]
    async with ConsoleClient(node) as console:
        await console.login(API_KEY)
        value = console.cookie()
        status, _ = await console.form_post("logout")
        assert status == 303
        assert console.cookie() is None  # cleared in the browser
        console.set_cookie(value)  # and a kept copy no longer opens anything
        assert (await console.get("api/stats"))[0] == 401
    node.wait_for_log("console_logout", operator="127.0.0.1")


async def test_cross_site_requests_are_refused(operator: ConsoleClient) -> None:
    status, body = await operator.post(
        "api/disconnect", {"user": "1"}, Origin="https://evil.example"
    )
    assert (status, body) == (403, {"error": "Cross-origin request refused"})
    # A plain HTML form from anywhere cannot send JSON; its form encoding is refused.
    status, body = await operator.form_post("api/disconnect", {"user": "1"})
    assert status == 400
    assert "Content-Type: application/json" in body


async def test_wrong_keys_are_limited_per_address(database_url: str) -> None:
    lone = start_gateway(
        {"DATABASE_URL": database_url, "ADMIN_API_KEY": API_KEY, "ADMIN_PORT": str(free_port())}
    )
    try:
        async with ConsoleClient(lone) as console:
            statuses = [(await console.login(f"guess-{i}")).status for i in range(5)]
            assert statuses == [401] * 5
            limited = await console.login(API_KEY)  # even the right key, until the wait is over
            assert limited.status == 429
            assert limited.headers["Retry-After"] == "60"
            assert console.cookie() is None
        lone.wait_for_log("console_login", outcome="rate_limited", operator="127.0.0.1")
    finally:
        lone.stop()


# -- what the page pulls ---------------------------------------------------------------------------


async def test_stats_count_both_protocols_on_both_nodes(
    cluster: tuple[Gateway, Gateway], operator: ConsoleClient, make_token: MakeToken
) -> None:
    node_a, node_b = cluster

    async def totals() -> dict[str, Any]:
        status, body = await operator.get("api/stats")
        assert status == 200, body
        return body

    native, _ = await opened("native-websocket", node_a, make_token(user_id=71, logged_in=True))
    sio, _ = await opened("socket.io", node_b, make_token(user_id=72, logged_in=True))
    try:
        body = await until(
            lambda: _when(
                totals(),
                lambda b: (
                    b["totals"]["connections"]
                    == {"native-websocket": {"websocket": 1}, "socket.io": {"websocket": 1}}
                ),
            )
        )
        assert body["complete"] is True
        assert len(body["nodes"]) == 2
        assert body["answeredBy"] in {n["node"] for n in body["nodes"]}
        assert body["totals"]["usersOnline"] == 2
        for node in body["nodes"]:
            assert node["sessionStore"] == "ok"
            assert node["broker"] == "ok"
        fields = body["fields"]
        series = body["series"]
        assert series, "a fresh page gets the history at once"
        assert [b[0] - a[0] for a, b in itertools.pairwise(series)] == [2.0] * (len(series) - 1)
        # `since` returns only what the page does not have yet.
        later = await operator.get("api/stats", since=series[-1][0])
        assert all(row[0] > series[-1][0] for row in later[1]["series"])
        latest = (await until(lambda: _when(totals(), lambda b: b["series"][-1][1] == 1)))[
            "series"
        ][-1]
        assert latest[fields.index("native")] == 1
        assert latest[fields.index("socketio")] == 1
    finally:
        await native.close()
        await sio.close()
    await until(lambda: _when(totals(), lambda b: b["totals"]["usersOnline"] == 0))


async def _when(body: Awaitable[dict[str, Any]], condition: Callable[[Any], bool]) -> Any:
    result = await body
    return result if condition(result) else None


async def test_connection_and_user_pages_cover_the_cluster_once_each(
    cluster: tuple[Gateway, Gateway], operator: ConsoleClient, make_token: MakeToken
) -> None:
    node_a, node_b = cluster
    plan = [  # (protocol, node, user)
        ("native-websocket", node_a, 101),
        ("socket.io", node_b, 101),
        ("native-websocket", node_b, 102),
        ("socket.io", node_a, 103),
        ("native-websocket", node_a, 104),
        ("socket.io", node_b, 104),
        ("native-websocket", node_b, 104),
    ]
    clients: list[ProtocolClient] = []
    ids: list[str] = []
    try:
        for protocol, node, user in plan:
            client, socket_id = await opened(
                protocol, node, make_token(user_id=user, logged_in=True)
            )
            clients.append(client)
            ids.append(socket_id)

        seen: list[dict[str, Any]] = []
        cursor = None
        sizes = []
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            status, page = await operator.get("api/connections", **params)
            assert status == 200, page
            assert page["complete"] is True
            seen += page["items"]
            sizes.append(len(page["items"]))
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert sizes == [3, 3, 1]
        assert [row["socketId"] for row in seen] == list(reversed(ids))  # newest first, once
        assert {row["node"] for row in seen} == {
            n["node"] for n in (await operator.get("api/stats"))[1]["nodes"]
        }
        assert "token" not in str(seen).lower()

        _, natives = await operator.get("api/connections", protocol="native-websocket")
        assert len(natives["items"]) == 4
        assert {row["protocol"] for row in natives["items"]} == {"native-websocket"}

        _, first = await operator.get("api/users", limit=2)
        _, second = await operator.get("api/users", limit=2, cursor=first["nextCursor"])
        rows = first["items"] + second["items"]
        assert [row["userId"] for row in rows] == ["101", "102", "103", "104"]
        assert second["nextCursor"] is None
        by_user = {row["userId"]: row for row in rows}
        assert by_user["104"]["connections"] == 3
        assert by_user["104"]["protocols"] == {"native-websocket": 2, "socket.io": 1}
        assert len(by_user["101"]["nodes"]) == 2  # one user, two nodes, one row
    finally:
        for client in clients:
            await client.close()


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("api/connections", {"limit": "0"}, "'limit' must be a whole number from 1 to 500"),
        ("api/connections", {"limit": "501"}, "'limit' must be a whole number from 1 to 500"),
        ("api/users", {"limit": "x"}, "'limit' must be a number"),
        (
            "api/connections",
            {"cursor": "nope"},
            "'cursor' must be a nextCursor this route returned",
        ),
        (
            "api/connections",
            {"protocol": "ftp"},
            "'protocol' must be one of native-websocket, socket.io",
        ),
        ("api/stats", {"since": "yesterday"}, "'since' must be a number"),
    ],
)
async def test_bad_parameters_get_400_naming_them(
    operator: ConsoleClient, path: str, params: dict[str, str], message: str
) -> None:
    assert await operator.get(path, **params) == (400, {"error": message})


# -- acting ---------------------------------------------------------------------------------------


async def test_disconnect_through_the_console_closes_both_protocols_with_one_audit_line(
    cluster: tuple[Gateway, Gateway], operator: ConsoleClient, make_token: MakeToken
) -> None:
    node_a, node_b = cluster
    tokens = [make_token(user_id=55, logged_in=True) for _ in range(2)]
    native, _ = await opened("native-websocket", node_a, tokens[0])
    sio, _ = await opened("socket.io", node_b, tokens[1])
    assert isinstance(native, NativeClient) and isinstance(sio, SocketIOClient)
    try:
        status, inspected = await operator.get("api/users/55")
        assert status == 200
        assert sorted(c["protocol"] for c in inspected["connections"]) == [
            "native-websocket",
            "socket.io",
        ]

        status, body = await operator.post(
            "api/disconnect", {"user": "55", "reason": "account review"}
        )

        assert status == 200, body
        assert await native.wait_closed() == 4001
        assert native.close_reason == "account review"
        assert await sio.expect("session:expired") == {"reason": "account review"}
        _, after = await operator.get("api/users/55")
        assert after["connections"] == []
    finally:
        await native.close()
        await sio.close()
    audit = [e for e in node_b.logs() if e.get("event") == "console_disconnect"]
    assert len(audit) == 1
    assert audit[0]["operator"] == "127.0.0.1"
    assert audit[0]["by"] == "user" and audit[0]["target"] == "55"
    for token in tokens:
        assert token not in node_a.log_text() + node_b.log_text()
    assert [e for e in node_a.logs() if e.get("event") == "console_disconnect"] == []


async def test_health_gauges_are_exported(cluster: tuple[Gateway, Gateway]) -> None:
    def scrape() -> str:
        with urllib.request.urlopen(f"{cluster[0].http_url}/metrics", timeout=5) as response:
            return response.read().decode()

    async def healthy() -> str | None:
        text = await asyncio.to_thread(scrape)
        return text if "yektaws_session_store_up 1.0" in text else None

    assert "yektaws_broker_up 1.0" in await until(healthy)
