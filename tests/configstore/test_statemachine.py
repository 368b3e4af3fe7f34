"""The replicated state machine on the real applier (consensus.storage.apply) and a real
PostgreSQL database: every command, every rejection, the history rows each one leaves, and
determinism."""

from __future__ import annotations

import json
import random
from datetime import datetime

import pytest
from django.db import DatabaseError, connection, transaction

from configstore.models import Entry, History, Schema
from configstore.statemachine import apply_command, apply_commands
from consensus import storage
from consensus.paxos import Command, Value
from tests.configstore.conftest import AT, Log, payload, replicated_state


def entry(key: str) -> Entry | None:
    return Entry.objects.filter(key=key).first()


def rows(**filters) -> list[History]:
    return list(History.objects.filter(**filters).order_by("index", "id"))


# ------------------------------------------------------------------------------ put


def test_a_put_creates_an_entry_at_version_1_and_records_it(log):
    slot = log.apply(payload("put", key="a/b", value={"x": 1}, description="d"), request_id="r1")
    e = entry("a/b")
    assert (e.value, e.version, e.created_index, e.modified_index) == ({"x": 1}, 1, slot, slot)
    assert (e.description, e.updated_by, e.updated_at) == ("d", "alice", datetime.fromisoformat(AT))
    assert log.outcome("r1") == (
        "committed",
        {
            "key": "a/b",
            "version": 1,
            "created": True,
            "created_index": slot,
            "description": "d",
            "updated_at": AT,
        },
    )
    (h,) = rows()
    assert (h.index, h.request_id, h.command, h.operation, h.key) == (
        slot,
        "r1",
        "put",
        "put",
        "a/b",
    )
    assert (h.old_value, h.old_version, h.new_value, h.new_version) == (None, None, {"x": 1}, 1)
    assert (h.actor, h.reason, h.outcome, h.error, h.detail) == (
        "alice",
        "test",
        "committed",
        "",
        "",
    )
    # The node that took the request (from the payload), not the node applying it.
    assert h.node == "n2"
    assert h.at == datetime.fromisoformat(AT)


def test_a_second_put_replaces_the_value_and_bumps_the_version(log):
    first = log.apply(payload("put", key="k", value=1, description="kept"))
    second = log.apply(payload("put", key="k", value=2))
    e = entry("k")
    assert (e.value, e.version, e.created_index, e.modified_index) == (2, 2, first, second)
    assert e.description == "kept"  # a put without a description keeps the current one
    log.apply(payload("put", key="k", value=3, description=""))
    assert entry("k").description == ""
    h = rows(index=second)[0]
    assert (h.old_value, h.old_version, h.new_value, h.new_version) == (1, 1, 2, 2)


def test_json_null_is_a_value_not_an_absence(log):
    log.apply(payload("put", key="k", value=None))
    e = entry("k")
    assert e is not None and e.value is None and e.version == 1


def test_a_put_at_the_expected_version_commits(log):
    log.apply(payload("put", key="k", value=1))
    log.apply(payload("put", key="k", value=2, expected_version=1), request_id="cas")
    assert log.outcome("cas")[0] == "committed"
    assert entry("k").version == 2


def test_a_put_at_another_version_is_rejected_and_recorded(log):
    log.apply(payload("put", key="k", value=1))
    before = entry("k")
    slot = log.apply(payload("put", key="k", value=2, expected_version=5), request_id="cas")
    outcome, result = log.outcome("cas")
    assert outcome == "rejected"
    assert result["error"] == "version_conflict"
    assert (result["key"], result["expected_version"], result["current_version"]) == ("k", 5, 1)
    after = entry("k")
    assert (after.value, after.version, after.modified_index) == (1, 1, before.modified_index)
    (h,) = rows(index=slot)
    assert (h.outcome, h.error, h.request_id) == ("rejected", "version_conflict", "cas")
    assert (h.old_value, h.old_version, h.new_value, h.new_version) == (1, 1, 2, None)
    assert "expected version 5" in h.detail


