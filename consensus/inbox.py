"""The node's inbox cannot be poisoned: whatever anyone pushes onto `consensus.<id>`, the
worker drops what is not a task message of this transport, logs it (rate-limited) and
counts it by reason, and goes on.

Celery consumes the queue through kombu's Redis transport, which decodes every popped item
itself and lets any error escape to the worker (kombu's Redis channel runs
`loads(item)` right after BRPOP; a non-JSON item is an "Unrecoverable error" and the
worker exits; a JSON item of the wrong shape fails further on). kombu offers no hook
before that decoding (celery/kombu#2421), so the worker's broker transport (`Transport`
below, Celery's `broker_transport` setting) is kombu's own Redis transport whose Redis
client answers BRPOP and RPOP through redis-py's response callbacks
(`Redis.set_response_callback`, a public redis-py API): every popped item is read by
`consensus.transport.read_task_message` and either rebuilt field by field as this
transport writes task messages (`Drained.canonical`) or dropped, in which case kombu sees
an empty pop. Celery thus only ever decodes messages this module built. An item longer
than the cap does not even reach the callback: the connection's parser (`parser_class`,
a redis-py connection option) reads it off the socket in chunks and throws it away.

The runtime's own drain of the inbox (consensus.transport.Inbox) reads items the same way
and counts into the same `drops`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from kombu.transport import redis as kombu_redis
from redis import exceptions as redis_errors
from redis.connection import _RESP2Parser, _RESP3Parser
from redis.utils import DEFAULT_RESP_VERSION, SENTINEL

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


def drops() -> Drops:
    """The drops of this process's inbox (the worker has one; kept by consensus.conf)."""
    from consensus import conf

    return conf.process().get("consensus.inbox_drops", Drops)


def max_bytes() -> int:
    from consensus import conf

    return conf.node().max_envelope_bytes


class Oversized(int):
    """What the capped parser answers in place of a bulk string longer than the cap: its
    length."""


class _Capped:
    """Over redis-py's RESP parser: a bulk string longer than `max_bulk` is read off the
    socket in chunks and thrown away (answered as `Oversized(length)`), so an oversized
    queue item popped by the worker costs neither its memory nor the time to buffer it."""

    max_bulk = 16 * 1024 * 1024
    CHUNK = 1 << 20

    def _read_response(self, *args, **kwargs):
        start = self._buffer.get_pos()
        line = self._buffer.readline(timeout=kwargs.get("timeout", SENTINEL))
        if line[:1] == b"$" and line[1:].isdigit() and int(line[1:]) > self.max_bulk:
            length = int(line[1:])
            self._discard(length + 2)  # the bulk and its CRLF
            return Oversized(length)
        self._buffer.rewind(start)
        return super()._read_response(*args, **kwargs)

    def _discard(self, count: int) -> None:
        held = min(count, self._buffer.unread_bytes())
        self._buffer.read(held - 2)  # takes exactly `held` buffered bytes (read adds the CRLF)
        count -= held
        scratch = bytearray(self.CHUNK)
        while count > 0:
            received = self._sock.recv_into(scratch, min(count, self.CHUNK))
            if not received:
                raise redis_errors.ConnectionError("the broker closed the connection")
            count -= received


def capped_parser(max_bulk: int, protocol: int) -> type:
    """The parser class for connections speaking RESP `protocol` (2 or 3)."""
    base = _RESP3Parser if protocol == 3 else _RESP2Parser
    return type("CappedParser", (_Capped, base), {"max_bulk": max_bulk})


def _guard_item(queue: bytes | str, item: bytes) -> bytes | None:
    """The item rebuilt as a task message of this transport, or None (dropped, counted)."""
    name = queue.decode(errors="replace") if isinstance(queue, bytes) else queue
    if isinstance(item, Oversized):
        drops().drop("oversized", f"on {name[:80]!r}: {int(item)} bytes, more than {max_bytes()}")
        return None
    try:
        message = read_task_message(item, max_bytes())
        if message.expired():  # Celery would discard it too, uncounted
            drops().drop("expired", f"on {name[:80]!r}: {message.task} past its expiry")
            return None
        return message.canonical(name).encode()
    except Undeliverable as undeliverable:
        drops().drop(undeliverable.reason, f"on {name[:80]!r}: {undeliverable}")
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
        pool = kwargs.get("connection_pool")
        if pool is not None:
            protocol = int(pool.connection_kwargs.get("protocol") or DEFAULT_RESP_VERSION)
            pool.connection_kwargs["parser_class"] = capped_parser(max_bytes(), protocol)
            # redis-py's maintenance notifications need its RESP3 or hiredis parser.
            pool.connection_kwargs.pop("maint_notifications_config", None)
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
