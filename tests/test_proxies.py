"""The shipped reverse-proxy sites (nginx/, apache/, caddy/) and scripts/install-proxy.

The configurations are checked by each server's own validator, as shipped with only ports,
addresses and certificate and log paths replaced (tests/support/proxies.py); the installer is
run against a scratch root directory.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
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


@pytest.fixture(params=SERVERS, ids=lambda server: server.name)
def server_class(request: pytest.FixtureRequest) -> type[ProxyServer]:
    server: type[ProxyServer] = request.param
    if not server.available():
        pytest.skip(f"{server.binary} is not installed (scripts/ensure-proxies installs it)")
    return server


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
