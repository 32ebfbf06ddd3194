"""AI chat: ``ai:chat`` streams a model's answer to the client, ``ai:cancel`` stops one.

One ``ai:chat`` request becomes, on both protocols (CONTRACT section 4)::

    ai:response:start    {messageId}
    ai:response:chunk    {messageId, chunk}           one per piece of text, as it arrives
    ai:response:complete {messageId, fullResponse}    fullResponse == the chunks joined
 or ai:response:error    {messageId, error, code, retryable}

``ai:response:start`` means an upstream request is being made. A request refused before that
(AI chat turned off, too many answers already streaming on the connection) gets only the
``ai:response:error``. A failure after some chunks were sent ends the answer with the error; it is
never followed by ``complete``, and no canned text ever stands in for a model's answer.

Decisions a client can rely on:

- ``messageId``: the client may name its request with ``data.messageId`` (a string of at most
  :data:`MAX_MESSAGE_ID_CHARS` letters, digits, ``_``, ``-``, ``.`` or ``:``, not already
  streaming on the connection); that is the only way to match an ``ai:response:start`` to one of
  several requests in flight. Without one, the server makes one up (32 hex digits).
- Malformed ``data`` is a ``bad_request`` ``error`` event naming the field, like every other
  event's (CONTRACT section 3); it produces no ``ai:response:error``, because no answer was begun.
- ``conversationHistory`` items are objects with ``role`` ``"user"`` or ``"assistant"`` and a
  string ``content``; other keys (a timestamp, say) are ignored, any other role or
  shape is refused. Only the last :data:`HISTORY_TURNS` are sent upstream. Their size is bounded by
  the frame limit (``MAX_MESSAGE_SIZE``), the whole request's.
- ``ai:cancel {messageId}`` stops that answer and is answered with ``ai:response:error`` code
  ``cancelled``; after it, nothing more is sent for that ``messageId``. An id that is not
  streaming (never was, or already finished) is a ``bad_request``.
- ``code`` is one of ``upstream_refused`` (the model's API answered 4xx), ``upstream_failed``
  (5xx, unreachable, or not a chat stream), ``timeout`` (no data for ``AI_TIMEOUT`` seconds),
  ``stream_cut`` (ended mid-answer, after the chunks already sent), ``ai_disabled``,
  ``too_many_streams`` (``AI_MAX_CONCURRENT_PER_CONNECTION`` reached), ``cancelled`` and
  ``internal_error`` (a bug here).
- ``retryable`` says whether sending the same request again may work: false for a refusal the
  upstream will repeat (a 4xx other than 429), for AI chat being off and for a cancelled answer.

Each answer writes one log line, ``ai_chat``, with its ``messageId``, model, language, outcome,
chunk count, time to first chunk and total time. The conversation's text is never logged.

With connection-state recovery on, an answer survives its connection: its events are
recoverable (they go through the bus to the socket's own room, so they are in the recovery log
and reach the socket on whichever node it resumes), chunks are batched into one event per
``AI_CHUNK_INTERVAL`` so that a fast model does not write one log entry per token, and a
connection lost (not closed on purpose) leaves its answers streaming for ``AI_RESUME_WINDOW``:
a resume stops that countdown, its end cancels them (``abandoned``, the upstream closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import aiohttp

from yektaws.ai import AIError, ChatClient, Language, language_for, system_prompt
from yektaws.connection import Connection
from yektaws.dispatcher import BadRequest, Dispatcher, Reply
from yektaws.logging import get_logger
from yektaws.metrics import Metrics
from yektaws.recovery import STORE_ERRORS, StreamRegistry
from yektaws.settings import Settings

if TYPE_CHECKING:
    from yektaws.bus import Bus

__all__ = [
    "HISTORY_TURNS",
    "MAX_MESSAGE_CHARS",
    "MAX_MESSAGE_ID_CHARS",
    "MAX_UPSTREAM_CONNECTIONS",
    "AIChat",
    "ChatRequest",
    "parse_cancel",
    "parse_request",
]

log = get_logger("yektaws.ai")

#: Longest ``message`` a client may send, in characters (the contract's bound).
MAX_MESSAGE_CHARS = 2000
#: How many of the most recent ``conversationHistory`` items are sent upstream.
HISTORY_TURNS = 10
#: Longest client-chosen ``messageId``. It is echoed in every event and written to logs, hence
#: the bound and the plain alphabet.
MAX_MESSAGE_ID_CHARS = 64
#: Upstream HTTP connections the whole process may hold. A request beyond it waits for a free
#: one for at most ``AI_TIMEOUT`` and then ends as a ``timeout``.
MAX_UPSTREAM_CONNECTIONS = 100

#: How often, and how many times, the node where a socket resumed checks that the producers of
#: its answers in progress are alive (a dead one's answers end with ``interrupted``).
PRODUCER_WATCH_INTERVAL = 2.0
PRODUCER_WATCH_ROUNDS = 1800
#: The bus signal that carries an ``ai:cancel`` to the node producing the answer.
CANCEL_SIGNAL = "ai:cancel"
#: Seconds a registry write may take before the answer goes on without it.
REGISTRY_TIMEOUT = 1.0

_MESSAGE_ID = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_MESSAGE_ID_CHARS}}}")
_HISTORY_ROLES = frozenset({"user", "assistant"})

#: The ``code`` of an ``ai:response:error``: the client's failures (:class:`AIError` codes) and
#: the gateway's own.
FailureCode = Literal[
    "upstream_refused",
    "upstream_failed",
    "timeout",
    "stream_cut",
    "ai_disabled",
    "too_many_streams",
    "cancelled",
    "interrupted",
    "internal_error",
]

#: The ``error`` text of each failure, fit to show the user as it is.
_ERROR_TEXTS: dict[FailureCode, dict[Language, str]] = {
    "upstream_refused": {
        "fa": "دستیار هوش مصنوعی نتوانست به این پیام پاسخ دهد.",
        "en": "The AI assistant could not answer this message.",
    },
    "upstream_failed": {
        "fa": "پاسخ‌گویی هوش مصنوعی در حال حاضر ممکن نیست. لطفاً کمی بعد دوباره تلاش کنید.",
        "en": "The AI assistant is not available right now. Please try again in a little while.",
    },
    "timeout": {
        "fa": "پاسخ هوش مصنوعی بیش از حد طول کشید. لطفاً دوباره تلاش کنید.",
        "en": "The AI assistant took too long to answer. Please try again.",
    },
    "stream_cut": {
        "fa": "پاسخ پیش از کامل شدن قطع شد. لطفاً دوباره تلاش کنید.",
        "en": "The answer was interrupted before it was complete. Please try again.",
    },
    "ai_disabled": {
        "fa": "گفت‌وگو با هوش مصنوعی روی این سرور فعال نیست.",
        "en": "AI chat is turned off on this server.",
    },
    "too_many_streams": {
        "fa": "لطفاً صبر کنید تا پاسخ‌های قبلی کامل شوند، سپس دوباره بپرسید.",
        "en": "Please wait for the previous answers to finish, then ask again.",
    },
    "cancelled": {
        "fa": "پاسخ متوقف شد.",
        "en": "The answer was stopped.",
    },
    "interrupted": {
        "fa": "پاسخ به دلیل از دسترس خارج شدن سرور ناتمام ماند. لطفاً دوباره بپرسید.",
        "en": "The answer was interrupted because a server went down. Please ask again.",
    },
    "internal_error": {
        "fa": "مشکلی پیش آمد. لطفاً دوباره تلاش کنید.",
        "en": "Something went wrong. Please try again.",
    },
}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated ``ai:chat`` request."""

    message: str
    #: At most :data:`HISTORY_TURNS` ``{role, content}`` items, oldest first.
    history: list[dict[str, str]]
    language: Language
    #: The client's ``messageId``, if it chose one.
    message_id: str | None

    def messages(self) -> list[dict[str, str]]:
        """What is sent upstream: the language's system prompt, the history, the message."""
        return [
            {"role": "system", "content": system_prompt(self.language)},
            *self.history,
            {"role": "user", "content": self.message},
        ]


