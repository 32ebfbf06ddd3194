"""Streaming client for OpenAI-compatible ``/chat/completions`` endpoints.

Built on aiohttp's client (already a dependency) rather than the ``openai`` package, which would
bring httpx and pydantic along for one POST and an event-stream parser.

The stream is an async generator. Its owner should close it deterministically, so that an
abandoned answer drops the upstream connection at once instead of when the garbage collector
gets to it::

    async with contextlib.aclosing(client.stream(messages)) as chunks:
        async for chunk in chunks:
            ...

Cancelling the task that iterates has the same effect. Either way the HTTP response is
closed, not released: the connection is torn down, so the upstream sees the hang-up and stops
generating, and no half-read connection goes back to the pool.

Message text is never logged or put into an exception.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Literal

import aiohttp
import orjson

from .sse import EventTooLarge, SSEDecoder

__all__ = ["MAX_ERROR_BODY", "AIError", "ChatClient", "ErrorCode"]

ErrorCode = Literal["upstream_refused", "upstream_failed", "timeout", "stream_cut"]

#: How much of an error response is read to find the upstream's explanation. Error bodies are
#: small JSON objects; the bound keeps a misbehaving upstream from streaming megabytes at us.
MAX_ERROR_BODY = 64 * 1024

#: How much of the upstream's explanation an :class:`AIError` keeps.
_MAX_DETAIL = 200

_DONE = "[DONE]"


class AIError(Exception):
    """The upstream model did not deliver a complete answer.

    ``code`` says what happened, ``retryable`` whether sending the same request again may work:

    - ``upstream_refused``: HTTP 4xx. Retryable only for 429 (rate limited); any other 4xx
      will be refused again.
    - ``upstream_failed``: HTTP 5xx, an unreachable upstream, a body that is not a chat
      stream, an error event inside the stream, or a stream that ended before any text.
      Retryable.
    - ``timeout``: connecting, or waiting for the next piece of the response, took longer than
      the client's ``timeout``. Retryable.
    - ``stream_cut``: the stream ended, or the connection broke, after some text but before
      the model said it had finished. Retryable. The text already yielded is incomplete.

    ``status`` is the upstream's HTTP status when the error is about a status, else None.
    The message never contains the conversation; it may contain the upstream's own error text
    (truncated).
    """

    def __init__(
        self, code: ErrorCode, detail: str, *, retryable: bool, status: int | None = None
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.code: ErrorCode = code
        self.retryable = retryable
        self.status = status


class ChatClient:
    """Streams chat completions from one OpenAI-compatible endpoint.

    ``base_url`` is the API root, e.g. ``https://api.openai.com/v1``; the client POSTs to
    ``{base_url}/chat/completions``. ``api_key``, when non-empty, is sent as
    ``Authorization: Bearer``. ``timeout`` (seconds) bounds connecting and each wait for the
    next bytes of the response, not the whole answer: a long answer that keeps flowing is
    never cut. The ``session`` is borrowed, not owned; closing it is the caller's job.
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None,
        timeout: float,
        session: aiohttp.ClientSession,
    ) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._session = session
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        # total=None: the session's default total timeout (5 minutes) would cut long answers.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)

    async def stream(self, messages: list[dict[str, str]]) -> AsyncGenerator[str, None]:
        """POST ``{base_url}/chat/completions`` with ``stream: true``; yield each non-empty
        ``delta.content`` as it arrives.

        Returns normally once the upstream sends ``data: [DONE]``, or ends the stream after a
        choice reported its ``finish_reason``. Raises :class:`AIError` otherwise.
        """
        body = orjson.dumps({"model": self._model, "messages": messages, "stream": True})
        response = await self._post(body)
        complete = False
        try:
            if response.status != 200:
                raise await _status_error(response)
            decoder = SSEDecoder()
            yielded = finished = False
            while True:
                try:
                    data = await response.content.readany()
                except TimeoutError as exc:  # aiohttp's SocketTimeoutError is a TimeoutError
                    raise AIError(
                        "timeout", "no data from upstream in time", retryable=True
                    ) from exc
                except aiohttp.ClientError as exc:
                    if finished:
                        break  # the answer was whole; only the connection's goodbye was lost
                    raise _ended_early(yielded, type(exc).__name__) from exc
                if not data:
                    if finished:
                        break
                    raise _ended_early(yielded, "end of stream")
                try:
                    events = decoder.feed(data)
                except EventTooLarge as exc:
                    raise AIError("upstream_failed", str(exc), retryable=True) from exc
                for event in events:
                    if event == _DONE:
                        complete = True
                        return
                    text, choice_finished = _parse_chunk(event)
                    finished = finished or choice_finished
                    if text:
                        yielded = True
                        yield text
            complete = True
        finally:
            if complete:
                # Back to the pool if the body was read to its end; aiohttp closes it otherwise.
                response.release()
            else:
                response.close()

    async def _post(self, body: bytes) -> aiohttp.ClientResponse:
        try:
            return await self._session.post(
                self._url,
                data=body,
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except TimeoutError as exc:  # ConnectionTimeoutError, SocketTimeoutError
            raise AIError("timeout", "upstream did not answer in time", retryable=True) from exc
        except aiohttp.ClientError as exc:
            raise AIError(
                "upstream_failed", f"cannot reach upstream ({type(exc).__name__})", retryable=True
            ) from exc


def _ended_early(yielded: bool, how: str) -> AIError:
    if yielded:
        return AIError(
            "stream_cut", f"stream ended before the answer was complete ({how})", retryable=True
        )
    return AIError("upstream_failed", f"stream ended before any answer ({how})", retryable=True)


def _parse_chunk(event: str) -> tuple[str, bool]:
    """Return (delta text, whether the first choice finished) from one ``chat.completion.chunk``.

    Only choice 0 is read: the client never asks for more than one. Chunks without choices
    (usage reports) are valid and carry no text.
    """
    try:
        chunk = orjson.loads(event)
    except orjson.JSONDecodeError as exc:
        raise AIError("upstream_failed", "stream event is not JSON", retryable=True) from exc
    if not isinstance(chunk, dict):
        raise AIError("upstream_failed", "stream event is not a JSON object", retryable=True)
    if "error" in chunk:
        # Some servers report a failure that happens mid-generation as an event.
        raise AIError("upstream_failed", f"upstream error: {_error_text(chunk)}", retryable=True)
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise AIError("upstream_failed", "stream event has no choices", retryable=True)
    if not choices:
        return "", False
    choice = choices[0]
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        raise AIError("upstream_failed", "stream event has no delta", retryable=True)
    content = delta.get("content")
    if content is not None and not isinstance(content, str):
        raise AIError("upstream_failed", "delta content is not a string", retryable=True)
    return content or "", choice.get("finish_reason") is not None


async def _status_error(response: aiohttp.ClientResponse) -> AIError:
    """Build the error for a non-200 response, reading at most MAX_ERROR_BODY of its body."""
    status = response.status
    detail = f"HTTP {status}"
    body = bytearray()
    try:
        while len(body) < MAX_ERROR_BODY:
            data = await response.content.read(MAX_ERROR_BODY - len(body))
            if not data:
                break
            body += data
        parsed = orjson.loads(body)
    except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
        pass  # the status alone says enough
    else:
        if text := _error_text(parsed):
            detail = f"HTTP {status}: {text}"
    if 400 <= status < 500:
        return AIError("upstream_refused", detail, retryable=status == 429, status=status)
    return AIError("upstream_failed", detail, retryable=True, status=status)


def _error_text(body: Any) -> str:
    """The upstream's explanation from an OpenAI-style error body, truncated; "" if none."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return error[:_MAX_DETAIL] if isinstance(error, str) else ""
