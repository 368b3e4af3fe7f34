"""What a fault run checks in the nodes' databases once the cluster has healed.

- convergence: every node reaches the same applied index;
- the chosen logs and the applied state are identical on every node (compared by hashes
  computed in PostgreSQL), and so is the audit history. Logs are compacted (state
  transfer): each node must hold every slot above its compaction point up to the applied
  index, and the logs are compared over the slots every node still holds. The slots below
  were seen while the run went on (`ChosenWatch`: each node's log read every 0.1 s); a slot
  seen with two values anywhere is a problem, and so is a slot nobody saw;
- so are the replicated identities (users, groups, tokens, prefix permissions) and the access
  history;
- the audit history holds each applied config command exactly once, at its log index, in
  index order (the access history each access command); replayed row by row, each row's old value and version are the key's state before
  it, and the replay ends in the entries the nodes hold;
- every client write is where its answer says: an ok write is a committed row with the
  value and version the client was told; a conflict or not_found a rejected row; a write
  that certainly failed (connection refused, 503 no_quorum) is in no row and no slot.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import psycopg

from consensus.paxos.types import Value
from devcluster.localcluster import LocalCluster
from tests.linearizability.history import CONFLICT, DELETE, NOT_FOUND, OK, PUT, Operation, canonical

_CHOSEN_HASH = """
    SELECT count(*), coalesce(md5(string_agg(slot::text || '=' || value::text, ';' ORDER BY slot)), '')
    FROM consensus_chosen_slot WHERE slot > %s AND slot <= %s
"""
_COMPACTED = "SELECT compacted_through FROM consensus_applied_state"
_STATE_HASH = """
    SELECT count(*), coalesce(md5(string_agg(
        concat_ws('|', key, value::text, description, version, created_index, modified_index,
                  updated_by, updated_at::text), ';' ORDER BY key)), '')
    FROM configstore_entry
"""
_HISTORY_HASH = """
    SELECT count(*), coalesce(md5(string_agg(
        concat_ws('|', index, request_id, command, operation, key, old_value::text,
                  new_value::text, old_version, new_version, actor, reason, node, outcome,
                  error, detail, at::text), ';' ORDER BY index, id)), '')
    FROM configstore_history
"""

_ACCESS_HISTORY_HASH = """
    SELECT count(*), coalesce(md5(string_agg(
        concat_ws('|', index, request_id, command, subject, old::text, new::text, actor, reason,
                  node, outcome, error, detail, at::text), ';' ORDER BY index, id)), '')
    FROM configstore_access_history
"""
_IDENTITIES_HASH = """
    SELECT count(*), md5(
      coalesce(string_agg(concat_ws('|', u.username, u.password, u.is_active, u.is_staff,
        u.is_superuser, (SELECT string_agg(g.name, ',' ORDER BY g.name) FROM auth_group g
          JOIN auth_user_groups ug ON ug.group_id = g.id WHERE ug.user_id = u.id),
        (SELECT string_agg(p.codename, ',' ORDER BY p.codename) FROM auth_permission p
          JOIN auth_user_user_permissions up ON up.permission_id = p.id
          WHERE up.user_id = u.id)), ';' ORDER BY u.username), '')
      || coalesce((SELECT string_agg(concat_ws('|', t.token_id, t.key_hash, t.scope, t.prefix,
          t.expires_at::text), ';' ORDER BY t.token_id) FROM configstore_api_token t), '')
      || coalesce((SELECT string_agg(concat_ws('|', g.name, pp.prefix, pp.can_view,
          pp.can_change, pp.can_delete), ';' ORDER BY g.name, pp.prefix)
          FROM configstore_prefix_permission pp JOIN auth_group g ON g.id = pp.group_id), ''))
    FROM auth_user u