def parse_request(data: Any) -> ChatRequest:
    """Validate ``ai:chat`` data; raise :class:`BadRequest` naming the first bad field."""
    if not isinstance(data, dict):
        raise BadRequest("data must be an object with a 'message' string")
    message = data.get("message")
    if not isinstance(message, str) or not message.strip():
        raise BadRequest("message must be a non-empty string")
    if len(message) > MAX_MESSAGE_CHARS:
        raise BadRequest(f"message must be at most {MAX_MESSAGE_CHARS} characters")
    locale = data.get("locale")
    if locale is not None and not isinstance(locale, str):
        raise BadRequest("locale must be a string such as 'fa' or 'en'")
    return ChatRequest(
        message=message,
        history=_parse_history(data.get("conversationHistory")),
        language=language_for(locale),
        message_id=None if data.get("messageId") is None else _message_id(data["messageId"]),
    )


def parse_cancel(data: Any) -> str:
    """Validate ``ai:cancel`` data; return its ``messageId``."""
    if not isinstance(data, dict):
        raise BadRequest("data must be an object with a 'messageId' string")
    return _message_id(data.get("messageId"))


def _parse_history(history: Any) -> list[dict[str, str]]:
    if history is None:
        return []
    if not isinstance(history, list):
        raise BadRequest("conversationHistory must be a list of {role, content} objects")
    turns = []
    for index, item in enumerate(history):
        if not isinstance(item, dict):
            raise BadRequest(f"conversationHistory[{index}] must be a {{role, content}} object")
        role, content = item.get("role"), item.get("content")
        if role not in _HISTORY_ROLES:
            raise BadRequest(f"conversationHistory[{index}].role must be 'user' or 'assistant'")
        if not isinstance(content, str):
            raise BadRequest(f"conversationHistory[{index}].content must be a string")
        turns.append({"role": role, "content": content})
    return turns[-HISTORY_TURNS:]


