"""Run the shipped reverse-proxy configurations on loopback, unprivileged, under a temp dir.

The site files in ``nginx/``, ``apache/`` and ``caddy/`` are never copied into a test variant:
each is rendered by replacing its literal production values (ports 80/443, the gateway's
``127.0.0.1:3500``, the certbot certificate paths, the log directory) and nothing else. A
replacement whose production value has vanished from the file raises :class:`RenderError`, so a
renamed path cannot leave the tests checking a stale config.

What a site file cannot carry (nginx's ``http`` block, Apache's ``ServerRoot`` and
``LoadModule`` lines, Caddy's storage) comes from a minimal main configuration written here,
standing in for the distribution's own; the servers run in the foreground as child processes and
are stopped by PID.
"""

from __future__ import annotations

import abc
import os
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from support.gateway import free_port
from support.processes import stop_process, wait_until_serving

REPO = Path(__file__).resolve().parents[2]

#: Production values in the shipped files that a test run replaces.
SITE = "ws.yektayar.ir"
GATEWAY_ADDRESS = "127.0.0.1:3500"
#: The private ports of `yektaws serve --workers N` named in the nginx site (WORKER_BASE_PORT + i).
NGINX_WORKER_BASE_PORT = 3510
NGINX_WORKER_LINES = 8
CERTBOT_CERT = f"/etc/letsencrypt/live/{SITE}/fullchain.pem"
CERTBOT_KEY = f"/etc/letsencrypt/live/{SITE}/privkey.pem"

#: How long a server may take to accept connections after it is started.
START_TIMEOUT = 15.0
#: How long a server may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0
#: Validity of the throwaway certificate; it never outlives a test session.
CERT_DAYS = 1

APACHE_MODULE_DIR = Path("/usr/lib/apache2/modules")
#: Modules every Debian Apache has enabled and the site relies on (``Require``), loaded in
#: addition to the ones the installer enables (``apache/modules``).
APACHE_BASE_MODULES = ("mpm_event", "authz_core")


class RenderError(RuntimeError):
    """A production value expected in a shipped file is no longer there."""


def substitute(text: str, replacements: Mapping[str, str], *, source: Path) -> str:
    """Replace every occurrence of each key of ``replacements`` in ``text``.

    Raises :class:`RenderError` when a key does not occur, naming ``source``.
    """
    for old, new in replacements.items():
        if old not in text:
            raise RenderError(f"{source}: expected production value {old!r} not found")
        text = text.replace(old, new)
    return text


@dataclass(frozen=True)
class TlsPair:
    """A certificate and its private key, both PEM files."""

    cert: Path
    key: Path


