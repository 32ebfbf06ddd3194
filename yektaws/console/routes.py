"""The console's routes: its pages, its login, and the JSON the page pulls every two seconds.

A sub-application mounted at :data:`CONSOLE_PATH` on the server API's listener (see
:mod:`yektaws.admin`); it brings its own guard instead of the bearer key:

- ``GET /console/``: the console page with a valid cookie, else the login page (``/console``
  redirects here).
- ``POST /console/login`` (form field ``key``): the cookie and a redirect to the page; a wrong key
  gets the login page again with 401, too many wrong keys from one address 429.
- ``POST /console/logout``: the cookie revoked and cleared.
- ``GET /console/static/<file>``: the page's script and style sheet (no secrets, no login).
- ``GET /console/api/stats?since=<t>``: every node's figures, their totals, and the series since
  ``t`` (:func:`~yektaws.console.views.cluster_stats`).
- ``GET /console/api/connections?limit=&cursor=&protocol=``,
  ``GET /console/api/users?limit=&cursor=``: one page each, across the cluster.
- ``GET /console/api/users/<id>``: that user's connections on every node (the presence query).
- ``POST /console/api/disconnect`` ``{"user" | "socketId", "reason"?}``: closes them (native 4001,
  Socket.IO ``session:expired``) and writes one audit line, ``console_disconnect``, naming the
  operator's address.

``/console/api/*`` accept the console cookie, or the bearer key (for scripts). Every POST must
come from the console's own origin when the browser names one, and the JSON POST must be JSON:
with the ``SameSite=Strict`` cookie, no other site can make an operator's browser act.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from yektaws.admin import BadRequest, bearer_key_valid, json_object, optional_reason
from yektaws.admin import connections as user_connections
from yektaws.bus import BUS_KEY, Bus, Target, TargetKind
from yektaws.console.auth import (
    COOKIE_NAME,
    SESSION_SECONDS,
    CookieSigner,
    LoginLimiter,
    keys_match,
)
from yektaws.console.samples import PROTOCOLS, SAMPLE_INTERVAL
from yektaws.console.views import (
    DEFAULT_PAGE,
    MAX_PAGE,
    cluster_connections,
    cluster_stats,
    cluster_users,
)
from yektaws.forwarded import ClientView, client_view
from yektaws.logging import get_logger

__all__ = ["CONSOLE_PATH", "create_console_app"]

log = get_logger("yektaws.console")

#: Where the console is mounted on the server API's listener.
CONSOLE_PATH = "/console"
STATIC = Path(__file__).parent / "static"
#: The reason a disconnected client is told when the operator gives none.
DEFAULT_REASON = "disconnected by an operator"

_API_KEY = web.AppKey("api_key", str)
_SIGNER = web.AppKey("signer", CookieSigner)
_LIMITER = web.AppKey("limiter", LoginLimiter)

# The page loads nothing from elsewhere and runs no inline script: a strict policy costs nothing.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer a form POST says "Origin: null".
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def create_console_app(bus: Bus, api_key: str) -> web.Application:
    """The console over ``bus``, its logins checked against ``api_key``."""
    app = web.Application(middlewares=[_guard])
    app[BUS_KEY] = bus
    app[_API_KEY] = api_key
    app[_SIGNER] = CookieSigner(api_key)
    app[_LIMITER] = LoginLimiter()
    app.router.add_get("", to_page)  # /console: the page's relative URLs need the slash
    app.router.add_get("/", page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/api/connections", connections)
    app.router.add_get("/api/users", users)
    app.router.add_get("/api/users/{user_id}", user_connections)  # the server API's own
    app.router.add_post("/api/disconnect", disconnect)
    return app


# -- the guard -----------------------------------------------------------------------------------


def _client(request: web.Request) -> ClientView:
    """The operator's browser as seen through trusted proxies (its address, its scheme)."""
    settings = request.app[BUS_KEY].local.gateway.settings
    return client_view(request, settings.trusted_proxies)


def _operator(request: web.Request) -> str:
    """The operator's address, as the audit lines name it."""
    return _client(request).address


def _logged_in(request: web.Request) -> bool:
    return request.app[_SIGNER].valid(request.cookies.get(COOKIE_NAME))


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "POST" and not _same_origin(request):
        return web.json_response({"error": "Cross-origin request refused"}, status=403)
    if request.path.startswith(f"{CONSOLE_PATH}/api/") and not (
        _logged_in(request) or bearer_key_valid(request, request.app[_API_KEY])
    ):
        return web.json_response({"error": "Log in to the console first"}, status=401)
    response = await handler(request)
    response.headers.update(_HEADERS)
    return response


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser's cross-site request (those always name their origin)
    return urlsplit(origin).netloc == request.host


