"""The Celery transport: one task, `consensus.deliver`, routed to the queue
`consensus.<node id>` on that node's own broker.

Fire-and-forget: no results, no publish retries, JSON only, a short expiry. A peer whose
broker cannot be reached is skipped for a moment (its messages are dropped, which Paxos
tolerates) so that one dead broker never stalls a node's worker.

Publishing is on the path of every commit, and `send_task` costs 0.4-1 ms of CPU per
message here (building the message through Celery's and kombu's layers). To a Redis
broker the transport therefore writes the Celery task message itself: the same protocol-2
message `send_task` produces (task name, id, `expires`, JSON body `[args, kwargs, embed]`,
base64 as kombu's Redis transport stores it), pushed with one LPUSH onto the queue's list,
which is all kombu's Redis transport does for a queue on the default exchange. The
consuming side is unchanged: the peer's Celery worker receives and runs the task.
tests/runtime/test_transport.py holds the two message forms equal. Delayed messages (the
test-only fault switch) and non-Redis brokers go through `send_task`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from celery import Celery
from kombu import Connection

from consensus.envelope import Sealer
from consensus.faults import Faults

log = logging.getLogger(__name__)

DELIVER_TASK = "consensus.deliver"
SUBMIT_TASK = "consensus.submit"
EXPIRES = 10.0  # seconds: an envelope older than this is stale for Paxos anyway
BACKOFF = 1.0  # seconds to skip a peer whose broker refused a publish


def queue_name(node_id: str) -> str:
    return f"consensus.{node_id}"


def sender_app() -> Celery:
    """A Celery app used only to publish: the connection (so the broker) is given per call,
    since Celery's broker_url setting (and CELERY_BROKER_URL) names only one broker."""
    app = Celery("consensus-sender", set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
    return app


_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_DIRECT_SCHEMES = ("redis://", "rediss://", "unix://")


def task_message(task: str, args: list, queue: str, *, expires: float = EXPIRES) -> str:
    """The Celery task message (protocol 2, JSON) for `task(*args)` on `queue`, as kombu's
    Redis transport stores it in the queue's list: what `send_task(task, args=args,
    queue=queue, expires=expires, ignore_result=True, argsrepr='', kwargsrepr='')` sends."""
    expiry = datetime.now(UTC) + timedelta(seconds=expires)
    return _message(task, args, queue, str(uuid.uuid4()), expiry.isoformat(), None, expires)


def _message(
    task: str, args: list, queue: str, task_id: str, expires: str, eta: str | None, ttl: float
) -> str:
    body = json.dumps([args, {}, _EMBED])
    return json.dumps(
        {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task,
                "id": task_id,
                "shadow": None,
                "eta": eta,
                "expires": expires,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": "",
                "kwargsrepr": "",
                "origin": _ORIGIN,
                "ignore_result": True,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "argsrepr": "",
                "kwargsrepr": "",
                "delivery_mode": 2,
                "expiration": str(int(ttl * 1000)),
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


class CeleryTransport:
    def __init__(
        self, peers: dict[str, str], *, direct: bool = True, max_bytes: int | None = None
    ) -> None:
        self.peers = peers
        #: Task messages longer than this are not sent (the receiver would drop them).
        self.max_bytes = max_bytes
        self.oversized = 0
        #: Publish to Redis brokers by LPUSH of the task message (see the module doc).
        self.direct = direct
        self._app = sender_app()
        self._producers: dict[str, object] = {}
        self._clients: dict[str, redis.Redis] = {}
        self._skip_until: dict[str, float] = {}
        self.sent = 0
        self.send_errors = 0

    def _producer(self, node_id: str):
        producer = self._producers.get(node_id)
        if producer is None:
            connection = Connection(
                self.peers[node_id],
                connect_timeout=1.0,
                transport_options={"socket_timeout": 2.0, "socket_connect_timeout": 1.0},
            )
            producer = self._producers[node_id] = self._app.amqp.Producer(connection)
        return producer

    def _client(self, node_id: str) -> redis.Redis:
        client = self._clients.get(node_id)
        if client is None:
            client = self._clients[node_id] = redis.Redis.from_url(
                self.peers[node_id], socket_timeout=2.0, socket_connect_timeout=1.0
            )
        return client

    def send(
        self, node_id: str, envelope: dict, *, task: str = DELIVER_TASK, delay: float = 0.0
    ) -> bool:
        if time.monotonic() < self._skip_until.get(node_id, 0.0):
            return False
        try:
            if self.direct and not delay and self.peers[node_id].startswith(_DIRECT_SCHEMES):
                message = task_message(task, [envelope], queue_name(node_id))
                if self.max_bytes is not None and len(message) > self.max_bytes:
                    self.oversized += 1
                    log.error(
                        "not sent to %s: a task message of %d bytes, more than %d",
                        node_id,
                        len(message),
                        self.max_bytes,
                    )
                    return False
                self._client(node_id).lpush(queue_name(node_id), message)
                self.sent += 1
                return True
            self._app.send_task(
                task,
                args=[envelope],
                queue=queue_name(node_id),
                expires=EXPIRES,
                countdown=delay or None,
                retry=False,
                ignore_result=True,
                argsrepr="",
                kwargsrepr="",
                producer=self._producer(node_id),
            )
        except Exception as error:  # noqa: BLE001 - any broker failure means "message lost"
            self.send_errors += 1
            self._skip_until[node_id] = time.monotonic() + BACKOFF
            broken = self._producers.pop(node_id, None)
            if broken is not None:
                broken.connection.release()
            client = self._clients.pop(node_id, None)
            if client is not None:
                client.close()
            log.warning("cannot reach the broker of %s: %s", node_id, error)
            return False
        self.sent += 1
        return True


class Undeliverable(Exception):
    """An item of a node's queue that is not a task message this transport sends; `reason`
    (oversized, undecodable, not_a_task, unknown_task) is what the worker counts it as."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Drained:
    """A task message read off a queue: its task, its one argument (the envelope, checked
    later by consensus.envelope), when it may run and whether it has expired."""

    task: str
    envelope: object
    task_id: str
    eta: str | None  # ISO time before which it must not run (a delayed message), or None
    expires: str | None  # ISO time after which it is stale, or None

    def eta_timestamp(self) -> float | None:
        return datetime.fromisoformat(self.eta).timestamp() if self.eta else None

    def expired(self, now: datetime | None = None) -> bool:
        return bool(self.expires) and datetime.fromisoformat(self.expires) < (
            now or datetime.now(UTC)
        )

    def canonical(self, queue: str) -> str:
        """The message rebuilt from what was read, field by field as `task_message` builds
        it: whatever else the item carried never reaches Celery."""
        ttl = EXPIRES
        if self.expires:
            ttl = max(
                0.0, (datetime.fromisoformat(self.expires) - datetime.now(UTC)).total_seconds()
            )
        expires = self.expires or (datetime.now(UTC) + timedelta(seconds=ttl)).isoformat()
        return _message(self.task, [self.envelope], queue, self.task_id, expires, self.eta, ttl)


_TASKS = (DELIVER_TASK, SUBMIT_TASK)


def _iso_time(value, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise Undeliverable("not_a_task", f"{what} is not a time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Undeliverable("not_a_task", f"{what} is not a time") from None
    if parsed.tzinfo is None:
        raise Undeliverable("not_a_task", f"{what} has no time zone")
    return value


def read_task_message(raw: bytes, max_bytes: int) -> Drained:
    """The task message of one queue item, read strictly; `Undeliverable` for anything else.

    The length is checked before anything is decoded. Accepted: a JSON object with a
    base64 JSON body `[[envelope], {}, embed]` (no callbacks, errbacks, chain or chord),
    content type application/json in utf-8, and headers naming `consensus.deliver` or
    `consensus.submit` with a string id and ISO times (or null) as eta and expires."""
    if len(raw) > max_bytes:
        raise Undeliverable("oversized", f"{len(raw)} bytes, more than {max_bytes}")
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        raise Undeliverable("undecodable", "not JSON") from None
    if not isinstance(message, dict):
        raise Undeliverable("not_a_task", f"a JSON {type(message).__name__}")
    headers, properties = message.get("headers"), message.get("properties")
    if not isinstance(headers, dict) or not isinstance(properties, dict):
        raise Undeliverable("not_a_task", "no headers or properties")
    task = headers.get("task")
    if task not in _TASKS:
        raise Undeliverable("unknown_task", f"task {str(task)[:80]!r}")
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not 0 < len(task_id) <= 64:
        raise Undeliverable("not_a_task", "no task id")
    if (
        message.get("content-type") != "application/json"
        or message.get("content-encoding") != "utf-8"
        or properties.get("body_encoding") != "base64"
        or not isinstance(message.get("body"), str)
    ):
        raise Undeliverable("not_a_task", "not a base64 JSON body")
    try:
        body = json.loads(base64.b64decode(message["body"], validate=True))
    except (ValueError, RecursionError):
        raise Undeliverable("undecodable", "body is not base64 JSON") from None
    if not (
        isinstance(body, list)
        and len(body) == 3
        and isinstance(body[0], list)
        and len(body[0]) == 1
        and body[1] == {}
        and isinstance(body[2], dict)
        and all(body[2].get(name) is None for name in _EMBED)
    ):
        raise Undeliverable("not_a_task", "body is not [[envelope], {}, embed]")
    return Drained(
        task=task,
        envelope=body[0][0],
        task_id=task_id,
        eta=_iso_time(headers.get("eta"), "eta"),
        expires=_iso_time(headers.get("expires"), "expires"),
    )


#: RPOP of up to ARGV[1] items, each longer than ARGV[2] bytes replaced by its length: an
#: oversized item is dropped inside Redis, never sent to the worker.
_DRAIN_SCRIPT = """
local out = {}
local cap = tonumber(ARGV[2])
for i = 1, tonumber(ARGV[1]) do
  local item = redis.call('RPOP', KEYS[1])
  if not item then break end
  if string.len(item) > cap then out[#out + 1] = string.len(item) else out[#out + 1] = item end
end
return out
"""


class Inbox:
    """This node's own queue, read directly: while the worker runs one `consensus.deliver`
    task, more may be waiting, and handling them in the same step (one persist, one
    envelope per peer) costs far less than one Celery task execution each. `drain` takes
    task messages off the queue's list (oldest first), as the worker would have received
    them, and reads them strictly (`read_task_message`); items over `max_bytes` are dropped
    inside Redis. Whatever is not a task message goes to `refused(reason, detail)`; the
    runtime checks the envelopes of the rest as it checks any other."""

    def __init__(self, node_id: str, broker_url: str, *, max_bytes: int, refused) -> None:
        self.queue = queue_name(node_id)
        self.broker_url = broker_url
        self.max_bytes = max_bytes
        self.refused = refused
        self.enabled = broker_url.startswith(_DIRECT_SCHEMES)
        self._client: redis.Redis | None = None
        self._script = None

    def drain(self, limit: int) -> list[Drained]:
        if not self.enabled:
            return []
        try:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self.broker_url, socket_timeout=2.0, socket_connect_timeout=1.0
                )
                self._script = self._client.register_script(_DRAIN_SCRIPT)
            raw = self._script(keys=[self.queue], args=[limit, self.max_bytes])
        except redis.RedisError as error:
            log.warning("cannot drain %s: %s", self.queue, error)
            self._client = None
            return []
        drained = []
        for item in raw or ():
            if isinstance(item, int):
                self.refused("oversized", f"{item} bytes, more than {self.max_bytes}")
                continue
            try:
                drained.append(read_task_message(item, self.max_bytes))
            except Undeliverable as undeliverable:
                self.refused(undeliverable.reason, str(undeliverable))
        return drained


class EnvelopeTransport:
    """The host's Transport (consensus.host) between workers: a step's messages for a peer
    go sealed (consensus.envelope) in one envelope, or in several when the body would pass
    a third of the queue's size cap (a task message carries the body escaped and in
    base64), published by `publisher` (a CeleryTransport). The test-only fault switches
    drop or delay a link here, at the sender. `counters` counts envelopes and messages
    out and the messages the switches dropped."""

    def __init__(
        self,
        sealer: Sealer,
        publisher: CeleryTransport,
        faults: Faults,
        *,
        max_bytes: int,
        counters,
    ) -> None:
        self.sealer = sealer
        self.publisher = publisher
        self.faults = faults
        self.max_bytes = max_bytes
        self.counters = counters

    def send(self, peer: str, messages: list) -> None:
        node_id = self.sealer.sender
        if self.faults.dropped(node_id, peer):
            self.counters["fault_dropped_out"] += 1
            return
        for envelope, sealed in self._envelopes(peer, messages):
            self.counters["envelopes_out"] += 1
            self.counters["messages_out"] += sealed
            self.publisher.send(peer, envelope, delay=self.faults.delay(node_id, peer))

    def _envelopes(self, peer: str, batch: list):
        """(envelope, number of messages) for `batch`: one envelope, or several halves; one
        message alone goes as it is (the publisher refuses it if its task message passes
        the cap)."""
        envelope = self.sealer.seal(peer, batch)
        if len(batch) == 1 or len(envelope["body"]) <= self.max_bytes // 3:
            yield envelope, len(batch)
            return
        half = len(batch) // 2
        yield from self._envelopes(peer, batch[:half])
        yield from self._envelopes(peer, batch[half:])
