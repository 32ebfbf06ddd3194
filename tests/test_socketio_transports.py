"""Socket.IO over every transport, path and namespace the YektaYar apps and others use."""

from __future__ import annotations

import pytest

from support.clients import SocketIOClient
from support.gateway import Gateway

TRANSPORTS = {
    "polling-only": ["polling"],
    "websocket-only": ["websocket"],
    "polling-then-upgrade": ["polling", "websocket"],
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("path", ["socket.io", "ws"])
@pytest.mark.parametrize("namespace", ["/", "/api"])
async def test_echo_over_every_transport_path_and_namespace(
    gateway: Gateway, make_token, transport: str, path: str, namespace: str
) -> None:
    client = await SocketIOClient.open(
        gateway.http_url,
        token=make_token(user_id=1, logged_in=True),
        transports=TRANSPORTS[transport],
        path=path,
        namespace=namespace,
    )
    async with client:
        connected = await client.expect("connected")
        ack = await client.call("echo", {"t": transport})
        for _ in range(3):  # several round trips, so polling really cycles
            assert (await client.call("ping"))["timestamp"]
        expected = "polling" if transport == "polling-only" else "websocket"
        info = await client.call("info")
    assert connected["protocol"] == "socket.io"
    assert ack["received"] == {"t": transport}
    assert client.client.transport() == expected
    assert info["websocket"]["transport"] == expected
