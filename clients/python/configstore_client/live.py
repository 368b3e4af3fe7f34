"""A live local view of a prefix: read once, then kept current by following the cluster's
history, and served from memory.

    view = LiveView(client, "payments/", cache_path="/var/cache/myservice/config.json")
    view.subscribe("payments/timeout_ms", lambda key, old, new: ...)
    view["payments/timeout_ms"]          # from memory: no request
    view.age, view.stale                 # how long since it last heard from the cluster

It loads the prefix (recording the log index the read reflects), then long-polls
`/api/v1/watch/` from that index in a thread, applying each change in log order and moving
to another node when one fails (the client does; the watch resumes from the last index it
saw, so nothing is missed or applied twice). If the server ever answers that an index is
too old (410), the view reads the whole prefix again and tells the subscribers what changed.

Fail-static: with a `cache_path`, the view is written there (atomically: a temporary file,
fsync, rename) after changes, at most every `save_every` seconds. When no node answers at
start, the view starts from that file, and `stale` says so; a service keeps running on its
last known configuration while the cluster is away.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from configstore_client import errors
from configstore_client.client import Client

Callback = Callable[[str, Any, Any], None]  # (key, old value or None, new value or None)
_ABSENT = object()


class LiveView:
    def __init__(
        self,
        client: Client,
        prefix: str = "",
        *,
        cache_path: str | os.PathLike | None = None,
        poll_timeout: float = 10.0,
        save_every: float = 1.0,
        stale_after: float = 30.0,
        start: bool = True,
        require_initial: bool = True,
    ) -> None:
        self.client, self.prefix = client, prefix
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.poll_timeout, self.save_every, self.stale_after = poll_timeout, save_every, stale_after
        self._entries: dict[str, tuple[Any, int]] = {}  # key -> (value, version)
        self.index = 0
        self._heard = 0.0  # time.time() the view last heard from the cluster
        self._connected = False
        self._lock = threading.RLock()
        self._subscribers: list[tuple[str, Callback]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved = 0.0
        self._dirty = False
        self.from_cache = False
        self.loaded = False  # the prefix was read from the cluster (or the cache) once
        self.require_initial = require_initial
        self._event_subscribers: list[Callable[[dict], None]] = []
        self._contact_subscribers: list[Callable[[], None]] = []
        if start:
            self.start()

    # ------------------------------------------------------------------ reading

    def __getitem__(self, key: str) -> Any:
        with self._lock:
            return self._entries[key][0]

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            found = self._entries.get(key)
        return default if found is None else found[0]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def items(self) -> dict[str, Any]:
        with self._lock:
            return {k: v for k, (v, _) in self._entries.items()}

    def version(self, key: str) -> int | None:
        with self._lock:
            found = self._entries.get(key)
        return None if found is None else found[1]

    @property
    def age(self) -> float:
        """Seconds since the view last heard from the cluster (from the cache: since the
        cache was written)."""
        return max(0.0, time.time() - self._heard) if self._heard else float("inf")

    @property
    def stale(self) -> bool:
        return not self._connected or self.age > self.stale_after

    def subscribe(self, key_or_prefix: str, callback: Callback) -> None:
        """`callback(key, old, new)` for each change of a key starting with `key_or_prefix`
        (None: absent), from the view's thread."""
        with self._lock:
            self._subscribers.append((key_or_prefix, callback))

    def subscribe_events(self, callback: Callable[[dict], None]) -> None:
        """`callback(row)` for every history row the view reads (any operation, committed
        or rejected, e.g. a schema change), in log order, from the view's thread."""
        with self._lock:
            self._event_subscribers.append(callback)

    def on_contact(self, callback: Callable[[], None]) -> None:
        """`callback()` after each answer from the cluster (a read or a long-poll), from
        the view's thread."""
        with self._lock:
            self._contact_subscribers.append(callback)

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        """Load the prefix (or, when no node answers, the cache), then follow it. With
        neither, raise Unavailable, or (`require_initial=False`) start empty and keep
        trying to read the prefix in the background."""
        try:
            self._load()
        except errors.Unavailable:
            if not self._load_cache() and self.require_initial:
                raise
        self._thread = threading.Thread(target=self._follow, name="configstore-live", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.poll_timeout + 15)
        self._save(force=True)

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_for_index(self, index: int, timeout: float = 10.0) -> bool:
        """Until the view has applied `index` (e.g. a write's) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while self.index < index:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _load(self) -> None:
        listing = self.client.list(self.prefix)
        fresh = {e.key: (e.value, e.version) for e in listing.entries}
        with self._lock:
            old = self._entries
            self._entries = fresh
            self.index = max(self.index, listing.index)
            self._heard, self._connected, self.from_cache = time.time(), True, False
            self._dirty = True
            self.loaded = True
        for key in sorted(old.keys() | fresh.keys()):
            before, after = old.get(key, (None, 0)), fresh.get(key, (None, 0))
            if before != after:
                self._notify(key, before[0], after[0])
        self._save(force=True)
        self._contacted()

    def _follow(self) -> None:
        while not self._stop.is_set():
            if not self.loaded:  # started with neither the cluster nor a cache
                try:
                    self._load()
                except errors.ConfigstoreError:
                    self._stop.wait(1.0)
                continue
            try:
                changes = self.client.changes(self.prefix, self.index, timeout=self.poll_timeout)
            except errors.ConfigstoreError as error:
                if error.status == 410:  # the index is older than the server keeps
                    with contextlib.suppress(errors.ConfigstoreError):
                        self._load()
                    continue
                self._connected = False
                self._stop.wait(1.0)  # the client already tried every node
                continue
            for event in changes.events:
                self._apply(event)
                self._tell_event(event)
            with self._lock:
                self.index = max(self.index, changes.index)
                self._heard, self._connected = time.time(), True
            self._save()
            self._contacted()

    def _tell_event(self, event: dict) -> None:
        with self._lock:
            subscribers = list(self._event_subscribers)
        for callback in subscribers:
            with contextlib.suppress(Exception):
                callback(event)

    def _contacted(self) -> None:
        with self._lock:
            subscribers = list(self._contact_subscribers)
        for callback in subscribers:
            with contextlib.suppress(Exception):
                callback()

    def _apply(self, event: dict) -> None:
        """One history row, in log order. A row the initial read already reflected (its
        version is not newer) changes nothing."""
        key, operation = event.get("key", ""), event.get("operation")
        if event.get("outcome") != "committed" or operation not in ("put", "delete"):
            return
        with self._lock:
            current = self._entries.get(key)
            version = current[1] if current else 0
            if operation == "put":
                if event["new_version"] <= version:
                    return
                self._entries[key] = (event["new_value"], event["new_version"])
            else:
                if current is None or (event.get("old_version") or 0) < version:
                    return
                del self._entries[key]
            self._dirty = True
        self._notify(key, current[0] if current else None, event.get("new_value"))

    def _notify(self, key: str, old: Any, new: Any) -> None:
        with self._lock:
            subscribers = [fn for prefix, fn in self._subscribers if key.startswith(prefix)]
        for callback in subscribers:
            with contextlib.suppress(Exception):  # a subscriber's bug must not stop the view
                callback(key, old, new)

    # ------------------------------------------------------------------ the cache file

    def _save(self, force: bool = False) -> None:
        if self.cache_path is None or not self._dirty and not force:
            return
        if not force and time.monotonic() - self._saved < self.save_every:
            return
        with self._lock:
            data = {
                "prefix": self.prefix,
                "index": self.index,
                "saved_at": self._heard or time.time(),
                "entries": {k: [v, ver] for k, (v, ver) in self._entries.items()},
            }
            self._dirty = False
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".configstore-", dir=self.cache_path.parent)
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(data, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.cache_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._saved = time.monotonic()

    def _load_cache(self) -> bool:
        if self.cache_path is None or not self.cache_path.exists():
            return False
        try:
            data = json.loads(self.cache_path.read_text())
        except (OSError, ValueError):
            return False
        if data.get("prefix") != self.prefix:
            return False
        with self._lock:
            self._entries = {k: (v, ver) for k, (v, ver) in data["entries"].items()}
            self.index = int(data["index"])
            self._heard, self._connected, self.from_cache = float(data["saved_at"]), False, True
            self.loaded = True
        return True
