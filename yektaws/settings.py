"""Every setting of yektaws, its default, its meaning and its validation: nowhere else.

Settings come from the process environment, then from a ``.env`` file in the working directory
(the environment wins). Each one is declared once, in :data:`SETTINGS`; ``.env.example`` and the
README's configuration table are generated from that declaration (``yektaws settings``), and a test
keeps them in step, so the documentation cannot drift from the code.

An invalid value stops the process at start with a message naming the variable
(:class:`SettingsError`); nothing is silently corrected.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["SETTINGS", "Setting", "Settings", "SettingsError", "load_settings"]


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


# -- parsers: each takes the raw string and returns the typed value or raises ValueError ----------


def _str(raw: str) -> str:
    return raw


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _seconds_or_off(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError("must be a number of seconds, 0 to turn it off")
    return value


def _optional_seconds(raw: str) -> float | None:
    return None if not raw.strip() else _positive_float(raw)


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        lowered = raw.strip().lower()
        if lowered not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return lowered

    return parse


def _path_prefix(raw: str) -> str:
    if not raw.startswith("/"):
        raise ValueError("must start with /")
    return raw.rstrip("/") or "/"


def _database_url(raw: str) -> str:
    if raw and urlsplit(raw).scheme not in {"postgresql", "postgres"}:
        raise ValueError("must be a postgresql:// URL, or empty for the embedded store")
    return raw


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    for origin in origins:
        if origin != "*" and urlsplit(origin).scheme not in {"http", "https"}:
            raise ValueError(f"{origin!r} is not an origin like https://app.example.com or *")
    return origins


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip()
    )


def _redis_url(raw: str) -> str:
    if raw and urlsplit(raw).scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must be a redis://, rediss:// or unix:// URL, or empty for one process")
    return raw


def _key_prefix(raw: str) -> str:
    if not raw or any(char.isspace() or char in "*?[]" for char in raw):
        raise ValueError("must be a non-empty name without spaces or glob characters")
    return raw


def _optional_url(raw: str) -> str:
    if raw and urlsplit(raw).scheme not in {"http", "https"}:
        raise ValueError("must be an http(s):// URL, or empty")
    return raw.rstrip("/")


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable: its name, default (as written in ``.env``), parser and meaning."""

    env: str
    default: str
    parse: Callable[[str], Any]
    doc: str
    group: str
    secret: bool = False

    @property
    def attribute(self) -> str:
        return _ATTRIBUTE_NAMES.get(self.env, self.env.lower())


# Where the attribute name is not simply the lower-cased variable.
_ATTRIBUTE_NAMES = {"WEBSOCKET_PORT": "port"}

KIB = 1024

