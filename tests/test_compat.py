"""Each private attribute listed in yektaws.compat still exists, as used, on the installed versions.

An upgrade of aiohttp, python-engineio, python-socketio or aiosqlite that removes, renames or
reshapes one fails here with the entry's name, where it is used and why, rather than somewhere
in a gateway under load. ``scripts/test --latest`` runs this against the newest allowed releases.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any, cast

import aiosqlite
import pytest
import socketio
from aiohttp import web
from aiohttp._websocket.writer import WebSocketWriter
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import make_mocked_request
from engineio.async_drivers.aiohttp import WebSocket
from engineio.async_socket import AsyncSocket

from support.gateway import REPO
from yektaws.compat import INTERNALS, Internal, resolve


def _server() -> Any:
    # python-socketio's own server, so that its Engine.IO handlers are registered as in yektaws.
    return socketio.AsyncServer(async_mode="aiohttp").eio


def _socket() -> Any:
    return AsyncSocket(_server(), "sid")


def _driver() -> Any:
    return WebSocket(_socket()._websocket_handler, _server())


def _websocket() -> Any:
    return web.WebSocketResponse()


def _request() -> Any:
    return make_mocked_request("GET", "/")


def _connection() -> Any:
    # Not awaited: the object exists, its thread is never started.
    return aiosqlite.connect(":memory:")


def _web_server() -> Any:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    loop = asyncio.new_event_loop()
    loop.close()  # a server only keeps its loop until it serves
    return web.Server(handler, loop=loop)


def _protocol() -> BaseProtocol:
    # The writers only keep the loop and the protocol: a closed loop will do.
    loop = asyncio.new_event_loop()
    loop.close()
    return BaseProtocol(loop)


def _websocket_writer() -> Any:
    return WebSocketWriter(_protocol(), cast(asyncio.Transport, None))


def _stream_writer() -> Any:
    protocol = _protocol()
    return StreamWriter(protocol, protocol._loop)


#: How to get an instance of each owner that has instance attributes.
SAMPLES: dict[str, Callable[[], Any]] = {
    "aiohttp._websocket.writer:WebSocketWriter": _websocket_writer,
    "aiohttp.http_writer:StreamWriter": _stream_writer,
    "aiohttp.web_ws:WebSocketResponse": _websocket,
    "aiohttp.web_request:BaseRequest": _request,
    "aiohttp.web_server:Server": _web_server,
    "engineio.async_server:AsyncServer": _server,
    "engineio.async_socket:AsyncSocket": _socket,
    "engineio.async_drivers.aiohttp:WebSocket": _driver,
    "aiosqlite:Connection": _connection,
}


def problems(entry: Internal) -> list[str]:
    """What no longer holds of ``entry`` on the installed versions."""
    try:
        owner = resolve(entry.owner)
    except (ImportError, AttributeError) as exc:
        return [f"{entry.owner} is gone ({exc})"]
    holder = SAMPLES[entry.owner]() if entry.instance else owner
    if not hasattr(holder, entry.name):
        return [f"{entry.label} is gone"]
    value = getattr(holder, entry.name)
    found = []
    if entry.parameters is not None:
        names = [name for name in inspect.signature(value).parameters if name != "self"]
        if names[: len(entry.parameters)] != list(entry.parameters):
            found.append(f"{entry.label} takes {names}, yektaws relies on {list(entry.parameters)}")
    found += [f"{entry.label} has no key {key!r}" for key in entry.keys if key not in value]
    return found


@pytest.mark.parametrize("entry", INTERNALS, ids=lambda entry: entry.label)
def test_internal_still_exists(entry: Internal) -> None:
    found = problems(entry)
    assert not found, (
        f"{'; '.join(found)}. Used in {', '.join(entry.used_in)}: {entry.why} "
        "Adapt the code (and yektaws/compat.py) to the new version, or keep the version out "
        "in setup.cfg."
    )


@pytest.mark.parametrize("entry", INTERNALS, ids=lambda entry: entry.label)
def test_internal_is_used_where_it_says(entry: Internal) -> None:
    # The list stays true to the code: each named module exists and mentions the attribute
    # (for a constructor: the class it subclasses or builds).
    sources = [(REPO / path).read_text() for path in entry.used_in]
    name = entry.name
    if name == "__init__":
        name = entry.owner.partition(":")[2].rpartition(".")[2]
    assert any(name in source for source in sources), f"{entry.label} not in {entry.used_in}"


def test_every_instance_attribute_has_a_sample() -> None:
    owners = {entry.owner for entry in INTERNALS if entry.instance}
    assert owners <= SAMPLES.keys()


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            Internal("aiohttp.web_ws:WebSocketResponse", "_gone_reader", (), ""),
            "aiohttp.web_ws:WebSocketResponse._gone_reader is gone",
        ),
        (
            Internal("aiohttp.web_ws:NoSuchResponse", "_reader", (), ""),
            "aiohttp.web_ws:NoSuchResponse is gone "
            "(module 'aiohttp.web_ws' has no attribute 'NoSuchResponse')",
        ),
        (
            Internal("socketio.packet:Packet", "__init__", (), "", parameters=("kind", "data")),
            "socketio.packet:Packet.__init__ takes ['packet_type', 'data', 'namespace', 'id', "
            "'binary', 'encoded_packet'], yektaws relies on ['kind', 'data']",
        ),
        (
            Internal("engineio.async_server:AsyncServer", "_async", (), "", True, keys=("ws",)),
            "engineio.async_server:AsyncServer._async has no key 'ws'",
        ),
    ],
    ids=["attribute", "owner", "parameters", "key"],
)
def test_a_missing_or_reshaped_internal_is_reported(entry: Internal, expected: str) -> None:
    # The check itself can fail: what an upgrade that drops or reshapes an internal looks like.
    assert problems(entry) == [expected]
