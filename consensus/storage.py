"""PostgreSQL storage of a node's Paxos state, and the applier.

Contract with the core (consensus/paxos/ready.py), in the order the runtime calls them:
  1. `persist(ready)` writes the acceptor state (promise, accepted entries) in one
     transaction and returns only once it has committed (synchronous_commit stays on);
  2. the runtime sends the Ready's messages;
  3. the node's applier (consensus/applier.py, its own thread and connection) calls
     `apply_chosen(new_chosen)`, which records the newly chosen entries in the chosen log
     and applies the chosen slots after the applied index, strictly in order, in one
     transaction that also records each request id's outcome, advances the applied index
     and NOTIFYs APPLIED_CHANNEL with the request ids it applied.
A crash anywhere is safe: the acceptor state that votes depend on is durable before any
vote leaves; chosen entries lost in a crash are learned again from the peers; what was
applied moved atomically with the applied index.

Statements go through psycopg's pipeline mode, so a step costs a few round trips rather
than one per row: the hot path of every commit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import close_old_connections, connection, transaction

from consensus import conf
from consensus.paxos import Ballot, Command, DurableState, Ready, Value, commands_to_apply

#: The channel the applier NOTIFYs on this node's database (its payloads: _notify_payloads,
#: notify_reads); the web tier's one listener per process (consensus.client) LISTENs on it.
APPLIED_CHANNEL = "consensus_applied"
#: This node's applied index as an SQL scalar expression (0 before the first slot), for a
#: statement that reads it together with other rows: the value is that of the statement's
#: snapshot.
APPLIED_INDEX_SQL = "coalesce((SELECT applied_index FROM consensus_applied_state), 0)"
#: The payload of a linearizable read's request on its way from the web tier to its node's
#: worker (as a Command of the submit envelope, with the read's id as request id): the
#: runtime hands it to the core's read_index, never to the log. Command payloads of the
#: config store are JSON objects, so none is equal to it.
READ_INDEX_PAYLOAD = "read_index"
NOTIFY_LIMIT = 7000  # bytes per NOTIFY payload (PostgreSQL caps it at 8000)
OUTCOME_LIMIT = 1000  # bytes: a larger outcome is not sent in the NOTIFY, only its id

#: The product's apply function (configstore.statemachine.apply_commands, loaded by the
#: CONFIGSTORE_STATE_MACHINE setting): apply_commands(cursor, slot, commands, node_id) ->
#: [(outcome, result), ...], one per command, in order. Runs inside the apply transaction
#: with a psycopg cursor; it must be deterministic. The node host's StateMachine
#: (consensus.host) is the applier (consensus.applier) that calls it.
ApplyCommands = Callable[[object, int, list[Command], str], list[tuple[str, dict]]]

_PROMISE = (
    "INSERT INTO consensus_acceptor_state (id, promised_round, promised_node) VALUES (1, %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET promised_round = EXCLUDED.promised_round, "
    "promised_node = EXCLUDED.promised_node "
    # The database itself refuses to lower a promise.
    'WHERE (consensus_acceptor_state.promised_round, consensus_acceptor_state.promised_node COLLATE "C") '
    '< (EXCLUDED.promised_round, EXCLUDED.promised_node COLLATE "C")'
)
_ACCEPTED = (
    "INSERT INTO consensus_accepted_slot (slot, ballot_round, ballot_node, value) "
    "VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (slot) DO UPDATE SET "
    "ballot_round = EXCLUDED.ballot_round, ballot_node = EXCLUDED.ballot_node, value = EXCLUDED.value"
)
_CHOSEN = (
    "INSERT INTO consensus_chosen_slot (slot, value) VALUES (%s, %s::jsonb) "
    "ON CONFLICT (slot) DO NOTHING"
)
# An id applied again after the request window may still have its old row (pruning is
# bounded): the new application replaces it.
_APPLIED_REQUEST = (
    "INSERT INTO consensus_applied_request (request_id, slot, outcome, result, applied_at) "
    "VALUES (%s, %s, %s, %s::jsonb, %s) ON CONFLICT (request_id) DO UPDATE SET "
    "slot = EXCLUDED.slot, outcome = EXCLUDED.outcome, result = EXCLUDED.result, "
    "applied_at = EXCLUDED.applied_at"
)
#: Pruning, in the apply transaction, bounded: at most PRUNE_LIMIT rows of each table more
#: than the transaction itself added, so a backlog (a first start after an upgrade, a
#: smaller window) is worked off a transaction at a time.
PRUNE_LIMIT = 1024
# The accepted values of slots at or below the applied index are never read again: load()
# reads only the slots above it, and a Promise carries only slots from the acceptor's
# first unchosen slot on (consensus.paxos.node, _on_prepare: max(from_slot,
# first_unchosen), and first_unchosen > applied index, every slot up to it being chosen),
# so no phase 1 ever needs them; what is chosen there is in the chosen log. A late Accept
# for such a slot may write a row again; a later transaction deletes it.
_PRUNE_ACCEPTED = (
    "DELETE FROM consensus_accepted_slot WHERE slot IN (SELECT slot FROM "
    "consensus_accepted_slot WHERE slot <= %s ORDER BY slot LIMIT %s)"
)
# Applied request ids older than the request window (CONFIGSTORE_REQUEST_WINDOW slots) are
# ignored by the duplicate check (_apply) whether or not they are still here: deleting them
# changes no decision, so every node decides alike whenever it prunes.
_PRUNE_REQUESTS = (
    "DELETE FROM consensus_applied_request WHERE request_id IN (SELECT request_id FROM "
    "consensus_applied_request WHERE slot < %s ORDER BY slot LIMIT %s)"
)
_APPLIED_INDEX = (
    "INSERT INTO consensus_applied_state (id, applied_index) VALUES (1, %s) "
    "ON CONFLICT (id) DO UPDATE SET applied_index = EXCLUDED.applied_index"
)


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def load() -> tuple[DurableState, int]:
    """What the core needs to start, as the node left it: the promise, the applied index,
    and the accepted values and chosen log of the slots above the applied index only (the
    slots at and below it are chosen and applied; ChosenLog reads them when a peer needs
    them). So a start costs the open slots, not the length of the log."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT promised_round, promised_node FROM consensus_acceptor_state")
        row = cursor.fetchone()
        promised = Ballot(row[0], row[1]) if row else Ballot.ZERO
        cursor.execute("SELECT applied_index, compacted_through FROM consensus_applied_state")
        row = cursor.fetchone()
        applied, compacted = row if row else (0, 0)
        cursor.execute(
            "SELECT slot, ballot_round, ballot_node, value FROM consensus_accepted_slot "
            "WHERE slot > %s",
            [applied],
        )
        accepted = {
            slot: (Ballot(r, n), Value.from_json(_json(v))) for slot, r, n, v in cursor.fetchall()
        }
        cursor.execute("SELECT slot, value FROM consensus_chosen_slot WHERE slot > %s", [applied])
        chosen = {slot: Value.from_json(_json(v)) for slot, v in cursor.fetchall()}
    return DurableState(promised, accepted, chosen, compacted_through=compacted), applied


