"""Two gateway processes on one Redis act as one: emits, disconnects and presence cross them.

Node A and node B are real ``yektaws serve`` processes sharing a Redis channel prefix of their
own; clients are real native WebSocket and Socket.IO clients; pushes go through each node's
server API, as another YektaYar service would send them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from support.clients import NativeClient, ProtocolClient, SocketIOClient, connect
from support.cluster import call_api, two_nodes
from support.gateway import Gateway

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def cluster(database_url: str, redis_url: str) -> Iterator[tuple[Gateway, Gateway]]:
    with two_nodes(database_url, redis_url) as nodes:
        yield nodes


@pytest.fixture
async def user_42(
    cluster: tuple[Gateway, Gateway], make_token: Callable[..., str]
) -> AsyncIterator[tuple[NativeClient, SocketIOClient]]:
    """User 42 twice: a native client on node A and a Socket.IO client on node B."""
    node_a, node_b = cluster
    native = await connect(
        "native-websocket", node_a.http_url, make_token(user_id=42, logged_in=True)
    )
    sio = await connect("socket.io", node_b.http_url, make_token(user_id=42, logged_in=True))
    assert isinstance(native, NativeClient)
    assert isinstance(sio, SocketIOClient)
    await native.expect("connected")
    await sio.expect("connected")
    yield native, sio
    await native.close()
    await sio.close()


async def test_emit_through_a_reaches_user_on_both_nodes_and_protocols(
    cluster: tuple[Gateway, Gateway], user_42: tuple[NativeClient, SocketIOClient]
) -> None:
    node_a, _ = cluster
    native, sio = user_42

    status, body = await call_api(
        node_a, "POST", "/emit", {"to": "user:42", "event": "notice", "data": {"text": "سلام"}}
    )

    assert status == 200, body
    assert body["broker"] == "ok"
    assert body["localConnections"] == 1  # the native client on A; B's arrives over Redis
    assert body["receivingNodes"] >= 2
    assert await native.expect("notice") == {"text": "سلام"}
    assert await sio.expect("notice") == {"text": "سلام"}


async def test_presence_on_either_node_lists_both_connections(
    cluster: tuple[Gateway, Gateway], user_42: tuple[NativeClient, SocketIOClient]
) -> None:
    for node in cluster:
        status, body = await call_api(node, "GET", "/users/42/connections")

        assert status == 200, body
        assert body["complete"] is True
        connections = body["connections"]
        assert sorted(c["protocol"] for c in connections) == ["native-websocket", "socket.io"]
        assert len({c["node"] for c in connections}) == 2  # one on each node
        assert set(body["nodes"]) == {c["node"] for c in connections}
        for connection in connections:
            assert connection["socketId"]
            assert connection["connectedAt"].endswith("Z")
            assert connection["transport"] == "websocket"


async def test_disconnect_through_b_closes_both_with_documented_codes(
    cluster: tuple[Gateway, Gateway], user_42: tuple[NativeClient, SocketIOClient]
) -> None:
    node_a, node_b = cluster
    native, sio = user_42

    status, body = await call_api(
        node_b, "POST", "/disconnect", {"user": "42", "reason": "logged out elsewhere"}
    )

    assert status == 200, body
    assert body["localConnections"] == 1  # the Socket.IO client on B
    assert await native.wait_closed() == 4001
    assert native.close_reason == "logged out elsewhere"
    assert await sio.expect("session:expired") == {"reason": "logged out elsewhere"}
    await asyncio.wait_for(sio.disconnected.wait(), 5)
    for node in (node_a, node_b):
        _, after = await call_api(node, "GET", "/users/42/connections")
        assert after["connections"] == []


async def test_emit_to_a_socket_id_on_the_other_node(
    cluster: tuple[Gateway, Gateway], make_token: Callable[..., str]
) -> None:
    node_a, node_b = cluster
    async with (
        await connect("socket.io", node_b.http_url, make_token(user_id=7)) as target,
        await connect("native-websocket", node_b.http_url, make_token(user_id=7)) as bystander,
    ):
        socket_id = (await target.expect("connected"))["socketId"]
        await bystander.expect("connected")

        _, body = await call_api(
            node_a, "POST", "/emit", {"to": socket_id, "event": "direct", "data": [1, 2]}
        )
        assert body["localConnections"] == 0
        assert await target.expect("direct") == [1, 2]
        # Only that socket: the same user's other connection hears nothing.
        await bystander.send("ping")
        assert (await bystander.next())[0] == "pong"


async def test_disconnect_by_token_closes_that_session_only(
    cluster: tuple[Gateway, Gateway], make_token: Callable[..., str]
) -> None:
    node_a, node_b = cluster
    revoked, kept = make_token(user_id=8, logged_in=True), make_token(user_id=8, logged_in=True)
    clients: list[ProtocolClient] = [
        await connect("native-websocket", node_b.http_url, revoked),
        await connect("native-websocket", node_b.http_url, kept),
    ]
    try:
        for client in clients:
            await client.expect("connected")

        status, body = await call_api(node_a, "POST", "/disconnect", {"token": revoked})

        assert status == 200, body
        assert revoked not in str(body)
        gone, stays = clients
        assert isinstance(gone, NativeClient)
        assert await gone.wait_closed() == 4001
        assert gone.close_reason == "session expired"
        assert (await stays.request("ping", reply="pong"))["timestamp"]
        assert revoked not in node_a.log_text() + node_b.log_text()
    finally:
        for client in clients:
            await client.close()
