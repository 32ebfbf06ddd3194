"""Property tests: arbitrary bytes and JSON never raise out of frame decoding or dispatch, and
always get a defined answer.

In-process, :func:`~yektaws.transports.native.decode_frame` and :meth:`Dispatcher.dispatch` (the
real handlers, AI chat off) are driven with whatever hypothesis makes; end to end, a bounded
number of arbitrary frames go to a real gateway, each of which must be answered while the
connection stays usable.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.gateway import Gateway
from yektaws.connection import CloseReason, Connection, Encoder
from yektaws.dispatcher import ErrorCode, Reply
from yektaws.handlers import AIChat, build_dispatcher
from yektaws.metrics import Metrics
from yektaws.sessions import Session
from yektaws.settings import load_settings
from yektaws.transports.native import FrameError, decode_frame

SETTINGS = load_settings({"AI_BASE_URL": "", "RATE_LIMIT_PER_SECOND": "1000000"}, dotenv=None)
METRICS = Metrics()
DISPATCHER = build_dispatcher(SETTINGS, AIChat(SETTINGS, METRICS), METRICS)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
# Event names: the registered ones (so handlers see arbitrary data), near misses, and anything.
event_names = st.sampled_from(DISPATCHER.events) | st.text(max_size=20) | json_values
frame_ids = st.none() | st.text(max_size=10) | st.integers(-(2**63), 2**63 - 1) | json_values


class RecordingConnection(Connection):
    """A connection that keeps what it is sent instead of sending it."""

    protocol = "native-websocket"

    def __init__(self) -> None:
        super().__init__(
            socket_id="prop",
            session=Session(token="t" * 43, user_id="7", is_logged_in=True),
            peer="127.0.0.1",
            events_per_second=SETTINGS.rate_limit_per_second,
            event_burst=SETTINGS.rate_limit_burst,
            metrics=METRICS,
        )
        self.emitted: list[tuple[str, Any]] = []
        self.closed_for: CloseReason | None = None

    @property
    def transport(self) -> str:
        return "websocket"

    @property
    def encoder(self) -> Encoder:
        return lambda event, data, position: (event, data)

    async def _send_encoded(self, payload: tuple[str, Any]) -> None:
        self.emitted.append(payload)

    async def close(self, reason: CloseReason, text: str | None = None) -> None:
        self.closed, self.closed_for = True, reason

    async def abandon(self) -> None:
        self.closed = True


def assert_defined(event: str, data: Any) -> None:
    """An answer a client can read: a named event whose data encodes as JSON; an error carries
    a known code, and never the one meaning a handler broke."""
    assert isinstance(event, str) and event
    orjson.dumps(data)
    if event == "error":
        assert data["code"] in {code.value for code in ErrorCode}
        assert data["code"] != ErrorCode.INTERNAL


async def answer(payload: str | bytes) -> list[tuple[str, Any]]:
    """Everything the dispatcher sends back for one frame, the way the native read loop runs it."""
    conn = RecordingConnection()
    try:
        event, data, _ = decode_frame(payload)
    except FrameError:
        reply: Reply | None = await DISPATCHER.refuse_frame(conn)
    else:
        reply = await DISPATCHER.dispatch(conn, event, data)
    while conn.running_tasks:  # concurrent handlers (ai:chat) answer from their own task
        await asyncio.sleep(0)
    answers = list(conn.emitted)
    if reply is not None:
        answers.append((reply.event, reply.data))
    assert conn.closed_for is None
    return answers


def test_the_harness_reaches_the_handlers() -> None:
    """Not vacuous: a good frame gets its handler's reply, a broken one the bad-frame error."""
    ((event, data),) = asyncio.run(answer(b'{"event": "echo", "data": [1]}'))
    assert (event, data["received"]) == ("echo_response", [1])
    assert asyncio.run(answer(b"{")) == [
        ("error", {"error": "Failed to process message", "code": "bad_frame"})
    ]


@given(st.binary(max_size=512) | st.text(max_size=512))
def test_decode_frame_returns_a_triple_or_frame_error(payload: str | bytes) -> None:
    try:
        decoded = decode_frame(payload)
    except FrameError:
        return
    assert len(decoded) == 3


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5), event_names, frame_ids)
def test_decode_frame_reads_any_object(message: dict, event: Any, frame_id: Any) -> None:
    message = {**message, "event": event, "id": frame_id}
    id_valid = frame_id is None or (
        isinstance(frame_id, str | int) and not isinstance(frame_id, bool)
    )
    try:
        decoded = decode_frame(orjson.dumps(message))
    except FrameError:
        assert not id_valid
        return
    assert id_valid
    assert decoded == (event, message.get("data"), frame_id)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(event_names, json_values)
def test_dispatch_answers_any_event_and_data(event: Any, data: Any) -> None:
    answers = asyncio.run(
        answer(orjson.dumps({"event": event, "data": data}, option=orjson.OPT_NON_STR_KEYS))
    )
    assert answers, "no answer at all"
    for name, payload in answers:
        assert_defined(name, payload)


@settings(max_examples=300)
@given(st.binary(max_size=256) | st.text(max_size=256))
def test_dispatch_answers_any_bytes(payload: str | bytes) -> None:
    answers = asyncio.run(answer(payload))
    assert answers, "no answer at all"
    for name, data in answers:
        assert_defined(name, data)


# -- end to end ----------------------------------------------------------------------------------

frames = (
    st.binary(max_size=300).map(lambda b: ("bytes", b))
    | st.text(max_size=300).map(lambda t: ("text", t))
    | st.builds(
        lambda e, d: ("text", orjson.dumps({"event": e, "data": d}).decode()),
        st.sampled_from(DISPATCHER.events) | st.text(max_size=10),
        json_values,
    )
)


async def exchange(url: str, kind: str, payload: str | bytes) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        assert orjson.loads((await ws.receive(timeout=5)).data)["event"] == "connected"
        if kind == "bytes":
            await ws.send_bytes(payload)  # type: ignore[arg-type]
        else:
            await ws.send_str(payload)  # type: ignore[arg-type]
        message = await ws.receive(timeout=5)
        assert message.type is aiohttp.WSMsgType.TEXT, message
        reply = orjson.loads(message.data)
        assert_defined(reply["event"], reply.get("data"))
        await ws.send_str('{"event": "ping", "id": "after"}')
        while True:  # an ai:chat answer may still be arriving
            reply = orjson.loads((await ws.receive(timeout=5)).data)
            if reply.get("id") == "after":
                break
        assert reply["event"] == "pong"


def test_gateway_answers_arbitrary_frames(gateway: Gateway, make_token) -> None:
    url = f"{gateway.ws_url}/ws?token={make_token()}"

    @settings(max_examples=60, deadline=None)
    @given(frames)
    def check(frame: tuple[str, str | bytes]) -> None:
        asyncio.run(exchange(url, *frame))

    check()