def test_expected_version_0_means_must_not_exist(log):
    log.apply(payload("put", key="k", value=1, expected_version=0), request_id="a")
    log.apply(payload("put", key="k", value=2, expected_version=0), request_id="b")
    assert log.outcome("a")[0] == "committed"
    assert log.outcome("b")[1]["error"] == "version_conflict"
    assert entry("k").value == 1


def test_create_only_refuses_an_existing_key(log):
    log.apply(payload("put", key="k", value=1, create_only=True), request_id="a")
    log.apply(payload("put", key="k", value=2, create_only=True), request_id="b")
    assert log.outcome("a")[0] == "committed"
    assert log.outcome("b")[1]["current_version"] == 1
    assert entry("k").value == 1


def test_must_exist_refuses_an_absent_key(log):
    log.apply(payload("put", key="k", value=1, must_exist=True), request_id="a")
    outcome, result = log.outcome("a")
    assert outcome == "rejected" and result["current_version"] is None
    assert entry("k") is None
    assert rows()[0].outcome == "rejected"


# --------------------------------------------------------------------------- delete


def test_a_delete_removes_the_entry_and_records_the_old_value(log):
    log.apply(payload("put", key="k", value={"v": 1}))
    slot = log.apply(payload("delete", key="k"), request_id="d")
    assert entry("k") is None
    assert log.outcome("d") == ("committed", {"key": "k", "version": 1})
    (h,) = rows(index=slot)
    assert (h.operation, h.old_value, h.old_version, h.new_value, h.new_version) == (
        "delete",
        {"v": 1},
        1,
        None,
        None,
    )


def test_deleting_a_missing_key_is_rejected_as_not_found(log):
    slot = log.apply(payload("delete", key="nope"), request_id="d")
    assert log.outcome("d") == (
        "rejected",
        {"error": "not_found", "detail": "nope does not exist", "key": "nope"},
    )
    (h,) = rows(index=slot)
    assert (h.outcome, h.error, h.operation) == ("rejected", "not_found", "delete")


def test_a_delete_at_another_version_is_rejected(log):
    log.apply(payload("put", key="k", value=1))
    log.apply(payload("delete", key="k", expected_version=3), request_id="d")
    assert log.outcome("d")[1]["error"] == "version_conflict"
    assert entry("k").value == 1


def test_a_deleted_key_is_created_again_at_version_1(log):
    log.apply(payload("put", key="k", value=1))
    log.apply(payload("put", key="k", value=2))
    log.apply(payload("delete", key="k"))
    slot = log.apply(payload("put", key="k", value=3))
    e = entry("k")
    assert (e.version, e.created_index) == (1, slot)


# ------------------------------------------------------------------------------ txn


def txn(ops, checks=(), **fields) -> str:
    return payload("txn", ops=list(ops), checks=list(checks), **fields)


def test_a_txn_applies_every_op_in_one_slot(log):
    log.apply(payload("put", key="a", value=1))
    log.apply(payload("put", key="b", value=1))
    slot = log.apply(
        txn(
            [
                {"op": "put", "key": "a", "value": 2},
                {"op": "delete", "key": "b"},
                {"op": "put", "key": "c", "value": [3], "description": "new"},
            ],
            [{"key": "a", "version": 1}, {"key": "z", "version": 0}],
        ),
        request_id="t",
    )
    assert log.outcome("t") == (
        "committed",
        {
            "results": [
                {"op": "put", "key": "a", "version": 2},
                {"op": "delete", "key": "b", "version": 1},
                {"op": "put", "key": "c", "version": 1},
            ]
        },
    )
    assert (entry("a").value, entry("b"), entry("c").value) == (2, None, [3])
    assert entry("c").description == "new"
    history = rows(index=slot)
    assert [(h.key, h.operation, h.command) for h in history] == [
        ("a", "put", "txn"),
        ("b", "delete", "txn"),
        ("c", "put", "txn"),
    ]
    assert {h.request_id for h in history} == {"t"}


