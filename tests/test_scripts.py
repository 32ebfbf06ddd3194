"""The operator scripts against a real gateway process, run the way an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support.gateway import Gateway, free_port

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
#: Every check scripts/status makes, in the order it reports them.
CHECKS = ("info", "health", "ready", "native", "socketio", "socketio-polling")
#: Generous bound for one script run; a refused Socket.IO connection must not wait out the
#: long-poll cycle (about 30 s), so the refusal tests also assert a much shorter time.
SCRIPT_TIMEOUT = 60
QUICK = 10.0


def run_script(
    name: str, *args: str, token: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "YEKTAWS_TOKEN"}
    if token is not None:
        env["YEKTAWS_TOKEN"] = token
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )


def verdicts(output: str) -> dict[str, tuple[str, str]]:
    """Map each check's name to its verdict and reason, from the report's lines."""
    found: dict[str, tuple[str, str]] = {}
    for line in output.splitlines():
        verdict, _, rest = line.partition("  ")
        if verdict in {"PASS", "FAIL", "SKIP"}:
            name, _, reason = rest.strip().partition(" ")
            found[name] = (verdict, reason.strip())
    return found


# --- scripts/status --------------------------------------------------------------------------


def test_status_passes_against_a_healthy_gateway(
    gateway: Gateway, make_token: Callable[..., str]
) -> None:
    result = run_script("status", "--url", gateway.http_url, f"--token={make_token(user_id=7)}")
    report = verdicts(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(report) == list(CHECKS)
    assert {verdict for verdict, _ in report.values()} == {"PASS"}
    assert "logged in: False" in report["native"][1]
    assert "echo in" in report["socketio-polling"][1]


def test_status_reads_the_token_from_the_environment_and_never_prints_it(
    gateway: Gateway, make_token: Callable[..., str]
) -> None:
    token = make_token()
    result = run_script("status", "--url", gateway.http_url, token=token)
    assert result.returncode == 0, result.stdout + result.stderr
    assert token not in result.stdout + result.stderr


def test_status_fails_with_the_reason_for_a_bad_token(gateway: Gateway) -> None:
    started = time.monotonic()
    result = run_script("status", "--url", gateway.http_url, "--token", "not-a-session-token")
    report = verdicts(result.stdout)
    assert result.returncode == 1
    assert time.monotonic() - started < QUICK
    assert [report[name][0] for name in ("info", "health", "ready")] == ["PASS"] * 3
    assert report["native"] == (
        "FAIL",
        "handshake refused with HTTP 401 (token missing, unknown or expired)",
    )
    for name in ("socketio", "socketio-polling"):
        assert report[name] == ("FAIL", "connect refused: Invalid or expired session token")
    assert "3 of 6 checks failed" in result.stdout


def test_status_fails_every_check_against_a_stopped_gateway() -> None:
    result = run_script("status", "--url", f"http://127.0.0.1:{free_port()}", "--token", "t")
    report = verdicts(result.stdout)
    assert result.returncode == 1
    assert list(report) == list(CHECKS)
    assert {verdict for verdict, _ in report.values()} == {"FAIL"}
    assert report["health"][1].endswith("Connection refused")


def test_status_skips_connection_checks_without_a_token(gateway: Gateway) -> None:
    result = run_script("status", "--url", gateway.http_url)
    report = verdicts(result.stdout)
    assert result.returncode == 0
    assert [report[name][0] for name in CHECKS] == ["PASS"] * 3 + ["SKIP"] * 3
    assert "YEKTAWS_TOKEN" in report["native"][1]


def test_status_rejects_a_url_without_scheme() -> None:
    result = run_script("status", "--url", "127.0.0.1:3500")
    assert result.returncode == 2
    assert "--url must start with http:// or https://" in result.stderr


# --- scripts/sio-client ----------------------------------------------------------------------


def test_sio_client_sends_typed_events_and_prints_replies(
    gateway: Gateway, make_token: Callable[..., str]
) -> None:
    typed = 'echo {"a": 1}\nnot-json {oops\nping\n'
    result = run_script("sio-client", "--url", gateway.http_url, token=make_token(), stdin=typed)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[0].startswith(f"-- connected to {gateway.http_url} over websocket (sid ")
    assert lines[1].startswith('<- connected {"message": "Connected to YektaYar server"')
    assert any(line.startswith('<- echo_response {"received": {"a": 1}') for line in lines)
    assert any(line.startswith("!! data is not JSON") for line in lines)
    assert any(line.startswith('<- pong {"timestamp": ') for line in lines)
    assert lines[-1].startswith("-- disconnected")


def test_sio_client_is_interactive(gateway: Gateway, make_token: Callable[..., str]) -> None:
    """A reply shows up while the client still waits for the next line."""
    client = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "sio-client"), "--url", gateway.http_url, "--namespace",
         "/api", "--transport", "polling", f"--token={make_token(user_id=3)}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert client.stdin is not None and client.stdout is not None
    try:
        client.stdin.write("status\n")
        client.stdin.flush()
        for line in client.stdout:
            if line.startswith("<- status_response"):
                break
        else:
            pytest.fail("the client ended without a status_response")
        assert '"userId": "3"' in line
        assert '"protocol": "socket.io"' in line
        client.stdin.close()
        assert client.wait(timeout=QUICK) == 0
    finally:
        client.kill()
        client.wait()


def test_sio_client_reports_a_refusal_at_once(gateway: Gateway) -> None:
    started = time.monotonic()
    result = run_script(
        "sio-client", "--url", gateway.http_url, "--transport", "polling", token="nope", stdin=""
    )
    assert result.returncode == 1
    assert result.stdout.strip() == (
        '!! connect refused: {"message": "Invalid or expired session token"}'
    )
    assert time.monotonic() - started < QUICK
