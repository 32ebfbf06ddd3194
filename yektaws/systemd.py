"""A small client for systemd's service notification protocol (``sd_notify(3)``).

Under ``Type=notify`` the service manager passes the path of a datagram socket in
``$NOTIFY_SOCKET`` and waits for the service to send ``READY=1`` before it counts the unit as
started. The protocol is one ``AF_UNIX``/``SOCK_DGRAM`` datagram per notification holding
newline-separated ``KEY=VALUE`` lines; a path starting with ``@`` names a socket in Linux's
abstract namespace. That is all this module speaks, so it needs no third-party package.

Every function is a no-op returning ``False`` when ``$NOTIFY_SOCKET`` is unset, which is the case
whenever the gateway is not run by systemd (a shell, a container, the test suite), so callers never
have to check first.

Where yektaws sends what:

- :func:`ready` once the listener is bound and the session store has answered;
- :func:`stopping` when a drain starts, so ``systemctl`` shows "deactivating" while connections
  are closed rather than a service that ignores its stop request;
- :func:`watchdog` every :func:`watchdog_interval` seconds, from :func:`run_watchdog`, if the unit
  sets ``WatchdogSec=``: a stalled event loop then stops pinging and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

__all__ = [
    "notify",
    "ready",
    "run_watchdog",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]

logger = logging.getLogger(__name__)

#: Environment variables set by the service manager.
NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"


def _socket_address(value: str) -> str | None:
    """Turn ``$NOTIFY_SOCKET`` into an address for :meth:`socket.socket.sendto`.

    Only the two forms of ``AF_UNIX`` address are supported: an absolute path, and ``@name`` for
    the abstract namespace (the leading ``@`` becomes a NUL byte). Newer systemd also accepts
    ``vsock:`` addresses for virtual machines; yektaws never runs as a VM's init, so those and any
    other form are refused rather than guessed at.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def notify(*lines: str) -> bool:
    """Send ``lines`` (each ``KEY=VALUE``) to the service manager in a single datagram.

    Returns ``True`` if the datagram was sent, ``False`` if ``$NOTIFY_SOCKET`` is unset or
    unusable or the send failed. A failed send is logged, not raised: the notification is advice
    to the service manager, and a gateway that is serving clients must not die because it could
    not say so (systemd's own ``sd_notify`` likewise reports the error and lets the caller go on).

    Raises :class:`ValueError` if a line is not of the form ``KEY=VALUE`` or contains a newline,
    since the line break is the protocol's separator and would split it into two assignments.
    """
    for line in lines:
        if "\n" in line or "=" not in line:
            raise ValueError(f"not a single KEY=VALUE line: {line!r}")
    value = os.environ.get(NOTIFY_SOCKET_ENV)
    if not value:
        return False
    address = _socket_address(value)
    if address is None:
        logger.warning("ignoring unsupported %s=%r", NOTIFY_SOCKET_ENV, value)
        return False
    message = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        logger.warning("sd_notify to %s failed: %s", value, exc)
        return False
    return True


def ready() -> bool:
    """Tell the service manager that start-up is complete (``READY=1``)."""
    return notify("READY=1", "STATUS=Serving")


def stopping() -> bool:
    """Tell the service manager that shutdown has begun (``STOPPING=1``)."""
    return notify("STOPPING=1", "STATUS=Draining connections")


def watchdog() -> bool:
    """Reset the service's watchdog timer (``WATCHDOG=1``)."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """Set the one-line status shown by ``systemctl status`` (``STATUS=text``).

    Line breaks in ``text`` are replaced by spaces, since the status is one line of the protocol.
    """
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval() -> float | None:
    """Return how often, in seconds, to call :func:`watchdog`, or ``None`` if no one is watching.

    Mirrors ``sd_watchdog_enabled(3)``: the watchdog is on when ``$WATCHDOG_USEC`` holds a
    positive integer and ``$WATCHDOG_PID``, if set, is this process's PID (a child that inherited
    the variables must not ping on its parent's behalf). The interval is half of the period, as
    that man page recommends, so one late ping still arrives in time.
    """
    usec = os.environ.get(WATCHDOG_USEC_ENV)
    if not usec:
        return None
    pid = os.environ.get(WATCHDOG_PID_ENV)
    try:
        period_usec = int(usec)
        if pid is not None and int(pid) != os.getpid():
            return None
    except ValueError:
        logger.warning(
            "ignoring malformed %s=%r / %s=%r", WATCHDOG_USEC_ENV, usec, WATCHDOG_PID_ENV, pid
        )
        return None
    if period_usec <= 0:
        return None
    return period_usec / 2_000_000


async def run_watchdog(interval: float) -> None:
    """Ping the watchdog every ``interval`` seconds until cancelled.

    Run it as a task for the whole life of the process, drain included: systemd keeps enforcing
    ``WatchdogSec=`` until the stop begins, and a ping that depends on the event loop turning is
    exactly the liveness signal wanted. Cancel the task last, after the drain has finished.
    """
    if interval <= 0:
        raise ValueError(f"watchdog interval must be positive, got {interval}")
    while True:
        watchdog()
        await asyncio.sleep(interval)
