"""The servers compared, one row of the table each, and what it takes to start them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BENCH = Path(__file__).resolve().parent.parent
PEERS = BENCH / "peers"

# yektaws' protective limits would cap the load long before the server does: they are raised
# so far that they never trigger, while their accounting still runs on every frame.
UNLIMITED = {
    "RATE_LIMIT_PER_SECOND": "1000000",
    "RATE_LIMIT_BURST": "100000",
    "MAX_CONNECTIONS_PER_USER": "1000000",
    "MAX_CONNECTIONS_PER_ADDRESS": "1000000",
    "MAX_HANDSHAKES_PER_SECOND": "1000000",
}


@dataclass(frozen=True)
class Tools:
    """Where the interpreters and the code under test are, as the runner found them."""

    python: Path
    node: str
    bun: Path
    yektaws_source: Path
    database_url: str


@dataclass(frozen=True)
class Row:
    """One server under test.

    ``check`` names the reply check of the load client (``as-is`` for peers that echo what they
    get, ``yektaws`` for CONTRACT.md's ``echo_response``); ``authenticated`` rows get a session
    token on every connection.
    """

    key: str
    label: str
    protocol: Literal["native", "sio"]
    check: Literal["as-is", "yektaws"]
    authenticated: bool
    command: Callable[[Tools, int], list[str]]
    unavailable: Callable[[Tools], str | None] = lambda tools: None
    environment: Callable[[Tools], dict[str, str]] = lambda tools: {}


def _python_peer(script: str) -> Callable[[Tools, int], list[str]]:
    return lambda tools, port: [str(tools.python), str(PEERS / script), "--port", str(port)]


def _node_peer(script: str) -> Callable[[Tools, int], list[str]]:
    return lambda tools, port: [tools.node, str(PEERS / script), str(port)]


def yektaws_command(tools: Tools, port: int) -> list[str]:
    return [str(tools.python), "-m", "yektaws", "serve", "--host", "127.0.0.1", "--port", str(port)]


def yektaws_environment(tools: Tools) -> dict[str, str]:
    return {
        "PYTHONPATH": str(tools.yektaws_source),
        "DATABASE_URL": tools.database_url,
        "LOG_LEVEL": "info",
        "LOG_FORMAT": "json",
        **UNLIMITED,
    }


def _yektaws_missing(tools: Tools) -> str | None:
    if not (tools.yektaws_source / "yektaws" / "app.py").is_file():
        return f"no yektaws/app.py under {tools.yektaws_source} (set YEKTAWS_SOURCE)"
    return None


def _bun_missing(tools: Tools) -> str | None:
    if not tools.bun.exists():
        return "npm did not install the bun package (it is optional)"
    try:
        subprocess.run([tools.bun, "--version"], capture_output=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the bun binary from npm does not run here: {exc}"
    return None


ROWS = (
    Row(
        "aiohttp",
        "bare aiohttp (native)",
        "native",
        "as-is",
        False,
        _python_peer("aiohttp_echo.py"),
    ),
    Row(
        "python-socketio",
        "bare python-socketio (Socket.IO)",
        "sio",
        "as-is",
        False,
        _python_peer("sio_echo.py"),
    ),
    Row("node-ws", "Node ws 8 (native)", "native", "as-is", False, _node_peer("ws_echo.js")),
    Row(
        "node-socketio",
        "Node socket.io 4 (Socket.IO)",
        "sio",
        "as-is",
        False,
        _node_peer("sio_echo.js"),
    ),
    Row(
        "bun",
        "Bun.serve (native)",
        "native",
        "as-is",
        False,
        lambda tools, port: [str(tools.bun), str(PEERS / "bun_echo.js"), str(port)],
        unavailable=_bun_missing,
    ),
    Row(
        "yektaws-native",
        "yektaws (native)",
        "native",
        "yektaws",
        True,
        yektaws_command,
        unavailable=_yektaws_missing,
        environment=yektaws_environment,
    ),
    Row(
        "yektaws-socketio",
        "yektaws (Socket.IO)",
        "sio",
        "yektaws",
        True,
        yektaws_command,
        unavailable=_yektaws_missing,
        environment=yektaws_environment,
    ),
)

BY_KEY = {row.key: row for row in ROWS}
# The rows every figure is compared with: bare aiohttp, and Node on the row's own protocol.
AIOHTTP = "aiohttp"
NODE = {"native": "node-ws", "sio": "node-socketio"}


def server_environment(row: Row, tools: Tools) -> dict[str, str]:
    """The process environment of ``row``'s server: the runner's, plus what the row adds."""
    return {**os.environ, **row.environment(tools)}