def make_self_signed(directory: Path) -> TlsPair:
    """Generate a throwaway self-signed pair for ``ws.yektayar.ir`` and ``127.0.0.1``.

    The IP address is in the subject alternative names because clients that connect to an
    address send no SNI, and Caddy then picks the certificate by the local address.
    """
    directory.mkdir(parents=True, exist_ok=True)
    pair = TlsPair(cert=directory / "cert.pem", key=directory / "key.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-days", str(CERT_DAYS),
            "-subj", f"/CN={SITE}",
            "-addext", f"subjectAltName=DNS:{SITE},IP:127.0.0.1",
            "-keyout", str(pair.key), "-out", str(pair.cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return pair


class ProxyServer(abc.ABC):
    """One reverse proxy rendered into ``root`` and run as a child process.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    #: Name used in ``scripts/install-proxy --server`` and in test ids.
    name: ClassVar[str]
    #: The executable that must be installed for this server.
    binary: ClassVar[str]

    def __init__(self, root: Path, *, gateway_port: int, tls: TlsPair) -> None:
        self.root = root
        self.gateway_port = gateway_port
        self.tls = tls
        self.http_port = free_port()
        self.https_port = free_port()
        self.logs = root / "logs"
        self._process: subprocess.Popen[bytes] | None = None
        self._output = root / "server.out"
        root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.config = self.render()

    @classmethod
    def available(cls) -> bool:
        """Whether the server's executable is installed."""
        return shutil.which(cls.binary) is not None

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}"

    @property
    def access_log(self) -> Path:
        """The access log the shipped site file writes, as rendered (same name in all three)."""
        return self.logs / f"{SITE}.access.log"

    @abc.abstractmethod
    def render(self) -> Path:
        """Write the rendered configuration under :attr:`root`; return the main file."""

    @abc.abstractmethod
    def validate_argv(self) -> list[str]:
        """The server's own configuration check."""

    @abc.abstractmethod
    def run_argv(self) -> list[str]:
        """The server in the foreground."""

    def env(self) -> dict[str, str]:
        """Environment of the validator and of the server."""
        return {**os.environ, "HOME": str(self.root)}

    def _render_file(self, relative: str, replacements: Mapping[str, str], dest: Path) -> Path:
        source = REPO / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(substitute(source.read_text(), replacements, source=source))
        return dest

    def _common_replacements(self) -> dict[str, str]:
        return {GATEWAY_ADDRESS: f"127.0.0.1:{self.gateway_port}"}

    def validate(self) -> subprocess.CompletedProcess[str]:
        """Run the validator; the result holds its combined output in ``stdout``."""
        return subprocess.run(
            self.validate_argv(),
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )

    def start(self) -> None:
        """Start the server and wait until its HTTP and HTTPS ports accept connections."""
        with self._output.open("wb") as out:
            self._process = subprocess.Popen(
                self.run_argv(), env=self.env(), stdout=out, stderr=subprocess.STDOUT
            )
        wait_until_serving(
            self._process,
            lambda: _accepts(self.http_port) and _accepts(self.https_port),
            START_TIMEOUT,
            self._failed_to_start,
        )

    def _failed_to_start(self) -> None:
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n{self.output()}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`)."""
        process, self._process = self._process, None
        stop_process(process, STOP_TIMEOUT)

    def output(self) -> str:
        """What the server wrote to stdout and stderr so far."""
        return self._output.read_text(errors="replace") if self._output.exists() else ""

    def __enter__(self) -> ProxyServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Nginx(ProxyServer):
    """``nginx/ws.yektayar.ir.conf`` inside a minimal ``http`` block, prefix :attr:`root`."""

    name = "nginx"
    binary = "nginx"

    def __init__(
        self, root: Path, *, gateway_port: int, tls: TlsPair, worker_base_port: int | None = None
    ) -> None:
        #: Where the site's worker lines point; production's WORKER_BASE_PORT when not given.
        self.worker_base_port = worker_base_port or NGINX_WORKER_BASE_PORT
        super().__init__(root, gateway_port=gateway_port, tls=tls)

    def render(self) -> Path:
        workers = {
            f"127.0.0.1:{NGINX_WORKER_BASE_PORT + index};": (
                f"127.0.0.1:{self.worker_base_port + index};"
            )
            for index in range(NGINX_WORKER_LINES)
        }
        site = self._render_file(
            f"nginx/{SITE}.conf",
            {
                **self._common_replacements(),
                **workers,
                "listen 80;": f"listen 127.0.0.1:{self.http_port};",
                "listen [::]:80;": f"listen [::1]:{self.http_port};",
                "listen 443 ssl;": f"listen 127.0.0.1:{self.https_port} ssl;",
                "listen [::]:443 ssl;": f"listen [::1]:{self.https_port} ssl;",
                CERTBOT_CERT: str(self.tls.cert),
                CERTBOT_KEY: str(self.tls.key),
                "/var/log/nginx/": f"{self.logs}/",
            },
            self.root / "sites" / f"{SITE}.conf",
        )
        temp = self.root / "temp"
        temp.mkdir(exist_ok=True)
        temp_paths = "\n".join(
            f"    {kind}_temp_path {temp / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        main = self.root / "nginx.conf"
        main.write_text(
            f"pid {self.root / 'nginx.pid'};\n"
            f"error_log {self.logs / 'error.log'};\n"
            "worker_processes 1;\n"
            "events {\n    worker_connections 256;\n}\n"
            "http {\n"
            f"{temp_paths}\n"
            f"    include {site};\n"
            "}\n"
        )
        return main

    def _argv(self, *extra: str) -> list[str]:
        return [
            "nginx", "-p", str(self.root), "-c", str(self.config),
            "-e", str(self.logs / "error.log"), *extra,
        ]  # fmt: skip

    def validate_argv(self) -> list[str]:
        return self._argv("-t")

    def run_argv(self) -> list[str]:
        return self._argv("-g", "daemon off;")


class Apache(ProxyServer):
    """``apache/ws.yektayar.ir.conf`` under its own ``ServerRoot`` :attr:`root`.

    Loads the modules of ``apache/modules`` (what the installer enables) from the system's
    module directory; ``APACHE_LOG_DIR``, which the site file uses, points into :attr:`root`.
    """

    name = "apache"
    binary = "apache2"

    def env(self) -> dict[str, str]:
        return {**super().env(), "APACHE_LOG_DIR": str(self.logs)}

    def render(self) -> Path:
        site = self._render_file(
            f"apache/{SITE}.conf",
            {
                **self._common_replacements(),
                "<VirtualHost *:80>": f"<VirtualHost 127.0.0.1:{self.http_port}>",
                "<VirtualHost *:443>": f"<VirtualHost 127.0.0.1:{self.https_port}>",
                CERTBOT_CERT: str(self.tls.cert),
                CERTBOT_KEY: str(self.tls.key),
            },
            self.root / "sites" / f"{SITE}.conf",
        )
        run = self.root / "run"
        run.mkdir(exist_ok=True)
        modules = [*APACHE_BASE_MODULES, *apache_modules()]
        load = "\n".join(
            f"LoadModule {module}_module {APACHE_MODULE_DIR / f'mod_{module}.so'}"
            for module in modules
        )
        main = self.root / "apache2.conf"
        main.write_text(
            f"ServerRoot {self.root}\n"
            "ServerName 127.0.0.1\n"
            f"PidFile {self.root / 'apache2.pid'}\n"
            f"DefaultRuntimeDir {run}\n"
            f"ErrorLog {self.logs / 'error.log'}\n"
            "LogLevel warn\n"
            f"Listen 127.0.0.1:{self.http_port}\n"
            f"Listen 127.0.0.1:{self.https_port}\n"
            f"{load}\n"
            f"Include {site}\n"
        )
        return main

    def _argv(self, *extra: str) -> list[str]:
        return ["apache2", "-d", str(self.root), "-f", str(self.config), *extra]

    def validate_argv(self) -> list[str]:
        return self._argv("-t")

    def run_argv(self) -> list[str]:
        return self._argv("-DFOREGROUND")


def apache_modules() -> list[str]:
    """The module names listed in ``apache/modules`` (comments and blanks skipped)."""
    lines = (REPO / "apache" / "modules").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


class Caddy(ProxyServer):
    """``caddy/Caddyfile`` importing ``caddy/ws.yektayar.ir.caddy``, both rendered.

    The site name becomes ``127.0.0.1`` (the certificate is chosen by address, as clients
    send no SNI to an IP) and the bare ``tls`` block gets the throwaway pair; Caddy's storage
    lives under :attr:`root`.
    """

    name = "caddy"
    binary = "caddy"

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "XDG_DATA_HOME": str(self.root / "data"),
            "XDG_CONFIG_HOME": str(self.root / "config"),
        }

    def render(self) -> Path:
        self._render_file(
            f"caddy/{SITE}.caddy",
            {
                **self._common_replacements(),
                f"{SITE} {{": "127.0.0.1 {",
                "\ttls {": f"\ttls {self.tls.cert} {self.tls.key} {{",
                "/var/log/caddy/": f"{self.logs}/",
            },
            self.root / "sites" / f"{SITE}.caddy",
        )
        return self._render_file(
            "caddy/Caddyfile",
            {
                "http_port 80": f"http_port {self.http_port}",
                "https_port 443": f"https_port {self.https_port}",
                "admin localhost:2019": f"admin 127.0.0.1:{free_port()}",
            },
            self.root / "Caddyfile",
        )

    def _argv(self, command: str) -> list[str]:
        return ["caddy", command, "--config", str(self.config), "--adapter", "caddyfile"]

    def validate_argv(self) -> list[str]:
        return self._argv("validate")

    def run_argv(self) -> list[str]:
        return self._argv("run")


SERVERS: tuple[type[ProxyServer], ...] = (Nginx, Apache, Caddy)
