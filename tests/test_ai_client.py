"""The AI streaming client against a real (fake) model server over 127.0.0.1, and the prompts."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from fake_model import FakeModel
from yektaws.ai import AIError, ChatClient, language_for, system_prompt
from yektaws.ai.sse import EventTooLarge, SSEDecoder


@pytest.fixture
async def fake() -> AsyncIterator[FakeModel]:
    async with FakeModel() as model:
        yield model


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def make_client(
    base_url: str,
    session: aiohttp.ClientSession,
    *,
    api_key: str | None = None,
    timeout: float = 2.0,
) -> ChatClient:
    return ChatClient(
        base_url=base_url, model="fake-model", api_key=api_key, timeout=timeout, session=session
    )


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "be kind"}, {"role": "user", "content": text}]


async def collect(client: ChatClient, text: str) -> list[str]:
    return [chunk async for chunk in client.stream(ask(text))]


async def collect_until_error(client: ChatClient, text: str) -> tuple[list[str], AIError]:
    chunks: list[str] = []
    with pytest.raises(AIError) as caught:
        async for chunk in client.stream(ask(text)):
            chunks.append(chunk)
    return chunks, caught.value


# -- streaming ---------------------------------------------------------------------------------


async def test_full_stream_yields_each_chunk_and_sends_an_openai_request(fake, session):
    chunks = await collect(make_client(fake.base_url, session), "hello [[chunks=4]]")

    assert chunks == ["chunk-0 ", "chunk-1 ", "chunk-2 ", "chunk-3 "]
    (request,) = fake.requests
    assert request.body == {
        "model": "fake-model",
        "messages": ask("hello [[chunks=4]]"),
        "stream": True,
    }
    assert request.headers["Content-Type"] == "application/json"
    await asyncio.wait_for(request.finished.wait(), 1)
    assert not request.disconnected.is_set()


async def test_chunks_arrive_as_the_model_writes_them_not_at_the_end(fake, session):
    client = make_client(fake.base_url, session)
    started = time.monotonic()
    arrivals = [
        time.monotonic() - started async for _ in client.stream(ask("[[chunks=3 delay=0.3]]"))
    ]

    assert len(arrivals) == 3
    assert arrivals[0] < 0.2  # the first chunk did not wait for the other two
    assert arrivals[2] - arrivals[0] >= 0.5


async def test_multibyte_text_split_across_tcp_writes_is_reassembled(fake, session):
    reply = "سلام، امروز حالت چطور است؟"
    chunks = await collect(make_client(fake.base_url, session), f'[[reply="{reply}" split]]')

    assert "".join(chunks) == reply
    assert chunks == ["سلام، ", "امروز ", "حالت ", "چطور ", "است؟"]


async def test_crlf_line_ends_and_keepalive_comments_are_tolerated(fake, session):
    chunks = await collect(make_client(fake.base_url, session), "[[crlf keepalive split]]")

    assert chunks == ["chunk-0 ", "chunk-1 ", "chunk-2 "]


async def test_server_wide_default_behaviour_applies_and_a_directive_overrides_it(fake, session):
    client = make_client(fake.base_url, session)
    fake.default = {"reply": "from the default"}

    assert await collect(client, "no directive here") == ["from ", "the ", "default"]
    assert await collect(client, "[[chunks=1 reply='overridden']]") == ["overridden"]


# -- upstream refusals and failures ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (429, "upstream_refused", True),
        (400, "upstream_refused", False),
        (401, "upstream_refused", False),
        (500, "upstream_failed", True),
        (503, "upstream_failed", True),
    ],
)
async def test_http_error_status_maps_to_code_and_retryability(
    fake, session, status, code, retryable
):
    chunks, error = await collect_until_error(
        make_client(fake.base_url, session), f"[[fail={status}]]"
    )

    assert chunks == []
    assert (error.code, error.retryable, error.status) == (code, retryable, status)
    assert f"failing with HTTP {status} as asked" in str(error)  # the upstream's explanation


async def test_cut_after_some_chunks_is_stream_cut(fake, session):
    chunks, error = await collect_until_error(
        make_client(fake.base_url, session), "[[chunks=5 cut_after=2]]"
    )

    assert chunks == ["chunk-0 ", "chunk-1 "]
    assert (error.code, error.retryable) == ("stream_cut", True)


async def test_cut_before_any_text_is_upstream_failed(fake, session):
    chunks, error = await collect_until_error(
        make_client(fake.base_url, session), "[[cut_after=0]]"
    )

    assert chunks == []
    assert (error.code, error.retryable) == ("upstream_failed", True)


async def test_unreachable_upstream_is_upstream_failed(session):
    with socket.socket() as probe:  # a port that was free a moment ago, with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    _, error = await collect_until_error(
        make_client(f"http://127.0.0.1:{port}/v1", session), "hello"
    )

    assert (error.code, error.retryable) == ("upstream_failed", True)


@pytest.mark.parametrize(
    ("body", "content_type", "detail"),
    [
        (
            b'{"id": "x", "choices": [{"message": {"content": "hi"}}]}',
            "application/json",
            "before any answer",
        ),
        (b"data: not json\n\n", "text/event-stream", "not JSON"),
        (b'data: {"error": {"message": "overloaded"}}\n\n', "text/event-stream", "overloaded"),
        (
            b'data: {"choices": [{"delta": {"content": 7}}]}\n\n',
            "text/event-stream",
            "not a string",
        ),
    ],
    ids=["plain-json", "bad-json", "error-event", "bad-content"],
)
async def test_a_body_that_is_not_a_chat_stream_is_upstream_failed(
    aiohttp_server, session, body, content_type, detail
):
    async def odd_upstream(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", odd_upstream)
    server = await aiohttp_server(app)

    _, error = await collect_until_error(make_client(str(server.make_url("/v1")), session), "hi")

    assert (error.code, error.retryable) == ("upstream_failed", True)
    assert detail in str(error)


# -- timeouts ----------------------------------------------------------------------------------


async def test_an_upstream_that_never_answers_times_out_after_timeout(fake, session):
    started = time.monotonic()
    _, error = await collect_until_error(
        make_client(fake.base_url, session, timeout=0.5), "[[hang]]"
    )
    elapsed = time.monotonic() - started

    assert (error.code, error.retryable) == ("timeout", True)
    assert 0.4 <= elapsed < 1.5


async def test_a_gap_between_chunks_longer_than_timeout_times_out(fake, session):
    chunks, error = await collect_until_error(
        make_client(fake.base_url, session, timeout=0.3), "[[chunks=3 delay=1.0]]"
    )

    assert chunks == ["chunk-0 "]
    assert error.code == "timeout"


async def test_timeout_bounds_each_gap_not_the_whole_answer(fake, session):
    client = make_client(fake.base_url, session, timeout=0.5)

    chunks = await collect(client, "[[chunks=5 delay_first=0.3 delay=0.3]]")  # ~1.5 s in all

    assert len(chunks) == 5


# -- hanging up --------------------------------------------------------------------------------


async def test_cancelling_the_consumer_drops_the_upstream_connection(fake, session):
    client = make_client(fake.base_url, session)
    received: list[str] = []
    two_received = asyncio.Event()

    async def consume() -> None:
        async for chunk in client.stream(ask("[[chunks=100 delay=0.1]]")):
            received.append(chunk)
            if len(received) == 2:
                two_received.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two_received.wait(), 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    (request,) = fake.requests
    await asyncio.wait_for(request.disconnected.wait(), 1)
    assert len(received) < 100


async def test_closing_the_stream_early_drops_the_upstream_connection(fake, session):
    client = make_client(fake.base_url, session)

    async with contextlib.aclosing(client.stream(ask("[[chunks=100 delay=0.1]]"))) as chunks:
        async for chunk in chunks:
            assert chunk == "chunk-0 "
            break

    (request,) = fake.requests
    await asyncio.wait_for(request.disconnected.wait(), 1)


async def test_cancelling_while_waiting_for_the_first_byte_drops_the_connection(fake, session):
    client = make_client(fake.base_url, session, timeout=10)
    task = asyncio.create_task(collect(client, "[[hang]]"))
    (request,) = await fake.wait_for_requests(1)

    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    await asyncio.wait_for(request.disconnected.wait(), 1)


# -- authorization -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_key", "expected"),
    [("sk-test-123", "Bearer sk-test-123"), (None, None), ("", None)],
)
async def test_authorization_header_is_sent_iff_a_key_is_set(fake, session, api_key, expected):
    await collect(make_client(fake.base_url, session, api_key=api_key), "hi")

    (request,) = fake.requests
    assert request.headers.get("Authorization") == expected


# -- the event-stream decoder without sockets --------------------------------------------------

STREAM = (
    ": keep-alive\r\n\r\n"
    'event: message\nid: 7\ndata: {"a": 1}\n\n'
    "data: first line\r\ndata:second line\r\n\r\n"
    "retry: 1000\n\n"
    "data: سلام\r\rdata: [DONE]\n\n"
).encode()
EVENTS = ['{"a": 1}', "first line\nsecond line", "سلام", "[DONE]"]


def test_decoder_reads_a_whole_stream_at_once():
    assert SSEDecoder().feed(STREAM) == EVENTS


def test_decoder_gives_the_same_events_when_fed_one_byte_at_a_time():
    decoder = SSEDecoder()
    events = [event for i in range(len(STREAM)) for event in decoder.feed(STREAM[i : i + 1])]

    assert events == EVENTS


def test_decoder_waits_for_the_blank_line_before_dispatching():
    decoder = SSEDecoder()

    assert decoder.feed(b"data: half") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == ["half"]


def test_decoder_refuses_an_event_larger_than_its_bound():
    decoder = SSEDecoder(max_event_size=100)

    with pytest.raises(EventTooLarge):
        decoder.feed(b"data: " + b"x" * 200)


# -- prompts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locale", "language"),
    [
        (None, "fa"),
        ("", "fa"),
        ("fa", "fa"),
        ("fa-IR", "fa"),
        ("FA_ir", "fa"),
        ("Fa", "fa"),
        ("en", "en"),
        ("en-US", "en"),
        ("de", "en"),
        ("f", "en"),
        ("ar", "en"),
    ],
)
def test_language_for_locale(locale, language):
    assert language_for(locale) == language


def test_both_prompts_exist_differ_and_give_the_emergency_numbers():
    persian, english = system_prompt("fa"), system_prompt("en")

    assert persian and english and persian != english
    assert "یکتایار" in persian
    assert "YektaYar" in english
    for number in ("123", "115", "1480"):
        assert number in english
        assert number.translate(str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")) in persian


def test_prompts_are_loaded_once():
    assert system_prompt("fa") is system_prompt("fa")


def test_an_unknown_prompt_language_is_refused():
    with pytest.raises(ValueError, match="no system prompt"):
        system_prompt("de")  # type: ignore[arg-type]
