"""Brute-force protection of token authentication: per client address, per process.

After `CONFIGSTORE_TOKEN_FAILURE_LIMIT` failed token authentications from one address within
a window of `CONFIGSTORE_TOKEN_FAILURE_WINDOW_S` seconds (the window opens at the first
failure), every token authentication from that address is refused with 429
`too_many_failures` and `Retry-After` until the window ends: a valid token too, so a guesser
finds out nothing while locked out. A limit of 0 turns the guard off.

Per process, which is per node (the web server runs one Django process a node): the counts
live in memory, are not replicated and are lost on a restart. A guesser therefore gets at
most limit x nodes tries per window and per address, and a failed guess costs no log write
(see the README, "Brute-force protection"). The client address is REMOTE_ADDR: no forwarded
header is trusted.

Two hooks surround a token authentication class's lookup of the key:
`before_token_lookup(request)` (raises `TooManyFailures` while the address is locked out) and
`token_lookup_failed(request)` (counts a failure); `guarded(request)` wraps a whole
`authenticate` in both. `FailureCounter` decides; it is thread-safe, with time as an
argument, and holds at most `CAPACITY` addresses (the least recently failing one is
forgotten first)."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import OrderedDict

from rest_framework import authentication, exceptions

from configstore import conf

#: Client addresses remembered at most (each costs a few hundred bytes).
CAPACITY = 10_000


class TooManyFailures(exceptions.Throttled):
    """429 too_many_failures, with Retry-After (the error handler renders it)."""

    default_code = "too_many_failures"

    def __init__(self, wait: float) -> None:
        super().__init__(
            wait=max(1, math.ceil(wait)),
            detail="Too many failed token authentications from this address: every token is "
            "refused here until the window ends.",
        )


class FailureCounter:
    """Failed authentications per address in fixed windows: a window opens at an address's
    first failure and lasts `window` seconds; `limit` failures in it lock the address out
    until it ends. Thread-safe; bounded to `capacity` addresses (least recently failing
    forgotten first)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        #: address -> [window start, failures in the window], least recently failing first.
        self._windows: OrderedDict[str, list[float]] = OrderedDict()

    def locked_for(self, address: str, now: float, *, limit: int, window: float) -> float:
        """Seconds until `address` may authenticate again: 0 when it may now."""
        with self._lock:
            entry = self._windows.get(address)
            if entry is None:
                return 0.0
            start, failures = entry
            if now - start >= window:  # the window is over: forget it
                del self._windows[address]
                return 0.0
            return start + window - now if failures >= limit else 0.0

    def record_failure(self, address: str, now: float, *, window: float) -> None:
        with self._lock:
            entry = self._windows.pop(address, None)
            if entry is None or now - entry[0] >= window:
                entry = [now, 0]
            entry[1] += 1
            self._windows[address] = entry  # now the most recently failing
            while len(self._windows) > self.capacity:
                self._windows.popitem(last=False)

    def __len__(self) -> int:
        return len(self._windows)

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()


#: This process's counter.
def failures() -> FailureCounter:
    """This process's counter (kept by configstore.conf)."""
    return conf.kept("token_failures", FailureCounter)


def client_address(request) -> str | None:
    """The client's address: REMOTE_ADDR, never a forwarded header (a client sets those).
    Also the admin login's (django-axes' AXES_CLIENT_IP_CALLABLE)."""
    return request.META.get("REMOTE_ADDR") or None


def _limits() -> tuple[int, float]:
    return conf.store().token_failure_limit, conf.store().token_failure_window


def before_token_lookup(request) -> None:
    """Hook: call when a request presents a token, before looking it up. Raises
    `TooManyFailures` while its address is locked out."""
    limit, window = _limits()
    if limit <= 0:
        return
    address = client_address(request) or ""
    wait = failures().locked_for(address, time.monotonic(), limit=limit, window=window)
    if wait > 0:
        raise TooManyFailures(wait)


def token_lookup_failed(request) -> None:
    """Hook: call when a presented token is refused (unknown, malformed, or its user
    inactive)."""
    limit, window = _limits()
    if limit > 0:
        address = client_address(request) or ""
        failures().record_failure(address, time.monotonic(), window=window)


@contextlib.contextmanager
def guarded(request):
    """Both hooks around a token authentication class's `authenticate`: when the request
    presents a token (`Authorization: Token ...`), refuse it while its address is locked
    out, and count every AuthenticationFailed raised inside."""
    words = authentication.get_authorization_header(request).split()
    if not words or words[0].lower() != b"token":
        yield
        return
    before_token_lookup(request)
    try:
        yield
    except exceptions.AuthenticationFailed:
        token_lookup_failed(request)
        raise