def compact(through: int) -> None:
    """Prune the log through slot `through` (the host calls it only for slots applied here
    and covered by the state machine's latest snapshot): accepted values and chosen entries
    at or below it, and the compaction point recorded, in one transaction."""
    with transaction.atomic(), connection.cursor() as cursor:
        _compact(cursor, through)


def _compact(cursor, through: int) -> None:
    """compact()'s statements, inside the caller's transaction."""
    cursor.execute("DELETE FROM consensus_chosen_slot WHERE slot <= %s", [through])
    cursor.execute("DELETE FROM consensus_accepted_slot WHERE slot <= %s", [through])
    cursor.execute(
        "UPDATE consensus_applied_state SET compacted_through = "
        "GREATEST(compacted_through, %s) WHERE id = 1",
        [through],
    )


def compacted_through() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT compacted_through FROM consensus_applied_state")
        row = cursor.fetchone()
    return row[0] if row else 0


class ChosenLog:
    """The chosen log in PostgreSQL as the core's ChosenLog (consensus.paxos.ready): read on
    the runtime's own connection, from the primary key's index, one chunk at a time."""

    def read(self, first_slot: int, max_slots: int, max_bytes: int) -> list[Value]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT slot, value FROM consensus_chosen_slot WHERE slot >= %s "
                "ORDER BY slot LIMIT %s",
                [first_slot, max_slots],
            )
            rows = cursor.fetchall()
        values: list[Value] = []
        size = 0
        for slot, data in rows:
            if slot != first_slot + len(values):
                break  # a gap: the applier has not recorded it yet
            value = Value.from_json(_json(data))
            if values and size + value.size > max_bytes:
                break
            values.append(value)
            size += value.size
        return values


