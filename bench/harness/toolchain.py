"""What every runner needs before it measures: the load client built, a Python for yektaws."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
CLIENT_SOURCE = BENCH / "client" / "load.c"
CLIENT_BINARY = BENCH / "build" / "load"
PYTHON_MODULES = "aiohttp, socketio, orjson, uvloop"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_client() -> Path:
    """``bench/build/load``, (re)built when ``client/load.c`` is newer."""
    if CLIENT_BINARY.exists() and CLIENT_BINARY.stat().st_mtime >= CLIENT_SOURCE.stat().st_mtime:
        return CLIENT_BINARY
    log("building the load client...")
    CLIENT_BINARY.parent.mkdir(exist_ok=True)
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-o", CLIENT_BINARY, CLIENT_SOURCE], check=True
    )
    return CLIENT_BINARY


def find_python(runner: str) -> Path:
    """``YEKTAWS_PYTHON`` or the repository's ``.venv``; exits (naming ``runner``) when it
    cannot import what the servers need."""
    configured = os.environ.get("YEKTAWS_PYTHON")
    python = Path(configured) if configured else REPO / ".venv" / "bin" / "python"
    check = (
        subprocess.run([python, "-c", f"import {PYTHON_MODULES}"], capture_output=True, check=False)
        if python.exists()
        else None
    )
    if check is None or check.returncode != 0:
        sys.exit(
            f"{runner}: {python} cannot import {PYTHON_MODULES}; "
            "set YEKTAWS_PYTHON to a virtualenv's python that can"
        )
    return python


def yektaws_source() -> Path:
    """``YEKTAWS_SOURCE`` (the directory holding the ``yektaws`` package) or the repository."""
    return Path(os.environ.get("YEKTAWS_SOURCE", REPO)).resolve()
