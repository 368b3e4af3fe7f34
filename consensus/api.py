"""The consensus runtime's API for the web tier, and the types its state machine is given:
the one consensus module the product (configstore/) imports, besides the worker's bootstep
(consensus.worker, which the product's Celery app installs). tests/test_layering.py holds
that rule.

Everything here acts on this process's own node (Django settings: CONFIGSTORE_NODE_ID, its
database and broker). Outcomes are typed: Committed / Rejected (the command was chosen and
applied here; `result` is what the state machine returned for it) or TimedOut (not
applied here in time: it may still commit; look it up later by its request id).

    submit(payload, request_id=, fresh=, timeout=)  a command; its outcome once applied here
    barrier(timeout=)           a linearizable read barrier: Committed(read id, index) once
                                this node has applied everything acknowledged before the
                                call (ReadIndex: no log slot), or TimedOut
    lookup(request_id)          the outcome of a request this node has applied, or None
    applied_index()             this node's applied index, read on the caller's Django
                                connection: inside a transaction, the index of its snapshot
    APPLIED_INDEX_SQL           the same as an SQL expression, for one statement that reads
                                it with other rows
    subscribe(callback)         callback(index) each time this node's applied index
                                advances, fed by the process's one listener (see
                                Submitter.subscribe for what a callback may do)
    node_has_quorum(), cluster_status(), leader_contact_age()
                                what the nodes' workers publish about themselves
    status_families(), REGISTRY, LATENCY_BUCKETS
                                the runtime's metrics, for the web server's /metrics
    Application(apply_commands, install_snapshot)
                                what the product gives the runtime to replicate (the
                                setting CONFIGSTORE_STATE_MACHINE names one)
    SNAPSHOT_REQUESTS_SQL, snapshot_requests_since(index), install_applied(cursor, index,
    batches)                    the runtime's part of a snapshot of the state machine
                                (configstore.snapshot): the request ids still inside the
                                window, and the install of an applied index

The waits give the caller's Django connection back to its pool before they block.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import connection

from consensus import conf
from consensus.applier import Application
from consensus.client import (
    Committed,
    Outcome,
    Rejected,
    Subscription,
    TimedOut,
    default_submitter,
)
from consensus.cluster import cluster_status, leader_contact_age, node_has_quorum
from consensus.metrics import LATENCY_BUCKETS, REGISTRY, status_families
from consensus.paxos import Command
from consensus.storage import (
    APPLIED_INDEX_SQL,
    SNAPSHOT_REQUESTS_SQL,
    ApplyCommands,
    install_applied,
    snapshot_requests_since,
)

__all__ = [
    "APPLIED_INDEX_SQL",
    "LATENCY_BUCKETS",
    "REGISTRY",
    "SNAPSHOT_REQUESTS_SQL",
    "Application",
    "ApplyCommands",
    "Command",
    "Committed",
    "Outcome",
    "Rejected",
    "Subscription",
    "TimedOut",
    "applied_index",
    "barrier",
    "cluster_status",
    "install_applied",
    "leader_contact_age",
    "lookup",
    "node_id",
    "node_has_quorum",
    "snapshot_requests_since",
    "status_families",
    "submit",
    "subscribe",
]


def submit(
    payload: str, *, request_id: str | None = None, fresh: bool | None = None, timeout: float
) -> Outcome:
    """Submit `payload` (a command the state machine decodes) and wait until this node has
    applied it, at most `timeout` seconds. A given `request_id` may be a retry: its outcome
    is looked up first, unless `fresh` says the id was just made; without one a fresh id is
    made. Returns Committed, Rejected or TimedOut."""
    return default_submitter().submit(payload, request_id=request_id, fresh=fresh, timeout=timeout)


def barrier(*, timeout: float) -> Committed | TimedOut:
    """A linearizable read barrier, shared with the process's concurrent readers (never one
    asked for before this call): Committed(read id, index) once this node has applied
    `index`, so a read of this node that follows is linearizable; TimedOut when the
    cluster did not confirm it within `timeout` seconds."""
    return default_submitter().barrier(timeout=timeout)


def lookup(request_id: str) -> Committed | Rejected | None:
    """The outcome of a request id this node has applied, or None (not yet, or never)."""
    return default_submitter().lookup(request_id)


def node_id() -> str:
    """This process's node (CONFIGSTORE_NODE_ID, consensus.conf)."""
    return conf.node().node_id


def applied_index() -> int:
    """This node's applied index, read on the caller's Django connection (inside a
    transaction: the index of that transaction's snapshot)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {APPLIED_INDEX_SQL}")
        return cursor.fetchone()[0]


def subscribe(callback: Callable[[int], None]) -> Subscription:
    """Call `callback(index)` each time this node's applied index advances, fed by the
    listener that also wakes this process's submitters (one LISTEN connection per process);
    it must return at once (Submitter.subscribe). `cancel()` the result to stop."""
    return default_submitter().subscribe(callback)
