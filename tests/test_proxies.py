"""The shipped reverse-proxy sites (nginx/, apache/, caddy/) and scripts/install-proxy.

The configurations are checked by each server's own validator, as shipped with only ports,
addresses and certificate and log paths replaced (tests/support/proxies.py), and then run: the
real nginx, Apache and Caddy, unprivileged on loopback with a throwaway self-signed certificate,
in front of the real gateway, with real WebSocket and Socket.IO clients. The installer is run
against a scratch root directory.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
import pytest
import socketio

from support.gateway import Gateway, start_gateway
from support.proxies import (
    REPO,
    SERVERS,
    SITE,
    ProxyServer,
    TlsPair,
    apache_modules,
    make_self_signed,
)

INSTALLER = REPO / "scripts" / "install-proxy"

#: What each validator prints when it accepts a configuration.
VALIDATOR_SUCCESS = {
    "nginx": "test is successful",
    "apache": "Syntax OK",
    "caddy": "Valid configuration",
}

#: Installed paths of each server's files, relative to the root directory.
INSTALLED_FILES = {
    "nginx": {f"nginx/{SITE}.conf": f"etc/nginx/sites-available/{SITE}.conf"},
    "apache": {f"apache/{SITE}.conf": f"etc/apache2/sites-available/{SITE}.conf"},
    "caddy": {
        "caddy/Caddyfile": "etc/caddy/Caddyfile",
        f"caddy/{SITE}.caddy": f"etc/caddy/sites/{SITE}.caddy",
    },
}


@pytest.fixture(scope="session")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> TlsPair:
    return make_self_signed(tmp_path_factory.mktemp("tls"))


def require(server: type[ProxyServer]) -> type[ProxyServer]:
    """``server``, or a skip naming the script that installs it."""
    if not server.available():
        pytest.skip(f"{server.binary} is not installed (scripts/ensure-proxies installs it)")
    return server


@pytest.fixture(params=SERVERS, ids=lambda server: server.name)
def server_class(request: pytest.FixtureRequest) -> type[ProxyServer]:
    return require(request.param)


def test_validator_accepts_shipped_config(
    server_class: type[ProxyServer], tls_pair: TlsPair, tmp_path: Path
) -> None:
    server = server_class(tmp_path, gateway_port=3500, tls=tls_pair)

    result = server.validate()

    assert result.returncode == 0, result.stdout
    assert VALIDATOR_SUCCESS[server.name] in result.stdout
    # Caddy adapts an unformatted Caddyfile but warns; the shipped files are `caddy fmt` clean.
    assert "not formatted" not in result.stdout


def test_validator_rejects_missing_certificate(
    server_class: type[ProxyServer], tls_pair: TlsPair, tmp_path: Path
) -> None:
    """The validators really read the rendered files: a missing certificate fails them."""
    missing = TlsPair(cert=tmp_path / "absent.pem", key=tls_pair.key)
    server = server_class(tmp_path, gateway_port=3500, tls=missing)

    result = server.validate()

    assert result.returncode != 0
    assert "absent.pem" in result.stdout


def install_proxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALLER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("server", list(INSTALLED_FILES))
def test_install_puts_repository_files_in_place(server: str, tmp_path: Path) -> None:
    result = install_proxy("--server", server, "--root", str(tmp_path))

    assert result.returncode == 0, result.stdout
    for source, installed in INSTALLED_FILES[server].items():
        assert (tmp_path / installed).read_text() == (REPO / source).read_text()


@pytest.mark.parametrize("server", ["nginx", "apache"])
def test_install_enables_site(server: str, tmp_path: Path) -> None:
    install_proxy("--server", server, "--root", str(tmp_path))

    (installed,) = INSTALLED_FILES[server].values()
    link = tmp_path / installed.replace("sites-available", "sites-enabled")
    assert link.is_symlink()
    assert link.resolve() == (tmp_path / installed).resolve()


@pytest.mark.parametrize("server", ["nginx", "caddy"])
def test_check_reports_in_sync_then_drift(server: str, tmp_path: Path) -> None:
    install_proxy("--server", server, "--root", str(tmp_path))
    in_sync = install_proxy("--server", server, "--check", "--root", str(tmp_path))
    # The site file, which names the gateway (for Caddy the second file, after the Caddyfile).
    installed = tmp_path / list(INSTALLED_FILES[server].values())[-1]
    installed.write_text(installed.read_text().replace("127.0.0.1:3500", "127.0.0.1:3600"))

    drifted = install_proxy("--server", server, "--check", "--root", str(tmp_path))

    assert in_sync.returncode == 0, in_sync.stdout
    assert "in sync" in in_sync.stdout
    assert drifted.returncode == 1, drifted.stdout
    assert f"differs  {installed}" in drifted.stdout
    # The diff shows the edit as an installed-side line.
    removed = [line.strip() for line in drifted.stdout.splitlines() if line.strip()[:1] == "-"]
    assert any("127.0.0.1:3600" in line for line in removed), drifted.stdout


def test_check_reports_missing_site_and_modules(tmp_path: Path) -> None:
    nothing_installed = install_proxy("--server", "apache", "--check", "--root", str(tmp_path))
    install_proxy("--server", "apache", "--root", str(tmp_path))
    modules_missing = install_proxy("--server", "apache", "--check", "--root", str(tmp_path))
    mods_enabled = tmp_path / "etc/apache2/mods-enabled"
    mods_enabled.mkdir(parents=True)
    for module in apache_modules():
        (mods_enabled / f"{module}.load").touch()
    complete = install_proxy("--server", "apache", "--check", "--root", str(tmp_path))

    assert nothing_installed.returncode == 1
    assert "missing  " in nothing_installed.stdout
    assert "(site not enabled)" in nothing_installed.stdout
    assert modules_missing.returncode == 1
    assert "missing  module proxy_http (a2enmod proxy_http)" in modules_missing.stdout
    assert complete.returncode == 0, complete.stdout


@pytest.mark.parametrize("server", ["nginx", "apache"])
def test_self_signed_install_uses_generated_pair(server: str, tmp_path: Path) -> None:
    result = install_proxy("--server", server, "--self-signed", "--root", str(tmp_path))
    check = install_proxy("--server", server, "--check", "--root", str(tmp_path))

    assert result.returncode == 0, result.stdout
    (installed,) = INSTALLED_FILES[server].values()
    text = (tmp_path / installed).read_text()
    assert "/etc/letsencrypt/" not in text
    assert f"/etc/ssl/yektaws/{SITE}.crt" in text
    assert (tmp_path / f"etc/ssl/yektaws/{SITE}.crt").read_text().startswith("-----BEGIN")
    assert (tmp_path / f"etc/ssl/yektaws/{SITE}.key").stat().st_mode & 0o077 == 0
    assert "(self-signed certificate)" in check.stdout
    assert "run certbot, then install again" in check.stdout


def test_self_signed_caddy_uses_internal_ca(tmp_path: Path) -> None:
    install_proxy("--server", "caddy", "--self-signed", "--root", str(tmp_path))

    site = (tmp_path / INSTALLED_FILES["caddy"][f"caddy/{SITE}.caddy"]).read_text()
    assert "\ttls internal {" in site


# -- Through each proxy, over TLS, to a real gateway ---------------------------------------------

#: The test client's source address. The proxies reach the gateway from 127.0.0.1, so the
#: gateway can only log this address if it took it from X-Forwarded-For.
CLIENT_ADDRESS = "127.0.0.2"
#: What a client claims in its own X-Forwarded-For; the edge proxy must not pass it on as truth.
SPOOFED_ADDRESS = "203.0.113.9"
#: The one origin the gateway allows, so that it sends CORS headers the test can count.
ALLOWED_ORIGIN = "https://app.yektayar.ir"
#: Seconds to wait for a reply or a log line.
REPLY_TIMEOUT = 10.0
#: Longer than nginx's and Apache's default proxy read timeout (60 s).
IDLE_SECONDS = 75.0
#: Heartbeat of the gateway in the idle test: slower than the defaults (30 s native, 25 s
#: Socket.IO), so that the silence between two beats also exceeds the proxies' 60 s defaults and
#: only the shipped 300 s timeouts keep the connection.
SLOW_HEARTBEAT_SECONDS = 70
#: A body the gateway accepts (its MAX_MESSAGE_SIZE is 64 KiB), and one over the proxies' 128 KiB.
BODY_WITHIN_GATEWAY_LIMIT = 60 * 1024
BODY_OVER_PROXY_LIMIT = 200 * 1024

#: Socket.IO client transports for each mode, the last being the one the connection ends on.
SOCKETIO_MODES = {
    "websocket": ["websocket"],
    "polling": ["polling"],
    "upgrade": ["polling", "websocket"],
}


def gateway_env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "TRUSTED_PROXIES": "127.0.0.1/32,::1/128",
        "LOG_FORMAT": "json",
        "CORS_ORIGIN": ALLOWED_ORIGIN,
        **extra,
    }


@pytest.fixture(scope="module")
def gateway(database_url: str) -> Iterator[Gateway]:
    gateway = start_gateway(gateway_env(database_url))
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module", params=SERVERS, ids=lambda server: server.name)
def proxy(
    request: pytest.FixtureRequest,
    gateway: Gateway,
    tls_pair: TlsPair,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyServer]:
    server_class = require(request.param)
    root = tmp_path_factory.mktemp(server_class.name)
    with server_class(root, gateway_port=gateway.port, tls=tls_pair) as server:
        yield server


def client_session() -> aiohttp.ClientSession:
    """An HTTPS client from :data:`CLIENT_ADDRESS` that accepts the self-signed certificate."""
    connector = aiohttp.TCPConnector(ssl=False, local_addr=(CLIENT_ADDRESS, 0))
    return aiohttp.ClientSession(connector=connector)


def native_handshake(proxy: ProxyServer, token: str, placement: str) -> tuple[str, dict[str, Any]]:
    """URL and ``ws_connect`` arguments putting ``token`` in the query, a header or a protocol."""
    url = f"{proxy.wss_url}/ws"
    if placement == "query":
        return f"{url}?token={token}", {}
    if placement == "header":
        return url, {"headers": {"Authorization": f"Bearer {token}"}}
    return url, {"protocols": ["yektaws.v1", f"bearer.{token}"]}


async def native_echo(
    session: aiohttp.ClientSession, url: str, **handshake: Any
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """Connect, read the greeting, echo once; return greeting, reply and the chosen subprotocol."""
    async with session.ws_connect(url, **handshake) as ws:
        greeting = await ws.receive_json(timeout=REPLY_TIMEOUT)
        await ws.send_json({"event": "echo", "data": {"through": "proxy"}})
        reply = await ws.receive_json(timeout=REPLY_TIMEOUT)
        return greeting, reply, ws.protocol


@pytest.mark.parametrize("placement", ["query", "header", "subprotocol"])
async def test_native_websocket_echo(
    proxy: ProxyServer, make_token: Callable[..., str], placement: str
) -> None:
    url, handshake = native_handshake(proxy, make_token(), placement)

    async with client_session() as session:
        greeting, reply, subprotocol = await native_echo(session, url, **handshake)

    assert greeting["event"] == "connected"
    assert greeting["data"]["protocol"] == "native-websocket"
    assert reply["event"] == "echo_response"
    assert reply["data"]["received"] == {"through": "proxy"}
    assert subprotocol == ("yektaws.v1" if placement == "subprotocol" else None)


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + REPLY_TIMEOUT
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("path", ["/ws", "/socket.io"])
@pytest.mark.parametrize("mode", list(SOCKETIO_MODES))
async def test_socketio_echo(
    proxy: ProxyServer, make_token: Callable[..., str], mode: str, path: str
) -> None:
    # The Engine.IO client opens with the first of its transports and upgrades to the last, so
    # "upgrade" has done a polling handshake through the proxy once it ends on websocket.
    transports = SOCKETIO_MODES[mode]
    client = socketio.AsyncClient(ssl_verify=False, reconnection=False)
    greeted: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    client.on("connected", greeted.set_result)

    await client.connect(
        proxy.https_url,
        transports=transports,
        socketio_path=path,
        auth={"token": make_token()},
        wait_timeout=REPLY_TIMEOUT,
    )
    try:
        greeting = await asyncio.wait_for(greeted, REPLY_TIMEOUT)
        await wait_until(lambda: client.transport() == transports[-1], transports[-1])
        reply = await client.call("echo", {"through": "proxy"}, timeout=REPLY_TIMEOUT)
    finally:
        await client.disconnect()

    assert greeting["protocol"] == "socket.io"
    assert reply["received"] == {"through": "proxy"}


async def test_info_json_shows_wss_urls(proxy: ProxyServer) -> None:
    async with client_session() as session, session.get(f"{proxy.https_url}/") as response:
        info = await response.json()

    assert response.status == 200
    assert info["usage"]["websocket"].startswith(
        f"new WebSocket('wss://127.0.0.1:{proxy.https_port}/ws?token="
    )
    assert f"io('https://127.0.0.1:{proxy.https_port}'" in info["usage"]["socketio"]


async def test_gateway_logs_client_address_from_forwarded_for(
    proxy: ProxyServer, gateway: Gateway, make_token: Callable[..., str]
) -> None:
    url, _ = native_handshake(proxy, make_token(), "query")

    async with client_session() as session:
        greeting, _, _ = await native_echo(
            session, url, headers={"X-Forwarded-For": SPOOFED_ADDRESS}
        )
    logged = gateway.wait_for_log("connect", socketId=greeting["data"]["socketId"])

    assert logged["peer"] == CLIENT_ADDRESS


async def test_access_log_holds_no_token(
    proxy: ProxyServer, make_token: Callable[..., str]
) -> None:
    token = make_token()
    start = len(proxy.access_log.read_text()) if proxy.access_log.exists() else 0
    async with client_session() as session:
        for placement in ("query", "header", "subprotocol"):
            url, handshake = native_handshake(proxy, token, placement)
            await native_echo(session, url, **handshake)
    client = socketio.AsyncClient(ssl_verify=False, reconnection=False)
    await client.connect(
        f"{proxy.https_url}?token={token}",
        transports=["polling"],
        socketio_path="/ws",
        wait_timeout=REPLY_TIMEOUT,
    )
    await client.disconnect()

    # Caddy writes a WebSocket request's line when the connection ends, so wait for all three.
    await wait_until(lambda: len(native_lines(proxy, start)) >= 3, "access log lines")
    log = proxy.access_log.read_text()[start:]
    assert token not in log
    assert token[-8:] not in log


def native_lines(proxy: ProxyServer, start: int) -> list[str]:
    """Access log lines after offset ``start`` for the native path ``/ws`` (not polling's /ws/)."""
    text = proxy.access_log.read_text()[start:] if proxy.access_log.exists() else ""
    return [line for line in text.splitlines() if "/ws" in line and "/ws/" not in line]


async def test_security_headers_and_no_cors_of_its_own(
    proxy: ProxyServer, gateway: Gateway
) -> None:
    headers = {"Origin": ALLOWED_ORIGIN}
    path = "/socket.io/?EIO=4&transport=polling"
    async with client_session() as session:
        async with session.get(f"{proxy.https_url}{path}", headers=headers) as proxied:
            await proxied.read()
        async with session.get(f"{gateway.http_url}{path}", headers=headers) as direct:
            await direct.read()

    def cors(response: aiohttp.ClientResponse) -> list[tuple[str, str]]:
        return sorted(
            (name.lower(), value)
            for name, value in response.headers.items()
            if name.lower().startswith("access-control-")
        )

    assert proxied.status == direct.status == 200
    assert proxied.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert proxied.headers["X-Content-Type-Options"] == "nosniff"
    assert proxied.headers["Referrer-Policy"] == "no-referrer"
    # The gateway's own CORS answer passes through unchanged, with nothing added.
    assert ("access-control-allow-origin", ALLOWED_ORIGIN) in cors(direct)
    assert cors(proxied) == cors(direct)


async def test_body_limit_passes_gateway_sized_bodies_only(proxy: ProxyServer) -> None:
    url = f"{proxy.https_url}/socket.io/?EIO=4&transport=polling&sid=unknown"
    async with client_session() as session:
        async with session.post(url, data=b"4" * BODY_WITHIN_GATEWAY_LIMIT) as within:
            await within.read()
        async with session.post(url, data=b"4" * BODY_OVER_PROXY_LIMIT) as over:
            await over.read()

    assert within.status != 413  # passed on: the gateway answers (400, unknown sid) for itself
    assert over.status == 413


async def test_plain_http_redirects_to_https(proxy: ProxyServer) -> None:
    async with (
        client_session() as session,
        session.get(f"{proxy.http_url}/ws?x=1", allow_redirects=False) as response,
    ):
        location = urlsplit(response.headers["Location"])

    assert response.status in {301, 308}
    assert (location.scheme, location.path, location.query) == ("https", "/ws", "x=1")


@pytest.mark.slow
@pytest.mark.timeout(IDLE_SECONDS + 90)
@pytest.mark.parametrize("server_class", SERVERS, ids=lambda server: server.name)
async def test_idle_connection_outlives_default_proxy_timeout(
    server_class: type[ProxyServer],
    database_url: str,
    make_token: Callable[..., str],
    tls_pair: TlsPair,
    tmp_path: Path,
) -> None:
    require(server_class)
    beat = str(SLOW_HEARTBEAT_SECONDS)
    gateway = start_gateway(
        gateway_env(database_url, HEARTBEAT_INTERVAL=beat, SOCKETIO_PING_INTERVAL=beat)
    )
    try:
        with server_class(tmp_path, gateway_port=gateway.port, tls=tls_pair) as proxy:
            native, sio = await asyncio.gather(
                idle_native(proxy, make_token()), idle_socketio(proxy, make_token())
            )
    finally:
        gateway.stop()

    assert native["event"] == "echo_response"
    assert sio["received"] == {"after": "idle"}


async def idle_native(proxy: ProxyServer, token: str) -> dict[str, Any]:
    """Stay silent for :data:`IDLE_SECONDS` (answering pings), then echo; return the reply."""
    async with (
        client_session() as session,
        session.ws_connect(f"{proxy.wss_url}/ws?token={token}") as ws,
    ):
        await ws.receive_json(timeout=REPLY_TIMEOUT)  # the greeting
        # receive() answers the gateway's pings while it waits; it returns early only if the
        # connection ends.
        reader = asyncio.ensure_future(ws.receive())
        await asyncio.sleep(IDLE_SECONDS)
        assert not reader.done(), f"connection ended while idle: {reader.result()}"
        await ws.send_json({"event": "echo", "data": {"after": "idle"}})
        return cast(dict[str, Any], (await asyncio.wait_for(reader, REPLY_TIMEOUT)).json())


async def idle_socketio(proxy: ProxyServer, token: str) -> dict[str, Any]:
    """The same over Socket.IO's websocket transport; return the echo reply."""
    client = socketio.AsyncClient(ssl_verify=False, reconnection=False)
    disconnects: list[str] = []
    client.on("disconnect", lambda *reason: disconnects.append(repr(reason)))
    await client.connect(
        proxy.https_url,
        transports=["websocket"],
        socketio_path="/ws",
        auth={"token": token},
        wait_timeout=REPLY_TIMEOUT,
    )
    try:
        await asyncio.sleep(IDLE_SECONDS)
        assert not disconnects, f"disconnected while idle: {disconnects}"
        return cast(
            dict[str, Any],
            await client.call("echo", {"after": "idle"}, timeout=REPLY_TIMEOUT),
        )
    finally:
        await client.disconnect()
