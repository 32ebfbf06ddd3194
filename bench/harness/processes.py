"""Starting pinned processes, and stopping every one of them by PID whatever happens."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

# The two cores of the machine: the server gets one, the load client the other.
SERVER_CPU = 0
CLIENT_CPU = 1
# Grace given to a process between SIGTERM and SIGKILL.
STOP_GRACE_SECONDS = 5.0
# How long a server may take to answer /health after it was started.
STARTUP_SECONDS = 30.0
# Open files needed: 5000 idle connections on each side, plus headroom.
WANTED_OPEN_FILES = 65536

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def raise_open_files_limit() -> int:
    """Raise RLIMIT_NOFILE as far as allowed (children inherit it); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (max(hard, WANTED_OPEN_FILES), hard):
        # Raising the hard limit needs CAP_SYS_RESOURCE, which containers often drop.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return limit
    return soft


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_run(count: int, avoid: set[int]) -> int:
    """A port ``p`` such that ``p`` to ``p + count - 1`` are free on 127.0.0.1 and none is in
    ``avoid`` (ports chosen already but not yet bound)."""
    while True:
        base = free_port()
        wanted = set(range(base, base + count))
        if wanted & avoid:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in sorted(wanted):
                    held.enter_context(socket.create_server(("127.0.0.1", port)))
            except OSError:
                continue
        return base


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used so far."""
    return sum(cpu_times(pid))


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time ``pid`` has used so far, apart."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command name, which may itself contain spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / _CLOCK_TICKS, int(fields[12]) / _CLOCK_TICKS


def machine_ticks() -> tuple[int, int]:
    """The machine's CPU time so far, in clock ticks: ``(stolen, all)`` from ``/proc/stat``.

    Stolen time is what the hypervisor gave another guest while this one wanted to run; between
    two samples its share says how far the figures of that stretch can be trusted (0 where the
    kernel does not count it).
    """
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


class Processes:
    """Every process the benchmark starts, so that all of them can be stopped by PID."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: Sequence[str],
        *,
        cpu: int,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        pipe_stdio: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` pinned to ``cpu`` (taskset execs it, so the PID is the program's)."""
        output: IO[bytes] | int = subprocess.DEVNULL
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            output = log.open("ab")
        try:
            proc = subprocess.Popen(
                ["taskset", "-c", str(cpu), *argv],
                stdin=subprocess.PIPE if pipe_stdio else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe_stdio else output,
                stderr=output,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                # Its own process group: Ctrl-C reaches the runner only, which then stops it.
                start_new_session=True,
            )
        finally:
            if not isinstance(output, int):
                output.close()
        self._running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; forget the process.

        A supervisor (``yektaws serve --workers N``) needs a grace longer than its workers'
        drain: SIGKILL would leave the workers running without it.
        """
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        if proc in self._running:
            self._running.remove(proc)

    def stop_all(self, grace: float = STOP_GRACE_SECONDS) -> None:
        for proc in list(reversed(self._running)):
            self.stop(proc, grace)

    @contextlib.contextmanager
    def running(
        self, argv: Sequence[str], *, cpu: int, log: Path, env: Mapping[str, str], cwd: Path
    ) -> Iterator[subprocess.Popen[bytes]]:
        """Run ``argv`` for the duration of a ``with`` block."""
        proc = self.start(argv, cpu=cpu, log=log, env=env, cwd=cwd)
        try:
            yield proc
        finally:
            self.stop(proc)


def wait_healthy(proc: subprocess.Popen[bytes], port: int) -> None:
    """Return once ``GET /health`` answers 200; raise if the server dies or never does."""
    deadline = time.monotonic() + STARTUP_SECONDS
    url = f"http://127.0.0.1:{port}/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was healthy")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server did not answer {url} within {STARTUP_SECONDS:.0f} s")
