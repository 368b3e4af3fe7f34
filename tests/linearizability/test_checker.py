"""The linearizability checker: its model of an entry, the verdicts it gives on hand-made
histories (good and bad), on histories of a simulated store (seeded), and on those
histories once broken; the history's JSON form and the command line.

Times in the hand-made histories are small integers; the brackets in the comments draw
each operation's interval."""

from __future__ import annotations

import heapq
import itertools
import json
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.linearizability import model
from tests.linearizability.checker import Verdict, check, main
from tests.linearizability.history import (
    CONFLICT,
    DELETE,
    NOT_FOUND,
    OK,
    PUT,
    READ,
    UNKNOWN,
    History,
    InvalidHistory,
    Operation,
)

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ helpers


def put(client, call, ret, value, version, *, key="k", **condition) -> Operation:
    return Operation(client, key, PUT, call, ret, OK, value=value, version=version, **condition)


def put_conflict(client, call, ret, value, current=None, *, key="k", **condition) -> Operation:
    return Operation(
        client, key, PUT, call, ret, CONFLICT, value=value, version=current, **condition
    )


def put_unknown(client, call, value, *, key="k", **condition) -> Operation:
    return Operation(client, key, PUT, call, None, UNKNOWN, value=value, **condition)


def read(client, call, ret, value, version, *, key="k") -> Operation:
    return Operation(client, key, READ, call, ret, OK, value=value, version=version)


def read_absent(client, call, ret, *, key="k") -> Operation:
    return Operation(client, key, READ, call, ret, NOT_FOUND)


def delete(client, call, ret, version=None, *, key="k", **condition) -> Operation:
    return Operation(client, key, DELETE, call, ret, OK, version=version, **condition)


def delete_absent(client, call, ret, *, key="k", **condition) -> Operation:
    return Operation(client, key, DELETE, call, ret, NOT_FOUND, **condition)


def delete_conflict(client, call, ret, current=None, *, key="k", **condition) -> Operation:
    return Operation(client, key, DELETE, call, ret, CONFLICT, version=current, **condition)


def delete_unknown(client, call, *, key="k", **condition) -> Operation:
    return Operation(client, key, DELETE, call, None, UNKNOWN, **condition)


def assert_linearizable(history) -> None:
    result = check(history)
    assert result.ok, result.describe()
    assert result.verdict is Verdict.LINEARIZABLE and result.key is None


def assert_violation(history, key="k"):
    result = check(history)
    assert result.verdict is Verdict.VIOLATION, result.describe()
    assert not result.ok
    assert result.key == key
    assert [failure.key for failure in result.failures] == [key]
    return result.failures[0]


# ---------------------------------------------------------------------- the model (table)

X, Y = '"x"', '"y"'  # canonical JSON texts of the values "x" and "y"


def req(kind, value=None, **condition) -> model.Request:
    return model.Request(kind, value, **condition)


MODEL_TABLE = [
    # state, request -> response, state after
    (None, req(READ), model.Response(NOT_FOUND), None),
    ((X, 3), req(READ), model.Response(OK, X, 3), (X, 3)),
    (None, req(PUT, X), model.Response(OK, version=1), (X, 1)),
    ((X, 3), req(PUT, Y), model.Response(OK, version=4), (Y, 4)),
    ((X, 3), req(PUT, X), model.Response(OK, version=4), (X, 4)),  # same value: still +1
    ((X, 3), req(PUT, Y, expected_version=3), model.Response(OK, version=4), (Y, 4)),
    ((X, 3), req(PUT, Y, expected_version=2), model.Response(CONFLICT, version=3), (X, 3)),
    ((X, 3), req(PUT, Y, expected_version=0), model.Response(CONFLICT, version=3), (X, 3)),
    (None, req(PUT, Y, expected_version=0), model.Response(OK, version=1), (Y, 1)),
    (None, req(PUT, Y, expected_version=1), model.Response(CONFLICT, version=0), None),
    (None, req(PUT, X, create_only=True), model.Response(OK, version=1), (X, 1)),
    ((X, 1), req(PUT, Y, create_only=True), model.Response(CONFLICT, version=1), (X, 1)),
    ((X, 1), req(PUT, Y, must_exist=True), model.Response(OK, version=2), (Y, 2)),
    (None, req(PUT, Y, must_exist=True), model.Response(CONFLICT, version=0), None),
    ((X, 3), req(DELETE), model.Response(OK, version=3), None),
    ((X, 3), req(DELETE, expected_version=3), model.Response(OK, version=3), None),
    ((X, 3), req(DELETE, expected_version=2), model.Response(CONFLICT, version=3), (X, 3)),
    (None, req(DELETE), model.Response(NOT_FOUND), None),
    (None, req(DELETE, expected_version=2), model.Response(NOT_FOUND), None),  # absent first
]


