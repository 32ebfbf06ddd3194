"""The RFC 6455 conformance run behind ``scripts/conformance`` (its header says why it is built so).

Three parts:

- :class:`EchoTransport`, the conformance target: yektaws's own native transport (handshake
  checks, admission with a session token, the guarded ``WebSocketResponse`` with the settings'
  limits, close handling) whose read loop echoes each message instead of dispatching it, served
  by :func:`serve` behind the same header deadline as ``yektaws serve``;
- :func:`start_target`, which runs that target in a subprocess with :data:`TARGET_SETTINGS` and a
  fresh embedded session store, and waits until it prints its port and token;
- :func:`run_cases` and :func:`tally`, which drive kosoku (the Autobahn|Testsuite cases) against a
  URL and count the verdicts.

``python tests/support/conformance.py [--full] [--url URL] [-i CASE]...`` is the command line;
``python tests/support/conformance.py serve READY_FILE`` runs the target in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# Run as a script, this file's folder is first on sys.path, where tests/support/redis.py would
# stand in for the redis package the gateway imports.
if __name__ == "__main__":
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

from aiohttp import WSMsgType, web
from aiohttp.http_websocket import WSMessage
from kosoku import FailureError, run_fuzzingclient

from yektaws.dispatcher import Dispatcher
from yektaws.gateway import Gateway
from yektaws.guards import GuardedWebSocketResponse, header_deadline_factory
from yektaws.metrics import Metrics
from yektaws.sessions import open_store
from yektaws.settings import load_settings
from yektaws.transports.native import NativeConnection, NativeTransport

if TYPE_CHECKING:
    from kosoku._kosoku import CaseResult

__all__ = [
    "BASIC_SECTIONS",
    "COMPRESSION_SECTIONS",
    "EXCLUDED",
    "TARGET_SETTINGS",
    "Target",
    "run_cases",
    "start_target",
    "tally",
]

REPO = Path(__file__).resolve().parents[2]

#: Sections 1-10 (there is no 8): framing, pings, reserved bits and opcodes, fragmentation,
#: UTF-8, close handshake, big and many messages, auto-fragmentation. About 300 cases, seconds.
BASIC_SECTIONS = ("1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*")
#: permessage-deflate (RFC 7692): 12 compresses the server's messages, 13 negotiates parameters.
COMPRESSION_SECTIONS = ("12.*", "13.*")

#: The target's settings that differ from the defaults, each for a reason.
TARGET_SETTINGS = {
    # Section 9 sends (and expects echoed) messages of up to 16 MiB: the setting's maximum.
    "MAX_MESSAGE_SIZE": str(16 * 1024 * 1024),
    # The cases compare the exact sequence of messages, pings and pongs the server sends: a
    # heartbeat ping in the middle of a long case would fail it. One hour: none during a run.
    "HEARTBEAT_INTERVAL": "3600",
    # Every case opens a connection with the same token; with cases run in parallel, closing
    # connections of earlier cases would otherwise count against the per-user cap of 20.
    "MAX_CONNECTIONS_PER_USER": "1000",
}

#: Cases left out of every run of the target, with the reason.
EXCLUDED = {
    # 16 MiB messages. MAX_MESSAGE_SIZE cannot go above 16 MiB, and aiohttp refuses a message
    # of exactly max_msg_size bytes (its check is `>=`), so the largest echo is 16 MiB - 1.
    "9.1.6": "16 MiB text message: over the largest MAX_MESSAGE_SIZE",
    "9.2.6": "16 MiB binary message: over the largest MAX_MESSAGE_SIZE",
}

#: Verdicts that pass: the peer behaved as required, or only deviated from a SHOULD, or the case
#: probes behaviour the RFC leaves open.
PASSING = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})


# -- the target ----------------------------------------------------------------------------------


class EchoTransport(NativeTransport):
    """The native transport with each message echoed back, frame type kept, by the connection's
    task: nothing is read inline, so every message takes ``ws.receive()``."""

    def _offer(self, conn: NativeConnection, ws: GuardedWebSocketResponse) -> bool:
        return False

    async def _handle_queued(
        self, conn: NativeConnection, ws: GuardedWebSocketResponse, message: WSMessage
    ) -> bool:
        if message.type is WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type is WSMsgType.BINARY:
            await ws.send_bytes(message.data)
        elif message.type is WSMsgType.PING:
            # The native transport answers pings itself (autoping is off: see Heartbeat).
            await ws.pong(message.data)
        elif message.type is not WSMsgType.PONG:
            return False  # CLOSE, CLOSING, CLOSED, ERROR: aiohttp has answered the close already
        return True


async def serve(port: int, ready_file: Path) -> None:
    """Serve the echo target on 127.0.0.1:``port`` until SIGTERM.

    Once it accepts connections, ``<port> <token>`` is written to ``ready_file``.
    """
    settings = load_settings(dotenv=None)
    store = open_store(settings)
    await store.open()
    token = await store.create(user_id=None, logged_in=True, ttl_seconds=86400)
    # No handlers and no connect hooks: nothing but the echo is ever sent.
    metrics = Metrics()
    dispatcher = Dispatcher(rate_limit_strikes=settings.rate_limit_strikes, metrics=metrics)
    gateway = Gateway(settings, store, dispatcher, metrics)
    gateway.authenticator.start()
    app = web.Application()
    app.router.add_get("/{path:.*}", EchoTransport(gateway).handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        header_deadline_factory(runner.server, settings.handshake_timeout), "127.0.0.1", port
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    partial = ready_file.with_suffix(".partial")
    partial.write_text(f"{server.sockets[0].getsockname()[1]} {token}")
    partial.rename(ready_file)  # appears complete or not at all
    await stop.wait()
    server.close()
    await runner.cleanup()
    await gateway.authenticator.stop()
    await store.close()


@dataclass
class Target:
    """A running echo target; its output goes to ``log_path``."""

    process: subprocess.Popen[bytes]
    port: int
    token: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?token={self.token}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_target(*, compression: bool = False, ready_timeout: float = 20.0) -> Target:
    """Start the echo target in a subprocess with :data:`TARGET_SETTINGS`; return once it serves."""
    workdir = Path(tempfile.mkdtemp(prefix="yektaws-conformance-"))
    ready_file, log_path = workdir / "ready", workdir / "target.log"
    env = {
        **os.environ,
        **TARGET_SETTINGS,
        "WEBSOCKET_COMPRESSION": "true" if compression else "false",
        "DATABASE_URL": "",
        "EMBEDDED_DB_PATH": str(workdir / "sessions.db"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, __file__, "serve", str(ready_file)],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + ready_timeout
    while not ready_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"conformance target did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    port, token = ready_file.read_text().split()
    return Target(process, int(port), token, log_path)


# -- running the cases ---------------------------------------------------------------------------


async def run_cases(
    url: str,
    include: Sequence[str],
    exclude: Sequence[str] = (),
    *,
    parallelism: int = 4,
) -> list[CaseResult]:
    """Every selected case's kosoku ``CaseResult``, failed ones included."""
    try:
        return await run_fuzzingclient(
            url, list(include), list(exclude) or None, concurrency=parallelism
        )
    except FailureError as failure:
        return failure.results


