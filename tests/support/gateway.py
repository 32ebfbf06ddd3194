"""Run the real gateway as a subprocess (``python -m yektaws serve``), the way production does.

Tests that need the whole process (signals, logs, exit codes, proxies in front) use
:func:`start_gateway`; it returns once ``/health`` answers and always leaves JSON logs in a file
that :meth:`Gateway.logs` parses.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Gateway", "children", "free_port", "free_port_pair", "start_gateway"]

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_pair() -> int:
    """A port ``p`` such that ``p`` and ``p + 1`` are both free on 127.0.0.1."""
    while True:
        base = free_port()
        try:
            with socket.create_server(("127.0.0.1", base + 1)):
                return base
        except OSError:
            continue


def children(parent: int) -> list[int]:
    tasks = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in tasks]


@dataclass
class Gateway:
    """A running gateway process."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far, parsed (other lines are skipped)."""
        entries = []
        for line in self.log_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def wait_for_log(self, event: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """The first log entry named ``event`` whose fields include ``fields``, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.logs():
                if entry.get("event") == event and all(
                    entry.get(k) == v for k, v in fields.items()
                ):
                    return entry
            if time.monotonic() > deadline:
                raise AssertionError(f"no log {event} {fields} in:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    async def wait_for_log_async(
        self, event: str, timeout: float = 5.0, **fields: Any
    ) -> dict[str, Any]:
        """:meth:`wait_for_log` for async tests: the event loop keeps running meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.wait_for_log(event, timeout=0, **fields)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the process and wait for it; returns its exit code (kills it if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"gateway did not stop within {timeout}s") from None
        return self.process.returncode


def start_gateway(
    env: dict[str, str] | None = None,
    *,
    port: int | None = None,
    args: list[str] | None = None,
    ready_timeout: float = 15.0,
    program: list[str] | None = None,
    entry: list[str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> Gateway:
    """Start ``python -m yektaws serve`` on 127.0.0.1 and wait until ``/health`` answers.

    ``env`` is laid over the test process's environment, after defaults that keep the run
    hermetic (JSON logs, an embedded store in a temporary directory unless ``DATABASE_URL`` is
    given, no real AI upstream). ``program`` runs another installation instead of this
    checkout (e.g. ``[".../venv/bin/yektaws"]``), with no ``PYTHONPATH`` pointing here;
    ``entry`` replaces the interpreter arguments that run this checkout's CLI (``-m yektaws``),
    e.g. a launcher that wraps it; ``preexec`` runs in the child before it starts (resource
    limits).
    """
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="yektaws-gw-"))
    log_path = workdir / "gateway.log"
    full_env = {
        **os.environ,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        "EMBEDDED_DB_PATH": str(workdir / "sessions.db"),
        "AI_BASE_URL": "",
        "PYTHONUNBUFFERED": "1",
        # The gateway under test is this checkout's, whatever the venv's editable install says.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **(env or {}),
    }
    if program is not None:
        full_env.pop("PYTHONPATH")
    command = [*(program or [sys.executable, *(entry or ["-m", "yektaws"])]), "serve"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*command, *(args or [])],
            cwd=workdir,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )
    gateway = Gateway(process, port, log_path, full_env)
    deadline = time.monotonic() + ready_timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"gateway exited with {process.returncode}:\n{gateway.log_text()}")
        try:
            with urllib.request.urlopen(f"{gateway.http_url}/health", timeout=1) as response:
                if response.status == 200:
                    return gateway
        except OSError:
            pass
        if time.monotonic() > deadline:
            gateway.stop(signal.SIGKILL)
            raise AssertionError(f"gateway not healthy in {ready_timeout}s:\n{gateway.log_text()}")
        time.sleep(0.05)
