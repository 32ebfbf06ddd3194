"""The one table: medians over runs, each with its ratios to the reference rows of the same run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .measure import Measurement, Plan
from .rows import AIOHTTP, NODE, Row

# Client CPU above this share of its one core means the client may be what limits a figure.
CLIENT_CPU_WARNING = 90.0
# A server below this share of its core during echo was held back by something else than its
# own work: the client, or other processes on the machine taking its CPU.
SERVER_CPU_EXPECTED = 85.0


@dataclass(frozen=True)
class Figure:
    key: str
    header: str
    unit_format: str  # format spec for the value


def figures(plan: Plan) -> tuple[Figure, ...]:
    echo = []
    for conns in plan.echo_conns:
        echo += [
            Figure(f"echo{conns}_rate", f"echo msg/s @{conns}", ",.0f"),
            Figure(f"echo{conns}_p50", f"p50 ms @{conns}", ".2f"),
            Figure(f"echo{conns}_p99", f"p99 ms @{conns}", ".2f"),
        ]
    return (
        *echo,
        Figure("idle_kib", f"idle KiB/conn @{plan.idle_conns}", ".1f"),
        Figure("handshake_rate", "handshakes/s", ",.0f"),
    )


def _failure(runs: Sequence[Measurement], key: str) -> str | None:
    """Why a figure is missing: failures are named by the figure's prefix (``echo100``...)."""
    phase = key.split("_")[0]
    return next((run.failures[phase] for run in runs if phase in run.failures), None)


def _ratio(
    results: dict[str, list[Measurement]], row: str, reference: str, key: str
) -> float | None:
    """Median over runs of row's figure divided by reference's figure of the same run."""
    ratios = []
    for mine, theirs in zip(results.get(row, []), results.get(reference, []), strict=False):
        if key in mine.figures and theirs.figures.get(key):
            ratios.append(mine.figures[key] / theirs.figures[key])
    return statistics.median(ratios) if ratios else None


def _cell(results: dict[str, list[Measurement]], row: Row, figure: Figure) -> str:
    runs = results[row.key]
    why = _failure(runs, figure.key)
    values = [run.figures[figure.key] for run in runs if figure.key in run.figures]
    if why is not None or not values:
        return "FAIL"
    text = format(statistics.median(values), figure.unit_format)
    ratios = [_ratio(results, row.key, ref, figure.key) for ref in (AIOHTTP, NODE[row.protocol])]
    shown = " · ".join("–" if r is None else f"{r:.2f}×" for r in ratios)
    return f"{text} ({shown})"


def render(
    rows: Sequence[Row],
    results: dict[str, list[Measurement]],
    skipped: dict[str, str],
    plan: Plan,
    runs: int,
    header: str,
) -> str:
    """The markdown table with its legend and notes."""
    figs = figures(plan)
    top = f"@{plan.echo_conns[-1]}"
    lines = [
        header,
        "",
        "| server | "
        + " | ".join(f.header for f in figs)
        + f" | CPU % server {top} / client max |",
        "|---|" + "---:|" * (len(figs) + 1),
    ]
    notes: list[str] = []
    for row in rows:
        if row.key in skipped:
            cells = [f"skipped: {skipped[row.key]}"] + [""] * len(figs)
        else:
            runs_of_row = results[row.key]
            cells = [_cell(results, row, f) for f in figs]
            phase = f"echo{plan.echo_conns[-1]}"
            server = [r.server_cpu[phase] for r in runs_of_row if phase in r.server_cpu]
            client = max((cpu for r in runs_of_row for cpu in r.client_cpu), default=0.0)
            server_text = f"{statistics.median(server):.0f}" if server else "–"
            warn = " ⚠" if client > CLIENT_CPU_WARNING else ""
            cells.append(f"{server_text} / {client:.0f}{warn}")
            if server and statistics.median(server) < SERVER_CPU_EXPECTED and not warn:
                notes.append(
                    f"⚠ {row.label}: the server used only {statistics.median(server):.0f}% of its "
                    "core during the echo: other processes on the machine took CPU time, so "
                    "its figures are low and noisy."
                )
            if warn:
                notes.append(
                    f"⚠ {row.label}: the load client used {client:.0f}% of its core; "
                    "that row's figures may be the client's limit, not the server's."
                )
            for run in runs_of_row:
                for name, why in run.failures.items():
                    notes.append(f"FAIL {row.label}, {name}: {why}")
        label = row.label + ("" if row.authenticated else " ¹")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Each cell: median of {runs} run(s), then (ratio to bare aiohttp · ratio to Node on the "
        "row's protocol: ws for native rows, socket.io for Socket.IO rows), each ratio taken "
        "within one run. Above 1× is better for msg/s and handshakes/s, worse for ms and KiB.",
        "¹ unauthenticated: peers accept any connection; yektaws rows resolve a session token "
        "in PostgreSQL on every connect.",
        *notes,
    ]
    return "\n".join(lines) + "\n"
