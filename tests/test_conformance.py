"""RFC 6455 conformance of the native transport: the Autobahn|Testsuite cases, run by kosoku.

The target is the native transport with an echoing read loop (scripts/conformance says why);
sections 1-10 run in the default suite, 12 and 13 (permessage-deflate) in the slow one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import WSMsgType, web

from support.conformance import (
    BASIC_SECTIONS,
    COMPRESSION_SECTIONS,
    EXCLUDED,
    REPO,
    Target,
    failures,
    run_cases,
    start_target,
    tally,
    verdict,
)


def describe(results: list) -> str:
    return "\n".join(
        f"{r.case_id}: {verdict(r)}: {r.result} {r.result_close}" for r in failures(results)
    )


@pytest.fixture
def target() -> Iterator[Target]:
    process = start_target()
    yield process
    process.stop()


async def test_sections_1_to_10_every_case_passes(target: Target) -> None:
    results = await run_cases(target.url, BASIC_SECTIONS, list(EXCLUDED))
    counts = tally(results)
    assert len(results) == 301 - len(EXCLUDED), counts
    assert not failures(results), describe(results)
    # Not vacuous: nearly every case is a strict pass, not merely informational.
    assert counts["OK"] >= 290, counts


async def test_reserved_close_code_1006_is_answered_with_1002(target: Target) -> None:
    (result,) = await run_cases(target.url, ["7.9.5"])
    assert verdict(result) == "OK", describe([result])
    assert result.remote_close_code == 1002


@pytest.fixture
async def stock_aiohttp_echo() -> AsyncIterator[str]:
    """A plain aiohttp echo server, without yektaws's guards."""

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await ws.send_str(message.data)
        return ws

    app = web.Application()
    app.router.add_get("/", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"ws://127.0.0.1:{port}/"
    await runner.cleanup()


async def test_the_judge_catches_stock_aiohttp_on_7_9_5(stock_aiohttp_echo: str) -> None:
    """The control for the test above: without the guard the same case fails.

    When this starts failing, aiohttp rejects 1006 itself (aio-libs/aiohttp#13536 released) and
    FrameGuard's close-code check may go.
    """
    (result,) = await run_cases(stock_aiohttp_echo, ["7.9.5"])
    assert verdict(result) != "OK"
    assert result.remote_close_code == 1000  # aiohttp answered the reserved code as a normal close


def test_script_prints_the_counts_and_exits_zero() -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / "conformance"), "-i", "1.1.*", "-i", "7.9.*"],
        env={**os.environ, "VIRTUAL_ENV": sys.prefix},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kosoku: 17 cases against ws://127.0.0.1:" in done.stdout
    assert "  OK               17" in done.stdout
    assert "token=***" in done.stdout  # the token is not printed


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_full_suite_with_compression_every_case_passes() -> None:
    target = start_target(compression=True)
    try:
        results = await run_cases(
            target.url, [*BASIC_SECTIONS, *COMPRESSION_SECTIONS], list(EXCLUDED), parallelism=2
        )
    finally:
        target.stop()
    assert len(results) == 301 + 216 - len(EXCLUDED), tally(results)
    assert not failures(results), describe(results)
