"""The process's file-descriptor budget: handshakes are refused before descriptors run out.

Every connection is a descriptor, and so is everything else the gateway needs to go on working:
its PostgreSQL pool, Redis, the AI upstream, the log, the sockets its refusals are written on.
When the process reaches ``RLIMIT_NOFILE`` the kernel refuses ``accept()``: uvloop (libuv)
then accepts and drops each waiting connection (the client sees a reset, not a reason), and
anything else that needs a descriptor fails with ``EMFILE`` (a pool that cannot reconnect, an AI
request that cannot start). :class:`DescriptorBudget` keeps :data:`DESCRIPTOR_RESERVE`
descriptors free for those: once the open descriptors reach ``RLIMIT_NOFILE - reserve``, new
handshakes are refused with 503 and ``Retry-After`` (see :mod:`yektaws.admission`) while the
connections already open are served, and handshakes succeed again as soon as connections close.

Counting the open descriptors (``/proc/self/fd``) costs time proportional to their number, so it
is not done per handshake: a count is kept up to date by adding one per handshake allowed, and
recounted when that estimate reaches the limit and otherwise every :data:`RECOUNT_INTERVAL`
once past half of it, every :data:`FAR_RECOUNT_INTERVAL` below (descriptors also close, and the
pool and the AI client open their own). The limit is read again at each count, so a limit changed
on the running process (``prlimit``) applies from the next one. Where ``/proc/self/fd`` does not
exist the budget never refuses.
"""

from __future__ import annotations

import os
import resource
import time

__all__ = [
    "DESCRIPTOR_RESERVE",
    "FAR_RECOUNT_INTERVAL",
    "RECOUNT_INTERVAL",
    "DescriptorBudget",
]

#: Descriptors kept free for what is not a client connection (database pool, Redis, AI upstream,
#: the log, and the sockets of refusals being written), and for handshakes admitted between two
#: counts.
DESCRIPTOR_RESERVE = 64

#: Past half the limit, the longest an estimate is trusted before the descriptors are counted again.
RECOUNT_INTERVAL = 0.5
#: Under half the limit, the same (a count costs time proportional to the descriptors open).
FAR_RECOUNT_INTERVAL = 10.0

_FD_DIRECTORY = "/proc/self/fd"


class DescriptorBudget:
    """Whether the process may take one more connection (see the module docstring)."""

    def __init__(self, reserve: int = DESCRIPTOR_RESERVE) -> None:
        self._reserve = reserve
        self._counting = os.path.isdir(_FD_DIRECTORY)
        self._estimate = 0
        self._ceiling = 0  # the limit minus the reserve, as of the last count
        self._recount_at = 0.0
        self._recount()

    def exhausted(self) -> bool:
        """True when a new connection would eat into the reserve; else counts one more open."""
        if not self._counting:
            return False
        if self._estimate >= self._ceiling or time.monotonic() >= self._recount_at:
            self._recount()
            if self._estimate >= self._ceiling:
                return True
        self._estimate += 1
        return False

    def _recount(self) -> None:
        if not self._counting:
            return
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            self._counting = False
            return
        self._ceiling = max(0, soft - self._reserve)
        self._estimate = len(os.listdir(_FD_DIRECTORY))
        near = self._estimate >= self._ceiling // 2
        interval = RECOUNT_INTERVAL if near else FAR_RECOUNT_INTERVAL
        self._recount_at = time.monotonic() + interval