class PostgresStorage(ChosenLog):
    """The node's PostgreSQL database as the host's Storage (consensus.host): `load` and
    `persist` above, on the calling thread's connection; a failed persist closes it, so
    the reload that follows opens a fresh one."""

    def load(self) -> tuple[DurableState, int]:
        close_old_connections()
        return load()

    def persist(self, ready: Ready) -> None:
        try:
            persist(ready)
        except Exception:
            connection.close()
            raise

    def compact(self, through: int) -> None:
        compact(through)

    @property
    def compacted_through(self) -> int:
        """The compaction point as durable now (moved by compact() and by a snapshot's
        install, storage.install_applied)."""
        return compacted_through()


def notify_reads(reads: list[tuple[str, int]]) -> None:
    """Tell this node's waiting readers their read indexes: NOTIFY APPLIED_CHANNEL with
    {"reads": {read id: index, ...}} (several payloads if many)."""
    payloads: list[str] = []
    entries: list[str] = []
    size = 0
    for read_id, index in reads:
        entry = f"{json.dumps(read_id)}:{index}"
        if entries and size + len(entry) + 1 > NOTIFY_LIMIT:
            payloads.append('{"reads":{' + ",".join(entries) + "}}")
            entries, size = [], 0
        entries.append(entry)
        size += len(entry) + 1
    if entries:
        payloads.append('{"reads":{' + ",".join(entries) + "}}")
    with connection.cursor() as cursor:
        for payload in payloads:
            cursor.execute("SELECT pg_notify(%s, %s)", [APPLIED_CHANNEL, payload])


def _raw():
    """The psycopg connection under Django's (pipeline mode needs the real thing)."""
    connection.ensure_connection()
    return connection.connection


def persist(ready: Ready) -> None:
    """Step 1: the Ready's durable writes, committed before this returns."""
    if not ready.must_persist:
        return
    with transaction.atomic():
        conn = _raw()
        with conn.pipeline(), conn.cursor() as cursor:
            _write_acceptor(cursor, ready)


def _write_acceptor(cursor, ready: Ready) -> None:
    if ready.promised is not None:
        cursor.execute(_PROMISE, [ready.promised.round, ready.promised.node_id])
    if ready.accepted:
        latest = {slot: (b, v) for slot, b, v in ready.accepted}
        cursor.executemany(
            _ACCEPTED,
            [(s, b.round, b.node_id, json.dumps(v.to_json())) for s, (b, v) in latest.items()],
        )


def apply_chosen(
    apply_commands: ApplyCommands,
    node_id: str,
    new_chosen: list[tuple[int, Value]] = (),
    *,
    limit: int = 256,
) -> int:
    """Step 3: record `new_chosen` in the chosen log, then apply the chosen slots that
    follow the applied index, in order and without gaps, at most `limit` of them, all in one
    transaction. Returns how many slots it applied (0: nothing to apply yet). Only the
    node's applier calls it."""
    return apply_learned(apply_commands, node_id, new_chosen, limit=limit).applied


@dataclass(frozen=True)
class Applied:
    applied: int  # slots applied
    applied_index: int  # the applied index now
    more: bool  # the chosen log may hold slots after it, not yet applied (a gap or the limit)
    #: (outcome, rejection code or "") of each command applied, for the node's metrics
    outcomes: tuple[tuple[str, str], ...] = ()