def test_a_txn_whose_check_fails_applies_nothing_and_names_the_check(log):
    log.apply(payload("put", key="a", value=1))
    before = replicated_state()["entries"]
    slot = log.apply(
        txn(
            [{"op": "put", "key": "a", "value": 2}, {"op": "put", "key": "b", "value": 2}],
            [{"key": "a", "version": 1}, {"key": "c", "version": 4}, {"key": "d", "version": 0}],
        ),
        request_id="t",
    )
    outcome, result = log.outcome("t")
    assert outcome == "rejected" and result["error"] == "txn_failed"
    assert result["failed"] == [{"key": "c", "expected_version": 4, "current_version": None}]
    assert "c (expected version 4" in result["detail"]
    assert replicated_state()["entries"] == before
    history = rows(index=slot)
    assert [(h.key, h.outcome, h.error) for h in history] == [
        ("a", "rejected", "txn_failed"),
        ("b", "rejected", "txn_failed"),
    ]


def test_a_txn_that_deletes_a_missing_key_applies_nothing(log):
    log.apply(
        txn([{"op": "put", "key": "a", "value": 1}, {"op": "delete", "key": "gone"}]),
        request_id="t",
    )
    outcome, result = log.outcome("t")
    assert outcome == "rejected"
    assert result["failed"] == [
        {"key": "gone", "expected_version": None, "current_version": None, "op": "delete"}
    ]
    assert entry("a") is None


def test_a_txn_has_no_fixed_cap_on_ops(log):
    ops = [{"op": "put", "key": f"bulk/{i:05d}", "value": i} for i in range(3000)]
    slot = log.apply(txn(ops), request_id="t")
    assert log.outcome("t")[0] == "committed"
    assert Entry.objects.filter(key__startswith="bulk/").count() == 3000
    assert History.objects.filter(index=slot, request_id="t").count() == 3000


# ------------------------------------------------------------------------- schemas


INTEGER = {"type": "integer", "minimum": 0}
OBJECT = {
    "type": "object",
    "properties": {"retries": {"type": "integer"}},
    "required": ["retries"],
}


def test_a_schema_is_attached_through_the_log_and_recorded(log):
    slot = log.apply(
        payload("put_schema", key="pay/", schema=INTEGER, description="ints"), request_id="s"
    )
    s = Schema.objects.get(key="pay/")
    assert (s.schema, s.version, s.created_index, s.description) == (INTEGER, 1, slot, "ints")
    assert log.outcome("s")[1]["created"] is True
    (h,) = rows(index=slot)
    assert (h.command, h.operation, h.key, h.new_value, h.new_version) == (
        "put_schema",
        "put_schema",
        "pay/",
        INTEGER,
        1,
    )


def test_a_value_its_namespace_schema_refuses_is_rejected_naming_the_path(log):
    log.apply(payload("put_schema", key="svc/", schema=OBJECT))
    slot = log.apply(payload("put", key="svc/a/b", value={"retries": "many"}), request_id="p")
    outcome, result = log.outcome("p")
    assert outcome == "rejected"
    assert (result["error"], result["path"], result["schema"]) == (
        "schema_violation",
        "$.retries",
        "svc/",
    )
    assert entry("svc/a/b") is None
    (h,) = rows(index=slot)
    assert (h.outcome, h.error, h.new_value) == (
        "rejected",
        "schema_violation",
        {"retries": "many"},
    )
    log.apply(payload("put", key="svc/a/b", value={"retries": 3}), request_id="ok")
    assert log.outcome("ok")[0] == "committed"


def test_every_schema_that_applies_must_pass(log):
    log.apply(payload("put_schema", key="a/", schema={"type": "integer"}))
    log.apply(payload("put_schema", key="a/b", schema={"maximum": 10}))
    log.apply(payload("put", key="a/b", value=11), request_id="big")
    log.apply(payload("put", key="a/c", value=11), request_id="other")
    assert log.outcome("big")[1]["schema"] == "a/b"
    assert log.outcome("other")[0] == "committed"  # the key schema of a/b is not a/c's


