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

log = logging.getLogger(__name__)

DELIVER_TASK = "consensus.deliver"
SUBMIT_TASK = "consensus.submit"
EXPIRES = 10.0  # seconds: an envelope older than this is stale for Paxos anyway
BACKOFF = 1.0  # seconds to skip a peer whose broker refused a publish


def queue_name(node_id: str) -> str:
    return f"consensus.{node_id}"


def parse_peers(text: str) -> dict[str, str]:
    """'n1=redis://h1:6379/0,n2=...' -> {'n1': 'redis://h1:6379/0', ...}"""
    peers: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        node_id, sep, url = item.partition("=")
        if not sep or not node_id.strip() or not url.strip():
            raise ValueError(f"CONFIGSTORE_PEERS entry {item!r} is not id=broker-url")
        if node_id.strip() in peers:
            raise ValueError(f"CONFIGSTORE_PEERS names {node_id.strip()!r} twice")
        peers[node_id.strip()] = url.strip()
    if not peers:
        raise ValueError("CONFIGSTORE_PEERS is empty")
    return peers


def sender_app() -> Celery:
    """A Celery app used only to publish: the connection (so the broker) is given per call,
    since Celery's broker_url setting (and CELERY_BROKER_URL) names only one broker."""
    app = Celery("configstore-sender", set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
    return app


_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_DIRECT_SCHEMES = ("redis://", "rediss://", "unix://")


def task_message(task: str, args: list, queue: str, *, expires: float = EXPIRES) -> str:
    """The Celery task message (protocol 2, JSON) for `task(*args)` on `queue`, as kombu's
    Redis transport stores it in the queue's list: what `send_task(task, args=args,
    queue=queue, expires=expires, ignore_result=True, argsrepr='', kwargsrepr='')` sends."""
    task_id = str(uuid.uuid4())
    body = json.dumps([args, {}, _EMBED])
    expiry = datetime.now(UTC) + timedelta(seconds=expires)
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
                "eta": None,
                "expires": expiry.isoformat(),
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
                "expiration": str(int(expires * 1000)),
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


class CeleryTransport:
    def __init__(self, peers: dict[str, str], *, direct: bool = True) -> None:
        self.peers = peers
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
                self._client(node_id).lpush(
                    queue_name(node_id), task_message(task, [envelope], queue_name(node_id))
                )
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


class Inbox:
    """This node's own queue, read directly: while the worker runs one `consensus.deliver`
    task, more may be waiting, and handling them in the same step (one persist, one
    envelope per peer) costs far less than one Celery task execution each. `drain` takes
    task messages off the queue's list (oldest first), as the worker would have received
    them, and decodes them; the runtime checks their envelopes as it checks any other."""

    def __init__(self, node_id: str, broker_url: str) -> None:
        self.queue = queue_name(node_id)
        self.broker_url = broker_url
        self.enabled = broker_url.startswith(_DIRECT_SCHEMES)
        self._client: redis.Redis | None = None
        self.undecodable = 0

    def drain(self, limit: int) -> list[Drained]:
        if not self.enabled:
            return []
        try:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self.broker_url, socket_timeout=2.0, socket_connect_timeout=1.0
                )
            raw = self._client.rpop(self.queue, limit)
        except redis.RedisError as error:
            log.warning("cannot drain %s: %s", self.queue, error)
            self._client = None
            return []
        drained = []
        for item in raw or ():
            message = decode_task_message(item)
            if message is None:
                self.undecodable += 1
            else:
                drained.append(message)
        return drained


@dataclass(frozen=True)
class Drained:
    task: str
    envelope: object
    eta: float | None  # time.time() before which it must not run (a delayed message)
    expired: bool


def decode_task_message(raw: bytes) -> Drained | None:
    """A Celery task message as stored by kombu's Redis transport -> (task, its first
    argument, eta, whether it has expired); None if it is not one."""
    try:
        message = json.loads(raw)
        headers = message["headers"]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        if message.get("content-type") != "application/json":
            return None
        args = json.loads(body)[0]
        now = datetime.now(UTC)
        expires = headers.get("expires")
        eta = headers.get("eta")
        return Drained(
            task=headers["task"],
            envelope=args[0],
            eta=datetime.fromisoformat(eta).timestamp() if eta else None,
            expired=bool(expires) and datetime.fromisoformat(expires) < now,
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
