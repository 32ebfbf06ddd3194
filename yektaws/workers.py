"""``yektaws serve --workers N``: N gateway processes on one machine, supervised by a parent.

The parent binds every listening socket before it starts a worker, so a port in use is one clear
error at start, and a restarted worker gets the very same sockets back (its public one bound
anew):

- the public port (``HOST:WEBSOCKET_PORT``), one socket per worker, all bound with
  ``SO_REUSEPORT``: the kernel spreads new connections over them by a hash of the addresses.
  (One socket shared by every worker goes to whichever wakes first, which under light load is
  mostly the same one: measured, 133 of 200 handshakes one after another went to worker 0, and
  all 20 of a test's; WebSocket connections last, so the imbalance stays.) WebSocket
  connections (native, or Socket.IO's websocket transport) need nothing more. While a worker is
  down its socket is closed, so that new connections go to the others instead of waiting for the
  restart (the ones already queued on it are reset, as its own connections were);
- one private port per worker, ``HOST:WORKER_BASE_PORT + i``. Engine.IO long-polling is a series
  of HTTP requests that must all reach the process holding the session, so worker ``i`` issues
  session ids starting with ``w<i>.`` and the reverse proxy sends every request whose ``sid``
  carries that prefix to worker ``i``'s private port (the shipped nginx site does);
- the server API port (``ADMIN_HOST:ADMIN_PORT``), shared like the public one, when
  ``ADMIN_API_KEY`` is set: any worker can answer, the bus reaches all of them.

Workers reach each other only through the bus, so ``N > 1`` requires ``REDIS_URL``. The sockets
travel to each worker as inherited file descriptors named in :data:`WORKER_ENV`.

Supervision: a worker that exits on its own is started again after a backoff (doubling from
:data:`RESTART_BACKOFF_MIN` to :data:`RESTART_BACKOFF_MAX`, reset once a worker has run for
:data:`STABLE_AFTER`). The first SIGTERM or SIGINT is forwarded to every worker, which drains;
the parent waits for them (at most ``DRAIN_TIMEOUT`` and a margin) and exits 0 when they all
exited 0. A second signal kills the workers and exits 130. Workers ignore a repeated signal
themselves, since a terminal's Ctrl-C or systemd's stop reaches the whole process group. A worker
whose parent disappears drains and exits; it watches from a thread of its own, and if it is still
there ``DRAIN_TIMEOUT`` + :data:`STOP_MARGIN` after its parent went (its event loop stuck, say in
a log write to a pipe nobody reads), it exits with :data:`EXIT_FORCED` all the same.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from yektaws.logging import get_logger
from yektaws.settings import Settings

__all__ = ["EXIT_FORCED", "STOP_MARGIN", "WORKER_ENV", "WorkerError", "WorkerSockets", "supervise"]

log = get_logger("yektaws.workers")

#: The environment variable that tells a process it is worker ``index`` and which descriptors
#: hold its listening sockets (JSON: ``{"index", "public", "private", "admin"}``).
WORKER_ENV = "YEKTAWS_WORKER"
#: The exit code when a second signal cut the workers' drain short (as for one process).
EXIT_FORCED = 130
#: Most workers one parent runs.
MAX_WORKERS = 64
#: Listen queue of each socket the parent binds (as the single-process listener has).
BACKLOG = 1024
RESTART_BACKOFF_MIN = 0.5
RESTART_BACKOFF_MAX = 30.0
#: Seconds after which a running worker counts as healthy and its backoff starts over.
STABLE_AFTER = 60.0
#: How often the parent looks at its workers.
_POLL = 0.2
#: What the parent allows a worker beyond DRAIN_TIMEOUT to finish its drain before killing it;
#: a worker whose parent is gone allows itself as much (see yektaws.server).
STOP_MARGIN = 10.0


class WorkerError(Exception):
    """The workers cannot be started; the message says why, ``exit_code`` is the CLI's.

    2 for a configuration that cannot work (as for an invalid setting), 1 for a port in use.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class WorkerSockets:
    """What a worker inherits from the parent: its index and its listening sockets."""

    index: int
    public: socket.socket
    private: socket.socket
    admin: socket.socket | None

    @classmethod
    def from_env(
        cls, environ: dict[str, str] | os._Environ[str] = os.environ
    ) -> WorkerSockets | None:
        """The sockets named in :data:`WORKER_ENV`, or ``None`` for a process that is no worker."""
        raw = environ.get(WORKER_ENV)
        if not raw:
            return None
        spec = json.loads(raw)
        admin = spec.get("admin")
        return cls(
            index=int(spec["index"]),
            public=socket.socket(fileno=int(spec["public"])),
            private=socket.socket(fileno=int(spec["private"])),
            admin=socket.socket(fileno=int(admin)) if admin is not None else None,
        )