def test_a_schema_on_a_key_does_not_apply_to_keys_that_merely_start_with_it(log):
    log.apply(payload("put_schema", key="pay", schema={"type": "integer"}))
    log.apply(payload("put", key="payments", value="text"), request_id="p")
    assert log.outcome("p")[0] == "committed"


def test_a_txn_with_one_value_its_schema_refuses_applies_nothing(log):
    log.apply(payload("put_schema", key="n/", schema=INTEGER))
    log.apply(
        txn([{"op": "put", "key": "free", "value": 1}, {"op": "put", "key": "n/x", "value": -1}]),
        request_id="t",
    )
    outcome, result = log.outcome("t")
    assert (outcome, result["error"], result["key"]) == ("rejected", "schema_violation", "n/x")
    assert entry("free") is None


def test_a_schema_that_current_values_fail_is_refused(log):
    log.apply(payload("put", key="n/ok", value=1))
    log.apply(payload("put", key="n/bad", value="text"))
    log.apply(payload("put", key="n_other", value="text"))  # '_' is not a LIKE wildcard here
    slot = log.apply(payload("put_schema", key="n/", schema=INTEGER), request_id="s")
    outcome, result = log.outcome("s")
    assert (outcome, result["error"], result["key"]) == ("rejected", "schema_violation", "n/bad")
    assert not Schema.objects.exists()
    (h,) = rows(index=slot)
    assert (h.operation, h.outcome, h.new_value) == ("put_schema", "rejected", INTEGER)
    log.apply(payload("put_schema", key="n_other", schema={"type": "string"}), request_id="s2")
    assert log.outcome("s2")[0] == "committed"


def test_schema_versions_and_deletion(log):
    log.apply(payload("put_schema", key="k", schema=INTEGER, description="first"))
    log.apply(
        payload("put_schema", key="k", schema={"type": "number"}, expected_version=1),
        request_id="u",
    )
    assert log.outcome("u")[1]["version"] == 2
    assert Schema.objects.get(key="k").description == "first"  # kept
    log.apply(
        payload("put_schema", key="k", schema=INTEGER, expected_version=1), request_id="stale"
    )
    assert log.outcome("stale")[1]["error"] == "version_conflict"
    log.apply(payload("put", key="k", value=1.5), request_id="float")
    assert log.outcome("float")[0] == "committed"
    log.apply(payload("delete_schema", key="k", expected_version=9), request_id="d1")
    assert log.outcome("d1")[1]["error"] == "version_conflict"
    slot = log.apply(payload("delete_schema", key="k"), request_id="d2")
    assert log.outcome("d2") == ("committed", {"key": "k", "version": 2})
    assert not Schema.objects.exists()
    (h,) = rows(index=slot)
    assert (h.operation, h.old_value, h.old_version) == ("delete_schema", {"type": "number"}, 2)
    log.apply(payload("delete_schema", key="k"), request_id="d3")
    assert log.outcome("d3")[1]["error"] == "not_found"


def test_an_unresolvable_ref_fails_values_without_fetching_anything(log):
    schema = {"$ref": "https://schemas.invalid/never.json"}
    log.apply(payload("put_schema", key="r", schema=schema), request_id="s")
    assert log.outcome("s")[0] == "committed"
    log.apply(payload("put", key="r", value=1), request_id="p")
    outcome, result = log.outcome("p")
    assert (outcome, result["error"]) == ("rejected", "schema_violation")
    assert "cannot be evaluated" in result["detail"]


def test_format_is_an_annotation_only(log):
    log.apply(payload("put_schema", key="mail", schema={"type": "string", "format": "email"}))
    log.apply(payload("put", key="mail", value="not an address"), request_id="p")
    assert log.outcome("p")[0] == "committed"


