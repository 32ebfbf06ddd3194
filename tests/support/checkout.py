"""This checkout's files as a release would see them: tracked and untracked, never ignored ones.

Builds (the container image, the wheel and sdist) start from such a copy so that a local
database, a ``.env`` or a build left in the working tree cannot reach what they make.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from support.gateway import REPO

__all__ = ["checkout_files", "copy_checkout"]


def checkout_files() -> list[str]:
    """Paths (from the repository root) of the files git tracks or would track."""
    listing = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [name for name in filter(None, listing.split("\0")) if (REPO / name).is_file()]


def copy_checkout(target: Path) -> Path:
    """Copy :func:`checkout_files` into ``target``; returns ``target``."""
    for name in checkout_files():
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, destination)
    return target
