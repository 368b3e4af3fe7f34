"""Long-poll waits without polling and without a thundering herd.

The process's watcher hears of each advance of this node's applied index from the consensus
API's subscription (consensus.subscribe: the process's one LISTEN connection, shared with
the submitters). A waiter names what it waits for (`Wait`: the index it has seen, and the
key or the prefix it watches); when the index advances, the watcher's thread reads once
which keys the new slots touched and wakes only the waiters whose key or prefix is among
them. 1,000 idle long-polls cost nothing per commit but that one query.

A waiter that read index N and found nothing new waits with seen=N: any commit after its
read raises the index above N, so no change is missed, whatever the order of its read and
the notification (a waiter registered after the listener passed N is woken at once, and
re-checks). A wake-up may be spurious (a rejected command, a change outside the caller's
permissions): the caller re-checks and waits again.

Two ways to wait, one condition:
- in a thread (a WSGI server): `wait_for_key` / `wait_for_changes` block the thread;
- parked (configstore.asgi): under the ASGI front end, these return a `parked` response
  instead; the front end awaits `wait_parked` on the event loop, holding no thread and no
  database connection, then runs the request again with the time left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from django.db import DatabaseError, connection
from django.http import HttpResponse

from configstore import conf
from configstore.selectors import changes_since, key_changed_since, snapshot, touched_keys
from consensus import api as consensus

log = logging.getLogger(__name__)

#: The ASGI scope key the front end sets when it can park a long-poll (a client cannot set
#: a scope key); its value is the seconds left to wait (None: the request's own timeout).
PARK_SCOPE_KEY = "configstore.park"
#: The header of a parked response: the `Wait` as JSON. The front end strips it; it never
#: reaches a client.
PARK_HEADER = "X-Configstore-Park"
#: Past this many distinct keys in one advance, every waiter is woken (a catch-up).
MAX_TOUCHED_KEYS = 1000


@dataclass(frozen=True)
class Wait:
    """What a long-poll waits for: a committed change after index `seen` to `key`, or to any
    key under `prefix` when key is None ("" = any key). `pin` are query parameters the
    request must keep when it runs again (a watch's implicit since_index)."""

    seen: int
    key: str | None = None
    prefix: str = ""
    pin: dict[str, str] | None = None

    def matches(self, touched: set[str] | None) -> bool:
        if touched is None:
            return True
        if self.key is not None:
            return self.key in touched
        return not self.prefix or any(k.startswith(self.prefix) for k in touched)

    def pinned(self, query_string: bytes) -> bytes:
        """The query string with the pinned parameters set where the client left them out."""
        if not self.pin:
            return query_string
        pairs = parse_qsl(query_string.decode("latin1"), keep_blank_values=True)
        present = {name for name, _ in pairs}
        pairs += [(name, value) for name, value in self.pin.items() if name not in present]
        return urlencode(pairs).encode("latin1")

    def to_json(self) -> str:
        return json.dumps(
            {"seen": self.seen, "key": self.key, "prefix": self.prefix, "pin": self.pin or {}}
        )

    @classmethod
    def from_json(cls, raw: str) -> Wait:
        data = json.loads(raw)
        return cls(int(data["seen"]), data["key"], data["prefix"], data["pin"] or None)


class _Waiter:
    __slots__ = ("wait", "wake")

    def __init__(self, wait: Wait, wake: Callable[[], None]) -> None:
        self.wait = wait
        self.wake = wake


def _touched_keys(after: int, upto: int) -> set[str] | None:
    """The keys slots (after, upto] touched (None: too many to tell), on the watcher
    thread's Django connection, which goes back to the pool after each read."""
    try:
        return touched_keys(after, upto, limit=MAX_TOUCHED_KEYS)
    finally:
        connection.close()


class AppliedWatcher:
    """The waiters of one process, woken by this node's applied index (see the module doc).

    `subscribe` delivers the index on the consensus listener's thread, which must never
    wait; the watcher's own thread reads the touched keys (`touched_keys`) and wakes."""

    def __init__(
        self,
        *,
        subscribe: Callable[[Callable[[int], None]], consensus.Subscription] = (
            consensus.subscribe
        ),
        touched_keys: Callable[[int, int], set[str] | None] = _touched_keys,
    ) -> None:
        self._subscribe = subscribe
        self._touched_keys = touched_keys
        self._index = 0  # the index the waiters were woken for (under _lock)
        self._lock = threading.Lock()
        self._waiters: set[_Waiter] = set()
        self._heard = 0  # the highest index the subscription delivered (under _heard_changed)
        self._heard_changed = threading.Condition()
        self._subscription: consensus.Subscription | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def index(self) -> int:
        """The highest applied index this process's waiters were woken for."""
        return self._index

    def wait(self, wait: Wait, timeout: float) -> bool:
        """Block this thread until `wait` may hold (True) or `timeout` passes (False)."""
        self._ensure_started()
        event = threading.Event()
        waiter = self._register(wait, event.set)
        try:
            return event.wait(timeout)
        finally:
            self._unregister(waiter)

    async def wait_async(self, wait: Wait, timeout: float) -> bool:
        """Await until `wait` may hold (True) or `timeout` passes (False); holds no thread."""
        if not self._started():
            await asyncio.to_thread(self._ensure_started)
        loop = asyncio.get_running_loop()
        woken = loop.create_future()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(lambda: woken.done() or woken.set_result(True))

        waiter = self._register(wait, wake)
        try:
            await asyncio.wait_for(woken, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._unregister(waiter)

    def stop(self) -> None:
        self._stopped.set()
        if self._subscription is not None:
            self._subscription.cancel()
        with self._heard_changed:
            self._heard_changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def _register(self, wait: Wait, wake: Callable[[], None]) -> _Waiter:
        waiter = _Waiter(wait, wake)
        with self._lock:
            self._waiters.add(waiter)
            passed = self._index > wait.seen
        if passed:  # the watcher is past what the waiter saw: let it re-check
            wake()
        return waiter

    def _unregister(self, waiter: _Waiter) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def _started(self) -> bool:
        return (
            self._subscription is not None and self._thread is not None and self._thread.is_alive()
        )

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopped.clear()
                self._thread = threading.Thread(
                    target=self._run, name="configstore-applied-watcher", daemon=True
                )
                self._thread.start()
            if self._subscription is None:
                self._subscription = self._subscribe(self._heard_of)

    def _heard_of(self, index: int) -> None:
        """The subscription's callback (the listener's thread): note, signal, return."""
        with self._heard_changed:
            if index > self._heard:
                self._heard = index
                self._heard_changed.notify()

    def _run(self) -> None:
        while not self._stopped.is_set():
            with self._heard_changed:
                self._heard_changed.wait_for(
                    lambda: self._heard > self._index or self._stopped.is_set(), 1.0
                )
                heard = self._heard
            self._advance(heard)  # advances heard meanwhile are taken together next round

    def _advance(self, index: int) -> None:
        """Move to `index` and wake the waiters whose key or prefix slots (old, index] touched."""
        # The index moves and the waiters due are taken in one step: a waiter registering
        # after it sees the new index and wakes itself (_register); one registering before it
        # is due. (Taking them first and moving the index after the query below lost the
        # wake-up of a waiter registering in between: it slept until its timeout.)
        with self._lock:
            old = self._index
            if index <= old:
                return
            self._index = index
            due = [w for w in self._waiters if w.wait.seen < index]
        if not due:
            return
        touched = None  # unknown (the first index heard, or a failed read): wake every one due
        if old > 0:
            try:
                touched = self._touched_keys(old, index)
            except DatabaseError as error:
                log.warning("applied-index watcher: %s; waking every waiter due", error)
        for waiter in due:
            if waiter.wait.matches(touched):
                waiter.wake()


def applied_watcher() -> AppliedWatcher:
    """This process's watcher (its node's: the one the consensus API serves; kept by
    configstore.conf)."""
    return conf.kept("watcher", AppliedWatcher)


def _parking(request) -> tuple[bool, float | None]:
    """(can park, seconds left) from the ASGI front end's scope key, if any."""
    scope = request.META.get("asgi.scope") or {}
    if PARK_SCOPE_KEY not in scope:
        return False, None
    return True, scope[PARK_SCOPE_KEY]


def _parked(wait: Wait, timeout: float) -> HttpResponse:
    response = HttpResponse(status=204)
    response[PARK_HEADER] = wait.to_json()
    response["X-Configstore-Park-Timeout"] = f"{timeout:.3f}"
    return response


def _release_connection() -> None:
    """Give the request's database connection back (to the pool) before waiting."""
    if not connection.in_atomic_block:
        connection.close()


def wait_for_key(request, key: str, index: int, timeout: float) -> HttpResponse | None:
    """Wait until a committed command changed `key` after `index` (put or delete) or
    `timeout` passes; then None (the caller reads and answers). Under the ASGI front end it
    does not wait: it answers None at once if the key changed, else a parked response that
    the view returns as it is."""
    can_park, left = _parking(request)
    if left is not None:
        timeout = left
    deadline = time.monotonic() + timeout
    while True:
        changed, applied = key_changed_since(key, index)
        remaining = deadline - time.monotonic()
        if changed or remaining <= 0:
            return None
        wait = Wait(seen=max(applied, index), key=key)
        if can_park:
            return _parked(wait, remaining)
        _release_connection()
        applied_watcher().wait(wait, remaining)


def wait_for_changes(
    request,
    *,
    index: int,
    prefix: str,
    restrict: list[str] | None,
    include_rejected: bool,
    timeout: float,
    limit: int = 1000,
):
    """The history rows after `index` under `prefix` as soon as there is one, or none at the
    timeout; and the index to continue from (see selectors.changes_since). Under the ASGI
    front end: a parked response instead of waiting (see wait_for_key)."""
    can_park, left = _parking(request)
    if left is not None:
        timeout = left
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
        wait = Wait(seen=next_index, prefix=prefix, pin={"since_index": str(index)})
        if can_park:
            return _parked(wait, remaining)
        _release_connection()
        applied_watcher().wait(wait, remaining)


async def wait_parked(wait: Wait, timeout: float) -> bool:
    """The front end's wait for a parked long-poll (see AppliedWatcher.wait_async)."""
    return await applied_watcher().wait_async(wait, timeout)