@pytest.mark.parametrize(("state", "request_", "response", "after"), MODEL_TABLE)
def test_the_model_answers_as_the_store_does(state, request_, response, after):
    assert model.apply(state, request_) == (response, after)


def test_a_key_deleted_and_put_again_starts_again_at_version_1():
    state = model.INITIAL
    for request_ in (req(PUT, X), req(PUT, Y), req(DELETE), req(PUT, Y)):
        _, state = model.apply(state, request_)
    assert state == (Y, 1)


def test_an_observed_response_is_allowed_only_if_it_is_the_stores_and_unknown_matches_any():
    assert model.step((X, 3), req(READ), model.Response(OK, X, 3)) == (True, (X, 3))
    assert model.step((X, 3), req(READ), model.Response(OK, Y, 3))[0] is False
    assert model.step((X, 3), req(READ), model.Response(OK, X, 2))[0] is False
    # A version not recorded matches any; an unknown outcome matches any response.
    assert model.step((X, 3), req(DELETE), model.Response(OK)) == (True, None)
    assert model.step((X, 3), req(PUT, Y), None) == (True, (Y, 4))
    assert model.step((X, 3), req(PUT, Y, expected_version=1), None) == (True, (X, 3))


# ------------------------------------------------------------------ operations, validated

INVALID_OPERATIONS = [
    dict(kind="scan", outcome=OK),
    dict(kind=READ, outcome=CONFLICT),
    dict(kind=PUT, outcome=NOT_FOUND, value="x"),
    dict(kind=READ, outcome=OK, value="x"),  # no version
    dict(kind=PUT, outcome=OK, value="x", version=0),
    dict(kind=READ, outcome=NOT_FOUND, version=1),
    dict(kind=PUT, outcome=OK, value="x", version=1, expected_version=1, create_only=True),
    dict(kind=DELETE, outcome=OK, must_exist=True),
    dict(kind=READ, outcome=NOT_FOUND, expected_version=1),
    dict(kind=PUT, outcome=OK, value="x", version=True),
    dict(kind=PUT, outcome=UNKNOWN, value="x"),  # unknown, yet a return time
    dict(kind=PUT, outcome=OK, value="x", version=1, ret=None),  # known, yet no return time
    dict(kind=READ, outcome=NOT_FOUND, call=3, ret=2),
    dict(kind=READ, outcome=NOT_FOUND, call=float("nan")),
]


@pytest.mark.parametrize("fields", INVALID_OPERATIONS)
def test_an_operation_that_does_not_fit_its_kind_is_refused(fields):
    with pytest.raises(InvalidHistory):
        Operation(**{"client": "c", "key": "k", "call": 0, "ret": 1, **fields})


# --------------------------------------------------------------- known-good histories


def test_an_empty_history_is_linearizable():
    assert_linearizable([])


def test_a_sequential_history_is_linearizable():
    assert_linearizable(
        [
            read_absent(1, 0, 1),
            put(1, 2, 3, "x", 1),
            read(2, 4, 5, "x", 1),
            put(2, 6, 7, {"a": [1, 2]}, 2),
            read(1, 8, 9, {"a": [1, 2]}, 2),
        ]
    )


def test_values_compare_as_json_whatever_the_order_of_their_keys():
    assert_linearizable([put(1, 0, 1, {"a": 1, "b": 2}, 1), read(2, 2, 3, {"b": 2, "a": 1}, 1)])


@pytest.mark.parametrize("first", ["x", "y"])
def test_overlapping_puts_may_take_effect_in_either_order(first):
    second = "y" if first == "x" else "x"
    # x: [0 ------ 10]   y:  [1 ------ 11]   read: [12 - 13] sees the second
    versions = {first: 1, second: 2}
    assert_linearizable(
        [
            put(1, 0, 10, "x", versions["x"]),
            put(2, 1, 11, "y", versions["y"]),
            read(3, 12, 13, second, 2),
        ]
    )


@pytest.mark.parametrize(("seen", "version"), [("old", 1), ("new", 2)])
def test_a_read_overlapping_a_put_sees_the_value_before_or_after_it(seen, version):
    # put old: [0-1]   put new: [2 ------- 10]   read: [3 - 4]
    assert_linearizable(
        [put(1, 0, 1, "old", 1), put(1, 2, 10, "new", 2), read(2, 3, 4, seen, version)]
    )


def test_overlapping_reads_may_see_the_new_value_first_and_the_old_one_second():
    # put new: [2 ------------ 20]; read A [3 - 8] sees new; read B [4 -- 9] sees old:
    # B takes effect before the put, A after it.
    assert_linearizable(
        [
            put(1, 0, 1, "old", 1),
            put(1, 2, 20, "new", 2),
            read(2, 3, 8, "new", 2),
            read(3, 4, 9, "old", 1),
        ]
    )