# ------------------------------------------------------------------ noop, malformed


def test_a_noop_commits_and_leaves_no_history(log):
    log.apply(payload("noop"), request_id="n")
    assert log.outcome("n") == ("committed", {})
    assert not History.objects.exists()


def test_a_malformed_command_is_rejected_and_recorded(log):
    slot = log.apply("{not json", request_id="m1")
    outcome, result = log.outcome("m1")
    assert (outcome, result["error"]) == ("rejected", "malformed")
    (h,) = rows(index=slot)
    assert (h.operation, h.outcome, h.key, h.at) == ("malformed", "rejected", "", None)
    slot = log.apply(
        payload("put", key="k", value=1, expected_version="x", actor="bob"), request_id="m2"
    )
    (h,) = rows(index=slot)
    assert (h.command, h.key, h.actor, h.error) == ("put", "k", "bob", "malformed")
    assert "expected_version" in h.detail


def fuzzed_payloads(seed: int, count: int) -> list[str]:
    """Valid payloads with fields swapped for hostile values, some cut short."""
    rng = random.Random(seed)
    hostile = [
        None, -1, 2**70, "", "x" * 300, "a//b", "\x00", "\ud800", float("nan"),
        float("inf"), [], {}, True, "2026-11-27", {"op": "put"}, [{"op": "delete"}],
    ]  # fmt: skip
    bases = [
        {"op": "put", "key": "f/a", "value": {"n": 1}, "expected_version": None},
        {"op": "delete", "key": "f/a"},
        {"op": "txn", "ops": [{"op": "put", "key": "f/b", "value": 2}], "checks": []},
        {"op": "put_schema", "key": "f/", "schema": {"type": "object"}},
        {"op": "delete_schema", "key": "f/"},
    ]
    out = []
    for _ in range(count):
        data = {"actor": "fz", "reason": "", "node": "n1", "at": AT, **rng.choice(bases)}
        for _ in range(rng.randint(1, 3)):
            data[rng.choice([*data.keys(), "create_only", "must_exist", "description"])] = (
                rng.choice(hostile)
            )
        text = json.dumps(data)  # NaN and lone surrogates survive as JSON text
        if rng.random() < 0.1:
            text = text[: rng.randint(0, len(text))]
        out.append(text)
    return out


def test_no_payload_can_stop_the_applier(log):
    """Whatever a slot holds, the applier applies it: each command ends committed or
    rejected, the applied index advances, and no statement fails."""
    texts = fuzzed_payloads(seed=4, count=400)
    for i, text in enumerate(texts):
        log.apply(text, request_id=f"fz{i}")
    state = replicated_state()
    assert state["applied_index"] == [(len(texts),)]
    assert len(state["applied"]) == len(texts)
    assert {outcome for _, _, outcome, _ in state["applied"]} == {"committed", "rejected"}


def test_commands_of_one_slot_apply_in_order(log):
    slot = log.apply(
        payload("put", key="k", value=1),
        payload("put", key="k", value=2, expected_version=1),
        payload("delete", key="k", expected_version=2),
    )
    assert entry("k") is None
    assert [(h.operation, h.outcome, h.new_version) for h in rows(index=slot)] == [
        ("put", "committed", 1),
        ("put", "committed", 2),
        ("delete", "committed", None),
    ]


def test_a_request_id_applied_once_is_not_applied_again(log):
    log.apply(payload("put", key="k", value=1), request_id="same")
    log.apply(payload("put", key="k", value=2), request_id="same")
    assert entry("k").value == 1
    assert History.objects.filter(request_id="same").count() == 1


# ------------------------------------------------------------------ idempotency keys


def keyed(op: str, idem: str = "alice:k1", **fields) -> str:
    return payload(op, idempotency_key=idem, **fields)


def outcome_of(request_id: str) -> tuple[str, dict]:
    return Log().outcome(request_id)


