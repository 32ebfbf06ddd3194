"""structlog configuration, and the processor that keeps session tokens out of every log line.

Every line yektaws writes, its own and the ones aiohttp, python-socketio and python-engineio send to
the standard :mod:`logging` module, passes through :func:`mask_secrets` before it is rendered. A
token may arrive in a query string (``?token=``), an ``Authorization`` header, a
``Sec-WebSocket-Protocol`` entry (``bearer.<token>``) or a field named like a token; all four are
reduced to ``***`` plus the last four characters, the form the contract allows.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import re
import select
import sys
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any, BinaryIO, TextIO, cast

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["configure_logging", "flush_logs", "get_logger", "mask_secrets", "mask_token"]

# Field names whose whole value is a secret wherever they appear in an event.
_SECRET_KEYS = frozenset(
    {"token", "session_token", "sessiontoken", "authorization", "password", "resume", "pid"}
)

# A token inside free text: `token=…` (query strings; `resume=…`, a recovery handle, is masked
# alike), `Bearer …`, `bearer.…` (subprotocol) and a password inside a URL
# (`postgresql://user:secret@host`).
_SECRET_PATTERNS = (
    re.compile(r"(?P<prefix>[?&](?:token|resume)=)(?P<secret>[^&\s\"']+)", re.IGNORECASE),
    re.compile(r"(?P<prefix>\bbearer[ .]+)(?P<secret>[A-Za-z0-9._~+/=-]+)", re.IGNORECASE),
    re.compile(r"(?P<prefix>://[^:/@\s]+:)(?P<secret>[^@\s]+)(?=@)"),
)


def mask_token(token: str | None) -> str:
    """Show a token as the contract allows: ``***`` and its last four characters."""
    if not token:
        return "***"
    return "***" + token[-4:] if len(token) > 8 else "***"


# Cheap first look: most values (ids, addresses, event names) hold none of the three markers.
_MAYBE_SECRET = re.compile(r"token=|resume=|bearer|://", re.IGNORECASE)


def _mask_text(text: str) -> str:
    if _MAYBE_SECRET.search(text) is None:
        return text
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group("prefix") + mask_token(m.group("secret")), text)
    return text


def _mask_value(key: str, value: Any) -> Any:
    if key.lower() in _SECRET_KEYS and isinstance(value, str):
        return mask_token(value)
    if isinstance(value, str):
        return _mask_text(value)
    if isinstance(value, Mapping):
        return {k: _mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(key, item) for item in value]
    return value


# Fields whose values the gateway makes itself (levels, logger names, its own ids and labels),
# never from a client's or an operator's text: nothing there to mask. Skipping them saves a third
# of a line's cost, which every connect and disconnect pays. Not "event": on the standard
# library's lines it is the message, which may quote a URL.
_OWN_FIELDS = frozenset(
    {"level", "timestamp", "logger", "socketId", "protocol", "transport", "userId"}
)


def mask_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask tokens and passwords in every field of the event."""
    for key, value in event_dict.items():
        if key in _OWN_FIELDS:
            continue
        if type(value) is str:
            # Most fields are ids, addresses and names: one regex search tells them apart.
            if key.lower() in _SECRET_KEYS:
                event_dict[key] = mask_token(value)
            elif _MAYBE_SECRET.search(value) is not None:
                event_dict[key] = _mask_text(value)
        elif isinstance(value, Mapping | list | tuple):
            event_dict[key] = _mask_value(key, value)
    return event_dict


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def _orjson_bytes(obj: Any, default: Any = None) -> bytes:
    return orjson.dumps(obj, default=default or str)


#: Most bytes one write of batched lines carries. A write to a pipe of up to PIPE_BUF bytes is
#: atomic: the lines of workers sharing stderr cannot interleave within it.
_BATCH_LIMIT = select.PIPE_BUF