def test_a_chain_of_compare_and_sets_is_linearizable():
    assert_linearizable(
        [
            put(1, 0, 1, "a", 1, create_only=True),
            put(2, 2, 3, "b", 2, expected_version=1),
            put(1, 4, 5, "c", 3, expected_version=2),
            put_conflict(2, 6, 7, "stale", 3, expected_version=2),
            read(3, 8, 9, "c", 3),
        ]
    )


def test_of_two_concurrent_compare_and_sets_on_one_version_one_wins_the_other_conflicts():
    assert_linearizable(
        [
            put(1, 0, 1, "a", 1),
            put_conflict(2, 2, 10, "loser", 2, expected_version=1),
            put(3, 3, 9, "winner", 2, expected_version=1),
            read(1, 11, 12, "winner", 2),
        ]
    )


def test_of_two_concurrent_creates_one_wins_the_other_conflicts():
    assert_linearizable(
        [
            put_conflict(1, 0, 10, "a", 1, create_only=True),
            put(2, 1, 9, "b", 1, create_only=True),
            put(1, 11, 12, "c", 2, must_exist=True),
        ]
    )


def test_a_delete_removes_the_key_and_a_put_recreates_it_at_version_1():
    assert_linearizable(
        [
            put(1, 0, 1, "a", 1),
            put(1, 2, 3, "b", 2),
            delete_conflict(2, 4, 5, 2, expected_version=1),
            delete(2, 6, 7, 2, expected_version=2),
            read_absent(3, 8, 9),
            delete_absent(1, 10, 11),
            put_conflict(1, 12, 13, "c", 0, must_exist=True),
            put(3, 14, 15, "d", 1, expected_version=0),
            read(2, 16, 17, "d", 1),
        ]
    )


def test_an_unknown_put_that_took_effect_explains_a_later_read():
    # The client gave up on its put; the put still took effect, long after.
    assert_linearizable(
        [
            put(1, 0, 1, "a", 1),
            put_unknown(2, 2, "lost?"),
            read(3, 3, 4, "a", 1),
            read(3, 50, 51, "lost?", 2),
        ]
    )


def test_an_unknown_put_that_never_took_effect_is_linearizable():
    assert_linearizable(
        [
            put(1, 0, 1, "a", 1),
            put_unknown(2, 2, "never"),
            read(3, 3, 4, "a", 1),
            put(1, 5, 6, "b", 2),
            read(3, 50, 51, "b", 2),
        ]
    )


def test_an_unknown_put_seen_only_through_the_version_it_used_up():
    # Nobody read "ghost", but the next put got version 3: the ghost took effect between.
    assert_linearizable([put(1, 0, 1, "a", 1), put_unknown(2, 2, "ghost"), put(1, 5, 6, "b", 3)])


def test_an_unknown_delete_that_took_effect_is_linearizable():
    assert_linearizable(
        [put(1, 0, 1, "a", 1), delete_unknown(2, 2), read_absent(3, 5, 6), put(1, 7, 8, "b", 1)]
    )


def test_an_unknown_compare_and_set_takes_effect_only_if_its_condition_held():
    assert_linearizable(
        [
            put(1, 0, 1, "a", 1),
            put_unknown(2, 2, "cas", expected_version=1),
            read(3, 5, 6, "cas", 2),
        ]
    )
    assert_violation(
        [
            put(1, 0, 1, "a", 1),
            put_unknown(2, 2, "cas", expected_version=7),
            read(3, 5, 6, "cas", 2),
        ]
    )


def test_unknown_writes_may_take_effect_on_both_sides_of_a_known_one():
    # create b (unknown) -> 1; the compare-and-set -> 2; put a (unknown) -> 3; the read.
    assert_linearizable(
        [
            put(1, 4, 8, "a", 2, expected_version=1),
            read(0, 7, 7, "a", 3),
            put_unknown(1, 5, "a"),
            put_unknown(2, 2, "b", create_only=True),
        ]
    )


def test_an_infinite_return_time_is_an_unknown_outcome():
    op = Operation(2, "k", PUT, 2, float("inf"), UNKNOWN, value="v")
    assert op == put_unknown(2, 2, "v") and op.ret is None


def test_reads_with_an_unknown_outcome_are_dropped():
    result = check([put(1, 0, 1, "a", 1), Operation(2, "k", READ, 2, None, UNKNOWN)])
    assert result.ok and result.operations == 1


def test_keys_are_checked_independently():
    # On one key this would be a stale read; on two keys, each history is fine.
    assert_linearizable(
        [
            put(1, 0, 1, "a", 1, key="k1"),
            put(1, 2, 3, "b", 1, key="k2"),
            read(2, 4, 5, "a", 1, key="k1"),
        ]
    )


