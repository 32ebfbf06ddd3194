"""What a release is made of: the lock file of exact runtime versions and its check."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from support.gateway import REPO

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
