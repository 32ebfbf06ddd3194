"""The sd_notify client against a real datagram socket, and the shipped unit against systemd."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.gateway import free_port
from yektaws import systemd

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "yektaws.service"

#: How long a test waits for a datagram that should already be on its way.
RECEIVE_TIMEOUT = 2.0


class NotifyListener:
    """The service manager's end of ``$NOTIFY_SOCKET``: a bound ``AF_UNIX`` datagram socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(RECEIVE_TIMEOUT)

    def receive(self) -> list[str]:
        """Return the lines of the next datagram; fail the test if none comes in time."""
        data, _ = self.sock.recvfrom(4096)
        return data.decode().split("\n")

    def assert_silent(self, seconds: float = 0.2) -> None:
        self.sock.settimeout(seconds)
        try:
            data, _ = self.sock.recvfrom(4096)
        except TimeoutError:
            return
        finally:
            self.sock.settimeout(RECEIVE_TIMEOUT)
        pytest.fail(f"unexpected notification {data!r}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    path = tmp_path / "notify.sock"
    sock = NotifyListener(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


@pytest.fixture(autouse=True)
def _no_inherited_systemd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite itself may run under systemd (a CI runner's unit): start from a clean slate.
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


# --- the protocol --------------------------------------------------------------------------


def test_ready_sends_one_datagram(listener: NotifyListener) -> None:
    assert systemd.ready() is True
    assert listener.receive() == ["READY=1", "STATUS=Serving"]
    listener.assert_silent()


def test_stopping_watchdog_and_status(listener: NotifyListener) -> None:
    assert systemd.stopping()
    assert listener.receive()[0] == "STOPPING=1"
    assert systemd.watchdog()
    assert listener.receive() == ["WATCHDOG=1"]
    assert systemd.status("412 connections\nstill open")
    assert listener.receive() == ["STATUS=412 connections still open"]


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"yektaws-test-{uuid.uuid4().hex}"
    sock = NotifyListener("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert sock.receive() == ["READY=1"]
    finally:
        sock.close()


def test_no_op_without_notify_socket() -> None:
    assert systemd.ready() is False
    assert systemd.watchdog() is False


@pytest.mark.parametrize("value", ["relative/path", "@", "vsock:2:1234"])
def test_unsupported_address_is_ignored(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert systemd.ready() is False


def test_send_failure_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert systemd.ready() is False


@pytest.mark.parametrize("line", ["READY=1\nSTOPPING=1", "READY"])
def test_malformed_line_is_refused(listener: NotifyListener, line: str) -> None:
    with pytest.raises(ValueError):
        systemd.notify(line)
    listener.assert_silent()


# --- the watchdog --------------------------------------------------------------------------


def test_watchdog_interval_is_half_the_period(monkeypatch: pytest.MonkeyPatch) -> None:
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    assert systemd.watchdog_interval() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 10.0


@pytest.mark.parametrize(
    ("usec", "pid"), [("0", None), ("-5", None), ("soon", None), ("1000000", "1"), ("9", "me")]
)
def test_watchdog_disabled(monkeypatch: pytest.MonkeyPatch, usec: str, pid: str | None) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert systemd.watchdog_interval() is None


async def test_run_watchdog_pings_until_cancelled(listener: NotifyListener) -> None:
    task = asyncio.create_task(systemd.run_watchdog(0.05))
    loop = asyncio.get_running_loop()
    pings = [await loop.run_in_executor(None, listener.receive) for _ in range(3)]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pings == [["WATCHDOG=1"]] * 3


async def test_run_watchdog_rejects_a_zero_interval() -> None:
    with pytest.raises(ValueError):
        await systemd.run_watchdog(0)


# --- the gateway's use of it ---------------------------------------------------------------

#: Seconds the gateway may take from exec to READY=1 (imports, store, bind).
START_TIMEOUT = 20.0
#: WATCHDOG_USEC given to the gateway: pings every 0.25 s, so several fit in a short test.
WATCHDOG_USEC = 500_000


def _collect(listener: NotifyListener, seconds: float, until: str | None = None) -> list[list[str]]:
    """The datagrams that arrive within ``seconds``, stopping after one that holds ``until``."""
    deadline = time.monotonic() + seconds
    received: list[list[str]] = []
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            listener.sock.settimeout(remaining)
            received.append(listener.receive())
            if until is not None and until in received[-1]:
                break
    except TimeoutError:
        pass
    finally:
        listener.sock.settimeout(RECEIVE_TIMEOUT)
    return received


def _said(datagrams: list[list[str]], line: str) -> bool:
    return any(line in datagram for datagram in datagrams)


def _serves_http(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
            return True
    except OSError:
        return False


def test_gateway_notifies_ready_watchdog_and_stopping(
    listener: NotifyListener, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "gateway.log"
    env = {
        **os.environ,  # NOTIFY_SOCKET, set by the listener fixture
        "PYTHONPATH": str(REPO),
        "HOST": "127.0.0.1",
        "WEBSOCKET_PORT": str(port),
        "DATABASE_URL": "",
        "EMBEDDED_DB_PATH": str(tmp_path / "sessions.db"),
        "AI_BASE_URL": "",
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
    }
    # cwd: the gateway reads a .env from its working directory; a developer's must not count.
    server = subprocess.Popen(
        [sys.executable, "-m", "yektaws", "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        before_ready = _collect(listener, START_TIMEOUT, until="READY=1")
        if not _said(before_ready, "READY=1"):
            pytest.fail(f"the gateway sent no READY=1:\n{log.read_text()}")
        # READY=1 means the listener is bound and the store answered: both must hold now.
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as ready:
            assert ready.status == 200
        assert not _said(before_ready, "STOPPING=1")

        # Half the period is 0.25 s: within a second at least three pings, whatever else is said.
        pings = _collect(listener, 1.0)
        assert sum("WATCHDOG=1" in datagram for datagram in pings) >= 3, pings

        server.send_signal(signal.SIGTERM)
        assert _said(_collect(listener, RECEIVE_TIMEOUT, until="STOPPING=1"), "STOPPING=1")
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


# --- the unit file -------------------------------------------------------------------------


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_states_the_deployment_contract() -> None:
    unit = _unit_settings()
    assert unit["Type"] == ["notify"]
    assert unit["ExecStart"] == ["/opt/yektaws/.venv/bin/yektaws serve"]
    assert unit["EnvironmentFile"] == ["/etc/yektaws/env"]
    assert unit["User"] == ["yektaws"]
    assert unit["Restart"] == ["on-failure"]
    assert int(unit["LimitNOFILE"][0]) >= 65536
    # The drain waits up to DRAIN_TIMEOUT (30 s by default); systemd must not SIGKILL before.
    assert int(unit["TimeoutStopSec"][0].removesuffix("s")) > 30
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert unit[hardening] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]


def _render_unit(tmp_path: Path) -> Path:
    """Write the unit with ExecStart pointing at this environment's ``yektaws``.

    ``systemd-analyze verify`` refuses a unit whose ExecStart binary does not exist, and this
    machine has no /opt/yektaws. Without the console script (package not installed), the
    interpreter runs the module instead.
    """
    script = Path(sys.executable).with_name("yektaws")
    command = f"{script} serve" if script.exists() else f"{sys.executable} -m yektaws serve"
    text = UNIT.read_text().replace("/opt/yektaws/.venv/bin/yektaws serve", command)
    rendered = tmp_path / "yektaws.service"
    rendered.write_text(text)
    return rendered


def _systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian package: systemd)")
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    result = _systemd_analyze("verify", str(_render_unit(tmp_path)))
    # verify exits 0 even for some warnings; any line about our unit is a finding to fix.
    findings = [line for line in result.stderr.splitlines() if "yektaws.service" in line]
    assert result.returncode == 0, result.stderr
    assert findings == []


def test_unit_hardening_exposure_is_low(tmp_path: Path) -> None:
    result = _systemd_analyze(
        "security", "--offline=true", "--threshold=25", str(_render_unit(tmp_path))
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Overall exposure level" in result.stdout