def test_a_call_and_a_return_at_the_same_instant_count_as_overlapping():
    # The read is called when the put returns: it may still take effect before the put.
    assert_linearizable([put(1, 0, 5, "a", 1), read_absent(2, 5, 6)])


# ---------------------------------------------------------------- known-bad histories


def test_a_stale_read_is_rejected():
    failure = assert_violation(
        [
            put(1, 0, 1, "old", 1),
            put(1, 2, 3, "new", 2),
            read(2, 4, 5, "old", 1),  # called after the newer put returned
        ]
    )
    assert failure.blocking == read(2, 4, 5, "old", 1)
    assert failure.linearized == (put(1, 0, 1, "old", 1), put(1, 2, 3, "new", 2))
    assert failure.state == ('"new"', 2)
    assert failure.pending == (read(2, 4, 5, "old", 1),)


def test_a_lost_acknowledged_write_is_rejected():
    # The put of "b" was acknowledged; nothing overwrote it, yet every later read misses it.
    assert_violation(
        [
            put(1, 0, 1, "a", 1),
            put(2, 2, 3, "b", 2),
            read(3, 4, 5, "a", 1),
            read(1, 6, 7, "a", 1),
        ]
    )


def test_an_acknowledged_write_is_lost_when_a_later_read_misses_it_even_as_absent():
    assert_violation([put(1, 0, 1, "a", 1), read_absent(2, 2, 3)])


def test_a_compare_and_set_that_succeeded_against_the_wrong_version_is_rejected():
    assert_violation(
        [
            put(1, 0, 1, "a", 1),
            put(1, 2, 3, "b", 2),
            put(2, 4, 5, "c", 3, expected_version=1),  # version 1 was long gone
        ]
    )


def test_a_compare_and_set_that_failed_though_the_version_matched_is_rejected():
    assert_violation([put(1, 0, 1, "a", 1), put_conflict(2, 2, 3, "b", None, expected_version=1)])


def test_a_conflict_reporting_a_version_the_key_never_had_is_rejected():
    assert_violation([put(1, 0, 1, "a", 1), put_conflict(2, 2, 3, "b", 5, expected_version=4)])


def test_a_version_that_goes_backwards_is_rejected():
    assert_violation(
        [
            put(1, 0, 1, "a", 1),
            put(1, 2, 10, "b", 2),
            read(2, 3, 4, "b", 2),
            read(3, 5, 6, "a", 1),  # after someone saw version 2
        ]
    )


def test_a_put_that_skips_a_version_is_rejected():
    assert_violation([put(1, 0, 1, "a", 1), put(1, 2, 3, "b", 3)])


def test_a_key_recreated_after_a_delete_must_start_again_at_version_1():
    assert_violation([put(1, 0, 1, "a", 1), delete(1, 2, 3, 1), put(1, 4, 5, "b", 2)])


def test_a_read_of_a_value_never_written_is_rejected():
    assert_violation([put(1, 0, 1, "a", 1), read(2, 2, 3, "phantom", 1)])


def test_a_read_of_a_value_before_its_put_was_called_is_rejected():
    assert_violation([read(2, 0, 1, "future", 1), put(1, 2, 3, "future", 1)])


def test_a_key_still_read_after_an_acknowledged_delete_is_rejected():
    assert_violation([put(1, 0, 1, "a", 1), delete(2, 2, 3, 1), read(3, 4, 5, "a", 1)])


def test_a_delete_reporting_the_wrong_version_is_rejected():
    assert_violation([put(1, 0, 1, "a", 1), delete(2, 2, 3, 2)])


def test_an_unknown_put_cannot_take_effect_before_its_call():
    assert_violation([put(1, 0, 1, "a", 1), read(3, 2, 3, "late", 2), put_unknown(2, 4, "late")])


def test_an_unknown_put_takes_effect_at_most_once():
    assert_violation(
        [
            put(1, 0, 1, "a", 1),
            put_unknown(2, 2, "once"),
            read(3, 5, 6, "once", 2),
            read(3, 7, 8, "once", 3),
        ]
    )


def test_only_the_failing_key_is_reported():
    failure = assert_violation(
        [
            put(1, 0, 1, "a", 1, key="good"),
            read(2, 2, 3, "a", 1, key="good"),
            put(1, 0, 1, "a", 1, key="bad"),
            read(2, 2, 3, "b", 1, key="bad"),
        ],
        key="bad",
    )
    assert failure.operations == 2


# ------------------------------------------------------- overlaps where order is subtle


def test_overlapping_puts_are_found_in_the_one_order_their_versions_allow():
    # All called together; listed (and called) in the reverse of the one order that works.
    ops = [put(i, i * 0.1, 10 + i * 0.1, f"v{5 - i}", 5 - i) for i in range(5)]
    ops.append(read(9, 11, 12, "v5", 5))
    assert_linearizable(ops)


