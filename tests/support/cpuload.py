"""CPU starvation for a test's duration: one busy process per core, each stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

__all__ = ["cpu_load"]

# A process that does nothing but spin, so that the gateway and the test's own clients compete
# with it for every core, as they do on a machine under load.
_SPIN = "while True:\n    pass\n"


@contextlib.contextmanager
def cpu_load(processes: int | None = None) -> Iterator[list[int]]:
    """Run ``processes`` (default: one per core) busy processes; yields their PIDs."""
    count = processes or os.cpu_count() or 1
    spinners = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(count)]
    try:
        yield [spinner.pid for spinner in spinners]
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()
