"""The operator console in a real headless Chromium, as an operator uses it.

The browser logs in through the form, watches the counts change as a native and a Socket.IO client
of one user connect, inspects that user and disconnects it through the page; the clients see 4001
and ``session:expired``. A screenshot of the console is kept under ``$YEKTAWS_TEST_ARTIFACTS``
(default ``tests/artifacts/``) for a person to look at.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.browser import Browser, BrowserError, Page
from support.clients import NativeClient, SocketIOClient, connect
from support.cluster import API_KEY, start_node
from support.console import console_url
from support.gateway import REPO, Gateway

pytestmark = pytest.mark.timeout(120)

ARTIFACTS = Path(os.environ.get("YEKTAWS_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
USER = 4242
#: A wide laptop screen: the whole console above the fold but the connection lists.
VIEWPORT = (1440, 1100)


@pytest.fixture(scope="module")
def gateway(database_url: str, redis_url: str) -> Iterator[Gateway]:
    node = start_node(database_url, redis_url, f"yektaws-test-{uuid.uuid4().hex[:12]}")
    yield node
    node.stop()


async def settled(page: Page, expression: str, timeout: float = 15.0) -> object:
    """Like ``page.wait_for``, but across a navigation (the form's POST and its redirect)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await page.wait_for(expression, timeout=max(0.1, deadline - time.monotonic()))
        except BrowserError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def text(element_id: str) -> str:
    return f"(document.getElementById({json.dumps(element_id)})?.textContent ?? '')"


def click(selector: str) -> str:
    return f"document.querySelector({json.dumps(selector)}).click()"


def type_into(selector: str, value: str) -> str:
    return f"document.querySelector({json.dumps(selector)}).value = {json.dumps(value)}"


async def test_an_operator_watches_and_disconnects_a_user_in_chromium(
    gateway: Gateway, browser: Browser, make_token: Callable[..., str]
) -> None:
    page = await browser.new_page()
    await page.set_viewport(*VIEWPORT)
    await page.goto(console_url(gateway))
    assert await page.evaluate("document.cookie") == ""
    await page.evaluate(type_into("#key", API_KEY))
    await page.evaluate(click("#login"))
    await settled(page, f"{text('t-connections')} === '0'")
    assert await page.evaluate("document.cookie") == ""  # HttpOnly: no script sees it
    assert API_KEY not in await page.evaluate("location.href")

    native = await connect(
        "native-websocket", gateway.http_url, make_token(user_id=USER, logged_in=True)
    )
    sio = await connect("socket.io", gateway.http_url, make_token(user_id=USER, logged_in=True))
    assert isinstance(native, NativeClient) and isinstance(sio, SocketIOClient)
    try:
        await native.expect("connected")
        await sio.expect("connected")
        await page.wait_for(f"{text('t-connections')} === '2'", timeout=10)
        split = await page.evaluate(text("t-connections-split"))
        assert split == "native 1 · Socket.IO 1 ws, 0 polling"
        assert await page.evaluate(text("t-users")) == "1"
        await page.wait_for(
            "document.querySelectorAll('#connections tbody tr a[data-user]').length === 2"
        )

        await page.evaluate(type_into("#inspect-user", str(USER)))
        await page.evaluate(click("#inspect"))
        await page.wait_for(f"{text('inspect-title')} === 'User {USER}: 2 connections'")
        await page.wait_for(f"{text('updated')}.startsWith('updated')")
        await page.wait_for(  # a few samples, so the charts have lines to show
            "document.querySelectorAll('#c-connections polyline')[1]"
            "?.getAttribute('points').split(' ').length >= 3",
            timeout=15,
        )
        await page.evaluate("window.scrollTo(0, 0)")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = await page.screenshot(ARTIFACTS / "console.png")
        assert shot.stat().st_size > 10_000

        await page.evaluate(type_into("#disconnect-reason", "account review"))
        await page.evaluate(click("#disconnect-user"))  # arms the button
        assert await page.evaluate(text("disconnect-user")) == "Confirm"
        await page.evaluate(click("#disconnect-user"))

        assert await native.wait_closed() == 4001
        assert native.close_reason == "account review"
        assert await sio.expect("session:expired") == {"reason": "account review"}
        await page.wait_for(f"{text('inspect-title')} === 'User {USER}: 0 connections'")
        await page.wait_for(f"{text('t-connections')} === '0'", timeout=10)
    finally:
        await native.close()
        await sio.close()

    problems = [m for m in page.console if m.type in {"error", "exception", "assert"}]
    assert problems == []

    audit = gateway.wait_for_log("console_disconnect", target=str(USER))
    assert audit["operator"] == "127.0.0.1"
    assert API_KEY not in gateway.log_text()
