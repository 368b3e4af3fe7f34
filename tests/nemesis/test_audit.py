"""The fault run's audit catches what it is there to catch: checked on doctored data (the
databases are not needed for the row-level checks; the cross-node comparison is checked on
a real cluster with one node doctored)."""

from __future__ import annotations

import json

import psycopg
import pytest

from consensus.client import Committed
from consensus.paxos.types import Command, Value
from tests.linearizability.history import CONFLICT, OK, PUT, Operation
from tests.nemesis.audit import (
    Audit,
    _check_clients,
    _check_log_against_history,
    _replay,
    audit,
)

AT = "2026-12-02T00:00:00+00:00"


def row(row_id, index, rid, op, key, old, new, old_v, new_v, outcome="committed", error=""):
    command = op if op in ("put", "delete") else "txn"
    # The request id doubles as the idempotency key ("<user>:<client's key>").
    return (row_id, index, rid, command, op, key, old, new, old_v, new_v, outcome, error, rid)


def put(rid: str, key: str) -> Command:
    payload = {"op": "put", "key": key, "value": 1, "idempotency_key": rid}
    return Command(rid, json.dumps(payload))


GOOD_ROWS = [
    row(1, 1, "u1:a", "put", "k", None, "v1", None, 1),
    row(2, 2, "u1:b", "put", "k", "v1", "v2", 1, 2),
    row(3, 3, "u1:c", "put", "k", "v2", "v3", 2, None, "rejected", "version_conflict"),
    row(4, 4, "u1:d", "delete", "k", "v2", None, 2, None),
]
GOOD_LOG = [
    (1, Value((put("u1:a", "k"),))),
    (2, Value((put("u1:b", "k"), Command("u1:b2", json.dumps({"op": "noop"}))))),
    (3, Value((put("u1:c", "k"), put("u1:a", "k")))),  # a retried copy of u1:a: applied once
    (4, Value((Command("u1:d", json.dumps({"op": "delete", "key": "k"})),))),
]


def audited(check, *args) -> list[str]:
    result = Audit()
    check(result, *args)
    return result.problems


def test_a_consistent_history_passes():
    assert audited(_replay, GOOD_ROWS, {}) == []
    assert audited(_check_log_against_history, GOOD_LOG, GOOD_ROWS) == []


def test_a_row_that_does_not_start_from_the_previous_state_is_caught():
    rows = [*GOOD_ROWS[:1], row(2, 2, "u1:b", "put", "k", "v0", "v2", 1, 2), *GOOD_ROWS[2:]]
    assert any("starts from" in p for p in audited(_replay, rows, {}))


def test_a_wrong_new_version_and_a_state_that_differs_from_the_replay_are_caught():
    rows = [*GOOD_ROWS[:1], row(2, 2, "u1:b", "put", "k", "v1", "v2", 1, 3)]
    assert any("new version 3" in p for p in audited(_replay, rows, {"k": ("v2", 3)}))
    assert any(
        "does not give the entries" in p for p in audited(_replay, GOOD_ROWS, {"k": ("v2", 2)})
    )


def test_a_command_applied_twice_or_never_or_out_of_order_is_caught():
    twice = [*GOOD_ROWS, row(5, 4, "u1:a", "put", "k", None, "v1", None, 1)]
    assert audited(_check_log_against_history, GOOD_LOG, twice)
    never = GOOD_ROWS[:3]
    assert any("u1:d" in p for p in audited(_check_log_against_history, GOOD_LOG, never))
    swapped = [GOOD_ROWS[1], GOOD_ROWS[0], *GOOD_ROWS[2:]]
    assert any("follows index" in p for p in audited(_check_log_against_history, GOOD_LOG, swapped))
    unknown = [*GOOD_ROWS, row(5, 5, "u1:zz", "put", "q", None, 1, None, 1)]
    assert any(
        "no chosen slot" in p for p in audited(_check_log_against_history, GOOD_LOG, unknown)
    )


def op(kind, outcome, value=None, version=None, rid="a"):
    return Operation(
        "c", "k", kind, 0.0, 1.0, outcome, value=value, version=version, request_id=rid
    )


def test_client_answers_must_match_the_rows():
    ok = [op(PUT, OK, "v1", 1, "a"), op(PUT, OK, "v2", 2, "b"), op(PUT, CONFLICT, "v3", 2, "c")]
    assert audited(_check_clients, GOOD_ROWS, GOOD_LOG, ok, {}) == []
    lost = [op(PUT, OK, "v9", 1, "zz")]
    assert any(
        "no history row" in p for p in audited(_check_clients, GOOD_ROWS, GOOD_LOG, lost, {})
    )
    wrong_value = [op(PUT, OK, "v9", 1, "a")]
    assert audited(_check_clients, GOOD_ROWS, GOOD_LOG, wrong_value, {})
    told_ok_but_rejected = [op(PUT, OK, "v3", 3, "c")]
    assert audited(_check_clients, GOOD_ROWS, GOOD_LOG, told_ok_but_rejected, {})
    failed_but_applied = {"b": "no_quorum"}
    assert any(
        "failed" in p for p in audited(_check_clients, GOOD_ROWS, GOOD_LOG, [], failed_but_applied)
    )


@pytest.mark.cluster
def test_the_cross_node_comparison_catches_one_doctored_node(make_cluster):
    """On a real cluster whose nodes agree, the audit passes; then one node's entry, one
    node's chosen slot and one node's history row are changed behind the cluster's back,
    and the audit names each difference."""
    cluster = make_cluster(3)
    for i in range(3):
        payload = json.dumps({"op": "put", "key": f"audit/k{i}", "value": i, "at": AT})
        assert isinstance(cluster.submitter("n1").submit(payload, timeout=20.0), Committed)
    assert audit(cluster, [], {}).problems == []

    doctor(cluster, "n2", "UPDATE configstore_entry SET description = 'x' WHERE key = 'audit/k0'")
    forged = json.dumps(Value((put("u9:doctored", "audit/k0"),)).to_json())
    doctor(cluster, "n3", "UPDATE consensus_chosen_slot SET value = %s WHERE slot = 1", [forged])
    doctor(
        cluster,
        "n2",
        "UPDATE configstore_history SET reason = 'x'"
        " WHERE id = (SELECT max(id) FROM configstore_history)",
    )
    problems = audit(cluster, [], {}).problems
    assert any(p.startswith("the applied state differs") for p in problems), problems
    assert any(p.startswith("the chosen log differs") for p in problems), problems
    assert any(p.startswith("the audit history differs") for p in problems), problems


def doctor(cluster, node: str, sql: str, params=()) -> None:
    """Change one row of a node's database behind the cluster's back (past the history's
    append-only trigger, which session_replication_role = replica skips)."""
    with psycopg.connect(cluster.database_url(node), autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        assert conn.execute(sql, params).rowcount == 1
