"""Redis for the scale-out tests: the machine's own when it answers, else a throwaway server.

A test that stops and restarts Redis always gets a :class:`RedisServer` of its own, so that it
never disturbs another test (or another run) using the shared one.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from support.gateway import free_port
from support.processes import stop_process, wait_until_serving

__all__ = ["SHARED_URL", "RedisServer", "answers"]

#: The machine's Redis, used when it answers.
SHARED_URL = "redis://127.0.0.1:6379/0"
#: How long redis-server may take to accept connections, or to exit after SIGTERM.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def answers(host: str = "127.0.0.1", port: int = 6379) -> bool:
    """Whether a Redis server answers PING at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``redis-server`` on a free port, in memory only, stopped and restarted on that port."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (scripts/test installs it)")
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="yektaws-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        self._process = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        wait_until_serving(
            self._process, lambda: answers(port=self.port), START_TIMEOUT, self._failed_to_start
        )

    def _failed_to_start(self) -> None:
        self.stop()
        raise RuntimeError(f"redis-server did not start: {self.output()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process, STOP_TIMEOUT)

    def output(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
