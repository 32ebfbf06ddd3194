"""``scripts/soak`` in its short form, in each mode: two minutes of mixed load must pass.

Slow (``scripts/test --full``). The soak's own checks are the assertions: every push delivered
once to every client that stayed connected and to every client cut and resumed at the storms,
no traceback in the gateway's log, no error seen by a client (RSS is reported, not judged: two
minutes end within the soak's 5-minute warm-up; the longer runs' figures are in the README).
Its output is kept in the failure message.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent / "scripts" / "soak"
MINUTES = 2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(MINUTES * 60 + 240)]


@pytest.mark.parametrize("workers", [1, 2])
def test_short_soak_passes(workers: int) -> None:
    run = subprocess.run(
        [str(SOAK), "--minutes", str(MINUTES), "--workers", str(workers)],
        capture_output=True,
        text=True,
        timeout=MINUTES * 60 + 180,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    lines = run.stdout.splitlines()
    assert "PASS" in lines, output
    minute_lines = [line for line in lines if line[:4].strip().replace(".", "").isdigit()]
    assert len(minute_lines) == MINUTES, output
    assert "not judged" in run.stdout, output
    # The resuming clients were cut at both storms (30 s and 90 s in) and resumed each time.
    assert "to 20/20 that were cut and resumed 40 times" in run.stdout, output
