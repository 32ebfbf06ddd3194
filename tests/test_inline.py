"""Events answered where their frame was parsed (yektaws.wsinline) keep every promise of the slow
path: a connection's replies come in the order of its requests even when one request has to wait
for the connection's task, the Socket.IO packets written inline are the ones python-socketio
would write, and bytes that arrive with the handshake pass the frame guard.

Ordering is tested with ``ai:cancel``, a coroutine handler (it may ask Redis where an answer is
streaming), followed in the same TCP write by events that plain handlers answer at once.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from socketio import packet as sio_packet

from support.gateway import Gateway
from support.rawws import OP_PING, OP_PONG, OP_TEXT, RawConnection, frame, upgrade_request
from yektaws.transports.socketio_inline import encode_ack, encode_event, parse_event

ECHOES = 30
NOT_STREAMING = "messageId is not streaming on this connection"


async def socketio_websocket(gateway: Gateway, token: str, namespace: str = "") -> RawConnection:
    """A raw Socket.IO websocket joined to ``namespace`` ("" for the root), greeting read."""
    ws = await RawConnection.upgraded(gateway.port, "/socket.io/?EIO=4&transport=websocket")
    prefix = namespace.encode() + b"," if namespace else b""
    assert (await ws.read_frame())[1].startswith(b"0{")
    await ws.send(frame(OP_TEXT, b'40%s{"token":"%s"}' % (prefix, token.encode())))
    assert (await ws.read_frame())[1].startswith(b'40%s{"sid"' % prefix)
    assert (await ws.read_frame())[1].startswith(b'42%s["connected"' % prefix)
    return ws


async def test_native_replies_keep_request_order_around_a_waiting_handler(
    gateway: Gateway, make_token
) -> None:
    ws = await RawConnection.upgraded(gateway.port, f"/ws?token={make_token()}")
    try:
        assert (await ws.read_event())["event"] == "connected"
        burst = [orjson.dumps({"event": "ai:cancel", "data": {"messageId": "m"}, "id": 0})]
        burst += [orjson.dumps({"event": "echo", "data": n, "id": n}) for n in range(1, ECHOES)]
        burst.append(orjson.dumps({"event": "ai:cancel", "data": {"messageId": "m"}, "id": ECHOES}))
        await ws.send(b"".join(frame(OP_TEXT, payload) for payload in burst))

        replies = [await ws.read_event() for _ in burst]
        assert [reply["id"] for reply in replies] == list(range(ECHOES + 1))
        assert replies[0]["event"] == replies[-1]["event"] == "error"
        assert replies[0]["data"] == {"error": NOT_STREAMING, "code": "bad_request"}
        assert [reply["data"]["received"] for reply in replies[1:-1]] == list(range(1, ECHOES))
    finally:
        await ws.close()


async def test_socketio_acks_keep_request_order_around_a_waiting_handler(
    gateway: Gateway, make_token
) -> None:
    ws = await socketio_websocket(gateway, make_token())
    try:
        burst = [b'420["ai:cancel",{"messageId":"m"}]']
        burst += [b'42%d["echo",%d]' % (n, n) for n in range(1, ECHOES)]
        await ws.send(b"".join(frame(OP_TEXT, payload) for payload in burst))

        acks: list[tuple[int, list]] = []
        events: list[str] = []
        while len(acks) < len(burst):
            text = (await ws.read_frame())[1].decode()
            if text == "2":
                await ws.send(frame(OP_TEXT, b"3"))
            elif text.startswith("43"):
                ack_id, _, body = text[2:].partition("[")
                acks.append((int(ack_id), orjson.loads("[" + body)))
            else:
                events.append(orjson.loads(text[2:])[0])
        assert [ack_id for ack_id, _ in acks] == list(range(ECHOES))
        assert acks[0][1] == [{"error": NOT_STREAMING, "code": "bad_request"}]
        assert [data[0]["received"] for _, data in acks[1:]] == list(range(1, ECHOES))
        assert events == ["error"] + ["echo_response"] * (ECHOES - 1)
    finally:
        await ws.close()


async def test_socketio_event_on_another_namespace_is_answered_there(
    gateway: Gateway, make_token
) -> None:
    ws = await socketio_websocket(gateway, make_token(), "/api")
    try:
        # The root namespace was never joined: python-socketio's path ignores the event there.
        await ws.send(
            frame(OP_TEXT, b'421["echo","root"]') + frame(OP_TEXT, b'42/api,2["echo","api"]')
        )
        reply = (await ws.read_frame())[1].decode()
        assert reply.startswith('42/api,["echo_response"')
        assert orjson.loads(reply[len("42/api,") :])[1]["received"] == "api"
        ack = (await ws.read_frame())[1].decode()
        assert ack.startswith("43/api,2[")
    finally:
        await ws.close()


async def test_socketio_websocket_ping_is_answered_with_its_payload(
    gateway: Gateway, make_token
) -> None:
    ws = await socketio_websocket(gateway, make_token())
    try:
        for n in range(3):
            await ws.send(frame(OP_PING, b"are you there %d" % n))
            assert await ws.read_control() == (OP_PONG, b"are you there %d" % n)
            await ws.send(frame(OP_TEXT, b'42%d["echo",%d]' % (n, n)))
            assert (await ws.read_frame())[1].startswith(b'42["echo_response"')
            assert (await ws.read_frame())[1].startswith(b"43%d[" % n)
    finally:
        await ws.close()


async def test_unmasked_frame_sent_with_the_handshake_fails_the_connection(
    gateway: Gateway, make_token
) -> None:
    conn = await RawConnection.open(gateway.port)
    try:
        unmasked = frame(OP_TEXT, b'{"event":"ping"}', mask=False)
        response = await conn.request(upgrade_request(f"/ws?token={make_token()}") + unmasked)
        assert response.status == 101
        assert await conn.close_code() == 1002
    finally:
        await conn.close()


# -- the packets of the inline path are python-socketio's own ---------------------------------

namespaces = st.one_of(st.just("/"), st.from_regex(r"/[a-z]{1,8}", fullmatch=True))
ack_ids = st.one_of(st.none(), st.integers(min_value=0, max_value=2**31))
json_data = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def _python_socketio(kind: int, namespace: str, ack_id: int | None, data: list) -> str:
    return "4" + sio_packet.Packet(kind, data=data, namespace=namespace, id=ack_id).encode()


@given(namespaces, ack_ids, st.text(min_size=1, max_size=20), json_data)
def test_parse_event_reads_what_python_socketio_writes(namespace, ack_id, event, data) -> None:
    text = _python_socketio(sio_packet.EVENT, namespace, ack_id, [event, data])
    assert parse_event(text) == (namespace, ack_id, event, data)


@given(namespaces, st.text(min_size=1, max_size=20), json_data)
def test_encode_event_writes_what_python_socketio_writes(namespace, event, data) -> None:
    expected = _python_socketio(sio_packet.EVENT, namespace, None, [event, data])
    assert encode_event(namespace, [event, data]).decode() == _compact(expected)


@given(namespaces, st.integers(min_value=0, max_value=2**31), json_data)
def test_encode_ack_writes_what_python_socketio_writes(namespace, ack_id, data) -> None:
    expected = _python_socketio(sio_packet.ACK, namespace, ack_id, [data])
    assert encode_ack(namespace, ack_id, [data]).decode() == _compact(expected)


def _compact(text: str) -> str:
    """python-socketio's text with its JSON re-encoded compactly, as orjson writes it."""
    head_end = text.index("[")
    return text[:head_end] + orjson.dumps(orjson.loads(text[head_end:])).decode()


@pytest.mark.parametrize(
    "text",
    [
        "4",  # Engine.IO MESSAGE without a packet
        "40",  # a CONNECT
        "41/api,",  # a DISCONNECT
        '43["echo"]',  # an ACK
        '451-["echo",{"_placeholder":true,"num":0}]',  # a BINARY_EVENT
        '42/api?x=1,["echo"]',  # a namespace with a query: python-socketio strips it
        "42[]",  # no event name
        "42[1]",  # an event name that is not a string
        '42{"event":"echo"}',  # not an argument list
        '42["echo"',  # broken JSON
        '42١["echo"]',  # an id in non-ASCII digits
    ],
)
def test_parse_event_declines_everything_else(text: str) -> None:
    assert parse_event(text) is None
