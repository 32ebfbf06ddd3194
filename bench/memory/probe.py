"""The gateway under a memory probe: ``python bench/memory/probe.py serve ...`` runs
``yektaws serve ...`` unchanged, plus a thread that answers ``bench/memory-storms`` on the UNIX
socket named by ``YEKTAWS_MEMPROBE`` (the gateway itself has no such setting):

- ``rss``: VmRSS in KiB;
- ``types``: live objects by type, after a full collection (objgraph-style counting);
- ``live NAME...``: how many objects of those type names exist now, without a collection first
  (objects only a reference cycle keeps count too);
- ``snapshot PATH``: a tracemalloc snapshot dumped to PATH (start Python with ``-X tracemalloc=N``);
- ``trim``: ``malloc_trim(0)``, with VmRSS before and after: memory glibc gives back is free heap
  held in its arenas (fragmentation), memory it keeps is live.

One line per command, one JSON line per answer.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import os
import runpy
import socket
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

ENV = "YEKTAWS_MEMPROBE"


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def answer(command: list[str]) -> dict[str, Any]:
    match command:
        case ["rss"]:
            return {"rss_kib": rss_kib()}
        case ["types"]:
            gc.collect()
            counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
            return {"types": dict(counts)}
        case ["live", *names]:
            # No collection first: what a reference cycle keeps until the collector runs counts.
            wanted = set(names)
            live = collections.Counter(
                name for o in gc.get_objects() if (name := type(o).__qualname__) in wanted
            )
            return {"live": {name: live[name] for name in names}}
        case ["snapshot", path]:
            gc.collect()
            if not tracemalloc.is_tracing():
                return {"error": "start Python with -X tracemalloc=N"}
            tracemalloc.take_snapshot().dump(path)
            return {"snapshot": path}
        case ["trim"]:
            gc.collect()
            before = rss_kib()
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            return {"before_kib": before, "after_kib": rss_kib()}
    return {"error": f"unknown command {command}"}


def serve(path: str) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    while True:
        conn, _ = listener.accept()
        with conn, conn.makefile("rw") as stream:
            stream.write(json.dumps(answer(stream.readline().split())) + "\n")


if __name__ == "__main__":
    threading.Thread(target=serve, args=(os.environ[ENV],), daemon=True).start()
    sys.argv = ["yektaws", *sys.argv[1:]]
    runpy.run_module("yektaws", run_name="__main__", alter_sys=True)
