"""Bare python-socketio echo: AsyncServer on aiohttp with the library's defaults.

No uvloop, the default JSON module, default ping settings: what a developer gets
from the quick-start, which is the baseline yektaws' Socket.IO row is compared with.
"""

from __future__ import annotations

import argparse
from typing import Any

import socketio
from aiohttp import web


def build_app() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp")

    @sio.on("echo")
    async def echo(sid: str, data: Any) -> Any:
        # A handler's return value is the acknowledgement payload.
        return data

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    sio.attach(app)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