def _message_id(value: Any) -> str:
    if not isinstance(value, str) or not _MESSAGE_ID.fullmatch(value):
        raise BadRequest(
            f"messageId must be 1 to {MAX_MESSAGE_ID_CHARS} letters, digits or _ - . :"
        )
    return value


@dataclass(slots=True)
class _Answer:
    """One answer streaming to one connection: what ``ai:cancel`` needs, and what is logged."""

    message_id: str
    language: Language
    task: asyncio.Task[Any]
    started: float = field(default_factory=time.monotonic)
    first_chunk_after: float | None = None
    chunks: int = 0
    #: Set by ``ai:cancel`` before it cancels :attr:`task`.
    cancel_requested: bool = False
    #: Set when nobody resumed the lost connection in time, before :attr:`task` is cancelled.
    abandoned: bool = False


class _Batcher:
    """Joins an answer's pieces into one ``ai:response:chunk`` per ``interval`` seconds.

    The first piece goes at once; pieces arriving within ``interval`` of the last send wait for
    the rest of it (a timer sends them if the model pauses). Sends are serialised, so the chunks
    keep their order whichever of the stream and the timer sends them.
    """

    def __init__(self, send: Callable[[str], Awaitable[None]], interval: float) -> None:
        self._send = send
        self._interval = interval
        self._pending: list[str] = []
        self._last_sent = -interval
        self._timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def add(self, piece: str) -> None:
        self._pending.append(piece)
        wait = self._last_sent + self._interval - time.monotonic()
        if wait <= 0:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._flush_after(wait))

    async def _flush_after(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self._timer = None
        await self.flush()

    async def flush(self) -> None:
        """Send what is pending now (before the answer's last event)."""
        async with self._lock:
            if not self._pending:
                return
            text = "".join(self._pending)
            self._pending.clear()
            self._last_sent = time.monotonic()
            await self._send(text)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _error_data(answer: _Answer, code: FailureCode, *, retryable: bool) -> dict[str, Any]:
    """The ``ai:response:error`` data for ``answer``, its text in the answer's language."""
    return _failure(answer.message_id, answer.language, code, retryable=retryable)


def _failure(
    message_id: str, language: Language, code: FailureCode, *, retryable: bool
) -> dict[str, Any]:
    return {
        "messageId": message_id,
        "error": _ERROR_TEXTS[code][language],
        "code": code,
        "retryable": retryable,
    }


class AIChat:
    """The ``ai:chat`` and ``ai:cancel`` handlers, and the upstream HTTP session they share.

    :meth:`start` (at application startup) opens the one :class:`aiohttp.ClientSession` the
    process uses upstream and :meth:`stop` (at cleanup) closes it. With ``AI_BASE_URL`` empty,
    nothing is opened and every ``ai:chat`` is answered with ``ai_disabled``.

    Answers run as tasks of their connection (``concurrent=True``), so a connection that ends
    cancels them, which closes their upstream requests at once. At most
    ``AI_MAX_CONCURRENT_PER_CONNECTION`` of them run per connection; the count is kept here, not
    taken from the connection's tasks, which other handlers may start too.
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._max_per_connection = settings.ai_max_concurrent_per_connection
        self._session: aiohttp.ClientSession | None = None
        self._client: ChatClient | None = None
        #: Connection id -> messageId -> the answer streaming there. Holds only connections with
        #: an answer in progress.
        self._answers: dict[str, dict[str, _Answer]] = {}
        #: Where answers send their events when recovery is on (set by the application): the
        #: bus, to the socket's own room, so that they are recoverable. ``None``: straight to
        #: the connection, and a lost connection ends its answers.
        self.bus: Bus | None = None
        self._resume_window = settings.ai_resume_window or settings.recovery_window
        self._chunk_interval = settings.ai_chunk_interval
        #: Socket id -> the countdown of its lost connection's answers.
        self._orphans: dict[str, asyncio.TimerHandle] = {}
        #: Answers in progress across the cluster (set with :attr:`bus`).
        self.streams: StreamRegistry | None = None
        self._watchers: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return bool(self._settings.ai_base_url)

    async def start(self) -> None:
        """Open the upstream HTTP session (nothing when AI chat is off)."""
        if not self.enabled or self._session is not None:
            return
        settings = self._settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_UPSTREAM_CONNECTIONS)
        )
        self._client = ChatClient(
            base_url=settings.ai_base_url,
            model=settings.ai_model,
            api_key=settings.ai_api_key or None,
            timeout=settings.ai_timeout,
            session=self._session,
        )

    async def stop(self) -> None:
        """Close the upstream HTTP session (and with it any request still open)."""
        session, self._session, self._client = self._session, None, None
        if session is not None:
            await session.close()

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.on("ai:chat", concurrent=True)(self.chat)
        dispatcher.on("ai:cancel")(self.cancel)
        dispatcher.on_disconnect(self._disconnected)

    # -- answers that outlive their connection ---------------------------------------------------

    def _disconnected(self, conn: Connection, resumable: bool) -> None:
        """A connection ended: a lost one's answers keep streaming while it may resume."""
        answers = self._answers.get(conn.id)
        if not answers or not resumable or self.bus is None or self._resume_window <= 0:
            return  # its tasks are cancelled next, closing their upstream requests
        for answer in answers.values():
            conn.release_task(answer.task)
        if conn.recovery is not None and conn.recovery.taken_over:
            return  # it has resumed already (its successor took over): nothing to wait for
        self._orphans[conn.id] = asyncio.get_running_loop().call_later(
            self._resume_window, self._abandon, conn.id
        )

    def resumed(self, socket_id: str, here: bool) -> None:
        """The socket came back (on any node): its answers stream on to it. Where it came back,
        answers whose producer died are ended with ``interrupted`` instead of never ending."""
        timer = self._orphans.pop(socket_id, None)
        if timer is not None:
            timer.cancel()
        if here and self.streams is not None:
            watcher = asyncio.get_running_loop().create_task(self._watch_producers(socket_id))
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)

    async def _watch_producers(self, socket_id: str) -> None:
        assert self.streams is not None
        for _ in range(PRODUCER_WATCH_ROUNDS):
            try:
                orphans, still_open = await self.streams.orphans(socket_id)
                for message_id, language in orphans.items():
                    data = _failure(
                        message_id, language_for(language), "interrupted", retryable=True
                    )
                    await self._send_to(socket_id, "ai:response:error", data)
                    log.info("ai_chat_interrupted", messageId=message_id, socketId=socket_id)
            except STORE_ERRORS as exc:
                log.warning("ai_producer_check_failed", error=type(exc).__name__)
                still_open = 1
            if not still_open:
                return
            await asyncio.sleep(PRODUCER_WATCH_INTERVAL)

    def _abandon(self, socket_id: str) -> None:
        self._orphans.pop(socket_id, None)
        for answer in list(self._answers.get(socket_id, {}).values()):
            answer.abandoned = True
            answer.task.cancel()

    async def _send(self, conn: Connection, event: str, data: dict[str, Any]) -> None:
        if self.bus is None:
            await conn.emit(event, data)
        else:
            await self._send_to(conn.id, event, data)

    async def _send_to(self, socket_id: str, event: str, data: dict[str, Any]) -> None:
        # The socket's own room, through the bus: a recoverable event, wherever the socket is.
        assert self.bus is not None
        await self.bus.emit(socket_id, event, data)

    async def _registry(self, opened: bool, conn: Connection, answer: _Answer) -> None:
        """Tell the cluster's registry that ``answer`` is produced here, or is over."""
        if self.streams is None:
            return
        try:
            async with asyncio.timeout(REGISTRY_TIMEOUT):
                if opened:
                    await self.streams.opened(conn.id, answer.message_id, answer.language)
                else:
                    await self.streams.closed(conn.id, answer.message_id)
        except STORE_ERRORS as exc:
            log.warning("ai_registry_failed", error=type(exc).__name__)

    # -- handlers ---------------------------------------------------------------------------------

    async def chat(self, conn: Connection, data: Any) -> None:
        """Stream one answer to ``conn`` (runs as a task of its own)."""
        request = parse_request(data)
        answers = self._answers.get(conn.id, {})
        if request.message_id is not None and request.message_id in answers:
            raise BadRequest("messageId is already streaming on this connection")
        task = asyncio.current_task()
        assert task is not None  # the dispatcher runs concurrent handlers as tasks
        answer = _Answer(request.message_id or uuid.uuid4().hex, request.language, task)
        client = self._client
        if client is None:
            await self._refuse(conn, answer, "ai_disabled", retryable=False)
            return
        if len(answers) >= self._max_per_connection:
            await self._refuse(conn, answer, "too_many_streams", retryable=True)
            return
        # No await between the count above and this: the cap cannot be overrun.
        self._answers.setdefault(conn.id, {})[answer.message_id] = answer
        self._metrics.ai_streams_active.inc()
        outcome = "internal_error"
        try:
            await self._registry(True, conn, answer)
            outcome = await self._stream(conn, client, request, answer)
        except asyncio.CancelledError:
            if answer.cancel_requested:
                outcome = "cancelled"
            else:
                outcome = "abandoned" if answer.abandoned else "disconnected"
            raise
        finally:
            self._metrics.ai_streams_active.dec()
            self._forget(conn, answer)
            self._log(conn, answer, outcome)
            if self.streams is not None:
                # Shielded: a cancelled answer must still leave the registry.
                await asyncio.shield(self._registry(False, conn, answer))

    async def cancel(self, conn: Connection, data: Any) -> Reply | None:
        """Stop the answer named by ``messageId``; its last event is its ``cancelled`` error.

        On a resumed connection the answer may be produced by another node: the cancel goes
        there through the bus, and that node sends the error event.
        """
        message_id = parse_cancel(data)
        answer = self._answers.get(conn.id, {}).get(message_id)
        if answer is None:
            if await self._cancel_elsewhere(conn.id, message_id):
                return None
            raise BadRequest("messageId is not streaming on this connection")
        error = await self._stop(answer)
        if self.bus is None:
            return Reply("ai:response:error", error)
        await self._send(conn, "ai:response:error", error)  # recoverable, like the answer
        return None

    async def _stop(self, answer: _Answer) -> dict[str, Any]:
        answer.cancel_requested = True
        answer.task.cancel()
        # Let the answer's task unwind first, so that the error is the last word on it.
        await asyncio.wait({answer.task})
        return _error_data(answer, "cancelled", retryable=False)

    async def _cancel_elsewhere(self, socket_id: str, message_id: str) -> bool:
        if self.streams is None or self.bus is None:
            return False
        try:
            async with asyncio.timeout(REGISTRY_TIMEOUT):
                producer = await self.streams.producer(socket_id, message_id)
        except STORE_ERRORS:
            return False
        if producer is None or producer == self.bus.node_id:
            return False
        payload = {"socket": socket_id, "messageId": message_id}
        return await self.bus.signal(CANCEL_SIGNAL, payload)

    async def cancelled_elsewhere(self, payload: dict[str, Any]) -> None:
        """An ``ai:cancel`` that reached another node, for an answer produced here."""
        socket_id, message_id = payload["socket"], payload["messageId"]
        answer = self._answers.get(socket_id, {}).get(message_id)
        if answer is not None:
            await self._send_to(socket_id, "ai:response:error", await self._stop(answer))

    # -- one answer -------------------------------------------------------------------------------

    async def _stream(
        self, conn: Connection, client: ChatClient, request: ChatRequest, answer: _Answer
    ) -> str:
        """Send the answer's events; return its outcome (``complete`` or a failure code)."""
        message_id = answer.message_id
        await self._send(conn, "ai:response:start", {"messageId": message_id})
        pieces: list[str] = []
        failure: tuple[FailureCode, bool] | None = None  # (code, retryable)

        async def send_chunk(text: str) -> None:
            await self._send(conn, "ai:response:chunk", {"messageId": message_id, "chunk": text})

        batcher = _Batcher(send_chunk, self._chunk_interval if self.bus is not None else 0.0)
        try:
            async with contextlib.aclosing(client.stream(request.messages())) as stream:
                async for piece in stream:
                    if conn.closed and self.bus is None:
                        # Closed, but the transport has not cancelled this task yet: stop now,
                        # which closes the upstream request.
                        return "disconnected"
                    if answer.first_chunk_after is None:
                        answer.first_chunk_after = time.monotonic() - answer.started
                    answer.chunks += 1
                    pieces.append(piece)
                    await batcher.add(piece)
            await batcher.flush()
        except AIError as exc:
            await batcher.flush()  # what arrived before the failure is still the user's
            failure = (exc.code, exc.retryable)
        except Exception:
            log.exception("ai_chat_failed", messageId=message_id, socketId=conn.id)
            failure = ("internal_error", True)
        finally:
            batcher.cancel()
        # Over, one way or the other: no longer cancellable, so `ai:cancel` can never answer
        # after the last event below.
        self._forget(conn, answer)
        if failure is not None:
            code, retryable = failure
            await self._send(
                conn, "ai:response:error", _error_data(answer, code, retryable=retryable)
            )
            return code
        await self._send(
            conn,
            "ai:response:complete",
            {"messageId": message_id, "fullResponse": "".join(pieces)},
        )
        return "complete"

    async def _refuse(
        self, conn: Connection, answer: _Answer, code: FailureCode, *, retryable: bool
    ) -> None:
        """Answer a request that is not streamed at all: only its error event, and the log."""
        await self._send(conn, "ai:response:error", _error_data(answer, code, retryable=retryable))
        self._log(conn, answer, code)

    def _forget(self, conn: Connection, answer: _Answer) -> None:
        answers = self._answers.get(conn.id)
        if answers is None or answers.get(answer.message_id) is not answer:
            return
        del answers[answer.message_id]
        if not answers:
            del self._answers[conn.id]
            timer = self._orphans.pop(conn.id, None)  # nothing left to wait for
            if timer is not None:
                timer.cancel()

    def _log(self, conn: Connection, answer: _Answer, outcome: str) -> None:
        """The answer's one log line, and its metrics."""
        first = answer.first_chunk_after
        self._metrics.ai_streams.labels(outcome).inc()
        if first is not None:
            self._metrics.ai_first_chunk_seconds.observe(first)
        log.info(
            "ai_chat",
            messageId=answer.message_id,
            socketId=conn.id,
            model=self._settings.ai_model,
            language=answer.language,
            outcome=outcome,
            chunks=answer.chunks,
            firstChunkMs=None if first is None else round(first * 1000),
            totalMs=round((time.monotonic() - answer.started) * 1000),
        )