def test_the_same_request_under_one_key_is_applied_once_and_answered_as_the_first(log):
    first = log.apply(keyed("put", idem="alice:k1", key="k", value=1), request_id="a")
    before = replicated_state()
    # Retried through another node, later: the same request (node and time differ).
    again = json.dumps({**json.loads(keyed("put", key="k", value=1)), "node": "n3"})
    log.apply(again, request_id="b")
    assert entry("k").version == 1
    assert outcome_of("b") == (
        "committed",
        {**outcome_of("a")[1], "replay_of": {"request_id": "a", "index": first}},
    )
    after = replicated_state()
    assert {k: v for k, v in after.items() if k not in ("applied", "applied_index", "chosen")} == {
        k: v for k, v in before.items() if k not in ("applied", "applied_index", "chosen")
    }  # no entry, schema, history row or record changed: only the log and the outcome moved
    assert rows(key="k")[0].idempotency_key == "alice:k1"


def test_another_request_under_a_used_key_is_rejected_and_changes_nothing(log):
    first = log.apply(keyed("put", key="k", value=1), request_id="a")
    entries_before = replicated_state()["entries"]
    slot = log.apply(keyed("put", key="k2", value=2), request_id="b")
    assert entry("k2") is None and replicated_state()["entries"] == entries_before
    outcome, result = outcome_of("b")
    assert (outcome, result["error"], result["request_id"], result["index"]) == (
        "rejected",
        "idempotency_key_reused",
        "a",
        first,
    )
    (row,) = rows(index=slot)
    assert (row.outcome, row.error, row.key, row.new_value, row.idempotency_key) == (
        "rejected",
        "idempotency_key_reused",
        "k2",
        2,
        "alice:k1",
    )
    # What the request asks for decides, not only the key and value: the reason too.
    log.apply(keyed("put", reason="other", key="k", value=1), request_id="c")
    assert outcome_of("c")[1]["error"] == "idempotency_key_reused"


def test_two_requests_with_one_key_in_one_slot_the_log_orders_them(log):
    slot = log.slots.__next__()
    value = Value(
        (
            Command("a", keyed("put", key="race1", value=1)),
            Command("b", keyed("put", key="race2", value=2)),
            Command("c", keyed("put", key="race1", value=1)),
        )
    )
    assert storage.apply_chosen(apply_commands, "n1", [(slot, value)]) == 1
    assert (entry("race1").value, entry("race2")) == (1, None)
    assert outcome_of("a")[0] == "committed"
    assert outcome_of("b")[1]["error"] == "idempotency_key_reused"
    assert outcome_of("c")[1]["replay_of"] == {"request_id": "a", "index": slot}


def test_a_rejected_first_request_is_answered_again_to_its_retry(log):
    log.apply(payload("put", key="k", value=0))
    first = log.apply(keyed("put", key="k", value=1, expected_version=9))
    log.apply(payload("put", key="k", value=5))  # the state moves on: version 2
    log.apply(keyed("put", key="k", value=1, expected_version=9), request_id="r")
    outcome, result = outcome_of("r")
    assert (outcome, result["current_version"], result["replay_of"]["index"]) == (
        "rejected",
        1,
        first,
    )
    assert entry("k").value == 5


def test_idempotency_keys_of_two_actors_never_collide(log):
    log.apply(keyed("put", idem="alice:k", key="a", value=1))
    log.apply(keyed("put", idem="bob:k", actor="bob", key="b", value=2))
    assert (entry("a").value, entry("b").value) == (1, 2)


def test_schema_commands_take_idempotency_keys_too(log):
    log.apply(keyed("put_schema", idem="alice:s", key="n/", schema=INTEGER), request_id="a")
    log.apply(keyed("put_schema", idem="alice:s", key="n/", schema=INTEGER), request_id="b")
    log.apply(keyed("delete_schema", idem="alice:s", key="n/"), request_id="c")
    assert Schema.objects.get(key="n/").version == 1
    assert outcome_of("b")[1]["replay_of"]["request_id"] == "a"
    assert outcome_of("c")[1]["error"] == "idempotency_key_reused"
    assert [(r.operation, r.outcome) for r in rows(key="n/")] == [
        ("put_schema", "committed"),
        ("delete_schema", "rejected"),
    ]


