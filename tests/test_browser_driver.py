"""The headless-Chromium driver (tests/support/browser.py) against real pages and a real gateway.

Pages come from an aiohttp server on 127.0.0.1; the last tests open the browser's own native
``WebSocket`` to a gateway subprocess, the ground the browser-client suites build on.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from support.browser import Browser, BrowserError, ConsoleMessage, processes_of
from support.gateway import Gateway, free_port

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>driver test</title></head>
<body>
  <h1>Sign in</h1>
  <input id="name"> <button id="greet">Greet</button>
  <p id="out"></p>
  <script>
    document.getElementById("greet").addEventListener("click", () => {
      document.getElementById("out").textContent =
        "Hello, " + document.getElementById("name").value;
    });
    console.log("page loaded", 42);
  </script>
</body></html>
"""


def open_socket(url: str, token: str) -> str:
    """JS opening the browser's native WebSocket with the bearer subprotocol, as an app does.

    It resolves with the subprotocol and the first frame, or with the close code if no frame came.
    """
    protocols = json.dumps(["yektaws.v1", f"bearer.{token}"])
    return f"""new Promise((resolve) => {{
  const ws = new WebSocket({json.dumps(url)}, {protocols});
  ws.onmessage = (event) => {{
    resolve({{protocol: ws.protocol, frame: JSON.parse(event.data)}});
    ws.close();
  }};
  ws.onclose = (event) => resolve({{closed: event.code}});
}})"""


@pytest.fixture
async def site() -> AsyncIterator[str]:
    """The test page at ``http://127.0.0.1:<port>/``."""
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app.router.add_get("/", page)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("/"))


def processes_naming(text: str) -> list[int]:
    """PIDs of the live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue  # it ended while we looked (a zombie's cmdline is empty)
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


async def test_evaluate_returns_values_and_awaits_promises(browser: Browser, site: str) -> None:
    page = await browser.new_page()
    await page.goto(site)
    assert await page.evaluate("6 * 7") == 42
    assert await page.evaluate("document.title") == "driver test"
    assert await page.evaluate("({list: [1, 'two', null], ok: true})") == {
        "list": [1, "two", None],
        "ok": True,
    }
    assert await page.evaluate("new Promise(r => setTimeout(() => r('later'), 50))") == "later"
    assert await page.evaluate("undefined") is None
    await page.close()


async def test_console_messages_and_uncaught_exceptions_are_recorded(
    browser: Browser, site: str
) -> None:
    page = await browser.new_page()
    await page.goto(site)
    assert ConsoleMessage("log", "page loaded 42") in page.console
    await page.evaluate("console.warn('careful', {n: 1})")
    assert ConsoleMessage("warning", "careful Object") in page.console
    await page.evaluate(
        "setTimeout(() => { throw new Error('late boom') }, 0);"
        "setTimeout(() => { window.thrown = true }, 10)"
    )
    await page.wait_for("window.thrown")
    (uncaught,) = [message for message in page.console if message.kind == "exception"]
    assert uncaught.text.startswith("Error: late boom")


async def test_a_thrown_exception_raises_with_the_console_so_far(
    browser: Browser, site: str
) -> None:
    page = await browser.new_page()
    await page.goto(site)
    with pytest.raises(BrowserError) as thrown:
        await page.evaluate("console.log('about to fail'); throw new TypeError('boom')")
    assert "TypeError: boom" in str(thrown.value)
    assert "log: about to fail" in str(thrown.value)
    with pytest.raises(BrowserError, match="Error: rejected"):
        await page.evaluate("Promise.reject(new Error('rejected'))")


async def test_fill_and_click_change_the_dom(browser: Browser, site: str) -> None:
    page = await browser.new_page()
    await page.goto(site)
    assert await page.evaluate("document.getElementById('out').textContent") == ""
    await page.evaluate(
        "document.getElementById('name').value = 'Sara';document.getElementById('greet').click()"
    )
    text = await page.wait_for("document.getElementById('out').textContent")
    assert text == "Hello, Sara"


async def test_wait_for_times_out_with_the_expression_and_its_value(
    browser: Browser, site: str
) -> None:
    page = await browser.new_page()
    await page.goto(site)
    with pytest.raises(BrowserError, match=r"'document\.querySelector\(\"#missing\"\)' still None"):
        await page.wait_for('document.querySelector("#missing")', timeout=0.3)


async def test_a_failed_navigation_raises(browser: Browser) -> None:
    page = await browser.new_page()
    with pytest.raises(BrowserError, match="ERR_CONNECTION_REFUSED"):
        await page.goto(f"http://127.0.0.1:{free_port()}/")


async def test_screenshot_is_a_png_of_the_viewport(
    browser: Browser, site: str, tmp_path: Path
) -> None:
    page = await browser.new_page()
    await page.goto(site)
    width, height = await page.evaluate(
        "[innerWidth, innerHeight].map(n => Math.round(n * devicePixelRatio))"
    )
    data = (await page.screenshot(tmp_path / "page.png")).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    # IHDR is always the first chunk: length, b"IHDR", then width and height, big-endian.
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (width, height)
    assert len(data) > 2048, "a rendered page with text, not an empty image"


async def test_no_chromium_process_survives_the_context_manager(site: str) -> None:
    async with Browser() as browser:
        page = await browser.new_page()
        await page.goto(site)
        pid, root = browser.pid, browser.root
        assert root is not None and (root / "profile").is_dir()
        # The browser starts renderers and helpers: stopping it must stop them too.
        assert len(processes_naming(str(root))) > 1
        assert len(processes_of(root, pid)) > 1
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert processes_naming(str(root)) == []
    assert processes_of(root, pid) == []
    assert not root.exists()


async def test_a_page_opens_a_native_websocket_to_the_gateway(
    browser: Browser,
    site: str,
    gateway_factory: Callable[..., Gateway],
    make_token: Callable[..., str],
) -> None:
    origin = site.rstrip("/")
    gateway = gateway_factory(CORS_ORIGIN=origin)
    token = make_token(user_id=11, logged_in=True)
    page = await browser.new_page()
    await page.goto(site)
    opened = await page.evaluate(open_socket(f"{gateway.ws_url}/ws", token))
    assert opened["protocol"] == "yektaws.v1"
    assert opened["frame"]["event"] == "connected"
    assert opened["frame"]["data"]["protocol"] == "native-websocket"
    assert opened["frame"]["data"]["isLoggedIn"] is True


async def test_the_gateway_refuses_a_page_whose_origin_is_not_listed(
    browser: Browser,
    site: str,
    gateway_factory: Callable[..., Gateway],
    make_token: Callable[..., str],
) -> None:
    """A browser always sends ``Origin``: pages need their origin in ``CORS_ORIGIN``."""
    gateway = gateway_factory(CORS_ORIGIN="https://app.example")
    page = await browser.new_page()
    await page.goto(site)
    opened = await page.evaluate(open_socket(f"{gateway.ws_url}/ws", make_token()))
    assert opened == {"closed": 1006}  # the handshake was refused: no frame, no close frame
    gateway.wait_for_log("reject", protocol="native-websocket", reason="origin")


async def test_a_missing_chromium_fails_loudly() -> None:
    with pytest.raises(BrowserError, match="not installed"):
        async with Browser("chromium-that-is-not-installed"):
            pass
