"""One server API emit to a room of many connections, as the clients in the room see it.

The hub encodes each wire form of an event once per emit and writes the same bytes to every
member that sends that form (native frames with and without compression, Socket.IO packets per
namespace, each with or without the recovery position). What users notice, and what these tests
assert with real clients (aiohttp's WebSocket client, python-socketio's ``AsyncClient``, a raw
Engine.IO websocket): every member gets each event exactly once, in order, with its own protocol's
shape and its own recovery fields; a member that stops reading is closed (native 1013, Socket.IO
disconnected) while the others still get everything. The last test counts the encoder's runs on a
real :class:`~yektaws.hub.Hub`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar

import aiohttp
import orjson
import pytest
import socketio

from support.cluster import API_KEY, call_api
from support.gateway import Gateway, free_port, start_gateway
from yektaws.connection import CloseReason, Connection, Encoder
from yektaws.hub import Hub
from yektaws.metrics import Metrics
from yektaws.recovery import Link, SavedState, position_key
from yektaws.sessions import Session

pytestmark = pytest.mark.timeout(120)

MakeToken = Callable[..., str]
#: Small enough that a client which stops reading is found within a few MB of emits.
MAX_OUTBOUND = 64 * 1024


@pytest.fixture(scope="module", params=["recovery", "compression"])
def gateway(request: pytest.FixtureRequest, database_url: str) -> Iterator[Gateway]:
    """A gateway with the server API: recovery on (positions on recoverable members), or
    recovery off with permessage-deflate offered (a compressed member's frames are its own)."""
    env = {
        "DATABASE_URL": database_url,
        "ADMIN_API_KEY": API_KEY,
        "ADMIN_PORT": str(free_port()),
        "MAX_OUTBOUND_BUFFER": str(MAX_OUTBOUND),
        "MAX_CONNECTIONS_PER_USER": "100",
    }
    if request.param == "recovery":
        env["RECOVERY_WINDOW"] = "120"
    else:
        env |= {"RECOVERY_WINDOW": "0", "WEBSOCKET_COMPRESSION": "true"}
    process = start_gateway(env)
    yield process
    process.stop()


def recovering(gateway: Gateway) -> bool:
    return gateway.env["RECOVERY_WINDOW"] != "0"


class Member:
    """One connection in the room, recording the ``notice`` events it gets: each as its data and
    the recovery offset it carried (None without one)."""

    def __init__(self, name: str, *, recoverable: bool) -> None:
        self.name = name
        #: Whether this member should see positions (on a gateway with recovery on).
        self.recoverable = recoverable
        self.notices: list[tuple[Any, str | None]] = []
        self.arrived = asyncio.Event()

    def got(self, data: Any, offset: str | None) -> None:
        self.notices.append((data, offset))
        self.arrived.set()


class NativeMember(Member):
    """An aiohttp WebSocket client on ``/ws``."""

    def __init__(self, name: str, *, recoverable: bool) -> None:
        super().__init__(name, recoverable=recoverable)
        self.socket_id = ""
        self._http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self, gateway: Gateway, token: str, *, compress: int = 0) -> None:
        query = f"token={token}" + ("&recover=1" if self.recoverable else "")
        self._http = aiohttp.ClientSession()
        self.ws = await self._http.ws_connect(
            f"{gateway.ws_url}/ws?{query}", compress=compress, max_msg_size=0
        )
        hello = orjson.loads((await self.ws.receive()).data)
        assert hello["event"] == "connected", hello
        self.socket_id = hello["data"]["socketId"]
        if compress:  # the member this is for: one whose frames are compressed, when offered
            assert bool(self.ws.compress) == (gateway.env.get("WEBSOCKET_COMPRESSION") == "true")
        assert ("recovery" in hello["data"]) == (self.recoverable and recovering(gateway))

    def start_reading(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            frame = orjson.loads(message.data)
            if frame["event"] == "notice":
                assert set(frame) <= {"event", "data", "offset"}, frame
                self.got(frame["data"], frame.get("offset"))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self._http is not None:
            await self._http.close()


class SocketIOMember(Member):
    """One namespace of a python-socketio ``AsyncClient`` (see :func:`socketio_members`)."""

    def __init__(self, name: str, namespace: str, *, recoverable: bool) -> None:
        super().__init__(name, recoverable=recoverable)
        self.namespace = namespace

    async def on_notice(self, *arguments: Any) -> None:
        # A recoverable event's position is its last argument (socket.io-client reads it there).
        assert len(arguments) in (1, 2), arguments
        self.got(arguments[0], arguments[1] if len(arguments) == 2 else None)


async def socketio_members(
    gateway: Gateway,
    token: str,
    name: str,
    namespaces: list[str],
    *,
    transports: list[str] | None = None,
    recovery: bool = True,
) -> tuple[socketio.AsyncClient, list[SocketIOMember]]:
    """A python-socketio client joined to ``namespaces`` (one Engine.IO session, one connection
    in the room per namespace); ``recovery=False`` opts out with ``auth.recovery: false``."""
    client = socketio.AsyncClient(reconnection=False)
    members = [SocketIOMember(f"{name} {ns}", ns, recoverable=recovery) for ns in namespaces]
    for member in members:
        client.on("notice", member.on_notice, namespace=member.namespace)
    auth = {"token": token} if recovery else {"token": token, "recovery": False}
    await client.connect(
        gateway.http_url,
        auth=auth,
        namespaces=namespaces,
        transports=transports,
        wait_timeout=5,
    )
    return client, members


async def emit(gateway: Gateway, user: int, data: Any) -> dict[str, Any]:
    status, body = await call_api(
        gateway, "POST", "/emit", {"to": f"user:{user}", "event": "notice", "data": data}
    )
    assert status == 200, body
    return dict(body)


async def everyone_has(members: list[Member], count: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        for member in members:
            while len(member.notices) < count:
                member.arrived.clear()
                await member.arrived.wait()


@contextlib.asynccontextmanager
async def room(gateway: Gateway, make_token: MakeToken, user: int) -> AsyncIterator[list[Member]]:
    """Every kind of member the gateway serves, all in ``user:<user>``."""
    token = lambda: make_token(user_id=user, logged_in=True)  # noqa: E731
    natives = [
        NativeMember("native", recoverable=False),
        NativeMember("native recover=1", recoverable=True),
        NativeMember("native, compressed", recoverable=False),
    ]
    clients: list[socketio.AsyncClient] = []
    try:
        await natives[0].open(gateway, token())
        await natives[1].open(gateway, token())
        await natives[2].open(gateway, token(), compress=15)
        for native in natives:
            native.start_reading()
        members: list[Member] = list(natives)
        for args, options in [
            (("socket.io websocket", ["/", "/api"]), {"transports": ["websocket"]}),
            (("socket.io polling", ["/"]), {"transports": ["polling"]}),
            (("socket.io recovery off", ["/api"]), {"recovery": False}),
        ]:
            client, joined = await socketio_members(gateway, token(), *args, **options)  # type: ignore[arg-type]
            clients.append(client)
            members += joined
        yield members
    finally:
        for native in natives:
            await native.close()
        for client in clients:
            await client.disconnect()


async def test_one_emit_reaches_every_member_once_in_its_own_shape(
    gateway: Gateway, make_token: MakeToken
) -> None:
    """Native (plain, recoverable, compressed) and Socket.IO (two namespaces of one client, a
    long-polling one, one without recovery) members of one room: each of two emits arrives at
    each of them once, in order, with the recovery offset exactly where that member asked for
    recovery, the same offset for every member for one emit."""
    async with room(gateway, make_token, 501) as members:
        sent = [{"n": n, "text": "é" * 40, "list": [n, None, True]} for n in (1, 2)]
        for data in sent:
            reply = await emit(gateway, 501, data)
            assert reply["localConnections"] == len(members) == 7
        await everyone_has(members, 2)
        await asyncio.sleep(0.3)  # a doubled delivery would arrive by now

        offsets: list[set[str | None]] = [set(), set()]
        for member in members:
            assert [data for data, _ in member.notices] == sent, member.name
            shows_offsets = member.recoverable and recovering(gateway)
            for index, (_, offset) in enumerate(member.notices):
                assert (offset is not None) == shows_offsets, member.name
                if offset is not None:
                    offsets[index].add(offset)
        if recovering(gateway):
            (first,), (second,) = offsets  # one position per emit, shared by every member
            assert position_key(first) < position_key(second)


async def test_a_member_that_stops_reading_is_closed_and_the_others_get_everything(
    gateway: Gateway, make_token: MakeToken
) -> None:
    """A native and a Socket.IO member stop reading (TCP level) while large emits go to the
    room: both are closed for being too slow (native with 1013) and the reading members still
    get every emit once, in order."""
    user = 502
    token = lambda: make_token(user_id=user, logged_in=True)  # noqa: E731
    reader, stalled = (
        NativeMember("reader", recoverable=True),
        NativeMember("stalled", recoverable=True),
    )
    await reader.open(gateway, token())
    await stalled.open(gateway, token())
    reader.start_reading()
    client, (sio_reader,) = await socketio_members(
        gateway, token(), "socket.io reader", ["/"], transports=["websocket"]
    )
    async with aiohttp.ClientSession() as http:
        sio_stalled, sio_stalled_id = await stalled_socketio(http, gateway, token())
        try:
            assert stalled.ws is not None
            stalled.ws._response.connection.transport.pause_reading()  # type: ignore[union-attr]
            sio_stalled._response.connection.transport.pause_reading()  # type: ignore[union-attr]
            sent = 0
            # The same bytes fill both stalled members' buffers: by the time the Socket.IO one
            # is closed the native one is full too (it is logged once its close frame has
            # waited for the client in vain, 2 s later: hence the wait below).
            while sent < 400 and sio_stalled_id not in closed_for_slowness(gateway):
                sent += 1
                await emit(gateway, user, {"n": sent, "pad": "y" * 50_000})
            for _ in range(4):  # more than MAX_OUTBOUND again, for the native one
                sent += 1
                await emit(gateway, user, {"n": sent, "pad": "y" * 50_000})
            async with asyncio.timeout(10):
                while (
                    not {stalled.socket_id, sio_stalled_id} <= closed_for_slowness(gateway).keys()
                ):
                    await asyncio.sleep(0.1)
            await emit(gateway, user, {"n": sent + 1, "pad": ""})

            await everyone_has([reader, sio_reader], sent + 1, timeout=30)
            await asyncio.sleep(0.3)
            for member in (reader, sio_reader):
                assert [data["n"] for data, _ in member.notices] == list(range(1, sent + 2))
            stalled.ws._response.connection.transport.resume_reading()  # type: ignore[union-attr]
            async for _ in stalled.ws:
                pass  # what was buffered before the server gave up (the close frame
                # itself could not get out: the connection was dropped after it)
            assert stalled.ws.closed
            assert closed_for_slowness(gateway)[stalled.socket_id] == 1013
        finally:
            await sio_stalled.close()
            await reader.close()
            await stalled.close()
            await client.disconnect()


async def stalled_socketio(
    http: aiohttp.ClientSession, gateway: Gateway, token: str
) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    """A Socket.IO connection over a raw Engine.IO websocket, joined to ``/`` (its socket id):
    a client that can stop reading at the TCP level."""
    ws = await http.ws_connect(
        f"{gateway.ws_url}/socket.io/?EIO=4&transport=websocket", max_msg_size=0
    )
    opened = await ws.receive_str()
    assert opened.startswith("0"), opened
    await ws.send_str("40" + orjson.dumps({"token": token}).decode())
    while not (joined := await ws.receive_str()).startswith("40"):
        pass
    return ws, orjson.loads(joined[2:])["sid"]


def closed_for_slowness(gateway: Gateway) -> dict[str, int | None]:
    """The socket ids the gateway has logged as closed for not reading, with the close code."""
    return {
        line["socketId"]: line["code"]
        for line in gateway.logs()
        if line.get("event") == "disconnect" and line.get("reason") == CloseReason.TOO_SLOW.text
    }


# -- the encoder's runs, on a real hub ------------------------------------------------------------


class CountingMember(Connection):
    """A connection of a kind whose wire form is ``(kind, event, data, position)``; what it is
    written is kept, and its kind's encoder counts its runs."""

    protocol = "test"
    runs: ClassVar[dict[str, int]] = {}

    def __init__(self, kind: str, number: int, recovery: Link | None) -> None:
        super().__init__(
            socket_id=f"{kind}-{number}",
            session=Session(token="t" * 43, user_id="9", is_logged_in=True),
            peer="127.0.0.1",
            events_per_second=1000.0,
            event_burst=1000,
            metrics=Metrics(),
            recovery=recovery,
        )
        self.kind = kind
        self.written: list[Any] = []

    @property
    def transport(self) -> str:
        return "websocket"

    @property
    def encoder(self) -> Encoder:
        return ENCODERS[self.kind]

    async def _send_encoded(self, payload: Any) -> None:
        self.written.append(payload)

    async def close(self, reason: CloseReason, text: str | None = None) -> None:
        self.closed = True

    async def abandon(self) -> None:
        self.closed = True


def _counting(kind: str) -> Encoder:
    def encode(event: str, data: Any, position: str | None) -> tuple[Any, ...]:
        CountingMember.runs[kind] = CountingMember.runs.get(kind, 0) + 1
        return (kind, event, data, position)

    return encode


ENCODERS = {kind: _counting(kind) for kind in ("a", "b")}


def link(position: str) -> Link:
    state = SavedState(
        pid="p",
        incarnation="i",
        socket_id="s",
        protocol="test",
        namespace="",
        user_id="9",
        token_digest="d",
        rooms=(),
        node="n",
        since=0.0,
        start=position,
    )
    # held=None: past its replay (Recovery.replay), live events go straight through.
    return Link(state, True, False, position, position_key(position), held=None)


async def test_each_wire_form_is_encoded_once_per_emit() -> None:
    """300 members of two kinds, half of them recoverable, one of those already past the
    event's position: one emit runs each kind's encoder once per form it needs (with and without
    the position), every member of a form is written the very same object, the one already past
    it is written nothing."""
    hub = Hub()
    members = [
        CountingMember(kind, number, link("5-0") if number % 2 else None)
        for kind in ("a", "b")
        for number in range(150)
    ]
    ahead = CountingMember("a", 999, link("9-0"))
    for conn in [*members, ahead]:
        hub.add(conn)
    CountingMember.runs.clear()

    assert await hub.emit("user:9", "notice", {"n": 1}, "7-0") == 301
    assert CountingMember.runs == {"a": 2, "b": 2}
    assert ahead.written == []
    for conn in members:
        position = "7-0" if conn.recovery is not None else None
        assert conn.written == [(conn.kind, "notice", {"n": 1}, position)]
    forms = {id(conn.written[0]) for conn in members}
    assert len(forms) == 4

    CountingMember.runs.clear()
    await hub.emit("user:9", "notice", {"n": 2})
    assert CountingMember.runs == {"a": 1, "b": 1}