def test_overlapping_compare_and_sets_are_found_in_their_only_order():
    ops = [
        put(i, i * 0.1, 10, f"v{v}", v, expected_version=v - 1) for i, v in enumerate([4, 2, 3, 1])
    ]
    ops += [read(9, 0.5, 9.5, "v2", 2), read(9, 11, 12, "v4", 4)]
    assert_linearizable(ops)


def test_a_read_forces_a_concurrent_put_to_take_effect_before_another():
    # put a: [0 ------ 10]  put b: [0 ------ 10]  read: [1 - 2] sees b at 1; read [11-12] a at 2.
    assert_linearizable(
        [
            put(1, 0, 10, "a", 2),
            put(2, 0, 10, "b", 1),
            read(3, 1, 2, "b", 1),
            read(3, 11, 12, "a", 2),
        ]
    )


def test_a_delete_between_two_creates_is_found_among_overlapping_writes():
    # Three overlapping writes must go: create "a" (1), delete (1), create "b" (1).
    assert_linearizable(
        [
            put(1, 0, 10, "b", 1, create_only=True),
            delete(2, 0.5, 10, 1, expected_version=1),
            put(3, 1, 10, "a", 1, create_only=True),
            read(4, 0.2, 5, "a", 1),
            read(4, 11, 12, "b", 1),
        ]
    )


def test_overlapping_reads_that_no_order_of_the_writes_explains_are_rejected():
    # Two puts of unknown outcome, called together; each read is plausible alone: the first
    # says b was created first, the second (called after the first returned) that a was.
    failure = assert_violation(
        [
            put_unknown(1, 0, "a"),
            put_unknown(2, 0, "b"),
            read(3, 1, 2, "b", 1),
            read(4, 3, 4, "a", 1),
        ]
    )
    assert failure.blocking == read(4, 3, 4, "a", 1)
    assert read(3, 1, 2, "b", 1) in failure.linearized


def test_overlapping_writes_with_no_order_matching_their_versions_are_rejected():
    # Every pair of these overlapping compare-and-sets could go in some order; all three not.
    assert_violation(
        [
            put(1, 0, 10, "a", 1, expected_version=0),
            put(2, 0, 10, "b", 2, expected_version=1),
            put(3, 0, 10, "c", 2, expected_version=1),
            read(4, 11, 12, "c", 2),
        ]
    )


def test_orders_that_reach_the_same_point_are_searched_from_it_once():
    # Six creates and six deletes, all overlapping: (6!)^2 orders alternate them, but they
    # reach fewer than 2,000 (set linearized, state) points. A read called after them all
    # sees a value never written, so the search must exhaust them before saying so.
    ops = [put(i, 0, 10, f"v{i}", 1) for i in range(6)]
    ops += [delete(10 + i, 0, 10) for i in range(6)]
    ops.append(read(99, 11, 12, "never written", 1))
    result = check(ops, max_steps=50_000)
    assert result.verdict is Verdict.VIOLATION
    assert result.failures[0].blocking == ops[-1]


# ------------------------------------------------------------------ the failure's report


def test_the_report_names_the_key_the_prefix_and_the_operation_that_could_not_take_effect():
    result = check([put(1, 0, 1, "old", 1), put(1, 2, 3, "new", 2), read(2, 4, 5, "old", 1)])
    text = result.describe()
    assert text.startswith("not linearizable (3 operations on 1 key)")
    assert "key 'k': not linearizable" in text
    assert "2 of 3 operations" in text
    assert 'the value is "new" at version 2' in text
    assert 'read k -> ok "old" version 1   <- returned first' in text


def test_a_search_over_its_step_budget_is_undecided_not_a_violation():
    ops = [put(1, 2 * i, 2 * i + 1, f"v{i}", i + 1) for i in range(20)]
    result = check(ops, max_steps=5)
    assert result.verdict is Verdict.UNDECIDED and not result.ok
    assert result.undecided == ("k",) and result.key == "k" and result.failures == ()
    assert check(ops, max_steps=100).ok


# ------------------------------------------------------------- the JSON form, the CLI

SAMPLE = [
    put("c1", 0.25, 0.5, {"x": [1, None]}, 1, create_only=True),
    put_conflict(2, 0.3, 0.6, "z", 1, expected_version=0),
    put_unknown("c1", 0.7, None, must_exist=True),
    read(2, 0.8, 0.9, None, 2),
    delete_unknown("c3", 1.0, expected_version=2),
    Operation("c3", "k2", DELETE, 1.1, 1.2, NOT_FOUND, request_id="r-7"),
]


