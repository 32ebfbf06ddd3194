"""Token buckets: the one rate-limiting mechanism, per connection and per process.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second. Taking a token is a
few float operations and no allocation, so it can sit on the per-message path.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["TokenBucket"]


class TokenBucket:
    """``burst`` tokens, refilled continuously at ``rate`` per second."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_take(self) -> bool:
        """Take one token if there is one; never waits."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    async def take(self, timeout: float) -> bool:
        """Take one token, waiting up to ``timeout`` seconds for it; False if none came.

        Waiters are served in arrival order in practice: each one sleeps exactly as long as the
        deficit ahead of it needs, by reserving its token (driving the balance negative) at once.
        """
        self._refill()
        self._tokens -= 1.0
        if self._tokens >= 0.0:
            return True
        wait = -self._tokens / self.rate
        if wait > timeout:
            self._tokens += 1.0  # give the reservation back: this caller gives up
            return False
        await asyncio.sleep(wait)
        return True
