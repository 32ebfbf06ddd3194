"""The registry of open connections in this process: by id, by room, by owner and by address.

Both transports add and remove their connections here, so one room can hold native and Socket.IO
connections at once and one emit reaches all of them. The per-owner and per-address counts behind
the connection caps live here too, kept in step by :meth:`Hub.add` and :meth:`Hub.remove`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator
from typing import Any

from yektaws.connection import Connection, Encodings

__all__ = ["Hub", "rooms_for", "rooms_of"]


def rooms_of(socket_id: str, user_id: str | None) -> list[str]:
    """The rooms a connection is in: its own id, and ``user:<id>`` for a user's session.

    No room name ever contains a token: room names travel to logs, brokers and dashboards.
    """
    return [socket_id] if user_id is None else [socket_id, f"user:{user_id}"]


def rooms_for(conn: Connection) -> list[str]:
    """The rooms a new connection joins (see :func:`rooms_of`)."""
    return rooms_of(conn.id, conn.user_id)


class Hub:
    """Every open connection of this process."""

    def __init__(self) -> None:
        self._by_id: dict[str, Connection] = {}
        self._rooms: dict[str, dict[str, Connection]] = {}
        self._per_owner: Counter[str] = Counter()
        self._per_address: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._by_id.values()))

    def get(self, socket_id: str) -> Connection | None:
        return self._by_id.get(socket_id)

    def connections_of_owner(self, owner: str) -> int:
        return self._per_owner[owner]

    def connections_from(self, address: str) -> int:
        return self._per_address[address]

    def count_by_protocol(self) -> Counter[str]:
        return Counter(conn.protocol for conn in self._by_id.values())

    def users(self) -> Iterator[tuple[str, Collection[Connection]]]:
        """Each user with connections here (its ``user:<id>`` room), and those connections.

        A live view for the operator console: read it at once, never across an ``await``.
        """
        for room, members in self._rooms.items():
            if room.startswith("user:"):
                yield room.removeprefix("user:"), members.values()

    def add(self, conn: Connection) -> None:
        """Register ``conn`` and put it in its rooms (see :func:`rooms_for`)."""
        self._by_id[conn.id] = conn
        self._per_owner[conn.session.owner] += 1
        self._per_address[conn.peer] += 1
        for room in rooms_for(conn):
            self.join(conn, room)

    def remove(self, conn: Connection) -> None:
        """Forget ``conn`` (idempotent).

        Compared by identity: a resumed connection has the id of the one it replaced, whose
        late end must not remove its successor.
        """
        if self._by_id.get(conn.id) is not conn:
            return
        del self._by_id[conn.id]
        for room in list(conn.rooms):
            self.leave(conn, room)
        for counter, key in ((self._per_owner, conn.session.owner), (self._per_address, conn.peer)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

    def join(self, conn: Connection, room: str) -> None:
        self._rooms.setdefault(room, {})[conn.id] = conn
        conn.rooms.add(room)

    def leave(self, conn: Connection, room: str) -> None:
        members = self._rooms.get(room)
        if members is not None and members.get(conn.id) is conn:
            del members[conn.id]
            if not members:
                del self._rooms[room]
        conn.rooms.discard(room)

    def members(self, room: str) -> list[Connection]:
        return list(self._rooms.get(room, {}).values())

    async def emit(self, room: str, event: str, data: Any, position: str | None = None) -> int:
        """Send ``event`` to every connection in ``room`` here; returns how many it reached.

        ``position`` is the event's place in the recovery log, for a recoverable event. Each wire
        form of the event (per protocol, namespace, with or without the position) is encoded
        once, for all the members that send it (:class:`~yektaws.connection.Encodings`).
        """
        members = self.members(room)
        encodings = Encodings(event, data)
        for conn in members:
            if position is None:
                await conn.emit(event, data, encodings)
            else:
                await conn.deliver(event, data, position, encodings=encodings)
        return len(members)