def check_ports(settings: Settings, workers: int) -> list[tuple[str, str, int]]:
    """Every ``(role, host, port)`` the workers need, or :class:`WorkerError` if they clash."""
    if not 1 <= workers <= MAX_WORKERS:
        raise WorkerError(f"--workers must be between 1 and {MAX_WORKERS}")
    if workers > 1 and not settings.redis_url:
        raise WorkerError(
            "--workers above 1 needs REDIS_URL: without a broker an emit, disconnect or "
            "presence query would reach one worker's clients only"
        )
    wanted = [("public", settings.host, settings.port)]
    wanted += [
        (f"worker {index}", settings.host, settings.worker_base_port + index)
        for index in range(workers)
    ]
    if settings.admin_api_key:
        wanted.append(("server API", settings.admin_host, settings.admin_port))
    seen: dict[int, str] = {}
    for role, _host, port in wanted:
        if port > 65535:
            raise WorkerError(f"{role}: port {port} is beyond 65535 (lower WORKER_BASE_PORT)")
        if port in seen:
            raise WorkerError(f"{role} and {seen[port]} would both use port {port}")
        seen[port] = role
    return wanted


def _bind(role: str, host: str, port: int, *, shared: bool = False) -> socket.socket:
    """A listening socket on ``host:port`` for the workers to inherit; ``shared``: one of the
    ``SO_REUSEPORT`` group of the public port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG, reuse_port=shared)
    except OSError as exc:
        raise _unavailable(role, host, port, exc) from None
    sock.set_inheritable(True)
    return sock


def _unavailable(role: str, host: str, port: int, exc: OSError) -> WorkerError:
    return WorkerError(f"cannot listen on {host}:{port} ({role}): {exc.strerror}", exit_code=1)


def _check_free(role: str, host: str, port: int) -> None:
    """Fail if anything listens on ``host:port``, even another ``SO_REUSEPORT`` group of ours
    (an old instance still running), which the group's own sockets would silently join."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))  # bound only, never listening: no connection lands here
        except OSError as exc:
            raise _unavailable(role, host, port, exc) from None


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = RESTART_BACKOFF_MIN
    restart_at: float = 0.0


