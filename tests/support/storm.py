"""A storm of bad connections: refused handshakes and connections that break a rule at once.

Used by the memory test in ``tests/test_attacks.py`` and by ``bench/memory-storms``, which
measures what each storm leaves behind in the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from support.rawws import OP_TEXT, RawConnection, frame, upgrade_request

__all__ = ["BAD_UTF8", "CONCURRENCY", "storm"]

#: Connections in flight at once: under the default per-address and per-owner caps.
CONCURRENCY = 15

BAD_UTF8 = b'{"event":"echo","data":"\xc3\x28"}'


def _abuses(max_message: int) -> list[bytes]:
    return [
        frame(OP_TEXT, b"x", mask=False),  # 1002
        frame(OP_TEXT, BAD_UTF8),  # 1007
        frame(OP_TEXT, b" " * (max_message + 1)),  # 1009
        frame(OP_TEXT, b"not json") * 5,  # five error replies, then dropped without a close
    ]


async def _rejected_handshake(port: int) -> None:
    conn = await RawConnection.open(port)
    try:
        assert (await conn.request(upgrade_request("/ws?token=nope"))).status == 401
    finally:
        conn.abort()


async def _abusive_connection(port: int, token: str, abuse: bytes) -> None:
    conn = await RawConnection.upgraded(port, f"/ws?token={token}")
    try:
        await conn.read_event()
        await conn.send(abuse)
        await conn.read_frame()
    finally:
        conn.abort()


async def storm(
    port: int, tokens: list[str], *, rejected: int, abusive: int, max_message: int
) -> None:
    """``rejected`` handshakes refused with 401, then ``abusive`` connections each sending one of
    the abuses (unmasked frame, bad UTF-8, oversize message, garbage), spread over ``tokens``."""
    limit = asyncio.Semaphore(CONCURRENCY)
    abuses = _abuses(max_message)

    async def one(job: Awaitable[None]) -> None:
        async with limit:
            await job

    jobs = [_rejected_handshake(port) for _ in range(rejected)]
    jobs += [
        _abusive_connection(port, tokens[n % len(tokens)], abuses[n % len(abuses)])
        for n in range(abusive)
    ]
    await asyncio.gather(*(one(job) for job in jobs))