def test_a_history_survives_its_json_form(tmp_path):
    history = History(SAMPLE, meta={"seed": 7})
    assert History.from_json(json.loads(json.dumps(history.to_json()))) == history
    path = tmp_path / "history.json"
    history.dump(path)
    assert History.load(path) == history
    assert json.loads(path.read_text())["operations"][1] == {
        "client": 2,
        "key": "k",
        "kind": "put",
        "call": 0.3,
        "ret": 0.6,
        "outcome": "conflict",
        "value": "z",
        "version": 1,
        "expected_version": 0,
    }


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"format": "something-else", "operations": []},
        {"format": History((), {}).to_json()["format"], "operations": [{"client": 1}]},
        {"format": History((), {}).to_json()["format"], "operations": [], "extra": 1},
        History([SAMPLE[0]]).to_json() | {"operations": [SAMPLE[0].to_json() | {"colour": 1}]},
    ],
)
def test_a_history_file_that_is_not_of_the_form_is_refused(data):
    with pytest.raises(InvalidHistory):
        History.from_json(data)


def test_the_command_line_prints_the_verdict_and_exits_by_it(tmp_path, capsys):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    History(SAMPLE, meta={"run": "short"}).dump(good)
    History([put(1, 0, 1, "a", 1), read_absent(2, 2, 3)]).dump(bad)
    assert main([str(good)]) == 0
    assert "linearizable (6 operations on 2 keys)" in capsys.readouterr().out
    assert main([str(bad)]) == 1
    assert "key 'k': not linearizable" in capsys.readouterr().out
    (tmp_path / "broken.json").write_text("{")
    assert main([str(tmp_path / "broken.json")]) == 2
    assert main([str(tmp_path / "missing.json")]) == 2
    ops = [put(1, 2 * i, 2 * i + 1, f"v{i}", i + 1) for i in range(20)]
    History(ops).dump(good)
    assert main([str(good), "--max-steps", "3"]) == 3


