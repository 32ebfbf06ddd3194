"""Incremental decoder for server-sent events (the ``text/event-stream`` format).

Only the part of the format a chat-completions stream uses is kept: the ``data`` field. The
decoder is pure (bytes in, event payloads out) so that it can be tested without sockets, and
it makes no assumption about how the bytes were cut by TCP: a line, an event, even a UTF-8
character may arrive in several pieces.

Format reference: https://html.spec.whatwg.org/multipage/server-sent-events.html
"""

from __future__ import annotations

import codecs
import re

__all__ = ["MAX_EVENT_SIZE", "EventTooLarge", "SSEDecoder"]

#: Default bound on one event (its ``data`` lines plus any unterminated line), in characters.
#: A chat chunk is a few hundred bytes; the bound exists so that an upstream that never sends
#: a line break cannot make the gateway buffer without end.
MAX_EVENT_SIZE = 1 << 20

# A line ends at CRLF, LF or CR. Longest alternative first so that CRLF is one terminator.
_LINE_END = re.compile(r"\r\n|\r|\n")


class EventTooLarge(ValueError):
    """An event, or a line still waiting for its terminator, exceeded the size bound."""


class SSEDecoder:
    """Turn a byte stream into the ``data`` payloads of its events, in order.

    Each event's ``data`` lines are joined with ``\\n``, as the specification says. Comment
    lines (``:`` first, servers use them as keep-alives), the ``event``, ``id`` and ``retry``
    fields and events without data are dropped.
    """

    def __init__(self, *, max_event_size: int = MAX_EVENT_SIZE) -> None:
        self._max_event_size = max_event_size
        # "replace": a stray invalid byte must not kill a whole answer; JSON parsing of the
        # event will reject it if it matters.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # text after the last complete line
        self._data: list[str] = []  # data lines of the event being assembled
        self._data_size = 0

    def feed(self, chunk: bytes) -> list[str]:
        """Consume the next bytes of the stream; return the payloads of events they complete.

        Raises :class:`EventTooLarge` when an event grows past the bound.
        """
        text = self._pending + self._utf8.decode(chunk)
        events: list[str] = []
        start = 0
        for match in _LINE_END.finditer(text):
            if match.group() == "\r" and match.end() == len(text):
                # A CR at the very end may be the first half of a CRLF split across reads.
                break
            self._line(text[start : match.start()], events)
            start = match.end()
        self._pending = text[start:]
        if self._data_size + len(self._pending) > self._max_event_size:
            raise EventTooLarge(f"server-sent event larger than {self._max_event_size} characters")
        return events

    def _line(self, line: str, events: list[str]) -> None:
        if not line:
            # A blank line dispatches the event assembled so far.
            if self._data:
                events.append("\n".join(self._data))
                self._data.clear()
                self._data_size = 0
            return
        field, colon, value = line.partition(":")
        if not field and colon:
            return  # comment
        if field != "data":
            return  # event/id/retry are not used by chat streams; unknown fields are ignored
        if value.startswith(" "):
            value = value[1:]
        self._data.append(value)
        self._data_size += len(value) + 1
