"""The submit API the web tier uses: send a command to this node's worker (which forwards it
to the leader), then wait until this node has applied its request id.

Waiting is LISTEN/NOTIFY on the node's database, never polling: one listener thread per
process holds a connection that LISTENs on `configstore_applied`; the applier's NOTIFY
names the request ids it applied, and wakes exactly their waiters, which then read the
outcome from `consensus_applied_request`.

    submitter.submit(payload, timeout=5.0) ->
        Committed(request_id, slot, result)     chosen and applied here
        Rejected(request_id, slot, result)      chosen, but the state machine refused it
        NotConfirmed(request_id)                not applied here in time: it may still
                                                commit; look it up later by request id
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

import psycopg

from consensus.envelope import seal_submit
from consensus.paxos import Command
from consensus.storage import APPLIED_CHANNEL
from consensus.transport import SUBMIT_TASK, CeleryTransport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Committed:
    request_id: str
    slot: int
    result: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Rejected:
    request_id: str
    slot: int
    result: dict = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return self.result.get("detail", "rejected")


@dataclass(frozen=True)
class NotConfirmed:
    request_id: str


Outcome = Committed | Rejected | NotConfirmed


class Submitter:
    """Submits to one node. Thread-safe; one per process per node is enough."""

    def __init__(self, *, node_id: str, dsn: str, broker_url: str, secret: bytes) -> None:
        self.node_id = node_id
        self.dsn = dsn
        self.secret = secret
        self.transport = CeleryTransport({node_id: broker_url})
        # Submissions are handed to one sender thread, which sends everything waiting in one
        # envelope: under concurrency many commands share a Celery task; alone, no delay.
        self._outbox: list[Command] = []
        self._outbox_ready = threading.Condition()
        self._sender: threading.Thread | None = None
        self._waiters: dict[str, threading.Event] = {}
        self._waiters_lock = threading.Lock()
        self._local = threading.local()
        self._listening = threading.Event()
        self._stopped = threading.Event()
        self._listener: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # ------------------------------------------------------------------ API

    def submit(
        self, payload: str, *, request_id: str | None = None, timeout: float = 5.0
    ) -> Outcome:
        request_id = request_id or uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        self._ensure_listener(timeout)
        event = threading.Event()
        with self._waiters_lock:
            self._waiters[request_id] = event
        try:
            known = self.lookup(request_id)  # a retry of something already applied
            if known is not None:
                return known
            self._enqueue(Command(request_id, payload))
            while (remaining := deadline - time.monotonic()) > 0:
                if not event.wait(remaining):
                    break
                event.clear()
                known = self.lookup(request_id)
                if known is not None:
                    return known
            return self.lookup(request_id) or NotConfirmed(request_id)
        finally:
            with self._waiters_lock:
                self._waiters.pop(request_id, None)

    def lookup(self, request_id: str) -> Committed | Rejected | None:
        """The outcome of a request id this node has applied, or None (not yet, or never)."""
        row = self._query(
            "SELECT slot, outcome, result FROM consensus_applied_request WHERE request_id = %s",
            [request_id],
        )
        if row is None:
            return None
        slot, outcome, result = row
        kind = Committed if outcome == "committed" else Rejected
        return kind(request_id, slot, result if isinstance(result, dict) else json.loads(result))

    def applied_index(self) -> int:
        row = self._query("SELECT applied_index FROM consensus_applied_state", [])
        return row[0] if row else 0

    def close(self) -> None:
        self._stopped.set()
        with self._outbox_ready:
            self._outbox_ready.notify_all()
        for thread in (self._listener, self._sender):
            if thread is not None:
                thread.join(timeout=3)

    def _enqueue(self, command: Command) -> None:
        with self._outbox_ready:
            if self._sender is None or not self._sender.is_alive():
                self._sender = threading.Thread(
                    target=self._send_loop, name=f"submit-sender-{self.node_id}", daemon=True
                )
                self._sender.start()
            self._outbox.append(command)
            self._outbox_ready.notify()

    def _send_loop(self) -> None:
        while not self._stopped.is_set():
            with self._outbox_ready:
                while not self._outbox and not self._stopped.is_set():
                    self._outbox_ready.wait(1.0)
                batch, self._outbox = self._outbox, []
            if batch:
                envelope = seal_submit(self.secret, self.node_id, batch)
                self.transport.send(self.node_id, envelope, task=SUBMIT_TASK)

    # ------------------------------------------------------------------ plumbing

    def _query(self, sql: str, params: list):
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            try:
                if conn is None or conn.closed:
                    conn = self._local.conn = psycopg.connect(self.dsn, autocommit=True)
                return conn.execute(sql, params).fetchone()
            except psycopg.OperationalError:
                self._local.conn = None
                if attempt == 2:
                    raise
        return None

    def _ensure_listener(self, timeout: float) -> None:
        with self._start_lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(
                    target=self._listen, name=f"applied-listener-{self.node_id}", daemon=True
                )
                self._listener.start()
        self._listening.wait(timeout)

    def _listen(self) -> None:
        while not self._stopped.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {APPLIED_CHANNEL}")
                    self._listening.set()
                    self._wake({"ids": None})  # we may have missed notifications: re-check
                    while not self._stopped.is_set():
                        for notice in conn.notifies(timeout=1.0):
                            self._wake(json.loads(notice.payload))
            except (psycopg.Error, ValueError) as error:
                self._listening.clear()
                log.warning("applied-listener for %s: %s; reconnecting", self.node_id, error)
                self._stopped.wait(0.5)

    def _wake(self, notice: dict) -> None:
        ids = notice.get("ids")
        with self._waiters_lock:
            if ids is None:
                events = list(self._waiters.values())
            else:
                events = [self._waiters[i] for i in ids if i in self._waiters]
        for event in events:
            event.set()


def dsn_from_django(database: dict) -> str:
    """A libpq connection string from a Django DATABASES entry."""
    return psycopg.conninfo.make_conninfo(
        dbname=database["NAME"],
        user=database.get("USER") or None,
        password=database.get("PASSWORD") or None,
        host=database.get("HOST") or None,
        port=database.get("PORT") or None,
    )


_default: Submitter | None = None
_default_lock = threading.Lock()


def default_submitter() -> Submitter:
    """The submitter of this process's own node, from Django settings."""
    global _default
    with _default_lock:
        if _default is None:
            from django.conf import settings

            from consensus.transport import parse_peers

            peers = parse_peers(settings.CONFIGSTORE_PEERS)
            _default = Submitter(
                node_id=settings.CONFIGSTORE_NODE_ID,
                dsn=dsn_from_django(settings.DATABASES["default"]),
                broker_url=peers[settings.CONFIGSTORE_NODE_ID],
                secret=settings.CONFIGSTORE_SECRET.encode(),
            )
        return _default


def submit(payload: str, *, request_id: str | None = None, timeout: float = 5.0) -> Outcome:
    """Submit through this process's own node (see Submitter.submit)."""
    return default_submitter().submit(payload, request_id=request_id, timeout=timeout)


def barrier(*, timeout: float = 5.0) -> Outcome:
    """A linearizable read barrier: a no-op through the log. When it returns Committed, this
    node has applied everything committed before the call, so a read of the local state
    that follows is linearizable. NotConfirmed means the cluster could not confirm it."""
    return submit(json.dumps({"op": "noop"}), timeout=timeout)