def test_the_checker_runs_as_a_module(tmp_path):
    path = tmp_path / "bad.json"
    History([put(1, 0, 1, "a", 1), read_absent(2, 2, 3)]).dump(path)
    done = subprocess.run(
        [sys.executable, "-m", "tests.linearizability.checker", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "not linearizable" in done.stdout


# --------------------------------------------------------- histories of a simulated store


class Register:
    """The store's rules for one key, written again here, independently of
    tests.linearizability.model, to produce histories: (value, version) or absent."""

    def __init__(self) -> None:
        self.value, self.version = None, 0  # version 0: absent

    def read(self):
        return (OK, self.value, self.version) if self.version else (NOT_FOUND, None, None)

    def put(self, value, *, expected_version=None, create_only=False, must_exist=False):
        exists = self.version > 0
        if (
            (create_only and exists)
            or (must_exist and not exists)
            or (expected_version is not None and expected_version != self.version)
        ):
            return CONFLICT, None, self.version
        self.value, self.version = value, self.version + 1
        return OK, None, self.version

    def delete(self, *, expected_version=None):
        if not self.version:
            return NOT_FOUND, None, None
        if expected_version is not None and expected_version != self.version:
            return CONFLICT, None, self.version
        deleted, self.value, self.version = self.version, None, 0
        return OK, None, deleted


def simulate(
    seed: int,
    *,
    clients: int = 5,
    operations: int = 200,
    keys: int = 3,
    unknown_rate: float = 0.03,
) -> list[Operation]:
    """A history of a store that is linearizable by construction: clients call operations
    back to back on random keys; each takes effect at one instant, at random within its
    interval (an unknown one: at random after its call -- perhaps after its client gave up
    -- or never), on a Register per key. Compare-and-sets expect the version their client
    last learnt, so many conflict. Operations still in flight at the end are unknown."""
    rng = random.Random(seed)
    registers = {f"key{k}": Register() for k in range(keys)}
    learnt: dict[tuple[int, str], int] = {}  # the version a client last saw a key at (0: absent)
    queue: list[tuple[float, int, str, int, dict | None]] = []
    sequence = itertools.count()
    history: list[Operation] = []
    for client in range(clients):
        heapq.heappush(queue, (rng.uniform(0, 1), next(sequence), "call", client, None))
    while len(history) < operations:
        at, _, stage, client, request = heapq.heappop(queue)
        if stage == "call":
            request = _choose(rng, client, next(sequence), sorted(registers), learnt)
            request["call"] = at
            duration = rng.expovariate(1.0)
            effect: float | None = at + rng.uniform(0, duration)
            if rng.random() < unknown_rate:
                request["unknown"] = True
                effect = at + rng.expovariate(0.3) if rng.random() < 0.5 else None
            if effect is not None:
                heapq.heappush(queue, (effect, next(sequence), "effect", client, request))
            heapq.heappush(queue, (at + duration, next(sequence), "return", client, request))
        elif stage == "effect":
            request["response"] = _apply(registers[request["key"]], request)
        else:
            history.append(_operation(client, request, at, learnt))
            next_call = at + rng.expovariate(4.0)
            heapq.heappush(queue, (next_call, next(sequence), "call", client, None))
    in_flight = [(client, request) for _, _, stage, client, request in queue if stage == "return"]
    for client, request in in_flight:
        request["unknown"] = True
        history.append(_operation(client, request, None, learnt))
    return history


def _choose(rng, client: int, n: int, keys: list[str], learnt) -> dict:
    key = rng.choice(keys)
    last = learnt.get((client, key), 0)
    choice = rng.choices(
        ["read", "put", "cas", "create", "update", "delete", "delete_cas"],
        weights=[40, 25, 15, 5, 5, 5, 5],
    )[0]
    conditions = {
        "read": {},
        "put": {},
        "cas": {"expected_version": last},
        "create": {"create_only": True},
        "update": {"must_exist": True},
        "delete": {},
        "delete_cas": {"expected_version": last} if last else {},
    }
    kind = READ if choice == "read" else DELETE if choice.startswith("delete") else PUT
    return {"key": key, "kind": kind, "value": f"c{client}-{n}", "condition": conditions[choice]}


def _apply(register: Register, request: dict) -> tuple:
    if request["kind"] == READ:
        return register.read()
    if request["kind"] == PUT:
        return register.put(request["value"], **request["condition"])
    return register.delete(**request["condition"])


def _operation(client: int, request: dict, ret: float | None, learnt) -> Operation:
    fields = {"client": client, "key": request["key"], "kind": request["kind"]}
    fields |= {"call": request["call"], **request["condition"]}
    written = request["value"] if request["kind"] == PUT else None
    if request.get("unknown"):
        return Operation(**fields, ret=None, outcome=UNKNOWN, value=written)
    outcome, value, version = request["response"]
    gone = outcome == NOT_FOUND or (request["kind"] == DELETE and outcome == OK)
    learnt[(client, request["key"])] = 0 if gone else version
    value = written if request["kind"] == PUT else value
    return Operation(**fields, ret=ret, outcome=outcome, value=value, version=version)


# ------------------------------------------------------------------------ mutations


def _ok(op: Operation, kind: str) -> bool:
    return op.kind == kind and op.outcome == OK


def _phantom_read(rng, history):
    reads = [i for i, op in enumerate(history) if _ok(op, READ)]
    i = rng.choice(reads)
    return i, replace(history[i], value="never written")


def _future_read(rng, history):
    """A read of a value put only after the read returned."""
    pairs = [
        (i, w)
        for i, op in enumerate(history)
        if _ok(op, READ)
        for w in history
        if _ok(w, PUT) and w.key == op.key and w.call > op.ret
    ]
    if not pairs:
        return None
    i, w = rng.choice(pairs)
    return i, replace(history[i], value=w.value, version=w.version)


def _stale_read(rng, history):
    """A read of a value that a later acknowledged write had replaced before the read was
    called: the put of it returned before the write was called, which returned before the
    read was called (values are unique, so it never comes back)."""
    changes = [op for op in history if op.kind in (PUT, DELETE) and op.outcome == OK]
    triples = [
        (i, w)
        for i, r in enumerate(history)
        if _ok(r, READ)
        for x in changes
        if x.key == r.key and x.ret < r.call
        for w in changes
        if w.kind == PUT and w.key == r.key and w.ret < x.call
    ]
    if not triples:
        return None
    i, w = rng.choice(triples)
    return i, replace(history[i], value=w.value, version=w.version)


def _lost_write(rng, history):
    """A read that finds the key absent after an acknowledged put, with no delete that
    could have removed it."""

    def deletable(r):
        return any(
            d.kind == DELETE and d.key == r.key and d.outcome in (OK, UNKNOWN) and d.call < r.ret
            for d in history
        )

    reads = [
        i
        for i, r in enumerate(history)
        if _ok(r, READ)
        and not deletable(r)
        and any(_ok(w, PUT) and w.key == r.key and w.ret < r.call for w in history)
    ]
    if not reads:
        return None
    i = rng.choice(reads)
    op = history[i]
    return i, Operation(op.client, op.key, READ, op.call, op.ret, NOT_FOUND)


def _cas_on_a_version_never_reached(rng, history):
    cas = [i for i, op in enumerate(history) if _ok(op, PUT) and op.expected_version]
    if not cas:
        return None
    i = rng.choice(cas)
    return i, replace(history[i], expected_version=history[i].expected_version + 10_000)


def _version_never_reached(rng, history):
    puts = [i for i, op in enumerate(history) if _ok(op, PUT)]
    i = rng.choice(puts)
    return i, replace(history[i], version=history[i].version + 10_000)


MUTATIONS = [
    _phantom_read,
    _future_read,
    _stale_read,
    _lost_write,
    _cas_on_a_version_never_reached,
    _version_never_reached,
]
SEEDS = range(30)


@pytest.mark.parametrize("seed", SEEDS)
def test_histories_of_a_linearizable_store_are_accepted(seed):
    history = simulate(seed, clients=6, operations=300, keys=3, unknown_rate=0.05)
    assert any(op.unknown for op in history)
    assert_linearizable(history)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda mutation: mutation.__name__[1:])
def test_histories_of_a_linearizable_store_once_broken_are_rejected_on_the_broken_key(mutation):
    rejected = 0
    for seed in SEEDS:
        history = simulate(seed, clients=6, operations=300, keys=3, unknown_rate=0.05)
        mutated = mutation(random.Random(seed), history)
        if mutated is None:
            continue
        i, op = mutated
        assert op != history[i]
        broken = [*history[:i], op, *history[i + 1 :]]
        result = check(broken)
        assert result.verdict is Verdict.VIOLATION, f"seed {seed}: {op.describe()}"
        assert [failure.key for failure in result.failures] == [op.key], f"seed {seed}"
        rejected += 1
    assert rejected >= len(SEEDS) // 2  # the mutation found something to break


def test_a_long_history_of_ten_clients_on_one_key_is_checked_quickly():
    history = simulate(2024, clients=10, operations=4000, keys=1, unknown_rate=0.02)
    concurrent = max(
        sum(1 for other in history if other.call <= op.call and (other.ret or 1e18) >= op.call)
        for op in history[:200]
    )
    assert concurrent >= 5  # the clients do overlap
    started = time.perf_counter()
    result = check(history)
    elapsed = time.perf_counter() - started
    assert result.ok, result.describe()
    assert elapsed < 10, f"{elapsed:.2f} s"  # a sanity bound: it takes ~0.1 s


# ------------------------------------------------------ against a search by brute force


def linearizable_by_brute_force(history: list[Operation]) -> bool:
    """The definition, searched without memoisation or reductions: some order of all the
    known-outcome operations, and of any of the unknown ones, that the model allows and
    that puts every operation after each one that returned before it was called."""
    ops = [op for op in history if not (op.unknown and op.kind == READ)]

    def must_wait(op, remaining):
        return any(p.ret is not None and p.ret < op.call for p in remaining if p is not op)

    def search(state, remaining) -> bool:
        if all(op.unknown for op in remaining):
            return True
        for op in remaining:
            if must_wait(op, remaining):
                continue
            allowed, after = model.step(state, model.request_of(op), model.response_of(op))
            if allowed and search(after, [p for p in remaining if p is not op]):
                return True
        return False

    return search(model.INITIAL, ops)


def random_small_history(rng: random.Random, unknown_rate: float) -> list[Operation]:
    """A few overlapping operations on one key, with outputs drawn from a small domain so
    that some histories are linearizable and many are not. Times are small integers, so
    calls and returns often coincide."""
    history = []
    for _ in range(rng.randint(1, 6)):
        call = rng.randint(0, 8)
        ret = None if rng.random() < unknown_rate else call + rng.randint(0, 4)
        kind = rng.choice([READ, READ, PUT, PUT, DELETE])
        outcome = UNKNOWN if ret is None else rng.choice(OUTCOMES_OF[kind])
        condition = rng.choice(
            [{}, {}, {"expected_version": rng.randint(0, 2)}]
            + ([{"create_only": True}, {"must_exist": True}] if kind == PUT else [])
        )
        if kind == READ:
            condition = {}
        version = None
        if outcome == OK and kind in (READ, PUT):
            version = rng.randint(1, 3)
        elif outcome in (OK, CONFLICT):
            version = rng.choice([None, 0 if outcome == CONFLICT else 1, 1, 2])
        value = rng.choice(["a", "b"]) if kind == PUT or (kind == READ and outcome == OK) else None
        history.append(
            Operation(
                len(history),
                "k",
                kind,
                call,
                ret,
                outcome,
                value=value,
                version=version,
                **condition,
            )
        )
    return history


OUTCOMES_OF = {READ: [OK, NOT_FOUND], PUT: [OK, CONFLICT], DELETE: [OK, NOT_FOUND, CONFLICT]}


@pytest.mark.parametrize("unknown_rate", [0.15, 0.5])
def test_the_verdicts_agree_with_a_search_by_brute_force_on_small_random_histories(unknown_rate):
    rng = random.Random(5)
    verdicts = {True: 0, False: 0}
    for n in range(3000):
        history = random_small_history(rng, unknown_rate)
        expected = linearizable_by_brute_force(history)
        assert check(history).ok == expected, (n, [op.describe() for op in history])
        verdicts[expected] += 1
    assert min(verdicts.values()) > 300, verdicts  # both verdicts well represented