class _Supervisor:
    def __init__(self, settings: Settings, workers: int, argv: list[str]) -> None:
        self._settings = settings
        self._argv = argv
        self._sockets: dict[str, socket.socket] = {}
        #: Each running worker's socket of the public port's SO_REUSEPORT group, by index.
        self._public: dict[int, socket.socket] = {}
        self._workers = [_Worker(index) for index in range(workers)]
        self._signals: list[int] = []

    def bind(self, wanted: list[tuple[str, str, int]]) -> None:
        try:
            for role, host, port in wanted:
                if role == "public":
                    _check_free(role, host, port)
                    for worker in self._workers:
                        self._public[worker.index] = _bind(role, host, port, shared=True)
                else:
                    self._sockets[role] = _bind(role, host, port)
        except WorkerError:
            self.close()
            raise

    def close(self) -> None:
        for sock in [*self._sockets.values(), *self._public.values()]:
            sock.close()

    def _spec(self, index: int) -> dict[str, Any]:
        admin = self._sockets.get("server API")
        return {
            "index": index,
            "public": self._public[index].fileno(),
            "private": self._sockets[f"worker {index}"].fileno(),
            "admin": admin.fileno() if admin is not None else None,
        }

    def _start(self, worker: _Worker) -> None:
        if worker.index not in self._public:  # closed when the worker exited
            settings = self._settings
            try:
                self._public[worker.index] = _bind(
                    "public", settings.host, settings.port, shared=True
                )
            except WorkerError as exc:
                log.error("worker_not_started", worker=worker.index, error=str(exc))
                self._retry_later(worker, time.monotonic())
                return
        spec = self._spec(worker.index)
        fds = [fd for key in ("public", "private", "admin") if (fd := spec[key]) is not None]
        worker.process = subprocess.Popen(
            [sys.executable, "-m", "yektaws", "serve", *self._argv],
            env={**os.environ, WORKER_ENV: json.dumps(spec)},
            pass_fds=fds,
        )
        worker.started = time.monotonic()
        log.info("worker_started", worker=worker.index, pid=worker.process.pid)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        for worker in self._workers:
            self._start(worker)
        while not self._signals:
            self._restart_exited()
            time.sleep(_POLL)
        first = signal.Signals(self._signals[0]).name
        log.info("stopping", signal=first)
        for worker in self._running():
            worker.process.send_signal(self._signals[0])  # type: ignore[union-attr]
        deadline = time.monotonic() + self._settings.drain_timeout + STOP_MARGIN
        forced = False
        while self._running():
            if len(self._signals) > 1 or time.monotonic() > deadline:
                forced = True
                for worker in self._running():
                    log.warning("worker_killed", worker=worker.index)
                    worker.process.kill()  # type: ignore[union-attr]
            time.sleep(_POLL)
        codes = [w.process.wait() for w in self._workers if w.process is not None]
        self.close()
        log.info("workers_stopped", exitCodes=codes)
        if forced:
            return EXIT_FORCED
        # A worker still starting up when the signal came dies of it (its handler was not yet
        # installed): it held no connection, so that is a clean stop too.
        clean = {0, -self._signals[0]}
        return 0 if all(code in clean for code in codes) else 1

    def _running(self) -> list[_Worker]:
        return [w for w in self._workers if w.process is not None and w.process.poll() is None]

    def _restart_exited(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            process = worker.process
            if process is not None and process.poll() is not None:
                if now - worker.started > STABLE_AFTER:
                    worker.backoff = RESTART_BACKOFF_MIN
                # Connections the kernel would hash to its socket go to the others meanwhile.
                self._public.pop(worker.index).close()
                log.warning(
                    "worker_exited",
                    worker=worker.index,
                    pid=process.pid,
                    code=process.returncode,
                    restartIn=worker.backoff,
                )
                worker.process = None
                self._retry_later(worker, now)
            elif process is None and now >= worker.restart_at:
                self._start(worker)

    @staticmethod
    def _retry_later(worker: _Worker, now: float) -> None:
        worker.restart_at = now + worker.backoff
        worker.backoff = min(worker.backoff * 2, RESTART_BACKOFF_MAX)


def supervise(settings: Settings, workers: int, argv: list[str]) -> int:
    """Run ``workers`` gateway processes until SIGTERM/SIGINT; return the exit code.

    ``argv`` is passed on to each worker's ``yektaws serve`` (the ``--host``/``--port``
    overrides, which the workers use in their logs only: the parent bound the sockets).
    """
    wanted = check_ports(settings, workers)
    supervisor = _Supervisor(settings, workers, argv)
    supervisor.bind(wanted)
    log.info(
        "workers_listening",
        address=f"http://{settings.host}:{settings.port}",
        workers=workers,
        workerPorts=[port for role, _h, port in wanted if role.startswith("worker")],
    )
    return supervisor.run()