"""
ACCESS_OPS = ("put_user", "delete_user", "put_group", "delete_group", "put_token", "delete_token")


@dataclass
class Audit:
    problems: list[str] = field(default_factory=list)
    applied_index: int = 0
    history_rows: int = 0
    entries: int = 0
    hashes: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Slots every node had compacted by the audit (checked against the watched log).
    log_slots_compacted: int = 0

    def problem(self, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(text)

    @property
    def ok(self) -> bool:
        return not self.problems


def wait_converged(cluster: LocalCluster, timeout: float = 60.0) -> int:
    """The applied index every node reaches (raises TimeoutError if they do not agree, or
    if a node's database refuses connections until the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            applied = {node: _applied_index(cluster, node) for node in cluster.ids}
        except psycopg.OperationalError as error:
            applied = {"database": str(error).strip()}
        if len(set(applied.values())) == 1 and "database" not in applied:
            return next(iter(applied.values()))
        if time.monotonic() > deadline:
            raise TimeoutError(f"applied indexes still differ after {timeout}s: {applied}")
        time.sleep(0.2)


def _applied_index(cluster: LocalCluster, node: str) -> int:
    """0 where the node's worker never got as far as recording one."""
    rows = cluster.query(node, "SELECT applied_index FROM consensus_applied_state")
    return rows[0][0] if rows else 0


class ChosenWatch(threading.Thread):
    """Every chosen slot any node holds, read every `interval` seconds while a run goes on
    (a compacted slot is gone from the databases by the audit): slot -> value's JSON text,
    and the slots seen with two different values (Paxos' agreement broken)."""

    def __init__(self, cluster: LocalCluster, interval: float = 0.1) -> None:
        super().__init__(name="chosen-watch", daemon=True)
        self.cluster, self.interval = cluster, interval
        self.seen: dict[int, str] = {}
        self.conflicts: list[str] = []
        self._above = dict.fromkeys(cluster.ids, 0)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.look()
            self._halt.wait(self.interval)

    def look(self) -> None:
        for node in self.cluster.ids:
            try:
                rows = self.cluster.query(
                    node,
                    "SELECT slot, value::text FROM consensus_chosen_slot WHERE slot > %s "
                    "ORDER BY slot",
                    [self._above[node]],
                )
            except Exception:  # noqa: BLE001 - a database being restarted: next time
                continue
            for slot, value in rows:
                known = self.seen.setdefault(slot, value)
                if known != value and len(self.conflicts) < 10:
                    self.conflicts.append(f"slot {slot} was seen chosen with two values")
            if rows:
                self._above[node] = rows[-1][0]

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.look()


def audit(
    cluster: LocalCluster,
    operations: list[Operation],
    failed: dict[str, str],
    watch: ChosenWatch | None = None,
) -> Audit:
    """`watch`: the log as seen during the run (needed where logs were compacted)."""
    result = Audit()
    try:
        result.applied_index = wait_converged(cluster)
    except TimeoutError as error:
        result.problem(str(error))
        return result
    try:
        _audit_databases(result, cluster, operations, failed, watch)
    except psycopg.OperationalError as error:
        result.problem(f"a node's database refused the audit: {str(error).strip()}")
    return result


def _audit_databases(
    result: Audit, cluster: LocalCluster, operations, failed, watch: ChosenWatch | None
) -> None:
    applied = result.applied_index
    compacted = {node: cluster.query(node, _COMPACTED)[0][0] for node in cluster.ids}
    common = max(compacted.values())  # every node holds the slots above it
    for node, below in compacted.items():
        (held,) = cluster.query(
            node,
            "SELECT count(*) FROM consensus_chosen_slot WHERE slot > %s AND slot <= %s",
            [below, applied],
        )[0]
        if held != applied - min(below, applied):
            result.problem(
                f"{node}'s chosen log has gaps between its compaction point {below} and the "
                f"applied index {applied}"
            )
    for name, sql, params in (
        ("chosen log", _CHOSEN_HASH, [common, applied]),
        ("applied state", _STATE_HASH, []),
        ("audit history", _HISTORY_HASH, []),
        ("access history", _ACCESS_HISTORY_HASH, []),
        ("identities", _IDENTITIES_HASH, []),
    ):
        per_node = {node: cluster.query(node, sql, params)[0] for node in cluster.ids}
        result.hashes[name] = {
            node: f"{count}:{digest}" for node, (count, digest) in per_node.items()
        }
        if len(set(per_node.values())) != 1:
            result.problem(f"the {name} differs between nodes: {result.hashes[name]}")
    log: dict[int, str] = dict(watch.seen) if watch is not None else {}
    if watch is not None:
        for problem in watch.conflicts:
            result.problem(problem)
    for node in cluster.ids:
        for slot, value in cluster.query(
            node,
            "SELECT slot, value::text FROM consensus_chosen_slot WHERE slot <= %s",
            [applied],
        ):
            if log.setdefault(slot, value) != value:
                result.problem(f"slot {slot} was seen chosen with two values")
    unseen = [slot for slot in range(1, applied + 1) if slot not in log]
    if unseen:
        result.problem(
            f"{len(unseen)} chosen slots were compacted on every node before the audit saw "
            f"them (the first: {unseen[:5]}): the log cannot be checked against the history"
        )
    chosen = [
        (slot, Value.from_json(json.loads(value)))
        for slot, value in sorted(log.items())
        if slot <= applied
    ]
    result.log_slots_compacted = min(compacted.values())
    rows = cluster.query(
        node,
        "SELECT id, index, request_id, command, operation, key, old_value, new_value,"
        " old_version, new_version, outcome, error, idempotency_key FROM configstore_history"
        " ORDER BY id",
    )
    entries = {
        key: (value, version)
        for key, value, version in cluster.query(
            node, "SELECT key, value, version FROM configstore_entry"
        )
    }
    result.history_rows, result.entries = len(rows), len(entries)
    access_rows = cluster.query(
        node, "SELECT id, index, request_id FROM configstore_access_history ORDER BY id"
    )
    _check_log_against_history(result, chosen, rows, access_rows)
    _replay(result, rows, entries)
    _check_clients(result, rows, chosen, operations, failed)


def _check_log_against_history(result: Audit, chosen, rows, access_rows=()) -> None:
    """Each command of the log that changes or refuses something has exactly one row (one
    per key for a txn; an access command one in the access history), at the slot where it
    was first chosen; a retried copy in a later slot is applied once."""
    first_slot: dict[str, int] = {}
    access: dict[str, int] = {}
    for slot, value in chosen:
        for command in value.commands:
            if command.request_id in first_slot or command.request_id in access:
                continue
            first_slot[command.request_id] = slot
            try:
                op = json.loads(command.payload).get("op")
            except (ValueError, AttributeError):
                op = "malformed"
            if op == "noop":
                first_slot[command.request_id] = -1  # no history row
            elif op in ACCESS_OPS:
                access[command.request_id] = first_slot.pop(command.request_id)
    expected = {rid: slot for rid, slot in first_slot.items() if slot >= 0}
    access_seen: dict[str, list[int]] = {}
    for _, index, request_id in access_rows:
        access_seen.setdefault(request_id, []).append(index)
    if access_seen != {rid: [slot] for rid, slot in access.items()}:
        differing = sorted(
            rid
            for rid in access_seen.keys() | access.keys()
            if access_seen.get(rid) != ([access[rid]] if rid in access else None)
        )
        result.problem(f"access commands and access history rows differ: {differing[:10]}")
    seen: dict[str, set[int]] = {}
    previous_index = 0
    for row_id, index, request_id, *_ in rows:
        if index < previous_index:
            result.problem(f"history row {row_id} (index {index}) follows index {previous_index}")
        previous_index = max(previous_index, index)
        seen.setdefault(request_id, set()).add(index)
    for request_id, slot in expected.items():
        if seen.get(request_id) != {slot}:
            result.problem(
                f"request {request_id}, chosen first in slot {slot}, has history rows at "
                f"indexes {sorted(seen.get(request_id, ()))}"
            )
    for request_id in seen.keys() - expected.keys():
        result.problem(f"history rows of request {request_id}, which is in no chosen slot")
    singles: dict[str, int] = {}
    for _, _, request_id, command, *_ in rows:
        if command in ("put", "delete"):
            singles[request_id] = singles.get(request_id, 0) + 1
    for request_id, count in singles.items():
        if count != 1:
            result.problem(f"request {request_id} (one key) has {count} history rows")


def _replay(result: Audit, rows, entries) -> None:
    """Walk the history in order; each row must start from the state the rows before it
    left, and the walk must end in the entries the node holds."""
    state: dict[str, tuple[str, int]] = {}
    for row_id, index, _rid, _cmd, operation, key, old, new, old_v, new_v, outcome, *_ in rows:
        if operation not in ("put", "delete"):
            continue
        before = state.get(key)
        met = (canonical(old), old_v) if old_v is not None else None
        if met != before:
            result.problem(
                f"history row {row_id} (index {index}, {operation} {key}, {outcome}) starts "
                f"from {met}, but the rows before it left {before}"
            )
        if outcome != "committed":
            continue
        if operation == "put":
            expected_version = (before[1] if before else 0) + 1
            if new_v != expected_version:
                result.problem(f"history row {row_id}: new version {new_v}, not {expected_version}")
            state[key] = (canonical(new), new_v)
        else:
            state.pop(key, None)
    held = {key: (canonical(value), version) for key, (value, version) in entries.items()}
    if held != state:
        differing = sorted(k for k in held.keys() | state.keys() if held.get(k) != state.get(k))
        result.problem(f"replaying the history does not give the entries held: {differing[:10]}")


def _idempotency_key(namespaced: str) -> str:
    """The client's Idempotency-Key in the key a command carries ("<username>:<key>")."""
    return namespaced.split(":", 1)[-1]


def _command_key(payload: str) -> str:
    try:
        return _idempotency_key(json.loads(payload).get("idempotency_key") or "")
    except (ValueError, AttributeError):
        return ""


def _check_clients(result: Audit, rows, chosen, operations: list[Operation], failed) -> None:
    by_key = {_idempotency_key(row[-1]): row for row in rows if row[-1]}
    in_log = {_command_key(c.payload) for _, value in chosen for c in value.commands} - {""}
    for op in operations:
        if op.kind not in (PUT, DELETE) or op.request_id is None or op.unknown:
            continue
        row = by_key.get(op.request_id)
        if row is None:
            result.problem(f"no history row for a write the client was answered: {op.describe()}")
            continue
        *_, operation, key, _old, new, _ov, new_v, outcome, error, _key = row
        if op.outcome == OK:
            good = outcome == "committed" and key == op.key and operation == op.kind
            if op.kind == PUT:
                good = good and canonical(new) == canonical(op.value) and new_v == op.version
        elif op.outcome == CONFLICT:
            good = outcome == "rejected" and error == "version_conflict"
        elif op.outcome == NOT_FOUND:
            good = outcome == "rejected" and error == "not_found"
        else:
            good = False
        if not good:
            result.problem(
                f"the history row {row} does not match what the client was told: {op.describe()}"
            )
    for idempotency_key, why in failed.items():
        if idempotency_key in by_key or idempotency_key in in_log:
            result.problem(f"a write that failed ({why}) is in the log: {idempotency_key}")
