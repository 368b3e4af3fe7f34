"""The Celery transport: one task, `consensus.deliver`, routed to the queue
`consensus.<node id>` on that node's own broker.

Fire-and-forget: no results, no publish retries, JSON only, a short expiry. A peer whose
broker cannot be reached is skipped for a moment (its messages are dropped, which Paxos
tolerates) so that one dead broker never stalls a node's worker.
"""

from __future__ import annotations

import logging
import time

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


class CeleryTransport:
    def __init__(self, peers: dict[str, str]) -> None:
        self.peers = peers
        self._app = sender_app()
        self._producers: dict[str, object] = {}
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

    def send(
        self, node_id: str, envelope: dict, *, task: str = DELIVER_TASK, delay: float = 0.0
    ) -> bool:
        if time.monotonic() < self._skip_until.get(node_id, 0.0):
            return False
        try:
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
            log.warning("cannot reach the broker of %s: %s", node_id, error)
            return False
        self.sent += 1
        return True
