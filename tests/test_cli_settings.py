"""The command line and the settings, as an operator meets them."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import yektaws as package
from support.gateway import REPO, free_port
from yektaws.settings import SettingsError, env_example, load_settings, markdown_table


def yektaws(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "yektaws", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "AI_BASE_URL": "", **(env or {})},
    )


def test_env_example_and_readme_match_the_settings() -> None:
    assert (REPO / ".env.example").read_text() == env_example()
    readme = (REPO / "README.md").read_text()
    section = readme.split("<!-- settings:begin -->\n")[1].split("<!-- settings:end -->")[0]
    assert section == markdown_table()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBSOCKET_PORT", "seventy"),
        ("WEBSOCKET_PORT", "70000"),
        ("LOG_FORMAT", "xml"),
        ("CORS_ORIGIN", "ftp://x"),
        ("DATABASE_URL", "mysql://db"),
        ("MAX_MESSAGE_SIZE", "10"),
        ("TRUSTED_PROXIES", "not-a-network"),
        ("WEBSOCKET_COMPRESSION", "maybe"),
    ],
)
def test_invalid_setting_stops_start_naming_the_variable(tmp_path: Path, name: str, value: str):
    result = yektaws("serve", env={name: value}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"yektaws: {name}=")
    assert len(result.stderr.strip().splitlines()) == 1


def test_database_password_never_echoed_in_errors() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({"DATABASE_URL": "mysql://u:hunter2@db/x"}, dotenv=None)
    assert "hunter2" not in str(error.value)


def test_dotenv_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nWEBSOCKET_PORT=4100\nexport HOST='0.0.0.0'\nLOG_LEVEL=debug\n")
    settings = load_settings({"LOG_LEVEL": "error"}, dotenv=dotenv)
    assert (settings.port, settings.host, settings.log_level) == (4100, "0.0.0.0", "error")


def test_port_in_use_exits_with_one_line_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = yektaws("serve", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"yektaws: cannot listen on 127.0.0.1:{port}")
    )


def test_startup_line_names_address_store_and_version_with_password_masked(tmp_path: Path):
    port = free_port()
    env = {"LOG_FORMAT": "json", "DATABASE_URL": "postgresql://app:s3cret@127.0.0.1:1/yy"}
    process = subprocess.Popen(
        [sys.executable, "-m", "yektaws", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "AI_BASE_URL": "", **env},
    )
    try:
        assert process.stdout is not None
        line = next(line for line in process.stdout if '"listening"' in line)
    finally:
        process.terminate()
        process.wait(10)
    assert f"http://127.0.0.1:{port}" in line
    assert "postgresql://app:***@127.0.0.1:1/yy" in line
    assert "s3cret" not in line
    assert '"version":"0.1.0"' in line


def test_version_needs_no_settings_and_matches_the_changelog() -> None:
    # An invalid setting in the environment: --version must answer before settings are read.
    result = yektaws("--version", env={"WEBSOCKET_PORT": "not-a-port"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"yektaws {package.__version__}\n"
    # The newest dated section of CHANGELOG.md is this version, below "Unreleased".
    changelog = (REPO / "CHANGELOG.md").read_text()
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", changelog, re.M)
    assert released, "CHANGELOG.md has no '## [X.Y.Z] - YYYY-MM-DD' section"
    assert released[0] == package.__version__
    assert changelog.index("## [Unreleased]") < changelog.index(f"## [{released[0]}]")


def test_sessions_create_prints_only_a_43_char_token(tmp_path: Path) -> None:
    env = {"EMBEDDED_DB_PATH": str(tmp_path / "s.db")}
    result = yektaws("sessions", "create", "--user-id", "9", "--logged-in", "--ttl", "2h", env=env)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}\n", result.stdout)


def test_sessions_create_rejects_a_bad_ttl() -> None:
    result = yektaws("sessions", "create", "--ttl", "soon")
    assert result.returncode == 2
    assert "invalid ttl" in result.stderr


def test_db_init_creates_the_table_in_a_database_of_our_own(postgres_server: str) -> None:
    from support.database import _admin, _with_database

    name = "yektaws_init_test"
    _admin(postgres_server, f'DROP DATABASE IF EXISTS "{name}"')
    _admin(postgres_server, f'CREATE DATABASE "{name}"')
    try:
        url = _with_database(postgres_server, name)
        assert yektaws("db", "init", env={"DATABASE_URL": url}).returncode == 0
        assert yektaws("db", "init", env={"DATABASE_URL": url}).returncode == 0  # idempotent
        created = yektaws("sessions", "create", env={"DATABASE_URL": url})
        assert created.returncode == 0 and len(created.stdout.strip()) == 43
    finally:
        _admin(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_serve_never_creates_tables_in_the_configured_database(postgres_server: str) -> None:
    from support.database import _admin, _with_database
    from support.gateway import start_gateway

    name = "yektaws_untouched_test"
    _admin(postgres_server, f'DROP DATABASE IF EXISTS "{name}"')
    _admin(postgres_server, f'CREATE DATABASE "{name}"')
    try:
        url = _with_database(postgres_server, name)
        gateway = start_gateway({"DATABASE_URL": url})
        gateway.stop()
        import psycopg2

        with psycopg2.connect(url) as conn, conn.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            )
            assert cursor.fetchone() == (0,)
        conn.close()
    finally:
        _admin(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("command", [["-m", "yektaws"], ["-m", "yektaws", "serve"]])
def test_bare_command_serves_like_serve(tmp_path: Path, command: list[str]) -> None:
    """`yektaws` alone is what the README's first command runs: it must serve."""
    import time
    import urllib.request

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, *command],
        cwd=tmp_path,
        env={**os.environ, "AI_BASE_URL": "", "WEBSOCKET_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the bare command never served"
                time.sleep(0.1)
        assert (tmp_path / "yektaws.db").is_file()  # the embedded default, created on start
    finally:
        process.terminate()
        assert process.wait(15) == 0


def test_sigterm_with_a_closed_log_pipe_still_exits(tmp_path: Path) -> None:
    """A log reader that went away (a collector restarted, `| head`) must not hang the stop."""
    import time
    import urllib.request

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "yektaws", "serve", "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, "AI_BASE_URL": ""},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the gateway never served"
                time.sleep(0.1)
        assert process.stderr is not None
        process.stderr.close()  # nobody reads the log any more
        process.terminate()
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