class _Unfailing:
    """The log stream: writes that never raise, and one write for the lines of a loop turn.

    Never raising: a closed pipe on stderr (a log collector gone, a ``| head``) must not stop a
    drain or a shutdown half-way. One write per event-loop turn: structlog flushes after every
    line and stderr has no buffer, so each line was a ``write(2)`` of its own, and a handshake
    storm logs two lines per connection (connect, disconnect). Measured with stderr a pipe (as
    under systemd's journal), alternating runs of 8,000 native handshakes: server CPU 290 -> 279
    us per handshake. Lines are kept whole, written before the turn ends, never more than
    :data:`_BATCH_LIMIT` bytes together; outside an event loop at once. What waits is written at
    exit, and by :func:`flush_logs` before ``os._exit``; a SIGKILL loses at most one turn's lines.

    structlog's logger factories are annotated for a whole file (``BinaryIO``, ``TextIO``) but
    call only ``write`` and ``flush``; hence the casts where one is handed over.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._pending: list[Any] = []
        self._pending_size = 0
        self._flush_scheduled = False
        # Lines may come from another thread (a library's warning): the batch is shared.
        self._lock = threading.Lock()

    def write(self, data: Any) -> None:
        with self._lock:
            if self._pending_size + len(data) > _BATCH_LIMIT:
                self._write_pending()
            self._pending.append(data)
            self._pending_size += len(data)

    def flush(self) -> None:
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush_now()
            return
        self._flush_scheduled = True
        loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        with self._lock:
            self._flush_scheduled = False
            self._write_pending()
            with contextlib.suppress(OSError, ValueError):
                self._stream.flush()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        data = self._pending[0][:0].join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(data)


class _Encoding:
    """A text stream over :class:`_Unfailing` bytes: the standard library's lines join the
    same batches as structlog's, in the order they were logged."""

    def __init__(self, stream: _Unfailing) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        self._stream.write(text.encode("utf-8", "backslashreplace"))

    def flush(self) -> None:
        self._stream.flush()


_streams: list[_Unfailing] = []


def flush_logs() -> None:
    """Write out the log lines still waiting for the end of the event-loop turn."""
    for stream in _streams:
        stream.flush_now()


class _ClientFaults(logging.Filter):
    """aiohttp logs each request it cannot parse (a request line or headers over its limits, a
    malformed header) as an error with a traceback. Such a request is the client's fault and is
    answered 400; on a public port it is a scanner's daily fare, and a traceback per request is
    a flood an attacker controls. It becomes one line at INFO naming the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and 400 <= error.code < 500:
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "Bad HTTP request from %s: %s", (peer, error.message)
            record.exc_info = record.exc_text = None
        return True


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Send structlog and standard-library logging through one masked renderer on stderr.

    yektaws' own lines go straight from structlog to stderr (a few microseconds each); routing
    them through the standard ``logging`` module, as the libraries' lines must be, cost 31 us a
    line, measured, which a connect and a disconnect pay each.
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        mask_secrets,
    ]
    numeric_level = getattr(logging, level.upper())
    flush_logs()
    if fmt == "json":
        stream = _Unfailing(sys.stderr.buffer)
        own_renderer: Any = structlog.processors.JSONRenderer(serializer=_orjson_bytes)
        factory: Any = structlog.BytesLoggerFactory(cast(BinaryIO, stream))
        foreign_renderer: Any = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        foreign_stream: Any = _Encoding(stream)
    else:
        stream = foreign_stream = _Unfailing(sys.stderr)
        own_renderer = foreign_renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        # One write per line (print() writes the newline apart): `--workers N` share stderr, and
        # another worker's line must not land inside this one.
        factory = structlog.WriteLoggerFactory(cast(TextIO, stream))
    if not _streams:
        atexit.register(flush_logs)  # the last turn's lines, when the loop is gone before it ends
    _streams[:] = [stream]
    structlog.configure(
        processors=[*shared, own_renderer],
        logger_factory=factory,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(foreign_stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                foreign_renderer,
            ],
        )
    )
    aiohttp_server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ClientFaults) for f in aiohttp_server.filters):
        aiohttp_server.addFilter(_ClientFaults())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # The libraries below narrate every packet at INFO; their warnings and errors are enough.
    # aiosqlite logs every statement with its parameters (tokens) at DEBUG: never below WARNING.
    for noisy in ("aiohttp.access", "engineio.server", "socketio.server", "aiosqlite"):
        logging.getLogger(noisy).setLevel(max(numeric_level, logging.WARNING))


def get_logger(name: str) -> Any:
    """A logger for one module: ``get_logger(__name__)``; its lines carry ``logger=name``."""
    return structlog.get_logger().bind(logger=name)
