"""Driving one server with the load client and turning its reports into figures."""

from __future__ import annotations

import functools
import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .database import TokenPools
from .processes import (
    CLIENT_CPU,
    SERVER_CPU,
    Processes,
    cpu_seconds,
    free_port,
    rss_kib,
    wait_healthy,
)
from .rows import Row, Tools, server_environment

# Extra time the load client gets beyond what its run should take before it is killed.
CLIENT_SLACK_SECONDS = 120.0
# Connections and seconds of the warm-up echo that runs before anything is measured, so that
# lazy imports, JIT compilation and first-use allocations do not land in the figures.
WARMUP_CONNS = 20
WARMUP_SECONDS = 1.0


@dataclass(frozen=True)
class Plan:
    """How hard and how long each server is driven."""

    warmup: float
    duration: float
    idle_conns: int
    idle_settle: float
    handshakes: int
    echo_conns: tuple[int, ...] = (100, 1000)
    handshake_concurrency: int = 50


@dataclass
class Measurement:
    """One run of one row: figures by name, and why any figure could not be taken."""

    figures: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    client_cpu: list[float] = field(default_factory=list)
    server_cpu: dict[str, float] = field(default_factory=dict)


class ClientError(RuntimeError):
    """The load client found wrong replies or lost connections."""


class LoadClient:
    """``bench/build/load`` aimed at one server, for one row's protocol and check."""

    def __init__(self, binary: Path, processes: Processes, row: Row, port: int, log: Path) -> None:
        self._binary = binary
        self._processes = processes
        self._row = row
        self._port = port
        self._log = log

    def run(
        self,
        mode: str,
        tokens: Path | None,
        expected_seconds: float,
        on_phase: Callable[[str, subprocess.Popen[bytes]], None] = lambda phase, proc: None,
        **options: float,
    ) -> dict[str, float]:
        """Run the client to the end; ``on_phase`` sees its progress lines as they come."""
        argv = [
            str(self._binary),
            f"mode={mode}",
            f"proto={self._row.protocol}",
            f"check={self._row.check}",
            f"port={self._port}",
            *(f"{key}={value}" for key, value in options.items()),
        ]
        if tokens is not None and self._row.authenticated:
            argv.append(f"tokens={tokens}")
        proc = self._processes.start(argv, cpu=CLIENT_CPU, log=self._log, pipe_stdio=True)
        watchdog = threading.Timer(expected_seconds + CLIENT_SLACK_SECONDS, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            result: dict[str, Any] | None = None
            for line in proc.stdout:
                report = json.loads(line)
                if report["phase"] == "result":
                    result = report
                else:
                    on_phase(report["phase"], proc)
            proc.wait()
        finally:
            watchdog.cancel()
            self._processes.stop(proc)
        if result is None:
            raise ClientError(f"load client ended ({proc.returncode}) without a result")
        if result["errors"]:
            raise ClientError(f"{result['errors']} errors, first: {result['firstError']}")
        return result


class _ServerCpu:
    """Server CPU between the client's ``measure`` and ``measured`` lines, in % of one core."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._start = (0.0, 0.0)
        self.percent = 0.0

    def __call__(self, phase: str, proc: subprocess.Popen[bytes]) -> None:
        sample = (time.monotonic(), cpu_seconds(self._pid))
        if phase == "measure":
            self._start = sample
        elif phase == "measured":
            self.percent = 100 * (sample[1] - self._start[1]) / (sample[0] - self._start[0])


def measure_row(
    row: Row,
    tools: Tools,
    plan: Plan,
    processes: Processes,
    client_binary: Path,
    tokens: TokenPools,
    logs: Path,
) -> Measurement:
    """Start ``row``'s server on a fresh port, take every figure, stop the server."""
    port = free_port()
    out = Measurement()
    with processes.running(
        row.command(tools, port),
        cpu=SERVER_CPU,
        log=logs / f"{row.key}.server.log",
        env=server_environment(row, tools),
        cwd=logs,  # no stray .env file is read from here
    ) as server:
        wait_healthy(server, port)
        client = LoadClient(client_binary, processes, row, port, logs / f"{row.key}.client.log")
        client.run(
            "echo",
            tokens.echo,
            2 * WARMUP_SECONDS,
            conns=WARMUP_CONNS,
            warmup=WARMUP_SECONDS,
            duration=WARMUP_SECONDS,
        )
        _take(out, "idle", lambda: _idle_memory(client, server.pid, plan, tokens))
        for conns in plan.echo_conns:
            _take(
                out,
                f"echo{conns}",
                functools.partial(_echo, client, server.pid, plan, conns, tokens, out),
            )
        _take(out, "handshake", lambda: _handshakes(client, plan, tokens, out))
    return out


def _take(out: Measurement, phase: str, measure: Callable[[], dict[str, float]]) -> None:
    """Add a phase's figures, or record why it failed (figures are named ``<phase>_...``)."""
    try:
        out.figures.update(measure())
    except ClientError as exc:
        out.failures[phase] = str(exc)


def _idle_memory(client: LoadClient, pid: int, plan: Plan, tokens: TokenPools) -> dict[str, float]:
    # Let the warm-up's garbage be collected first, as it will be before the `after` sample.
    time.sleep(plan.idle_settle)
    before = rss_kib(pid)
    after = 0

    def settle_then_sample(phase: str, proc: subprocess.Popen[bytes]) -> None:
        nonlocal after
        if phase != "ready":
            return
        time.sleep(plan.idle_settle)
        after = rss_kib(pid)
        assert proc.stdin is not None
        proc.stdin.write(b"close\n")
        proc.stdin.flush()

    client.run("idle", tokens.idle, plan.idle_settle, settle_then_sample, conns=plan.idle_conns)
    return {"idle_kib": (after - before) / plan.idle_conns}


def _echo(
    client: LoadClient, pid: int, plan: Plan, conns: int, tokens: TokenPools, out: Measurement
) -> dict[str, float]:
    server_cpu = _ServerCpu(pid)
    result = client.run(
        "echo",
        tokens.echo,
        plan.warmup + plan.duration,
        server_cpu,
        conns=conns,
        warmup=plan.warmup,
        duration=plan.duration,
    )
    out.client_cpu.append(result["clientCpuPct"])
    out.server_cpu[f"echo{conns}"] = server_cpu.percent
    return {
        f"echo{conns}_rate": result["msgPerSec"],
        f"echo{conns}_p50": result["p50Ms"],
        f"echo{conns}_p99": result["p99Ms"],
    }


def _handshakes(
    client: LoadClient, plan: Plan, tokens: TokenPools, out: Measurement
) -> dict[str, float]:
    result = client.run(
        "handshake",
        tokens.handshake,
        plan.handshakes / 50,  # at worst 50 handshakes a second
        count=plan.handshakes,
        concurrency=plan.handshake_concurrency,
    )
    out.client_cpu.append(result["clientCpuPct"])
    return {"handshake_rate": result["connectsPerSec"]}