def apply_learned(
    apply_commands: ApplyCommands,
    node_id: str,
    new_chosen: list[tuple[int, Value]] = (),
    *,
    limit: int = 256,
    applied_index: int | None = None,
    read_log: bool = True,
) -> Applied:
    """`apply_chosen`, for the applier, which is the only writer of the applied index and
    may therefore pass the index it left (`applied_index`) instead of reading it. With
    `read_log=False` it applies only the run of `new_chosen` that follows the applied
    index, without reading the chosen log: the caller knows the log holds nothing after
    the applied index that `new_chosen` lacks (it wrote everything there itself)."""
    chosen_rows = [(s, json.dumps(v.to_json())) for s, v in new_chosen]
    with transaction.atomic():
        conn = _raw()
        with conn.pipeline(), conn.cursor() as cursor:
            if chosen_rows:
                cursor.executemany(_CHOSEN, chosen_rows)
            if applied_index is None:
                # The applier is the only writer of the applied index: no row lock needed.
                cursor.execute("SELECT applied_index FROM consensus_applied_state")
                row = cursor.fetchone()
                applied_index = row[0] if row else 0
            if read_log:
                cursor.execute(
                    "SELECT slot, value FROM consensus_chosen_slot WHERE slot > %s "
                    "ORDER BY slot LIMIT %s",
                    [applied_index, limit],
                )
                candidates = [(slot, _json(value)) for slot, value in cursor.fetchall()]
                more = len(candidates) == limit
            else:
                candidates = sorted(dict(new_chosen).items())
                more = False
            committed = []
            for slot, value in candidates:
                if slot <= applied_index:
                    continue
                if slot != applied_index + len(committed) + 1 or len(committed) == limit:
                    more = True
                    break  # a gap: the rest waits for catch-up
                committed.append(
                    (slot, value if isinstance(value, Value) else Value.from_json(value))
                )
            outcomes = _apply(cursor, committed, apply_commands, node_id)
    return Applied(len(committed), applied_index + len(committed), more, tuple(outcomes))


def _apply(cursor, committed, apply_commands: ApplyCommands, node_id: str) -> list[tuple[str, str]]:
    """Apply `committed` and record it; (outcome, rejection code or "") per command."""
    if not committed:
        return []
    window = conf.node().request_window
    first = committed[0][0]
    ids = [c.request_id for _, value in committed for c in value.commands]
    # A request id applied at slot s is a duplicate at slots up to s + window, no later:
    # the same rule on every node, whatever each has pruned yet (request_window_start).
    applied_at: dict[str, int] = {}
    if ids:
        cursor.execute(
            "SELECT request_id, slot FROM consensus_applied_request "
            "WHERE request_id = ANY(%s) AND slot >= %s",
            [ids, request_window_start(first, window)],
        )
        applied_at = dict(cursor.fetchall())
    now = datetime.now(UTC)
    rows = []
    outcomes = []
    for slot, value in committed:
        fresh = commands_to_apply(
            value, _AppliedSince(applied_at, request_window_start(slot, window))
        )
        if not fresh:
            continue
        for command, (outcome, result) in zip(
            fresh, apply_commands(cursor, slot, fresh, node_id), strict=True
        ):
            applied_at[command.request_id] = slot
            code = result.get("error") if isinstance(result, dict) else None
            outcomes.append((outcome, "" if outcome == "committed" else str(code)))
            rows.append((command.request_id, slot, outcome, json.dumps(result), now))
    if rows:
        cursor.executemany(_APPLIED_REQUEST, rows)
    last = committed[-1][0]
    cursor.execute(_APPLIED_INDEX, [last])
    _prune(cursor, first - 1, request_window_start(last, window), len(rows))
    for payload in _notify_payloads(rows, last):
        cursor.execute("SELECT pg_notify(%s, %s)", [APPLIED_CHANNEL, payload])
    return outcomes


class _AppliedSince:
    """The request ids applied at or after slot `start` (for commands_to_apply's `in`)."""

    def __init__(self, applied_at: dict[str, int], start: int) -> None:
        self.applied_at, self.start = applied_at, start

    def __contains__(self, request_id: str) -> bool:
        return self.applied_at.get(request_id, self.start - 1) >= self.start


