"""The submitter behind the web tier's API (consensus.api): send a command to this node's
worker (which forwards it to the leader), then wait until this node has applied its request
id; and tell subscribers when this node's applied index advances.

Waiting is LISTEN/NOTIFY on the node's database, never polling: one listener thread per
submitter (one submitter per process per node) holds the one connection that LISTENs on
storage.APPLIED_CHANNEL; the applier's NOTIFY names the request ids it applied, with their
outcomes (unless large), and wakes exactly their waiters, which read a large outcome from
`consensus_applied_request`. The same listener feeds the subscribers of the applied index
(`subscribe`: the product's long-polls and watches), so a process has one LISTEN connection.

    submitter.submit(payload, timeout=5.0) ->
        Committed(request_id, slot, result)     chosen and applied here
        Rejected(request_id, slot, result)      chosen, but the state machine refused it
        TimedOut(request_id)                    not applied here in time: it may still
                                                commit; look it up later by request id

Linearizable reads: `submitter.barrier(timeout)` asks this node's worker for a read index
(ReadIndex: the leader confirms it still leads with one heartbeat round a majority
acknowledges, and answers with the highest slot it has proposed), then waits until this
node has applied that index. Nothing is written to the log or to the applied requests.
Concurrent readers of one process share barriers: at most one is in flight, and one more
is pending, which every reader arriving meanwhile joins; it is asked for when the one in
flight completes. A reader only ever waits on a barrier asked for after it arrived, which
is what makes its read linearizable (see `barrier`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import ConnectionPool

from consensus import metrics
from consensus.envelope import seal_submit
from consensus.paxos import Command
from consensus.storage import APPLIED_CHANNEL, APPLIED_INDEX_SQL, READ_INDEX_PAYLOAD
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
class TimedOut:
    request_id: str


Outcome = Committed | Rejected | TimedOut

#: How often an unanswered read index request is sent again (the worker may have restarted).
READ_RETRY = 1.0
#: The application_name of the listener's connection (pg_stat_activity shows it).
LISTENER_NAME = "consensus_listener"


class Subscription:
    """A subscriber to this node's applied index (Submitter.subscribe)."""

    def __init__(self, submitter: Submitter, callback: Callable[[int], None]) -> None:
        self._submitter = submitter
        self.callback = callback

    def cancel(self) -> None:
        """No call after this returns."""
        self._submitter._unsubscribe(self)


@dataclass
class _Barrier:
    request_id: str
    outcome: Committed | TimedOut | None = None


