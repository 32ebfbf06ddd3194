"""What each node answers to the console's questions, and how the answers add up to the cluster.

Three questions go over the bus (:meth:`yektaws.bus.Bus.ask`), registered on every node by
:func:`register`:

- ``stats`` ``{since}``: the node's latest figures and its sample rows after ``since``
  (:class:`~yektaws.console.samples.Sampler`);
- ``connections`` ``{limit, cursor, protocol}``: one page of the node's connections, newest first;
- ``users`` ``{limit, cursor}``: one page of the node's users, in user-id order.

Pages are keyset-paginated: each node returns at most ``limit`` items after the cursor in one
total order, the asker merges them and keeps the first ``limit``. Any item among the cluster's
first ``limit`` is among its own node's first ``limit``, so the merged page is exact, and no node
ever ships more than a page, however many connections it holds. A cursor is the sort key of the
last item of the previous page, an opaque string to the page.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Any

from yektaws.bus import Answers, LocalNode
from yektaws.connection import Connection
from yektaws.console.samples import SAMPLE_FIELDS, Sampler, iso

__all__ = [
    "DEFAULT_PAGE",
    "MAX_PAGE",
    "cluster_connections",
    "cluster_stats",
    "cluster_users",
    "register",
]

#: Items a page holds when the request does not say.
DEFAULT_PAGE = 50
#: Most items one page may hold: the most any node ships for one request.
MAX_PAGE = 500


def register(node: LocalNode, sampler: Sampler) -> None:
    """Teach ``node`` the console's questions (done in every process, console or not)."""
    hub = node.gateway.hub
    node.answers["stats"] = lambda query: sampler.answer(float(query["since"]))
    node.answers["connections"] = lambda query: _connections_page(
        hub, node.id, int(query["limit"]), query.get("cursor"), query.get("protocol")
    )
    node.answers["users"] = lambda query: _users_page(
        hub.users(), node.id, int(query["limit"]), query.get("cursor")
    )


# -- connections, newest first ------------------------------------------------------------------

#: The connections' order, oldest first: connection time, then socket id for a tie.
_BY_AGE = attrgetter("connected_at", "id")


def connection_cursor(row: dict[str, Any]) -> str:
    return f"{row['at']!r}/{row['socketId']}"


def _parse_connection_cursor(cursor: str) -> tuple[float, str]:
    at, _, socket_id = cursor.partition("/")
    return (float(at), socket_id)


def _connections_page(
    hub: Iterable[Connection], node: str, limit: int, cursor: str | None, protocol: str | None
) -> dict[str, Any]:
    # One sort of the whole node, but a cheap one: the hub holds its connections in the order
    # they came, so the list is nearly sorted already (6 ms for 50,000; bench/console_scale).
    chosen = sorted(
        (c for c in hub if not c.closed and (protocol is None or c.protocol == protocol)),
        key=_BY_AGE,
    )
    end = bisect_left(chosen, _parse_connection_cursor(cursor), key=_BY_AGE) if cursor else None
    end = len(chosen) if end is None else end
    # limit + 1: whether this node has more than one page left.
    page = chosen[max(0, end - limit - 1) : end][::-1]
    return {
        "items": [
            {
                "socketId": conn.id,
                "userId": conn.user_id,
                "protocol": conn.protocol,
                "transport": conn.transport,
                "peer": conn.peer,
                "node": node,
                "at": conn.connected_at,
                "connectedAt": iso(conn.connected_at, "milliseconds"),
            }
            for conn in page[:limit]
        ],
        "more": len(page) > limit,
    }


def cluster_connections(answers: Answers, limit: int) -> dict[str, Any]:
    """One page of the cluster's connections from every node's page."""
    rows = sorted(
        (row for page in answers.by_node.values() for row in page["items"]),
        key=lambda row: (row["at"], row["socketId"]),
        reverse=True,
    )
    return _page(answers, rows, limit, cursor=connection_cursor)


# -- users, in user-id order ---------------------------------------------------------------------


def _user_key(user_id: str) -> tuple[int, str]:
    # Numeric ids in numeric order ("9" before "10"), and a total order for any other string.
    return (len(user_id), user_id)


def _users_page(
    users: Iterable[tuple[str, Iterable[Connection]]], node: str, limit: int, cursor: str | None
) -> dict[str, Any]:
    after = _user_key(cursor) if cursor else None
    chosen = (
        (user_id, conns) for user_id, conns in users if after is None or _user_key(user_id) > after
    )
    page = heapq.nsmallest(limit + 1, chosen, key=lambda item: _user_key(item[0]))
    items = []
    for user_id, conns in page[:limit]:
        protocols: dict[str, int] = {}
        for conn in conns:
            protocols[conn.protocol] = protocols.get(conn.protocol, 0) + 1
        items.append(
            {
                "userId": user_id,
                "connections": sum(protocols.values()),
                "protocols": protocols,
                "nodes": [node],
            }
        )
    return {"items": items, "more": len(page) > limit}


