"""Drive Debian's headless Chromium over the Chrome DevTools Protocol, for tests needing a browser.

Some behaviour only a real browser shows: its native ``WebSocket`` (which cannot set headers, so
it authenticates with the ``bearer.<token>`` subprotocol and always sends ``Origin``) and pages
such as an operator dashboard with a login form. pyppeteer and playwright would do this but
download their own browsers at run time; the suite may only install from Debian, PyPI and npm.
The DevTools Protocol is plain JSON over one WebSocket, which aiohttp (already a dependency)
speaks, so this module is all the driver the tests need:

    async with Browser() as browser:
        page = await browser.new_page()
        await page.goto(url)
        assert await page.evaluate("1 + 2") == 3

Chromium is started with ``--remote-debugging-port=0``: it picks a free port itself and writes it
to ``DevToolsActivePort`` in the profile directory, so two test runs never race for a port. Every
page is a target of its own, attached in flat mode: one connection, one CDP session per page.

Chromium runs in a temporary directory of its own (profile and ``HOME``, so nothing lands in the
real ``~/.config``). At exit its process group is killed by the browser's PID, and so is every
process still carrying the ``YEKTAWS_BROWSER`` variable this module sets: Chromium's crashpad
handlers daemonize out of the group. Then the directory is removed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

__all__ = ["Browser", "BrowserError", "ConsoleMessage", "Page", "processes_of"]

CHROMIUM = "chromium"
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the suite runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--no-first-run",
    "--remote-debugging-port=0",
)

LAUNCH_TIMEOUT = 30.0
"""Seconds from starting Chromium until its DevTools endpoint must answer (a cold start on a busy
2-core machine takes a few seconds)."""
COMMAND_TIMEOUT = 15.0
"""Seconds any one DevTools command may take before the driver gives up on the browser."""
NAVIGATION_TIMEOUT = 15.0
"""Seconds :meth:`Page.goto` waits for the page's ``load`` event."""
WAIT_TIMEOUT = 5.0
"""Default seconds :meth:`Page.wait_for` polls for its expression to become truthy."""
POLL_INTERVAL = 0.05
"""Seconds between two evaluations in :meth:`Page.wait_for`."""
STOP_TIMEOUT = 5.0
"""Seconds Chromium gets to exit after SIGTERM before its process group is sent SIGKILL."""
MARKER = "YEKTAWS_BROWSER"
"""Environment variable naming the browser's directory. The crashpad handlers inherit it; Chromium
gives its other children an environment of their own (they stay in its process group)."""
MAX_MESSAGE_SIZE = 64 * 1024 * 1024
"""Largest DevTools message accepted: a full-page PNG screenshot arrives base64-encoded in one."""

Listener = Callable[[dict[str, Any]], None]


class BrowserError(Exception):
    """Chromium failed to start, a command failed, or the page threw or timed out."""


@dataclass(frozen=True)
class ConsoleMessage:
    """One ``console.*`` call (``kind`` is ``log``, ``error``...) or an uncaught ``exception``."""

    kind: str
    text: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.text}"


