"""What a release is made of, and that it works once installed.

- The lock file of exact runtime versions, and ``scripts/check-lock`` holding it to setup.cfg.
- ``python -m build`` makes a wheel and an sdist from this checkout's files; the wheel, installed
  into a fresh virtualenv from the lock as docs/deploy.md installs it, serves: ``yektaws serve``
  with the embedded store answers ``/health``, a native WebSocket echo with a token made by the
  installed ``yektaws sessions create``, and every data file (the AI prompts, and any later data
  folder) is in the installed package.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

import yektaws
from support.checkout import checkout_files, copy_checkout
from support.gateway import REPO, start_gateway

LOCK = REPO / "requirements.lock"
SETUP_CFG = REPO / "setup.cfg"


def check_lock(lock: Path = LOCK, setup_cfg: Path = SETUP_CFG) -> subprocess.CompletedProcess[str]:
    script = REPO / "scripts" / "check-lock"
    return subprocess.run(
        [sys.executable, str(script), "--lock", str(lock), "--setup-cfg", str(setup_cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_shipped_lock_satisfies_setup_cfg() -> None:
    result = check_lock()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "check-lock: requirements.lock satisfies setup.cfg\n"


def test_a_pin_outside_a_range_fails_naming_it(tmp_path: Path) -> None:
    # aiohttp pinned below setup.cfg's floor (>=3.14): what an edit of setup.cfg that outgrows
    # the lock looks like from the lock's side.
    text, count = re.subn(r"(?m)^aiohttp==\S+", "aiohttp==3.13.0", LOCK.read_text())
    assert count == 1
    lock = tmp_path / "requirements.lock"
    lock.write_text(text)
    result = check_lock(lock)
    assert result.returncode == 1
    assert "aiohttp==3.13.0 does not satisfy setup.cfg's aiohttp<4,>=3.14" in result.stderr
    assert "run scripts/lock" in result.stderr


def test_a_raised_floor_and_a_new_dependency_in_setup_cfg_fail(tmp_path: Path) -> None:
    text = SETUP_CFG.read_text()
    text, count = re.subn(r"(?m)^(\s+)redis>=\S+", r"\1redis>=99,<100\n\1tomli-w>=1", text)
    assert count == 1
    setup_cfg = tmp_path / "setup.cfg"
    setup_cfg.write_text(text)
    result = check_lock(setup_cfg=setup_cfg)
    assert result.returncode == 1
    assert re.search(r"redis==\S+ does not satisfy setup.cfg's redis<100,>=99", result.stderr)
    assert "tomli-w: required by setup.cfg (tomli-w>=1), not locked" in result.stderr


def test_a_pin_without_hashes_fails(tmp_path: Path) -> None:
    # pip --require-hashes refuses a whole file in which one pin has no hash.
    pattern = r"(?m)^(orjson==\S+) \\\n(?:\s+--hash=\S+(?: \\)?\n)+"
    text, count = re.subn(pattern, r"\1\n", LOCK.read_text())
    assert count == 1
    lock = tmp_path / "requirements.lock"
    lock.write_text(text)
    result = check_lock(lock)
    assert result.returncode == 1
    assert re.search(r"orjson==\S+: no --hash", result.stderr)


# -- the wheel and the sdist ---------------------------------------------------------------------

#: What docs/deploy.md's steps need from an unpacked sdist, besides the package.
SDIST_EXTRAS = (
    "requirements.lock",
    ".env.example",
    "systemd/yektaws.service",
    "CHANGELOG.md",
    "scripts/status",
)


@dataclass
class Release:
    wheel: Path
    sdist: Path
    venv: Path
    build_seconds: float
    install_seconds: float

    @property
    def yektaws(self) -> str:
        return str(self.venv / "bin" / "yektaws")


def _clean_env() -> dict[str, str]:
    """The environment without anything that would make this checkout importable."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run(command: list[str], cwd: Path, timeout: float = 300, **env: str) -> str:
    result = subprocess.run(
        command, cwd=cwd, env={**_clean_env(), **env}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


def _data_files() -> set[str]:
    """The package's non-Python files in this checkout, as wheel paths (``yektaws/...``)."""
    return {
        name for name in checkout_files()
        if name.startswith("yektaws/") and not name.endswith((".py", ".pyc"))
    }  # fmt: skip


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """Build from a copy of the checkout, then install as docs/deploy.md says, in a fresh venv."""
    root = tmp_path_factory.mktemp("release")
    source = copy_checkout(root / "source")
    dist = root / "dist"
    started = time.monotonic()
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)], cwd=root)
    build_seconds = time.monotonic() - started
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(dist.iterdir())
    venv = root / "venv"
    started = time.monotonic()
    _run([sys.executable, "-m", "venv", str(venv)], cwd=root)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, "--require-hashes", "-r", str(source / "requirements.lock")], cwd=root)
    _run([*pip, "--no-deps", str(wheels[0])], cwd=root)
    install_seconds = time.monotonic() - started
    yield Release(wheels[0], sdists[0], venv, build_seconds, install_seconds)