class Submitter:
    """Submits to one node. Thread-safe; one per process per node is enough."""

    def __init__(
        self,
        *,
        node_id: str,
        dsn: str,
        broker_url: str,
        secret: bytes,
        before_wait: Callable[[], None] = lambda: None,
    ) -> None:
        """`before_wait` runs before the caller's thread starts waiting (the web tier gives
        its database connection back there: no connection is held while waiting)."""
        self.node_id = node_id
        self.before_wait = before_wait
        self.dsn = dsn
        self.secret = secret
        self.transport = CeleryTransport({node_id: broker_url})
        # Submissions are handed to one sender thread, which sends everything waiting in one
        # envelope: under concurrency many commands share a Celery task; alone, no delay.
        self._outbox: list[Command] = []
        self._outbox_ready = threading.Condition()
        self._sender: threading.Thread | None = None
        self._waiters: dict[str, threading.Event] = {}
        # Outcomes of waiters' request ids, as the applier's NOTIFY carried them.
        self._notified: dict[str, Committed | Rejected] = {}
        self._waiters_lock = threading.Lock()
        # Lookups (a retry's outcome, a large outcome) share two connections per process.
        self._lookups = ConnectionPool(
            dsn, min_size=0, max_size=2, kwargs={"autocommit": True}, open=False
        )
        self._listening = threading.Event()
        self._stopped = threading.Event()
        self._listener: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # Shared read barriers (see `barrier`).
        self._barriers = threading.Condition()
        self._barrier_in_flight: _Barrier | None = None
        self._barrier_pending: _Barrier | None = None
        self.barriers_submitted = 0
        self.barrier_reads = 0
        # Read indexes the worker answered (by read id), and the highest applied index a
        # NOTIFY carried; both under _waiters_lock, `_applied_changed` wakes index waiters.
        self._read_indexes: dict[str, int] = {}
        self._applied_seen = 0
        self._applied_changed = threading.Condition(self._waiters_lock)
        # Called under _waiters_lock, so each sees the applied index only increase.
        self._subscribers: list[Subscription] = []

    # ------------------------------------------------------------------ API

    def submit(
        self,
        payload: str,
        *,
        request_id: str | None = None,
        timeout: float = 5.0,
        fresh: bool | None = None,
    ) -> Outcome:
        """Submit `payload` and wait until this node has applied it. A given `request_id`
        may be a retry: its outcome is looked up first, unless the caller says the id is
        `fresh` (just made, so never submitted before); without one a fresh id is made.
        READ_INDEX_PAYLOAD is the runtime's own (a read's request): ValueError."""
        if payload == READ_INDEX_PAYLOAD:
            raise ValueError(f"{payload!r} is reserved for read index requests")
        if fresh is None:
            fresh = request_id is None
        request_id = request_id or uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        self._ensure_listener(timeout)
        event = threading.Event()
        with self._waiters_lock:
            self._waiters[request_id] = event
        try:
            known = None if fresh else self.lookup(request_id)  # a retry already applied?
            if known is not None:
                return known
            started = time.perf_counter()  # metrics: the commit latency of what is submitted
            self._enqueue(Command(request_id, payload))
            self.before_wait()
            while (remaining := deadline - time.monotonic()) > 0:
                if not event.wait(remaining):
                    break
                event.clear()
                with self._waiters_lock:
                    known = self._notified.pop(request_id, None)
                known = known or self.lookup(request_id)
                if known is not None:
                    break
            known = known or self.lookup(request_id) or TimedOut(request_id)
            metrics.COMMIT_SECONDS.labels(metrics.outcome_name(known)).observe(
                time.perf_counter() - started
            )
            return known
        finally:
            with self._waiters_lock:
                self._waiters.pop(request_id, None)
                self._notified.pop(request_id, None)

    def barrier(self, *, timeout: float = 5.0) -> Committed | TimedOut:
        """A linearizable read barrier: when it returns Committed(read id, index), this node
        has applied every command acknowledged as committed (on any node) before this call
        started, so a read of the local state that follows is linearizable. TimedOut:
        the cluster could not confirm it in time.

        Why sharing keeps that guarantee: a barrier B is a read index asked for at time t_B;
        its index covers every slot chosen before t_B (see Node.read_index), and this
        node applies in slot order. A reader joins only a barrier that is still pending,
        i.e. not yet asked for: so t_B is after the reader started, and B orders the
        reader after everything acknowledged before it. A barrier already in flight may
        predate the reader, so it is never joined; the reader waits for the pending one
        instead. The thread of the pending barrier's first reader asks for it once the
        barrier in flight completes."""
        deadline = time.monotonic() + timeout
        self.before_wait()
        with self._barriers:
            self.barrier_reads += 1
            metrics.BARRIER_READS.inc()
            joined = self._barrier_pending
            if joined is None:
                joined = self._barrier_pending = _Barrier(uuid.uuid4().hex)
            while True:
                if joined.outcome is not None:
                    return joined.outcome
                if self._barrier_in_flight is None and self._barrier_pending is joined:
                    self._barrier_pending = None
                    self._barrier_in_flight = joined
                    self.barriers_submitted += 1
                    break  # this thread asks for it
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return TimedOut(joined.request_id)
                self._barriers.wait(remaining)
        outcome: Committed | TimedOut = TimedOut(joined.request_id)
        try:
            outcome = self._confirm_read(
                joined.request_id, timeout=max(deadline - time.monotonic(), 0.0)
            )
        finally:
            metrics.BARRIERS.labels(metrics.outcome_name(outcome)).inc()
            with self._barriers:
                joined.outcome = outcome
                self._barrier_in_flight = None
                self._barriers.notify_all()
        return outcome

    def _confirm_read(self, read_id: str, *, timeout: float) -> Committed | TimedOut:
        """Ask this node's worker for a read index (asked again every READ_RETRY), then wait
        until this node has applied it: Committed(read_id, index), or TimedOut."""
        deadline = time.monotonic() + timeout
        self._ensure_listener(timeout)
        event = threading.Event()
        with self._waiters_lock:
            self._waiters[read_id] = event
        try:
            index = None
            while index is None:
                self._enqueue(Command(read_id, READ_INDEX_PAYLOAD))
                retry_at = min(deadline, time.monotonic() + READ_RETRY)
                while index is None and (remaining := retry_at - time.monotonic()) > 0:
                    event.wait(remaining)
                    event.clear()
                    with self._waiters_lock:
                        index = self._read_indexes.pop(read_id, None)
                if index is None and time.monotonic() >= deadline:
                    return TimedOut(read_id)
            if not self._wait_applied(index, deadline):
                return TimedOut(read_id)
            return Committed(read_id, index)
        finally:
            with self._waiters_lock:
                self._waiters.pop(read_id, None)
                self._read_indexes.pop(read_id, None)

    def _wait_applied(self, index: int, deadline: float) -> bool:
        """Wait until this node has applied `index` (woken by the applier's NOTIFYs, and
        reading the applied index itself every half second in case one was missed)."""
        with self._waiters_lock:
            if self._applied_seen >= index:
                return True
        while True:
            applied = self.applied_index()
            with self._waiters_lock:
                self._advance(applied)
                remaining = deadline - time.monotonic()
                if self._applied_seen >= index:
                    return True
                if remaining <= 0:
                    return False
                self._applied_changed.wait_for(
                    lambda: self._applied_seen >= index, min(remaining, 0.5)
                )
                if self._applied_seen >= index:
                    return True

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
        """This node's applied index, read now (on the submitter's own connections)."""
        return self._query(f"SELECT {APPLIED_INDEX_SQL}", [])[0]

    def subscribe(self, callback: Callable[[int], None], *, timeout: float = 2.0) -> Subscription:
        """Call `callback(applied_index)` each time this node's applied index is seen to
        advance: from every applier NOTIFY, and after the listener (re)connects (advances
        it missed meanwhile arrive as one). At once with the index already seen, if any.

        Contract for `callback`: it runs on the thread that saw the advance (the listener's,
        or a waiter's that read the index), under the lock that orders the calls (each
        subscriber sees strictly increasing indexes), so it must return at once: no query,
        no wait, no call back into this submitter. An exception it raises is logged and
        dropped. Waits up to `timeout` for the listener to be listening."""
        subscription = Subscription(self, callback)
        with self._waiters_lock:
            self._subscribers.append(subscription)
            if self._applied_seen > 0:
                self._call(subscription, self._applied_seen)
        self._ensure_listener(timeout)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._waiters_lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    def _advance(self, index: int) -> None:
        """Record that this node has applied `index`; wake its waiters and subscribers.
        Called under _waiters_lock."""
        if index <= self._applied_seen:
            return
        self._applied_seen = index
        self._applied_changed.notify_all()
        for subscription in self._subscribers:
            self._call(subscription, index)

    @staticmethod
    def _call(subscription: Subscription, index: int) -> None:
        try:
            subscription.callback(index)
        except Exception:
            log.exception("an applied-index subscriber failed; the listener goes on")

    def close(self) -> None:
        self._stopped.set()
        with self._outbox_ready:
            self._outbox_ready.notify_all()
        for thread in (self._listener, self._sender):
            if thread is not None:
                thread.join(timeout=3)
        self._lookups.close()

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
        self._lookups.open()  # idempotent
        for attempt in (1, 2):
            try:
                with self._lookups.connection() as conn:
                    return conn.execute(sql, params).fetchone()
            except psycopg.OperationalError:  # a broken connection is replaced: retry once
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
                with psycopg.connect(
                    self.dsn, autocommit=True, application_name=LISTENER_NAME
                ) as conn:
                    conn.execute(f"LISTEN {APPLIED_CHANNEL}")
                    # Notifications sent while not listening are lost: every waiter checks
                    # again, and subscribers read the index from the database. (No query
                    # inside the notifies() loop below: psycopg 3.3 would hang.)
                    (index,) = conn.execute(f"SELECT {APPLIED_INDEX_SQL}").fetchone()
                    self._wake({"ids": None, "index": index})
                    self._listening.set()
                    while not self._stopped.is_set():
                        for notice in conn.notifies(timeout=1.0):
                            self._wake(json.loads(notice.payload))
            except (psycopg.Error, ValueError, TypeError) as error:
                self._listening.clear()
                log.warning("applied-listener for %s: %s; reconnecting", self.node_id, error)
                self._stopped.wait(0.5)

    def _wake(self, notice: dict) -> None:
        reads = notice.get("reads")
        if reads is not None:
            with self._waiters_lock:
                events = []
                for read_id, index in reads.items():
                    if read_id in self._waiters:
                        self._read_indexes[read_id] = index
                        events.append(self._waiters[read_id])
            for event in events:
                event.set()
            return
        ids = notice.get("ids")
        outcomes = notice.get("outcomes") or {}
        with self._waiters_lock:
            applied = notice.get("index")
            if isinstance(applied, int) and not isinstance(applied, bool):
                self._advance(applied)
            if ids is None:
                events = list(self._waiters.values())
            else:
                events = [self._waiters[i] for i in ids if i in self._waiters]
                for request_id, (slot, outcome, result) in outcomes.items():
                    if request_id in self._waiters:
                        kind = Committed if outcome == "committed" else Rejected
                        self._notified[request_id] = kind(request_id, slot, result)
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


def _release_django_connection() -> None:
    """Give this thread's Django connection back (to the pool) unless a transaction needs it."""
    from django.db import connection

    if not connection.in_atomic_block:
        connection.close()


def default_submitter() -> Submitter:
    """The submitter of this process's own node (consensus.conf: one per process)."""
    from django.conf import settings

    from consensus import conf

    def make() -> Submitter:
        node = conf.node()
        return Submitter(
            node_id=node.node_id,
            dsn=dsn_from_django(settings.DATABASES["default"]),
            broker_url=node.broker_url,
            secret=node.secret.encode(),
            before_wait=_release_django_connection,
        )

    return conf.process().get("consensus.submitter", make)