# -- pages ---------------------------------------------------------------------------------------


def _html(name: str, status: int = 200, message: str = "") -> web.Response:
    text = (STATIC / name).read_text(encoding="utf-8")
    if message:
        text = text.replace("<!--message-->", f'<p class="error">{html.escape(message)}</p>')
    return web.Response(text=text, status=status, content_type="text/html")


async def page(request: web.Request) -> web.Response:
    return _html("index.html" if _logged_in(request) else "login.html")


async def login(request: web.Request) -> web.StreamResponse:
    operator = _operator(request)
    if not request.app[_LIMITER].attempt(operator):
        log.warning("console_login", outcome="rate_limited", operator=operator)
        response = _html("login.html", 429, "Too many wrong keys from your address: wait a minute.")
        response.headers["Retry-After"] = "60"
        return response
    form = await request.post()
    key = form.get("key")
    if not isinstance(key, str) or not keys_match(key.strip(), request.app[_API_KEY]):
        log.warning("console_login", outcome="wrong_key", operator=operator)
        return _html("login.html", 401, "That is not the server API key.")
    request.app[_LIMITER].succeeded(operator)
    log.info("console_login", outcome="ok", operator=operator)
    response = _see_console()
    response.set_cookie(
        COOKIE_NAME,
        request.app[_SIGNER].issue(),
        max_age=SESSION_SECONDS,
        path=CONSOLE_PATH,
        httponly=True,
        samesite="Strict",
        secure=_client(request).scheme == "https",
    )
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    request.app[_SIGNER].revoke(request.cookies.get(COOKIE_NAME))
    log.info("console_logout", operator=_operator(request))
    response = _see_console()
    response.del_cookie(COOKIE_NAME, path=CONSOLE_PATH)
    return response


def _see_console() -> web.Response:
    return web.Response(status=303, headers={"Location": f"{CONSOLE_PATH}/"})


async def to_page(request: web.Request) -> web.Response:
    return _see_console()


# -- the JSON the page pulls ---------------------------------------------------------------------


def _number(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be a number") from None


def _limit(request: web.Request) -> int:
    limit = _number(request, "limit", float(DEFAULT_PAGE))
    if not limit.is_integer() or not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"'limit' must be a whole number from 1 to {MAX_PAGE}")
    return int(limit)


async def stats(request: web.Request) -> web.Response:
    bus = request.app[BUS_KEY]
    answers = await bus.ask("stats", {"since": _number(request, "since", 0.0)})
    return web.json_response({"answeredBy": bus.node_id, **cluster_stats(answers, SAMPLE_INTERVAL)})


async def connections(request: web.Request) -> web.Response:
    limit = _limit(request)
    query: dict[str, object] = {"limit": limit}
    cursor = request.query.get("cursor")
    if cursor:
        at, slash, _ = cursor.partition("/")
        try:
            float(at)
        except ValueError:
            slash = ""
        if not slash:
            raise BadRequest("'cursor' must be a nextCursor this route returned")
        query["cursor"] = cursor
    protocol = request.query.get("protocol")
    if protocol:
        if protocol not in PROTOCOLS:
            raise BadRequest(f"'protocol' must be one of {', '.join(PROTOCOLS)}")
        query["protocol"] = protocol
    answers = await request.app[BUS_KEY].ask("connections", query)
    return web.json_response(cluster_connections(answers, limit))


async def users(request: web.Request) -> web.Response:
    limit = _limit(request)
    query: dict[str, object] = {"limit": limit}
    if cursor := request.query.get("cursor"):
        query["cursor"] = cursor
    answers = await request.app[BUS_KEY].ask("users", query)
    return web.json_response(cluster_users(answers, limit))


async def disconnect(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        raise BadRequest("the body must be JSON (Content-Type: application/json)")
    body = await json_object(request)
    named = [kind for kind in (TargetKind.USER, TargetKind.SOCKET_ID) if kind.value in body]
    if len(named) != 1:
        raise BadRequest("exactly one of 'user', 'socketId' is required")
    (kind,) = named
    value = body[kind.value]
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{kind.value}' must be a non-empty string")
    reason = optional_reason(body) or DEFAULT_REASON
    delivery = await request.app[BUS_KEY].disconnect(Target(kind, value), reason)
    log.info(
        "console_disconnect",
        operator=_operator(request),
        by=kind.value,
        target=value,
        reason=reason,
        localConnections=delivery.local,
        broker=delivery.broker,
    )
    return web.json_response(
        {kind.value: value, "localConnections": delivery.local, "broker": delivery.broker}
    )
