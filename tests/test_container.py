"""Build the Dockerfile with Podman, run the image, and check it the way an operator would.

No image registry is reachable here, so the ``python:3.11-slim-bookworm`` base is replaced by one
assembled from Debian packages (``mmdebstrap``: bookworm's python3 is 3.11) and passed in with
``--build-arg PYTHON_IMAGE``. Everything else is the Dockerfile as shipped: the real build,
the real entrypoint, the real HEALTHCHECK command, the real SIGTERM.

Podman keeps this test's images in a store of its own (:data:`STORE`, the ``vfs`` driver, which
works inside containers and unprivileged sandboxes), kept between runs so that the base is
assembled once. Skipped unless ``podman`` and ``mmdebstrap`` are installed (Debian packages
``podman``, ``runc``, ``mmdebstrap``).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.checkout import copy_checkout
from support.gateway import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parent.parent
STORE = Path("/var/tmp/yektaws-test-containers")
BASE_IMAGE = "localhost/yektaws-test/python:3.11-bookworm"
IMAGE = "localhost/yektaws-test/yektaws:latest"
#: Written into the build context as `.env`; must not appear anywhere in the image.
CANARY = "yektaws-canary-secret-5c1f0e"
#: How long the gateway in the container may take to answer /health after `podman run`.
START_TIMEOUT = 30.0
#: The drain of an idle gateway is quick; a SIGTERM that never reached Python would instead
#: wait out the whole stop timeout and end in SIGKILL (exit status 137).
STOP_TIMEOUT = 45
IDLE_STOP_SECONDS = 10.0

if shutil.which("podman") is None or shutil.which("mmdebstrap") is None:
    pytest.skip(
        "podman and mmdebstrap needed (apt-get install podman runc mmdebstrap)",
        allow_module_level=True,
    )


def _run_limits() -> tuple[str, ...]:
    """``podman run`` options keeping resource limits at or below this process's own.

    Podman raises them by default, which a sandbox without CAP_SYS_RESOURCE refuses.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ("--ulimit", f"nofile={soft}:{hard}", "--ulimit", "nproc=4096:4096")


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    command = [
        "podman",
        "--root", str(STORE / "root"),
        "--runroot", str(STORE / "run"),
        "--storage-driver", "vfs",
        # runc where installed: crun refuses hosts with a hybrid cgroup layout.
        *(["--runtime", "runc"] if shutil.which("runc") else []),
        *args,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def _assemble_base(tmp_path: Path) -> None:
    """Import a Debian bookworm rootfs with python3.11 and venv as :data:`BASE_IMAGE`.

    The host's CA bundle goes in, and pip is pointed at it, so that the build stage's
    ``pip install`` trusts whatever this host trusts to reach the package index.
    """
    sources = next(
        p
        for p in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
        if p.exists()
    )
    rootfs = tmp_path / "base.tar"
    subprocess.run(
        [
            "mmdebstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "--customize-hook=upload /etc/ssl/certs/ca-certificates.crt"
            " /etc/ssl/certs/ca-certificates.crt",
            "bookworm",
            str(rootfs),
            str(sources),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    podman(
        "import",
        "--change", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
        "--change", "CMD [\"python3\"]",
        str(rootfs),
        BASE_IMAGE,
        timeout=300,
    )  # fmt: skip


def _build_context(tmp_path: Path) -> Path:
    """The working tree's files (tracked and untracked, not ignored) plus secrets to leak."""
    context = copy_checkout(tmp_path / "context")
    (context / ".env").write_text(f"AI_API_KEY={CANARY}\n")
    (context / "yektaws.db").write_text(CANARY)
    return context


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        _assemble_base(tmp_path_factory.mktemp("base"))
    return BASE_IMAGE


@pytest.fixture(scope="module")
def image(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp_path = tmp_path_factory.mktemp("image")
    podman(
        "build",
        "--isolation", "chroot",
        "--network", "host",
        "--format", "docker",  # the OCI format has no HEALTHCHECK
        "--build-arg", f"PYTHON_IMAGE={base_image}",
        "--tag", IMAGE,
        str(_build_context(tmp_path)),
        timeout=900,
    )  # fmt: skip
    return IMAGE


@pytest.fixture
def container(image: str) -> Iterator[tuple[str, int]]:
    """A running container of the image on a free host port; removed afterwards."""
    port = free_port()
    name = f"yektaws-test-{port}"
    podman(
        "run", "--detach", "--name", name,
        "--network", "host",  # no bridge networking inside a sandbox; the port is set below
        "--env", f"WEBSOCKET_PORT={port}",
        *_run_limits(),
        image,
    )  # fmt: skip
    try:
        _wait_for_health(name, port)
        yield name, port
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def _wait_for_health(name: str, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"no /health within {START_TIMEOUT}s; logs:\n{podman('logs', name).stderr}")


def _config(image: str) -> dict:
    return json.loads(podman("image", "inspect", image).stdout)[0]["Config"]


def test_build_context_holds_only_the_package_sources(base_image: str, tmp_path: Path) -> None:
    """.dockerignore keeps secrets out of the context, hence out of every layer and build cache."""
    context = _build_context(tmp_path)
    probe = tmp_path / "Containerfile"
    probe.write_text(f"FROM {base_image}\nCOPY . /context\n")
    tag = "localhost/yektaws-test/context:latest"
    podman("build", "--isolation", "chroot", "--file", str(probe), "--tag", tag, str(context))
    listing = podman(
        "run", "--rm", "--network", "host", *_run_limits(), "--entrypoint", "ls", tag,
        "-A", "/context",
    ).stdout.split()  # fmt: skip
    allowed = {
        *("pyproject.toml", "setup.cfg", "setup.py", "README.md", "LICENSE", "MANIFEST.in"),
        "requirements.lock",  # the Dockerfile installs the runtime dependencies from it
    }
    expected = {name for name in allowed if (REPO / name).exists()} | {"yektaws"}
    assert set(listing) == expected


def test_image_runs_unprivileged_with_no_secrets(image: str) -> None:
    config = _config(image)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["yektaws"]
    assert config["Cmd"] == ["serve"]
    assert "3500/tcp" in config["ExposedPorts"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HOST"] == "0.0.0.0"
    assert env["WEBSOCKET_PORT"] == "3500"
    assert env["LOG_FORMAT"] == "json"
    assert not {"DATABASE_URL", "AI_API_KEY"} & env.keys()
    # The .env and database planted in the build context reached no layer.
    leaked = podman(
        "run", "--rm", "--network", "host", *_run_limits(), "--user", "0:0",  # read it all
        "--entrypoint", "grep", image,
        "-rl", CANARY, "/opt", "/var/lib/yektaws", "/etc", "/root", "/tmp",
        check=False,
    )  # fmt: skip
    assert leaked.returncode == 1, f"canary found in: {leaked.stdout}{leaked.stderr}"


def test_container_serves_both_protocols_and_passes_its_healthcheck(
    container: tuple[str, int],
) -> None:
    name, port = container
    assert podman("healthcheck", "run", name, check=False).returncode == 0
    # The gateway itself is PID 1: SIGTERM goes straight to it.
    cmdline = podman("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert "serve" in cmdline and any(part.endswith("yektaws") for part in cmdline)
    token = podman("exec", name, "yektaws", "sessions", "create").stdout.strip().splitlines()[-1]
    status = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "status"), "--url", f"http://127.0.0.1:{port}"],
        env={**os.environ, "YEKTAWS_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("PASS") == 6


def test_sigterm_stops_the_container_gracefully(container: tuple[str, int]) -> None:
    name, _ = container
    started = time.monotonic()
    podman("stop", "--time", str(STOP_TIMEOUT), name, timeout=STOP_TIMEOUT + 30)
    elapsed = time.monotonic() - started
    state = json.loads(podman("inspect", name).stdout)[0]["State"]
    assert state["ExitCode"] == 0, podman("logs", name).stderr
    assert elapsed < IDLE_STOP_SECONDS
