"""The node's inbox cannot be poisoned: whatever anyone pushes onto `consensus.<id>`, the
worker drops what is not a task message of this transport, logs it (rate-limited) and
counts it by reason, and goes on.

Celery consumes the queue through kombu's Redis transport, which decodes every popped item
itself and lets any error escape to the worker (kombu's Redis channel runs
`loads(item)` right after BRPOP; a non-JSON item is an "Unrecoverable error" and the
worker exits; a JSON item of the wrong shape fails further on). kombu offers no hook
before that decoding, so the worker's broker transport (`Transport` below, Celery's
`broker_transport` setting) is kombu's own Redis transport whose Redis client answers
BRPOP and RPOP through redis-py's response callbacks (`Redis.set_response_callback`, a
public redis-py API): every popped item is read by `consensus.transport.read_task_message`
(its length first, before any decoding) and either rebuilt field by field as this
transport writes task messages (`Drained.canonical`) or dropped, in which case kombu sees
an empty pop. Celery thus only ever decodes messages this module built.

The runtime's own drain of the inbox (consensus.transport.Inbox) reads items the same way
and counts into the same `drops`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from kombu.transport import redis as kombu_redis

from consensus.transport import Undeliverable, read_task_message

log = logging.getLogger(__name__)

LOG_EVERY = 10.0  # seconds: at most one log line per reason this often


class Drops:
    """Counts of what was dropped, by reason (named `<prefix><reason>`); logs the first of
    each reason at once and then at most one line per reason every LOG_EVERY s, with the
    number dropped meanwhile. Thread-safe."""

    def __init__(
        self, *, prefix: str = "dropped_", what: str = "a queue item", log_every: float = LOG_EVERY
    ) -> None:
        self.prefix = prefix
        self.what = what
        self.log_every = log_every
        self.counts: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()
        self._lock = threading.Lock()

    def drop(self, reason: str, detail: str) -> None:
        with self._lock:
            self.counts[reason] += 1
            now = time.monotonic()
            if now - self._logged_at.get(reason, float("-inf")) < self.log_every:
                self._unlogged[reason] += 1
                return
            self._logged_at[reason] = now
            meanwhile = self._unlogged.pop(reason, 0)
        log.warning(
            "dropped %s (%s)%s",
            self.what,
            detail,
            f"; {meanwhile} more of this reason since the last report" if meanwhile else "",
        )

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {f"{self.prefix}{reason}": n for reason, n in self.counts.items()}


#: The drops of this process's inbox (the worker has one).
drops = Drops()


def max_bytes() -> int:
    from django.conf import settings

    return settings.CONFIGSTORE_MAX_ENVELOPE_BYTES


def _guard_item(queue: bytes | str, item: bytes) -> bytes | None:
    """The item rebuilt as a task message of this transport, or None (dropped, counted)."""
    name = queue.decode(errors="replace") if isinstance(queue, bytes) else queue
    try:
        return read_task_message(item, max_bytes()).canonical(name).encode()
    except Undeliverable as undeliverable:
        drops.drop(undeliverable.reason, f"on {name[:80]!r}: {undeliverable}")
        return None


def _guarded_brpop(response, **options):
    """BRPOP's reply [queue, item], with the item guarded; None when it was dropped (kombu
    treats a None reply as an empty pop)."""
    if not response:
        return response
    queue, item = response
    guarded = _guard_item(queue, item)
    return None if guarded is None else [queue, guarded]


def _guarded_rpop(response, **options):
    if response is None or isinstance(response, list):
        return response  # nothing popped, or RPOP with a count (not used by kombu)
    return _guard_item("(rpop)", response)


def _guarded(client_factory):
    def make(**kwargs):
        client = client_factory(**kwargs)
        client.set_response_callback("BRPOP", _guarded_brpop)
        client.set_response_callback("RPOP", _guarded_rpop)
        return client

    return make


class Channel(kombu_redis.Channel):
    def _get_client(self):
        return _guarded(super()._get_client())


class Transport(kombu_redis.Transport):
    """kombu's Redis transport, with every item the worker pops read strictly first."""

    Channel = Channel
