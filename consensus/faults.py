"""Fault switches for tests: drop or delay the messages between chosen nodes.

Off unless the setting CONFIGSTORE_FAULTS_FILE names a file. The file holds JSON
    {"drop": [["n1", "n3"], ...], "delay": [["n1", "n2", 0.05], ...]}
where each pair is (sender, receiver). Both ends check it (the sender before sending, the
receiver before handing an envelope to its core), so a partition holds even for messages
already queued when it was made. Every node of a local cluster reads the same file, and a
test changes the network by rewriting it; the file is re-read when it changes.

Part of the runtime, not of the tooling (devcluster/) that writes the file: every node's
transport and envelope checks read it, and the file's format stays with its one reader.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class Faults:
    CHECK_EVERY = 0.05  # seconds between looks at the file

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._drop: set[tuple[str, str]] = set()
        self._delay: dict[tuple[str, str], float] = {}

    def _refresh(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._checked < self.CHECK_EVERY:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._drop, self._delay = None, set(), {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return  # a half-written file: keep the last good switches, look again soon
        self._stamp = stamp
        self._drop = {(a, b) for a, b in data.get("drop", [])}
        self._delay = {(a, b): float(d) for a, b, d in data.get("delay", [])}

    def dropped(self, sender: str, receiver: str) -> bool:
        self._refresh()
        return (sender, receiver) in self._drop

    def delay(self, sender: str, receiver: str) -> float:
        self._refresh()
        return self._delay.get((sender, receiver), 0.0)


def write_faults(path: str | Path, *, drop=(), delay=()) -> None:
    """Set the switches atomically (tests and the nemesis use this)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"drop": [list(p) for p in drop], "delay": [list(d) for d in delay]}))
    os.replace(tmp, path)


def isolate(nodes, isolated) -> list[tuple[str, str]]:
    """The directed pairs cut when `isolated` nodes are split from the rest."""
    return [(a, b) for a in nodes for b in nodes if a != b and ((a in isolated) != (b in isolated))]