def test_build_makes_a_wheel_and_sdist_with_every_data_file(release: Release) -> None:
    version = yektaws.__version__
    assert release.wheel.name == f"yektaws-{version}-py3-none-any.whl"
    assert release.sdist.name == f"yektaws-{version}.tar.gz"
    with zipfile.ZipFile(release.wheel) as wheel:
        in_wheel = set(wheel.namelist())
    data = _data_files()
    assert {"yektaws/ai/prompts/fa.txt", "yektaws/ai/prompts/en.txt"} <= data
    # A data folder under yektaws/ that the build leaves out (MANIFEST.in's graft, setup.cfg's
    # include_package_data and find_namespace: carry them all) fails here.
    assert data - in_wheel == set(), "files under yektaws/ missing from the wheel"
    with tarfile.open(release.sdist) as sdist:
        in_sdist = {name.partition("/")[2] for name in sdist.getnames()}
    assert data - in_sdist == set()
    assert set(SDIST_EXTRAS) - in_sdist == set()
    # The wheel is built in seconds; the figure is in the test output with -s.
    print(f"build: {release.build_seconds:.1f} s, install: {release.install_seconds:.1f} s")


def test_installed_package_is_the_wheel_with_its_data(release: Release, tmp_path: Path) -> None:
    # Run from elsewhere, with no path into this checkout: only the installed copy is importable.
    probe = (
        "import json, yektaws\n"
        "from importlib import resources\n"
        "from yektaws.ai.prompts import system_prompt\n"
        "folder = resources.files('yektaws.ai') / 'prompts'\n"
        "print(json.dumps({'file': yektaws.__file__,\n"
        "    'prompts': {p.name: p.read_text(encoding='utf-8') for p in folder.iterdir()},\n"
        "    'fa': system_prompt('fa')}))\n"
    )
    found = json.loads(_run([str(release.venv / "bin" / "python"), "-c", probe], cwd=tmp_path))
    assert Path(found["file"]).is_relative_to(release.venv)
    prompts = REPO / "yektaws" / "ai" / "prompts"
    assert found["prompts"] == {p.name: p.read_text(encoding="utf-8") for p in prompts.iterdir()}
    assert found["fa"] == (prompts / "fa.txt").read_text(encoding="utf-8").strip()
    version = _run([release.yektaws, "--version"], cwd=tmp_path)
    assert version == f"yektaws {yektaws.__version__}\n"


async def test_installed_wheel_serves_health_and_a_native_echo(
    release: Release, tmp_path: Path
) -> None:
    env = {"EMBEDDED_DB_PATH": str(tmp_path / "sessions.db"), "AI_BASE_URL": ""}
    token = _run(
        [release.yektaws, "sessions", "create", "--user-id", "15", "--logged-in"],
        cwd=tmp_path, **env,
    ).strip()  # fmt: skip
    gateway = start_gateway(env, program=[release.yektaws])
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gateway.http_url}/health") as response:
                assert response.status == 200
                assert await response.json() == {"status": "ok"}
            async with http.ws_connect(f"{gateway.ws_url}/ws?token={token}") as ws:
                welcome = await ws.receive_json(timeout=5)
                assert welcome["event"] == "connected"
                assert welcome["data"]["isLoggedIn"] is True
                frame = {"event": "echo", "data": {"release": yektaws.__version__}, "id": 1}
                await ws.send_str(orjson.dumps(frame).decode())
                echo = await ws.receive_json(timeout=5)
        assert echo["event"] == "echo_response"
        assert echo["id"] == 1
        assert echo["data"]["received"] == {"release": yektaws.__version__}
        started = gateway.wait_for_log("listening")
        assert started.get("version") == yektaws.__version__
    finally:
        code = gateway.stop()
    assert code == 0, gateway.log_text()[-3000:]
