"""Connection-state recovery: no recoverable event lost across a dropped connection.

Four parts, one module each:

- :mod:`yektaws.recovery.log`: the ordered, trimmed log of recoverable events and their
  positions (in process, or one Redis Stream for the cluster);
- :mod:`yektaws.recovery.states`: the saved states of connections that may come back (in
  process, or in Redis so that any node can resume them, after a restart too);
- :mod:`yektaws.recovery.resume`: :class:`Recovery`, the resume logic the transports call;
- :mod:`yektaws.recovery.streams`: long answers in progress and their producers, so that a
  resumed client hears of one whose producer died instead of waiting for it forever.

The transports carry positions (native: a top-level ``offset`` in frames and
``resume``/``offset`` query parameters; Socket.IO: the standard ``pid``/``offset`` of Socket.IO's
connection state recovery); the handlers never see any of it.
"""

from __future__ import annotations

from yektaws.recovery.log import START, EventLog, LogEntry, MemoryLog, RedisLog, position_key
from yektaws.recovery.resume import STORE_ERRORS, Link, Recovery, ResumeRequest
from yektaws.recovery.states import MemoryStates, RedisStates, SavedState, StateStore
from yektaws.recovery.streams import MemoryStreams, RedisStreams, StreamRegistry

__all__ = [
    "START",
    "STORE_ERRORS",
    "EventLog",
    "Link",
    "LogEntry",
    "MemoryLog",
    "MemoryStates",
    "MemoryStreams",
    "Recovery",
    "RedisLog",
    "RedisStates",
    "RedisStreams",
    "ResumeRequest",
    "SavedState",
    "StateStore",
    "StreamRegistry",
    "position_key",
]