def test_a_key_is_remembered_for_the_window_then_free_and_pruned(log, monkeypatch):
    from configstore import statemachine

    monkeypatch.setattr(statemachine, "IDEMPOTENCY_WINDOW", 3)
    monkeypatch.setattr(statemachine, "IDEMPOTENCY_PRUNE_EVERY", 10)
    first = log.apply(keyed("put", key="k", value=1))  # slot 1
    for _ in range(3):  # slots 2-4: within the window, a reuse is refused
        log.apply(keyed("put", key="k", value=2))
    assert entry("k").version == 1
    log.apply(keyed("put", key="k", value=2), request_id="free")  # slot 5: expired
    assert (entry("k").version, outcome_of("free")[0]) == (2, "committed")
    with connection.cursor() as cursor:
        cursor.execute("SELECT key, index FROM configstore_idempotency")
        assert cursor.fetchall() == [("alice:k1", 5)]
    for _ in range(5):  # up to slot 10: records older than 10 - 3 are deleted
        log.apply(payload("put", key="other", value=0))
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM configstore_idempotency")
        assert cursor.fetchone()[0] == 0
    assert first == 1


# -------------------------------------------------------------------- determinism


def workload(seed: int, count: int) -> list[str]:
    """A random mix of every command over a few keys: conflicts, schemas, txns."""
    rng = random.Random(seed)
    keys = ["d/a", "d/b", "d/c", "e"]
    out = []
    for i in range(count):
        key = rng.choice(keys)
        kind = rng.choice(["put", "put", "cas", "create", "delete", "txn", "schema", "unschema"])
        value = rng.choice([i, -i, f"s{i}", {"n": i}, None, [i, i]])
        if rng.random() < 0.3:  # a few keys, reused: replays, reuses and first uses
            idem = {"idempotency_key": f"alice:k{rng.randint(1, 8)}"}
            if out and rng.random() < 0.5:  # the very same request again: a replay
                out.append(out[-1])
                continue
        else:
            idem = {}
        if kind == "put":
            out.append(payload("put", key=key, value=value, actor=f"u{i % 3}"))
        elif kind == "cas":
            out.append(payload("put", key=key, value=value, expected_version=rng.randint(0, 4)))
        elif kind == "create":
            out.append(payload("put", key=key, value=value, create_only=True))
        elif kind == "delete":
            out.append(payload("delete", key=key, expected_version=rng.choice([None, 1, 2])))
        elif kind == "txn":
            a, b = rng.sample(keys, 2)
            out.append(
                txn(
                    [
                        {"op": "put", "key": a, "value": value},
                        {"op": rng.choice(["put", "delete"]), "key": b, "value": i},
                    ]
                    if rng.random() < 0.5
                    else [{"op": "put", "key": a, "value": value}],
                    [{"key": b, "version": rng.randint(0, 3)}] if rng.random() < 0.5 else [],
                )
            )
        elif kind == "schema":
            out.append(
                payload(
                    "put_schema",
                    key="d/",
                    schema=rng.choice([INTEGER, {"type": ["integer", "string"]}]),
                )
            )
        else:
            out.append(payload("delete_schema", key="d/"))
        if idem:
            out[-1] = json.dumps({**json.loads(out[-1]), **idem})
    return out


def _reset() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE configstore_entry, configstore_schema, configstore_history, "
            "configstore_idempotency, consensus_applied_request, consensus_applied_state, "
            "consensus_chosen_slot"
        )


