"""Starting, stopping and measuring the real servers the tests run (gateway, proxies, Redis)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["rss_kib", "stop_process", "wait_until_serving"]


def wait_until_serving(
    process: subprocess.Popen[bytes],
    serving: Callable[[], bool],
    timeout: float,
    failed: Callable[[], None],
) -> None:
    """Poll ``serving()`` until it is true; call ``failed()`` if the process exits or time is up."""
    deadline = time.monotonic() + timeout
    while not serving():
        if process.poll() is not None or time.monotonic() > deadline:
            failed()
            return
        time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; nothing if it has already exited."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid`` (``VmRSS``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")