#: The runtime's part of a snapshot of the state machine at its applied index (the product
#: writes the file: configstore.snapshot): the request ids whose duplicates the next
#: slots must still drop, without the node-local time each was applied at. Every node at
#: the same applied index holds these same rows (whatever it pruned), in this order.
SNAPSHOT_REQUESTS_SQL = (
    "SELECT jsonb_build_object('request_id', request_id, 'slot', slot, 'outcome', outcome, "
    "'result', result)::text FROM consensus_applied_request WHERE slot >= %s "
    'ORDER BY slot, request_id COLLATE "C"'
)


def snapshot_requests_since(applied_index: int) -> int:
    """The first slot whose request ids SNAPSHOT_REQUESTS_SQL takes at `applied_index`."""
    return request_window_start(applied_index + 1, conf.node().request_window)


def install_applied(cursor, applied_index: int, request_batches: Iterable[str]) -> int:
    """Make `applied_index` this node's applied index, with the applied request ids of
    `request_batches` (JSON arrays of SNAPSHOT_REQUESTS_SQL's rows) in place of its own: a
    snapshot's install, inside the caller's transaction. The acceptor's promise and the
    values accepted above the index are left as they are (its votes stand); those at or
    below it are deleted, as the applier prunes them, and so are the chosen entries at or
    below it: the log is compacted through the index. Returns how many request ids it
    installed."""
    cursor.execute("DELETE FROM consensus_applied_request")
    installed = 0
    for batch in request_batches:
        cursor.execute(
            "INSERT INTO consensus_applied_request (request_id, slot, outcome, result, "
            "applied_at) SELECT r.request_id, r.slot, r.outcome, r.result, now() FROM "
            "jsonb_to_recordset(%s::jsonb) AS r(request_id text, slot bigint, outcome text, "
            "result jsonb)",
            [batch],
        )
        installed += cursor.rowcount
    cursor.execute(_APPLIED_INDEX, [applied_index])
    # At commit: this process's waiters look their requests up again (no "ids": all of
    # them), and subscribers see the new index.
    cursor.execute(
        "SELECT pg_notify(%s, %s)", [APPLIED_CHANNEL, json.dumps({"index": applied_index})]
    )
    # No chosen entry or accepted value at or below the index is needed (the snapshot
    # replaced them): the log is compacted through it, and a peer that needs those slots is
    # sent the snapshot.
    _compact(cursor, applied_index)
    return installed


def request_window_start(slot: int, window: int) -> int:
    """The first slot whose applied request ids still count as duplicates at `slot`."""
    return slot - window


def _prune(cursor, below_applied: int, window_start: int, added: int) -> None:
    """Delete accepted values of slots up to `below_applied` (applied by an earlier
    transaction) and applied request ids older than the window; each at most PRUNE_LIMIT
    rows more than this transaction added."""
    limit = PRUNE_LIMIT + added
    cursor.execute(_PRUNE_ACCEPTED, [below_applied, limit])
    cursor.execute(_PRUNE_REQUESTS, [window_start, limit])


def _notify_payloads(rows: list[tuple], applied_index: int) -> list[str]:
    """NOTIFY payloads, each under PostgreSQL's size cap:
        {"index": n, "ids": [request id, ...], "outcomes": {request id: [slot, outcome,
         result], ...}}
    from the applied rows (request_id, slot, outcome, result as JSON text, time). Every
    applied id is in some payload's "ids"; its outcome rides along unless it is large
    (then a waiter reads it from consensus_applied_request)."""
    payloads: list[str] = []
    ids: list[str] = []
    outcomes: list[str] = []
    size = 0

    def flush() -> None:
        payloads.append(
            f'{{"index":{applied_index},"ids":{json.dumps(ids)},"outcomes":{{{",".join(outcomes)}}}}}'
        )

    for request_id, slot, outcome, result, _ in rows:
        entry = f"{json.dumps(request_id)}:[{slot},{json.dumps(outcome)},{result}]"
        cost = len(request_id) + 4 + (len(entry) + 1 if len(entry) <= OUTCOME_LIMIT else 0)
        if ids and size + cost > NOTIFY_LIMIT:
            flush()
            ids, outcomes, size = [], [], 0
        ids.append(request_id)
        if len(entry) <= OUTCOME_LIMIT:
            outcomes.append(entry)
        size += cost
    flush()
    return payloads