def test_the_same_log_gives_the_same_state_on_every_node(log):
    """Two nodes apply the same chosen log (each with its own node id, batched differently):
    entries, schemas, history and outcomes are identical."""
    commands = workload(seed=7, count=300)

    def one_at_a_time(cursor, slot, cmds, node):
        return [apply_command(cursor, slot, c, node) for c in cmds]

    def run(node: str, batch: int, state_machine=apply_commands) -> dict:
        _reset()
        log.slots = iter(range(1, 10_000))
        for start in range(0, len(commands), batch):
            chunk = commands[start : start + batch]
            slot = next(log.slots)

            value = Value(tuple(Command(f"w{start + j}", c) for j, c in enumerate(chunk)))
            assert storage.apply_chosen(state_machine, node, [(slot, value)]) == 1
        return replicated_state()

    first = run("n1", batch=3)
    second = run("n3", batch=3)
    assert first == second
    # A slot's commands applied together (one read of the state) or one by one: the same.
    assert run("n2", batch=10) == run("n2", batch=10, state_machine=one_at_a_time)
    outcomes = {row[2] for row in first["applied"]}
    assert outcomes == {"committed", "rejected"}  # the workload exercises both
    results = [json.loads(row[3]) for row in first["applied"]]
    assert any("replay_of" in r for r in results)  # ... and replays and reuses of keys
    assert any(r.get("error") == "idempotency_key_reused" for r in results)
    assert len(first["history"]) > 200


@pytest.mark.parametrize(
    "sql",
    ["UPDATE configstore_history SET actor = 'mallory'", "DELETE FROM configstore_history"],
)
def test_the_history_is_append_only(log, sql):
    log.apply(payload("put", key="k", value=1))
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql)
    assert History.objects.get().actor == "alice"


# ------------------------------------------------------------------ hostile schemas

NEAR_MISS = "a" * 40 + "!"  # days of backtracking for ^(a+)+$ in Python's re


def test_a_catastrophic_pattern_over_a_current_value_is_refused_at_once(log):
    log.apply(payload("put", key="r/k", value=NEAR_MISS))
    slot = log.apply(
        payload("put_schema", key="r/k", schema={"type": "string", "pattern": "^(a+)+$"})
    )
    assert Schema.objects.filter(key="r/k").count() == 0
    (row,) = rows(index=slot)
    assert (row.outcome, row.error) == ("rejected", "schema_violation")
    assert "does not match '^(a+)+$'" in row.detail
    log.apply(payload("put", key="r/k", value="aaaa"))  # the applier goes on
    assert entry("r/k").version == 2


def test_a_catastrophic_pattern_in_place_refuses_a_near_miss_at_once(log):
    log.apply(payload("put_schema", key="r/", schema={"patternProperties": {"^(a+)+$": {}}}))
    log.apply(payload("put_schema", key="r/k", schema={"pattern": "^(a+)+$"}))
    slot = log.apply(payload("put", key="r/k", value=NEAR_MISS))
    assert [(r.outcome, r.error) for r in rows(index=slot)] == [("rejected", "schema_violation")]
    log.apply(payload("put", key="r/k", value="aaaa"))
    log.apply(payload("put", key="r/j", value={NEAR_MISS: 1, "a": 2}))
    assert (entry("r/k").value, entry("r/j").version) == ("aaaa", 1)


def test_a_schema_too_costly_to_check_is_refused_the_same_on_every_node(log):
    levels = {
        f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
        for i in range(40)
    }
    schema = {"$defs": {**levels, "d40": {"type": "integer"}}, "$ref": "#/$defs/d0"}
    log.apply(payload("put", key="x", value=1))
    slot = log.apply(payload("put_schema", key="x", schema=schema))
    (row,) = rows(index=slot)
    assert (row.outcome, row.error) == ("rejected", "schema_violation")
    assert "too costly to check" in row.detail


def test_a_pattern_re2_cannot_match_is_a_malformed_command(log):
    slot = log.apply(payload("put_schema", key="x", schema={"pattern": "(a)\\1"}))
    (row,) = rows(index=slot)
    assert (row.outcome, row.error) == ("rejected", "malformed")
    assert "not supported" in row.detail and "\\1" in row.detail
