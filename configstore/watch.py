"""Long-poll waits without polling: one listener thread per process (per database) holds a
connection that LISTENs on the applier's channel and tracks the applied index; a waiter
blocks on a condition until the index passes the one it has seen, then re-reads.

    seen = <applied index read in the same snapshot as the state the caller checked>
    applied_watcher().wait_past(seen, timeout)      True as soon as applied index > seen

A waiter that read index N and found nothing new calls wait_past(N): any commit after its
read raises the index above N, so no change is missed, whatever the order of its read and
the notification. The listener never queries inside its notifies() loop (psycopg 3.3
would hang): it leaves the loop to re-read the index after each reconnect.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import psycopg
from django.db import connection

from configstore.selectors import changes_since, key_changed_since, snapshot
from consensus.client import dsn_from_django
from consensus.storage import APPLIED_CHANNEL

log = logging.getLogger(__name__)


class AppliedWatcher:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._index = 0
        self._changed = threading.Condition()
        self._connected = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def index(self) -> int:
        """The highest applied index this process has heard of."""
        return self._index

    def wait_past(self, seen: int, timeout: float) -> bool:
        """Block until the applied index is above `seen` (True) or `timeout` passes (False)."""
        self._ensure_started(min(timeout, 2.0))
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._index <= seen:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def _ensure_started(self, timeout: float) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopped.clear()
                self._thread = threading.Thread(
                    target=self._listen, name="configstore-applied-watcher", daemon=True
                )
                self._thread.start()
        self._connected.wait(timeout)

    def _advance(self, index: int) -> None:
        with self._changed:
            if index > self._index:
                self._index = index
                self._changed.notify_all()

    def _listen(self) -> None:
        while not self._stopped.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {APPLIED_CHANNEL}")
                    # Notifications sent while we were not listening are lost: re-read.
                    row = conn.execute(
                        "SELECT applied_index FROM consensus_applied_state"
                    ).fetchone()
                    self._advance(row[0] if row else 0)
                    self._connected.set()
                    while not self._stopped.is_set():
                        for notice in conn.notifies(timeout=1.0):
                            self._advance(int(json.loads(notice.payload).get("index", 0)))
            except (psycopg.Error, ValueError, TypeError) as error:
                self._connected.clear()
                log.warning("applied-index watcher: %s; reconnecting", error)
                self._stopped.wait(0.5)


_watchers: dict[str, AppliedWatcher] = {}
_watchers_lock = threading.Lock()


def applied_watcher() -> AppliedWatcher:
    """The watcher of this process's database (the one Django's default connection uses)."""
    dsn = dsn_from_django(connection.settings_dict)
    with _watchers_lock:
        if dsn not in _watchers:
            _watchers[dsn] = AppliedWatcher(dsn)
        return _watchers[dsn]


def wait_for_key(key: str, index: int, timeout: float) -> None:
    """Return as soon as a committed command changed `key` after `index` (put or delete),
    or when `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        changed, applied = key_changed_since(key, index)
        remaining = deadline - time.monotonic()
        if changed or remaining <= 0:
            return
        applied_watcher().wait_past(max(applied, index), remaining)


def wait_for_changes(
    *,
    index: int,
    prefix: str,
    restrict: list[str] | None,
    include_rejected: bool,
    timeout: float,
    limit: int = 1000,
):
    """The history rows after `index` under `prefix` as soon as there is one, or none at the
    timeout; and the index to continue from (see selectors.changes_since)."""
    deadline = time.monotonic() + timeout
    while True:
        with snapshot():
            rows, next_index = changes_since(
                index=index,
                prefix=prefix,
                restrict=restrict,
                include_rejected=include_rejected,
                limit=limit,
            )
        remaining = deadline - time.monotonic()
        if rows or remaining <= 0:
            return rows, next_index
        applied_watcher().wait_past(next_index, remaining)
