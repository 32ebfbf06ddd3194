"""A browser-less client of the operator console: logs in through the form, keeps the cookie."""

from __future__ import annotations

from typing import Any

import aiohttp
from yarl import URL

from support.cluster import admin_port
from support.gateway import Gateway

__all__ = ["COOKIE", "ConsoleClient", "console_url"]

COOKIE = "yektaws_console"


def console_url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{admin_port(gateway)}/console/"


class ConsoleClient:
    """An operator's session with one gateway's console (cookies kept as a browser keeps them)."""

    def __init__(self, gateway: Gateway) -> None:
        self.url = console_url(gateway)
        # unsafe=True: aiohttp's jar otherwise refuses cookies from an IP address like 127.0.0.1.
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def login(self, key: str) -> aiohttp.ClientResponse:
        """POST the login form; the response is not followed, so its Set-Cookie can be read."""
        async with self.http.post(
            f"{self.url}login", data={"key": key}, allow_redirects=False
        ) as response:
            await response.read()
            return response

    async def form_post(self, path: str, data: dict[str, str] | None = None) -> tuple[int, str]:
        """POST an HTML form (not followed); ``(status, body text)``."""
        async with self.http.post(
            f"{self.url}{path}", data=data or {}, allow_redirects=False
        ) as response:
            return response.status, await response.text()

    def cookie(self) -> str | None:
        """The console cookie the jar holds, if any."""
        for morsel in self.http.cookie_jar:
            if morsel.key == COOKIE:
                return morsel.value
        return None

    def set_cookie(self, value: str) -> None:
        """Replace the jar's cookies with a console cookie of ``value`` (a copy, or a forgery)."""
        self.http.cookie_jar.clear()
        self.http.cookie_jar.update_cookies({COOKIE: value}, URL(self.url))

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        async with self.http.get(f"{self.url}{path}", params=params) as response:
            return response.status, await response.json(content_type=None)

    async def post(self, path: str, body: Any, **headers: str) -> tuple[int, Any]:
        async with self.http.post(f"{self.url}{path}", json=body, headers=headers) as response:
            return response.status, await response.json(content_type=None)

    async def page(self) -> tuple[int, str]:
        async with self.http.get(self.url) as response:
            return response.status, await response.text()

    async def close(self) -> None:
        await self.http.close()

    async def __aenter__(self) -> ConsoleClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
