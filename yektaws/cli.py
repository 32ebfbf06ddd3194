"""The ``yektaws`` command: ``serve`` (the default), ``sessions create``, ``db init``, ``settings``.

Every failure the operator can fix (a port in use, an invalid setting, an unreachable database)
ends the process with a one-line reason on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Sequence

from yektaws import __version__
from yektaws.logging import configure_logging, get_logger
from yektaws.sessions import StoreUnavailable, open_store
from yektaws.settings import Settings, SettingsError, env_example, load_settings, markdown_table

__all__ = ["main"]

log = get_logger("yektaws")

_TTL = re.compile(r"^(\d+)([smhd]?)$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """``30d``, ``12h``, ``45m``, ``90s`` or plain seconds, as seconds."""
    match = _TTL.match(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"invalid ttl {text!r}: use e.g. 30d, 12h, 45m, 3600")
    return int(match.group(1)) * _TTL_UNITS[match.group(2)]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yektaws",
        description="YektaYar's real-time gateway: Socket.IO and native WebSocket on one port.",
    )
    parser.add_argument("--version", action="version", version=f"yektaws {__version__}")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the gateway (the default command)")
    serve.add_argument("--host", help="address to listen on (overrides HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides WEBSOCKET_PORT)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes to run on this machine (default 1; above 1 needs REDIS_URL)",
    )

    sessions = commands.add_parser("sessions", help="manage sessions in the configured store")
    session_commands = sessions.add_subparsers(dest="sessions_command", required=True)
    create = session_commands.add_parser("create", help="create a session; prints its token")
    create.add_argument("--user-id", type=int, default=None, help="owner (default: anonymous)")
    create.add_argument("--logged-in", action="store_true", help="mark the session logged in")
    create.add_argument(
        "--ttl",
        type=parse_ttl,
        default=parse_ttl("30d"),
        help="lifetime: 30d, 12h, 45m or seconds (default 30d)",
    )

    db = commands.add_parser("db", help="the session table")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("init", help="create the sessions table where it is missing")

    show = commands.add_parser("settings", help="print every setting with its default")
    show.add_argument("--format", choices=["env", "markdown"], default="env")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # A bare `yektaws` is `yektaws serve`: parse again so serve's defaults are there.
        args = parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "serve"])
    command = args.command or "serve"
    if command == "settings":
        sys.stdout.write(env_example() if args.format == "env" else markdown_table())
        return 0
    try:
        settings = load_settings()
        if command == "serve":
            overrides = {
                key: value
                for key, value in (("host", args.host), ("port", args.port))
                if value is not None
            }
            settings = settings.replace(**overrides)
    except SettingsError as exc:
        print(f"yektaws: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if command == "serve":
        return _serve(settings, args)
    if command == "sessions":
        return _run(_create_session(settings, args.user_id, args.logged_in, args.ttl))
    return _run(_init_db(settings))


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    # The other commands need none of the server.
    from yektaws.server import serve
    from yektaws.workers import WorkerError, WorkerSockets, supervise

    worker = WorkerSockets.from_env()
    if worker is not None or args.workers == 1:
        return _run(serve(settings, worker))
    overrides = [
        *(["--host", args.host] if args.host is not None else []),
        *(["--port", str(args.port)] if args.port is not None else []),
    ]
    try:
        return supervise(settings, args.workers, overrides)
    except WorkerError as exc:
        print(f"yektaws: {exc}", file=sys.stderr)
        return exc.exit_code


def _run(coro: object) -> int:
    try:
        import uvloop
    except ImportError:  # uvloop is optional: the stock loop works, only slower
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


async def _create_session(
    settings: Settings, user_id: int | None, logged_in: bool, ttl: int
) -> int:
    store = open_store(settings)
    try:
        await store.open()
        token = await store.create(user_id=user_id, logged_in=logged_in, ttl_seconds=ttl)
    except StoreUnavailable as exc:
        print(f"yektaws: session store unavailable: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    print(token)
    return 0


async def _init_db(settings: Settings) -> int:
    store = open_store(settings)
    try:
        await store.open()
        await store.init_schema()
    except StoreUnavailable as exc:
        print(f"yektaws: session store unavailable: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    print(f"sessions table ready in {store.description}")
    return 0