def cluster_users(answers: Answers, limit: int) -> dict[str, Any]:
    """One page of the cluster's users: a user on several nodes is one row, its counts summed."""
    merged: dict[str, dict[str, Any]] = {}
    for page in answers.by_node.values():
        for item in page["items"]:
            row = merged.get(item["userId"])
            if row is None:
                merged[item["userId"]] = {**item, "protocols": dict(item["protocols"])}
                continue
            row["connections"] += item["connections"]
            row["nodes"] = sorted({*row["nodes"], *item["nodes"]})
            _add(row["protocols"], item["protocols"])
    rows = sorted(merged.values(), key=lambda row: _user_key(row["userId"]))
    return _page(answers, rows, limit, cursor=lambda row: row["userId"])


# -- merging -------------------------------------------------------------------------------------


def _page(
    answers: Answers, rows: list[dict[str, Any]], limit: int, cursor: Callable[[Any], str]
) -> dict[str, Any]:
    """The first ``limit`` of the sorted ``rows``, and the cursor of the next page if any."""
    more = len(rows) > limit or any(page["more"] for page in answers.by_node.values())
    rows = rows[:limit]
    return {
        "items": rows,
        "nextCursor": cursor(rows[-1]) if more and rows else None,
        "nodes": list(answers.by_node),
        "missing": answers.missing,
        "complete": answers.complete,
    }


# -- stats -----------------------------------------------------------------------------------------


def cluster_stats(answers: Answers, interval: float) -> dict[str, Any]:
    """Every node's figures, their totals, and the cluster's series (rows summed per instant).

    The series stops at the latest instant that every node has sampled, so that a total is never
    drawn from some of the nodes; the next snapshot brings the rest (the page asks ``since`` the
    last instant it holds).
    """
    nodes = []
    by_instant: dict[float, list[list[float]]] = {}
    latest: list[float] = []
    for node, answer in answers.by_node.items():
        samples = answer.get("samples", [])
        nodes.append({"node": node, **{k: v for k, v in answer.items() if k != "samples"}})
        for row in samples:
            by_instant.setdefault(row[0], []).append(row)
        if samples:
            latest.append(samples[-1][0])
    horizon = min(latest) if latest else 0.0
    lag = SAMPLE_FIELDS.index("loopLag")
    series = []
    for at in sorted(t for t in by_instant if t <= horizon):
        rows = by_instant[at]
        columns = zip(*(row[1:] for row in rows), strict=True)
        summed = [at, *(round(sum(values), 2) for values in columns)]
        summed[lag] = max(row[lag] for row in rows)  # the worst node's lag, not a sum
        series.append(summed)
    return {
        "nodes": nodes,
        "missing": answers.missing,
        "complete": answers.complete,
        "totals": _totals(nodes),
        "interval": interval,
        "fields": list(SAMPLE_FIELDS),
        "series": series,
    }


def _totals(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {
        "connections": {},
        "rejects": {},
        "recoveries": {"outcomes": {}},
        "usersOnline": 0,
        "eventsInPerSecond": 0.0,
        "eventsOutPerSecond": 0.0,
        "rejectsPerSecond": 0.0,
        "aiStreams": 0,
        "loopLagSeconds": 0.0,
    }
    for node in nodes:
        if "connections" not in node:
            continue  # a node that has not sampled yet
        for protocol, transports in node["connections"].items():
            mine = totals["connections"].setdefault(protocol, {})
            for transport, count in transports.items():
                mine[transport] = mine.get(transport, 0) + count
        _add(totals["rejects"], node["rejects"])
        recoveries = node["recoveries"]
        _add(totals["recoveries"]["outcomes"], recoveries["outcomes"])
        for name in ("replayedEvents", "statesSaved", "logEntries"):
            totals["recoveries"][name] = totals["recoveries"].get(name, 0) + recoveries[name]
        totals["recoveries"]["logAgeSeconds"] = max(
            totals["recoveries"].get("logAgeSeconds", 0), recoveries["logAgeSeconds"]
        )
        for name in (
            "usersOnline",
            "eventsInPerSecond",
            "eventsOutPerSecond",
            "rejectsPerSecond",
            "aiStreams",
        ):
            totals[name] = round(totals[name] + node[name], 2)
        totals["loopLagSeconds"] = max(totals["loopLagSeconds"], node["loopLagSeconds"])
    return totals


def _add(into: dict[str, float], more: dict[str, float]) -> None:
    for name, value in more.items():
        into[name] = into.get(name, 0) + value