class _Connection:
    """The browser's DevTools WebSocket: commands matched to replies by id, events by session."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._http = http
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: dict[str, list[Listener]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str) -> _Connection:
        http = aiohttp.ClientSession()
        try:
            # wait_for, not a session timeout: aiohttp would keep that on the open socket's reads.
            ws = await asyncio.wait_for(
                http.ws_connect(url, max_msg_size=MAX_MESSAGE_SIZE), COMMAND_TIMEOUT
            )
        except BaseException:
            await http.close()
            raise
        return cls(http, ws)

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        """Send one command and return its ``result``; a protocol error raises BrowserError."""
        if self._reader.done():
            raise BrowserError(f"{method}: the DevTools connection is closed")
        command_id = next(self._ids)
        message: dict[str, Any] = {"id": command_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        reply = self._pending[command_id] = asyncio.get_running_loop().create_future()
        try:
            await self._ws.send_str(json.dumps(message))
            response = await asyncio.wait_for(reply, COMMAND_TIMEOUT)
        except TimeoutError:
            raise BrowserError(f"{method}: no reply within {COMMAND_TIMEOUT}s") from None
        finally:
            self._pending.pop(command_id, None)
        if "error" in response:
            raise BrowserError(f"{method}: {response['error'].get('message', response['error'])}")
        return response.get("result", {})

    def listen(self, session_id: str, listener: Listener) -> None:
        """Call ``listener(message)`` with every event of one session, in arrival order."""
        self._listeners.setdefault(session_id, []).append(listener)

    def forget(self, session_id: str) -> None:
        self._listeners.pop(session_id, None)

    async def _read(self) -> None:
        try:
            async for frame in self._ws:
                if frame.type is not aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                if "id" in message:
                    reply = self._pending.get(message["id"])
                    if reply is not None and not reply.done():
                        reply.set_result(message)
                    continue
                for listener in self._listeners.get(message.get("sessionId", ""), ()):
                    listener(message)
        finally:
            # The browser went away: nobody waiting for a reply may wait for ever.
            for reply in self._pending.values():
                if not reply.done():
                    reply.set_exception(BrowserError("the DevTools connection closed"))

    async def close(self) -> None:
        await self._ws.close()
        await self._http.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Page:
    """One tab: its own target and CDP session. Create it with :meth:`Browser.new_page`."""

    def __init__(self, connection: _Connection, target_id: str, session_id: str) -> None:
        self._connection = connection
        self.target_id = target_id
        self.session_id = session_id
        self.console: list[ConsoleMessage] = []
        """Every console message and uncaught exception of this page so far, in order."""
        self._loads: list[asyncio.Future[None]] = []
        connection.listen(session_id, self._on_event)

    async def _send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._connection.send(method, params, self.session_id)

    def _on_event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(_describe(arg) for arg in params.get("args", []))
            self.console.append(ConsoleMessage(params.get("type", "log"), text))
        elif method == "Runtime.exceptionThrown":
            self.console.append(ConsoleMessage("exception", _exception_text(params)))
        elif method == "Page.loadEventFired":
            for load in self._loads:
                if not load.done():
                    load.set_result(None)
            self._loads.clear()

    def _console_text(self) -> str:
        return "\n".join(f"  {message}" for message in self.console) or "  (none)"

    async def goto(self, url: str) -> None:
        """Navigate and wait for the ``load`` event; a failed navigation raises BrowserError."""
        load = asyncio.get_running_loop().create_future()
        self._loads.append(load)
        result = await self._send("Page.navigate", {"url": url})
        if result.get("errorText"):
            self._loads.remove(load)
            raise BrowserError(f"navigating to {url}: {result['errorText']}")
        if "loaderId" not in result:
            return  # a same-document navigation (a #fragment) fires no load event
        try:
            await asyncio.wait_for(load, NAVIGATION_TIMEOUT)
        except TimeoutError:
            raise BrowserError(
                f"{url} did not finish loading within {NAVIGATION_TIMEOUT}s; console:\n"
                f"{self._console_text()}"
            ) from None

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` (a Promise is awaited); a throw raises BrowserError."""
        result = await self._send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise BrowserError(
                f"{expression!r} threw {_exception_text(result['exceptionDetails'])}; console:\n"
                f"{self._console_text()}"
            )
        return _value(result["result"])

    async def wait_for(self, expression: str, timeout: float = WAIT_TIMEOUT) -> Any:
        """Evaluate ``expression`` until it is truthy and return its value.

        An expression that throws fails at once (write ``document.querySelector(s)?.x``, not
        ``document.querySelector(s).x``): a typo must not look like a slow page.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(
                    f"{expression!r} still {value!r} after {timeout}s; console:\n"
                    f"{self._console_text()}"
                )
            await asyncio.sleep(POLL_INTERVAL)

    async def set_viewport(self, width: int, height: int) -> None:
        """Lay the page out at ``width`` x ``height`` CSS pixels (screenshots take that size)."""
        await self._send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    async def screenshot(self, path: str | os.PathLike[str]) -> Path:
        """Write a PNG of the viewport to ``path`` and return it."""
        result = await self._send("Page.captureScreenshot", {"format": "png"})
        target = Path(path)
        target.write_bytes(base64.b64decode(result["data"]))
        return target

    async def close(self) -> None:
        self._connection.forget(self.session_id)
        await self._connection.send("Target.closeTarget", {"targetId": self.target_id})


class Browser:
    """A headless Chromium for the duration of an ``async with`` block."""

    def __init__(self, executable: str = CHROMIUM) -> None:
        self.executable = executable
        self.process: subprocess.Popen[bytes] | None = None
        self.root: Path | None = None
        """The browser's temporary directory (``profile/``, ``home/``, ``chromium.log``)."""
        self._connection: _Connection | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "the browser is not running"
        return self.process.pid

    async def __aenter__(self) -> Browser:
        path = shutil.which(self.executable)
        if path is None:
            raise BrowserError(f"{self.executable} is not installed (scripts/test installs it)")
        self.root = Path(tempfile.mkdtemp(prefix="yektaws-chromium-"))
        (self.root / "home").mkdir()
        env = {**os.environ, "HOME": str(self.root / "home"), MARKER: str(self.root)}
        log = (self.root / "chromium.log").open("wb")
        try:
            self.process = subprocess.Popen(
                [path, *FLAGS, f"--user-data-dir={self.root / 'profile'}", "about:blank"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so every child dies with it
            )
        finally:
            log.close()
        try:
            self._connection = await _Connection.open(await self._endpoint())
        except BaseException:
            await self._stop()
            raise
        return self

    async def _endpoint(self) -> str:
        """The browser's DevTools WebSocket URL, once Chromium has written its port file."""
        assert self.process is not None and self.root is not None
        port_file = self.root / "profile" / "DevToolsActivePort"
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise BrowserError(f"chromium exited with {code}:\n{self._log()}")
            lines = port_file.read_text().split() if port_file.exists() else []
            if len(lines) == 2:  # written as "<port>\n<path>\n"; a partial file has fewer
                port, ws_path = lines
                return f"ws://127.0.0.1:{port}{ws_path}"
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium not ready within {LAUNCH_TIMEOUT}s:\n{self._log()}")
            await asyncio.sleep(POLL_INTERVAL)

    def _log(self) -> str:
        assert self.root is not None
        log = self.root / "chromium.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    async def new_page(self) -> Page:
        """A fresh blank tab with its console and load events enabled."""
        assert self._connection is not None, "use Browser in `async with`"
        created = await self._connection.send("Target.createTarget", {"url": "about:blank"})
        target_id = created["targetId"]
        attached = await self._connection.send(
            "Target.attachToTarget", {"targetId": target_id, "flatten": True}
        )
        page = Page(self._connection, target_id, attached["sessionId"])
        await page._send("Page.enable")
        await page._send("Runtime.enable")
        return page

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        """Close the connection, stop every process, remove the profile: each even if one fails."""
        try:
            if self._connection is not None:
                connection, self._connection = self._connection, None
                await connection.close()
        finally:
            try:
                if self.process is not None and self.root is not None:
                    await asyncio.to_thread(_stop_processes, self.process, self.root)
            finally:
                if self.root is not None:
                    root, self.root = self.root, None
                    shutil.rmtree(root)


def _stop_processes(process: subprocess.Popen[bytes], root: Path) -> None:
    """SIGTERM Chromium's process group, SIGKILL it after STOP_TIMEOUT, then every straggler."""
    group = process.pid  # start_new_session made the browser its group's leader
    _signal_group(group, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_TIMEOUT)
    _signal_group(group, signal.SIGKILL)
    process.wait()
    # Deaths are not synchronous with the signal: wait for them, or a dying helper may still
    # write into the directory while it is being removed.
    deadline = time.monotonic() + STOP_TIMEOUT
    while survivors := processes_of(root, group):
        if time.monotonic() > deadline:
            raise BrowserError(f"chromium processes {survivors} outlived SIGKILL")
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(POLL_INTERVAL)


def processes_of(root: Path, group: int) -> list[int]:
    """PIDs of the live processes of the browser in ``root`` whose leader's PID is ``group``.

    Those in its process group, and those that left the group but inherited MARKER (Chromium
    rebuilds the environment of its own children, so the marker alone would miss them).
    Zombies are not counted: they have exited and only wait to be reaped.
    """
    marker = f"{MARKER}={root}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # /proc/PID/stat: "pid (command) state ppid pgrp ..."; the command may hold spaces.
            state, _, pgrp = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue  # it ended while we looked, or is not ours to read
        if state != "Z" and (int(pgrp) == group or marker in environ):
            found.append(int(entry.name))
    return found


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


def _describe(remote: dict[str, Any]) -> str:
    """A console argument as the DevTools console shows it (strings without quotes)."""
    if "value" in remote:
        value = remote["value"]
        return value if isinstance(value, str) else json.dumps(value)
    return str(remote.get("unserializableValue") or remote.get("description") or remote["type"])


def _exception_text(details: dict[str, Any]) -> str:
    """``Error: message`` (with its stack) from an ``exceptionDetails`` or exceptionThrown event."""
    details = details.get("exceptionDetails", details)
    exception = details.get("exception", {})
    return str(exception.get("description") or exception.get("value") or details.get("text"))


def _value(remote: dict[str, Any]) -> Any:
    """A ``returnByValue`` result as Python: ``undefined`` is None, ``NaN``/``Infinity`` floats."""
    if "unserializableValue" in remote:
        raw = remote["unserializableValue"]
        return int(raw[:-1]) if raw.endswith("n") else float(raw)
    return remote.get("value")
