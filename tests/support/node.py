"""Run the official JavaScript clients (socket.io-client, ws, wscat) from ``tests/js``."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

__all__ = ["JS_DIR", "run_js_client", "wscat"]

JS_DIR = Path(__file__).resolve().parents[1] / "js"


def _require_node() -> str:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules").is_dir():
        # scripts/test installs both; a bare `pytest` run without them says why it skips.
        pytest.skip("Node.js and tests/js/node_modules are needed (run scripts/test)")
    return node


def run_js_client(options: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
    """Run ``tests/js/client.mjs`` with ``options``; return what it printed."""
    node = _require_node()
    result = subprocess.run(
        [node, str(JS_DIR / "client.mjs"), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def wscat(url: str, execute: str, wait: float = 1.0, *extra: str) -> list[dict[str, Any]]:
    """Run wscat as the README tells users to, sending one message; return the frames it printed.

    wscat prints what it receives only to a terminal, so it runs on a pseudo-terminal here.
    """
    _require_node()
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [
                str(JS_DIR / "node_modules" / ".bin" / "wscat"),
                "--no-color",
                "-c",
                url,
                "-x",
                execute,
                "-w",
                str(wait),
                *extra,
            ],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            close_fds=True,
        )
        process.wait(timeout=30)
    finally:
        os.close(terminal)
    output = b""
    with contextlib.suppress(OSError):  # EIO once the terminal's other side is gone
        while chunk := os.read(controller, 65536):
            output += chunk
    os.close(controller)
    text = _ANSI.sub("", output.decode(errors="replace"))
    return [json.loads(match) for match in re.findall(r"\{.*\}", text)]