SETTINGS: tuple[Setting, ...] = (
    # -- listener ---------------------------------------------------------------------------------
    Setting(
        "HOST",
        "127.0.0.1",
        _str,
        "Address to listen on (TLS is the reverse proxy's job).",
        "Listener",
    ),
    Setting("WEBSOCKET_PORT", "3500", _int_between(0, 65535), "TCP port to listen on.", "Listener"),
    Setting(
        "WEBSOCKET_PATH",
        "/ws",
        _path_prefix,
        "Path of the server-info JSON besides `/`, and the path the YektaYar apps give "
        "socket.io-client (`path: '/ws'`).",
        "Listener",
    ),
    Setting(
        "CORS_ORIGIN",
        "",
        _origins,
        "Comma-separated origins allowed to connect (Socket.IO CORS and the native `Origin` "
        "check). Empty: only requests without `Origin`. `*`: any origin, never with "
        "credentials.",
        "Listener",
    ),
    Setting(
        "TRUSTED_PROXIES",
        "127.0.0.1/32,::1/128",
        _networks,
        "Networks whose `X-Forwarded-For/-Proto/-Host` headers are believed (peer address in "
        "logs, `wss://` URLs in the info JSON).",
        "Listener",
    ),
    # -- sessions ---------------------------------------------------------------------------------
    Setting(
        "DATABASE_URL",
        "",
        _database_url,
        "PostgreSQL URL of the YektaYar database holding `sessions`. Empty: the embedded "
        "SQLite store at `EMBEDDED_DB_PATH`.",
        "Sessions",
        secret=True,
    ),
    Setting(
        "EMBEDDED_DB_PATH",
        "./yektaws.db",
        _str,
        "File of the embedded session store, created on first start when `DATABASE_URL` is empty.",
        "Sessions",
    ),
    Setting(
        "DATABASE_POOL_SIZE",
        "10",
        _int_between(1, 200),
        "Most PostgreSQL connections held at once.",
        "Sessions",
    ),
    Setting(
        "SESSION_STORE_TIMEOUT",
        "5",
        _positive_float,
        "Seconds a session lookup may take before the store counts as unavailable (the client "
        "gets 503 / a retryable error, never 'invalid token').",
        "Sessions",
    ),
    Setting(
        "SESSION_TIMEZONE",
        "UTC",
        _str,
        "Time zone in which the YektaYar API writes the `expires_at` wall-clock timestamps; "
        "expiry is compared in SQL in that zone, whatever the database session's TimeZone.",
        "Sessions",
    ),
    Setting(
        "SESSION_CACHE_TTL",
        "5",
        float,
        "Seconds a valid token is remembered, so a reconnect storm of the same users is not "
        "a storm of queries; a revoked token is refused within this time. 0 turns it off.",
        "Sessions",
    ),
    Setting(
        "SESSION_CACHE_SIZE",
        "10000",
        _int_between(1, 10_000_000),
        "Most tokens remembered at once (the oldest go first).",
        "Sessions",
    ),
    Setting(
        "SESSION_TOUCH_INTERVAL",
        "60",
        _positive_float,
        "Least seconds between two `last_activity_at` refreshes of one token (batched, off the "
        "handshake path).",
        "Sessions",
    ),
    Setting(
        "SESSION_RECHECK_INTERVAL",
        "60",
        _positive_float,
        "Seconds between re-checks of the sessions behind open connections; an expired or "
        "deleted one is closed (native 4001, Socket.IO `session:expired`).",
        "Sessions",
    ),
    Setting(
        "SESSION_RECHECK_BATCH",
        "500",
        _int_between(1, 100_000),
        "Tokens re-checked per query, so a round costs connections / batch queries.",
        "Sessions",
    ),
    # -- limits -----------------------------------------------------------------------------------
    Setting(
        "MAX_MESSAGE_SIZE",
        str(64 * KIB),
        _int_between(1 * KIB, 16 * 1024 * KIB),
        "Largest incoming message in bytes: a native frame over it closes with 1009; the same "
        "cap is Socket.IO's `max_http_buffer_size` (an oversize polling POST gets 413).",
        "Limits",
    ),
    Setting(
        "MAX_OUTBOUND_BUFFER",
        str(1024 * KIB),
        _int_between(16 * KIB, 256 * 1024 * KIB),
        "Bytes waiting to be sent to one client before it counts as too slow and is closed "
        "with 1013 (Socket.IO: disconnected).",
        "Limits",
    ),
    Setting(
        "RATE_LIMIT_PER_SECOND",
        "20",
        _positive_float,
        "Sustained incoming events per second per connection (token bucket).",
        "Limits",
    ),
    Setting(
        "RATE_LIMIT_BURST",
        "40",
        _int_between(1, 100_000),
        "Events a connection may send at once before the rate applies.",
        "Limits",
    ),
    Setting(
        "RATE_LIMIT_STRIKES",
        "20",
        _int_between(1, 100_000),
        "Events refused for rate in a row after which the connection is closed with 1008.",
        "Limits",
    ),
    Setting(
        "MAX_CONNECTIONS_PER_USER",
        "20",
        _int_between(1, 1_000_000),
        "Open connections one user (or one anonymous session token) may hold: more get "
        "HTTP 429 / a connect error.",
        "Limits",
    ),
    Setting(
        "MAX_CONNECTIONS_PER_ADDRESS",
        "200",
        _int_between(1, 1_000_000),
        "Open connections from one client address, checked before any database work.",
        "Limits",
    ),
    Setting(
        "MAX_HANDSHAKES_PER_SECOND",
        "500",
        _positive_float,
        "Session lookups started per second by the whole process; a reconnect storm queues "
        "(up to `HANDSHAKE_TIMEOUT`) instead of exhausting the database pool.",
        "Limits",
    ),
    Setting(
        "HANDSHAKE_TIMEOUT",
        "5",
        _positive_float,
        "Seconds a client has to send its request headers, and the most a handshake may "
        "wait for its turn.",
        "Limits",
    ),
    Setting(
        "HEARTBEAT_INTERVAL",
        "30",
        _positive_float,
        "Seconds between native WebSocket pings; a peer that does not answer within half of "
        "it is closed.",
        "Limits",
    ),
    Setting(
        "SOCKETIO_PING_INTERVAL",
        "25",
        _positive_float,
        "Engine.IO ping interval in seconds.",
        "Limits",
    ),
    Setting(
        "SOCKETIO_PING_TIMEOUT",
        "20",
        _positive_float,
        "Engine.IO ping timeout in seconds.",
        "Limits",
    ),
    Setting(
        "SOCKETIO_CONNECT_TIMEOUT",
        "10",
        _positive_float,
        "Seconds an Engine.IO session may stay open without joining a namespace.",
        "Limits",
    ),
    Setting(
        "WEBSOCKET_COMPRESSION",
        "false",
        _bool,
        "Offer permessage-deflate on native WebSockets (off: compression bombs and CPU). When "
        "on, a decompressed message is still capped at `MAX_MESSAGE_SIZE`.",
        "Limits",
    ),
    # -- AI chat ----------------------------------------------------------------------------------
    Setting(
        "AI_BASE_URL",
        "https://text.pollinations.ai/v1",
        _optional_url,
        "OpenAI-compatible API base (`/chat/completions` is appended). Empty: AI chat off.",
        "AI chat",
    ),
    Setting("AI_MODEL", "openai", _str, "Model name sent upstream.", "AI chat"),
    Setting(
        "AI_API_KEY",
        "",
        _str,
        "Bearer key for the upstream, if it needs one.",
        "AI chat",
        secret=True,
    ),
    Setting(
        "AI_TIMEOUT",
        "30",
        _positive_float,
        "Seconds to connect upstream, and the longest gap between two streamed chunks.",
        "AI chat",
    ),
    Setting(
        "AI_MAX_CONCURRENT_PER_CONNECTION",
        "2",
        _int_between(1, 100),
        "AI answers one connection may have streaming at once.",
        "AI chat",
    ),
    Setting(
        "AI_RESUME_WINDOW",
        "",
        _optional_seconds,
        "Seconds an AI answer keeps streaming after its connection was lost, waiting for the "
        "client to resume (its chunks are recoverable events); then it is cancelled. Empty: "
        "`RECOVERY_WINDOW`. Without recovery a lost connection cancels its answers at once.",
        "AI chat",
    ),
    Setting(
        "AI_CHUNK_INTERVAL",
        "0.04",
        _seconds_or_off,
        "With recovery on: pieces of an answer arriving within this many seconds of the last "
        "`ai:response:chunk` are joined into the next one, so a fast model does not write one "
        "recovery-log entry per token. 0: one chunk event per piece.",
        "AI chat",
    ),
    # -- recovery ---------------------------------------------------------------------------------
    Setting(
        "RECOVERY_WINDOW",
        "120",
        _seconds_or_off,
        "Seconds a lost connection may be resumed (same `socketId`, rooms, and every "
        "recoverable event it missed) and recoverable events are kept. 0 turns recovery off.",
        "Recovery",
    ),
    Setting(
        "RECOVERY_MAX_EVENTS",
        "10000",
        _int_between(1, 10_000_000),
        "Most recoverable events kept (for the whole cluster with `REDIS_URL`); a client that "
        "missed more than were kept resumes with `recovered: false`.",
        "Recovery",
    ),
    # -- scale-out and server API -----------------------------------------------------------------
    Setting(
        "REDIS_URL",
        "",
        _redis_url,
        "Redis that carries emits, disconnects and presence queries between gateway processes "
        "and machines (`redis://host:6379/0`). Empty: one process, everything local. Required "
        "by `yektaws serve --workers N` with N > 1.",
        "Scale-out",
        secret=True,
    ),
    Setting(
        "REDIS_PREFIX",
        "yektaws",
        _key_prefix,
        "Prefix of the Redis channel (`<prefix>:bus`) and keys (`<prefix>:node:<id>`); gateways "
        "that share it form one cluster.",
        "Scale-out",
    ),
    Setting(
        "WORKER_BASE_PORT",
        "3510",
        _int_between(1, 65535),
        "With `--workers N`: worker i also listens on this port + i, where the reverse proxy "
        "sends the long-polling requests of the Engine.IO sessions it issued (`sid=w<i>.…`).",
        "Scale-out",
    ),
    Setting(
        "ADMIN_HOST",
        "127.0.0.1",
        _str,
        "Address of the server API for other services (`/emit`, `/disconnect`, "
        "`/users/<id>/connections`) and of the operator console (`/console/`). Keep it off the "
        "public network.",
        "Server API",
    ),
    Setting(
        "ADMIN_PORT",
        "3501",
        _int_between(0, 65535),
        "Port of the server API.",
        "Server API",
    ),
    Setting(
        "ADMIN_API_KEY",
        "",
        _str,
        "Bearer key the server API requires (`Authorization: Bearer <key>`), and the operator "
        "console's login. Empty: the server API and the console do not listen at all.",
        "Server API",
        secret=True,
    ),
    # -- operations -------------------------------------------------------------------------------
    Setting(
        "DRAIN_TIMEOUT",
        "30",
        _positive_float,
        "Seconds a SIGTERM drain waits for running AI streams before the process exits.",
        "Operations",
    ),
    Setting(
        "DRAIN_SPREAD",
        "2",
        _positive_float,
        "Seconds over which a drain spreads its closes, so that thousands of clients do not "
        "reconnect elsewhere in the same millisecond.",
        "Operations",
    ),
    Setting(
        "LOG_LEVEL",
        "info",
        _choice("debug", "info", "warning", "error"),
        "Least severe log level written.",
        "Operations",
    ),
    Setting(
        "LOG_FORMAT",
        "console",
        _choice("json", "console"),
        "`json`: one JSON object per line (production); `console`: coloured key=value lines.",
        "Operations",
    ),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """The parsed settings; attribute names are the variables lower-cased (``port``: the port)."""

    host: str
    port: int
    websocket_path: str
    cors_origin: tuple[str, ...]
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    database_url: str
    embedded_db_path: str
    database_pool_size: int
    session_store_timeout: float
    session_timezone: str
    session_cache_ttl: float
    session_cache_size: int
    session_touch_interval: float
    session_recheck_interval: float
    session_recheck_batch: int
    max_message_size: int
    max_outbound_buffer: int
    rate_limit_per_second: float
    rate_limit_burst: int
    rate_limit_strikes: int
    max_connections_per_user: int
    max_connections_per_address: int
    max_handshakes_per_second: float
    handshake_timeout: float
    heartbeat_interval: float
    socketio_ping_interval: float
    socketio_ping_timeout: float
    socketio_connect_timeout: float
    websocket_compression: bool
    ai_base_url: str
    ai_model: str
    ai_api_key: str
    ai_timeout: float
    ai_max_concurrent_per_connection: int
    ai_resume_window: float | None
    ai_chunk_interval: float
    recovery_window: float
    recovery_max_events: int
    redis_url: str
    redis_prefix: str
    worker_base_port: int
    admin_host: str
    admin_port: int
    admin_api_key: str
    drain_timeout: float
    drain_spread: float
    log_level: str
    log_format: str

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied (the CLI's ``--host``/``--port`` overrides)."""
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        values.update(changes)
        return Settings(**values)


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a ``.env`` file: ``NAME=value`` lines, ``#`` comments, optional quotes."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.removeprefix("export ").partition("=")
        if not sep:
            raise SettingsError(f"{path}:{number}: expected NAME=value, got {stripped!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")
) -> Settings:
    """Build :class:`Settings` from ``environ`` (default ``os.environ``) over a ``.env`` file."""
    source = dict(read_dotenv(dotenv)) if dotenv is not None else {}
    source.update(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = source.get(setting.env, setting.default)
        try:
            values[setting.attribute] = setting.parse(raw)
        except ValueError as exc:
            shown = "***" if setting.secret else repr(raw)
            raise SettingsError(f"{setting.env}={shown} is invalid: {exc}") from None
    if "*" in values["cors_origin"] and len(values["cors_origin"]) > 1:
        raise SettingsError("CORS_ORIGIN: '*' cannot be combined with named origins")
    return Settings(**values)


def env_example() -> str:
    """The text of ``.env.example``: every setting, grouped, with its meaning and default."""
    lines = [
        "# yektaws settings. Copy to .env (or /etc/yektaws/env under systemd) and edit.",
        "# Generated by `yektaws settings --format env`; every value shown is the default.",
    ]
    group = None
    for setting in SETTINGS:
        if setting.group != group:
            group = setting.group
            lines += ["", f"# --- {group} ---"]
        lines.append(f"# {setting.doc}")
        lines.append(f"{setting.env}={setting.default}")
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    """The README's configuration table, generated from :data:`SETTINGS`."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default else "(empty)"
        rows.append(f"| `{setting.env}` | {default} | {setting.doc} |")
    return "\n".join(rows) + "\n"