def verdict(result: CaseResult) -> str:
    """One status per case: its exchange's verdict when the whole case passed, else the first
    failing verdict (``FAILED``, ``UNIMPLEMENTED``, ``ERROR``, or the close's ``WRONG CODE``...)."""
    behavior = result.behavior.value
    if behavior not in PASSING:
        return behavior
    close = result.behavior_close.value
    return behavior if close in PASSING else close


def tally(results: Sequence[CaseResult]) -> Counter[str]:
    """How many cases got each :func:`verdict`."""
    return Counter(verdict(result) for result in results)


def failures(results: Sequence[CaseResult]) -> list[CaseResult]:
    return [result for result in results if verdict(result) not in PASSING]


def report(results: Sequence[CaseResult], url: str) -> str:
    """The counts per status (passing ones always shown), then one line per failed case."""
    shown = url.split("token=")[0] + "token=***" if "token=" in url else url
    lines = [f"kosoku: {len(results)} cases against {shown}"]
    counts = tally(results)
    for status in ("OK", "NON-STRICT", "INFORMATIONAL"):
        lines.append(f"  {status:<14} {counts.pop(status, 0):>4}")
    for status, count in sorted(counts.items()):
        lines.append(f"  {status:<14} {count:>4}")
    for result in failures(results):
        lines.append(
            f"  case {result.case_id}: {verdict(result)}: {result.result} {result.result_close}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/conformance")
    parser.add_argument("--full", action="store_true", help="add sections 12 and 13, compressed")
    parser.add_argument("--url", help="run against this echo endpoint (with its token) instead")
    parser.add_argument("-i", "--include", action="append", help="case id or glob (repeatable)")
    parser.add_argument("-x", "--exclude", action="append", default=[], help="case to leave out")
    parser.add_argument("-p", "--parallelism", type=int, default=4, help="cases run at once")
    args = parser.parse_args(argv)
    include = args.include or [*BASIC_SECTIONS, *(COMPRESSION_SECTIONS if args.full else ())]
    exclude = [*args.exclude, *(() if args.url else EXCLUDED)]
    target = None if args.url else start_target(compression=args.full)
    url = target.url if target is not None else args.url
    try:
        results = asyncio.run(run_cases(url, include, exclude, parallelism=args.parallelism))
    finally:
        if target is not None:
            target.stop()
    print(report(results, url))
    if not args.url:
        for case, reason in EXCLUDED.items():
            print(f"  left out {case}: {reason}")
    return 1 if not results or failures(results) else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(serve(0, Path(sys.argv[2])))
    else:
        sys.exit(main())
