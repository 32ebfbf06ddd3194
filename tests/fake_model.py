"""A fake OpenAI-compatible chat model that streams, for tests and manual runs.

It serves ``POST /v1/chat/completions`` with ``stream: true`` over real HTTP, writing the
event stream the way OpenAI does: a first chunk carrying the role, one chunk per piece of
text, a last chunk with ``finish_reason: "stop"``, then ``data: [DONE]``.

What it does for a request is chosen by a directive in the last user message, e.g.::

    Hello [[chunks=5 delay_first=0.2 delay=0.05]]
    [[fail=429]]                  answer HTTP 429 with an OpenAI-style error body
    [[cut_after=2]]               two text chunks, then drop the connection, no [DONE]
    [[hang]]                      accept the request and never answer
    [[reply="سلام دنیا" split]]   the words of the reply as chunks, each event in two writes

Keys (all optional; see :class:`Behaviour`): ``chunks``, ``delay_first``, ``delay``, ``fail``,
``cut_after``, ``hang``, ``reply``, ``split``, ``split_pause``, ``crlf``, ``keepalive``.
Values may be quoted (shell rules). Tests that cannot put a directive in the message set
:attr:`FakeModel.default`; a directive overrides it key by key. Without either, the answer is
three chunks ``"chunk-0 "``, ``"chunk-1 "``, ``"chunk-2 "`` with no delay.

Every request with a JSON body is recorded in :attr:`FakeModel.requests`, with events telling
whether the client hung up before the answer was over.

Run standalone for manual testing::

    python tests/fake_model.py --port 8099
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shlex
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Self

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

__all__ = ["Behaviour", "FakeModel", "RecordedRequest"]

_DIRECTIVE = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)
_WORD = re.compile(r"\S+\s*")


def _flag(value: str) -> bool:
    if value.lower() in ("", "1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a flag value: {value!r}")


# How each directive key's text becomes a value; also the list of keys a directive may use.
_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "chunks": int,
    "delay_first": float,
    "delay": float,
    "fail": int,
    "cut_after": int,
    "hang": _flag,
    "reply": str,
    "split": _flag,
    "split_pause": float,
    "crlf": _flag,
    "keepalive": _flag,
}


@dataclass(frozen=True)
class Behaviour:
    """How the fake answers one request."""

    chunks: int = 3
    """Number of text chunks (``chunk-0 ``, ``chunk-1 ``...) when no ``reply`` is given."""
    delay_first: float = 0.0
    """Seconds between the response headers and the first text chunk (time to first token)."""
    delay: float = 0.0
    """Seconds between later text chunks."""
    fail: int | None = None
    """Answer this HTTP status with an OpenAI-style error body instead of a stream."""
    cut_after: int | None = None
    """Send this many text chunks, then close the connection without finishing the stream."""
    hang: bool = False
    """Accept the request and never send a byte (not even headers)."""
    reply: str | None = None
    """Answer this text instead, one chunk per word (with its trailing space)."""
    split: bool = False
    """Write each event in two TCP writes, cut in its middle byte, ``split_pause`` apart."""
    split_pause: float = 0.05
    crlf: bool = False
    """End lines with CRLF instead of LF."""
    keepalive: bool = False
    """Send a ``: keep-alive`` comment before every event."""

    def texts(self) -> list[str]:
        """The text chunks of the answer, in order."""
        if self.reply is not None:
            return _WORD.findall(self.reply)
        return [f"chunk-{i} " for i in range(self.chunks)]


@dataclass
class RecordedRequest:
    """One request the fake received."""

    body: dict[str, Any]
    """The JSON body as received."""
    headers: CIMultiDictProxy[str]
    behaviour: Behaviour | None = None
    """The behaviour chosen for it; None if the request itself was rejected."""
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the client hung up before the answer was over."""
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the fake is done with the request, whichever way it ended."""


class FakeModel:
    """The fake server. Use ``async with FakeModel() as fake:`` or ``start()``/``stop()``."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        #: Server-wide behaviour (Behaviour field names to values); a directive overrides it.
        self.default: dict[str, Any] = {}
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._arrival = asyncio.Condition()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stopping = False

    @property
    def base_url(self) -> str:
        """The API root to give a client, ``http://host:port/v1``."""
        if self._base_url is None:
            raise RuntimeError("the fake model is not started")
        return self._base_url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0: any free port, see :attr:`base_url`)."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        # handler_cancellation: a client hang-up cancels the handler at once, which is how
        # `disconnected` learns about it even while the fake is sleeping or hanging.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self._base_url = f"http://{bound_host}:{bound_port}/v1"

    async def stop(self) -> None:
        """Stop listening and end every request still being answered (hanging ones too)."""
        if self._runner is None:
            return
        self._stopping = True
        for task in self._handlers:
            task.cancel()
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Wait until at least ``count`` requests have arrived; return all recorded so far."""
        async with asyncio.timeout(timeout), self._arrival:
            await self._arrival.wait_for(lambda: len(self.requests) >= count)
        return self.requests

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "body is not JSON")
        record = RecordedRequest(body=body, headers=request.headers)
        self.requests.append(record)
        async with self._arrival:
            self._arrival.notify_all()

        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            try:
                record.behaviour = self._behaviour_for(body)
            except (ValueError, TypeError) as exc:
                return _error(400, f"fake model: {exc}")
            return await _answer(request, record.behaviour, body.get("model", "fake"))
        except (asyncio.CancelledError, ConnectionResetError):
            if not self._stopping:
                record.disconnected.set()
            raise
        finally:
            self._handlers.discard(task)
            record.finished.set()

    def _behaviour_for(self, body: Any) -> Behaviour:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise ValueError("body must be an object with a 'messages' list")
        if body.get("stream") is not True:
            raise ValueError("this fake only streams; send stream: true")
        users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        last = users[-1].get("content") if users else None
        match = _DIRECTIVE.search(last) if isinstance(last, str) else None
        overrides: dict[str, Any] = dict(self.default)
        if match:
            for token in shlex.split(match.group(1)):
                key, _, value = token.partition("=")
                if key not in _CONVERTERS:
                    raise ValueError(f"unknown directive key {key!r}")
                overrides[key] = _CONVERTERS[key](value)
        return replace(Behaviour(), **overrides)


async def _answer(request: web.Request, behaviour: Behaviour, model: str) -> web.StreamResponse:
    if behaviour.hang:
        await asyncio.Future()  # until the client hangs up or the fake stops
    if behaviour.fail is not None:
        return _error(behaviour.fail, f"failing with HTTP {behaviour.fail} as asked")

    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    writer = _EventWriter(response, behaviour, model)
    await writer.chunk({"role": "assistant", "content": "", "refusal": None})
    for i, text in enumerate(behaviour.texts()):
        if i == behaviour.cut_after:
            break
        await asyncio.sleep(behaviour.delay_first if i == 0 else behaviour.delay)
        await writer.chunk({"content": text})
    if behaviour.cut_after is not None:
        # Drop the connection mid-stream: the chunked body never gets its terminating chunk.
        assert request.transport is not None
        request.transport.close()
        return response
    await writer.chunk({}, finish_reason="stop")
    await writer.event("[DONE]")
    await response.write_eof()
    return response


class _EventWriter:
    """Writes ``chat.completion.chunk`` events in OpenAI's wire format."""

    _sequence = 0

    def __init__(self, response: web.StreamResponse, behaviour: Behaviour, model: str) -> None:
        _EventWriter._sequence += 1
        self._id = f"chatcmpl-fake{_EventWriter._sequence}"
        self._created = int(time.time())
        self._response = response
        self._behaviour = behaviour
        self._model = model

    async def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> None:
        payload = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        await self.event(orjson.dumps(payload).decode())

    async def event(self, data: str) -> None:
        eol = "\r\n" if self._behaviour.crlf else "\n"
        text = f"data: {data}{eol}{eol}"
        if self._behaviour.keepalive:
            text = f": keep-alive{eol}{eol}{text}"
        raw = text.encode()
        if not self._behaviour.split:
            await self._response.write(raw)
            return
        # Cut in the middle byte: the cut may fall inside a line and inside a UTF-8 character.
        middle = len(raw) // 2
        await self._response.write(raw[:middle])
        await asyncio.sleep(self._behaviour.split_pause)
        await self._response.write(raw[middle:])


def _error(status: int, message: str) -> web.Response:
    """An OpenAI-style error response."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def _serve(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    fake = FakeModel()
    await fake.start(host, port)
    print(fake.base_url, flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible streaming chat model.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
