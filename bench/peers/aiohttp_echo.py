"""Bare aiohttp WebSocket echo: the floor a Python gateway on aiohttp can reach.

Runs on uvloop and parses every frame with orjson before echoing it unchanged, so
the row pays for the JSON decode a real server must do and nothing else.
"""

from __future__ import annotations

import argparse

import orjson
import uvloop
from aiohttp import WSMsgType, web


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def websocket(request: web.Request) -> web.WebSocketResponse:
    # compress=False: the load client never offers permessage-deflate; say so anyway.
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            orjson.loads(msg.data)
            await ws.send_str(msg.data)
    return ws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ws", websocket)
    uvloop.install()
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
