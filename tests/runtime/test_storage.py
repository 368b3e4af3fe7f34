"""Guarantees of the PostgreSQL storage itself, on the test database: what holds even if
the core above it were wrong."""

from __future__ import annotations

import pytest
from django.db import connection

from consensus import storage
from consensus.paxos import Ballot, Command, Ready, Value

pytestmark = pytest.mark.django_db


def _promise() -> list[tuple[int, str]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT promised_round, promised_node FROM consensus_acceptor_state")
        return cursor.fetchall()


def test_the_database_refuses_to_lower_a_promise():
    """The promise upsert's WHERE: a persisted promise never goes down, by round or, at an
    equal round, by node id (compared byte-wise, as the core orders ballots)."""
    storage.persist(Ready(promised=Ballot(5, "n2")))
    assert _promise() == [(5, "n2")]
    storage.persist(Ready(promised=Ballot(4, "n9")))  # a lower round
    storage.persist(Ready(promised=Ballot(5, "n10")))  # same round, "n10" < "n2" byte-wise
    assert _promise() == [(5, "n2")]
    storage.persist(Ready(promised=Ballot(5, "n3")))
    storage.persist(Ready(promised=Ballot(6, "n1")))
    assert _promise() == [(6, "n1")]


class Recorder:
    """A state machine that records the request ids it is given, committing each."""

    def __init__(self) -> None:
        self.applied: list[tuple[int, str]] = []

    def __call__(self, cursor, slot, commands, node_id):
        self.applied += [(slot, c.request_id) for c in commands]
        return [("committed", {}) for _ in commands]


def _value(*request_ids: str) -> Value:
    return Value(tuple(Command(r, "{}") for r in request_ids))


def _rows(sql: str) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def test_a_request_id_is_a_duplicate_within_the_window_and_applied_again_after_it(configure):
    """CONFIGSTORE_REQUEST_WINDOW = 5: an id applied at slot s is dropped when chosen again
    up to slot s + 5 and applied again after it (r1 of slot 1: dropped at 6, applied at 7,
    replacing its old row; r2 of slot 2: dropped at 7); rows older than the window are
    pruned."""
    configure(request_window=5)
    machine = Recorder()
    chosen = [(1, _value("r1", "r1")), (2, _value("r2")), (3, _value())]
    chosen += [(4, _value()), (5, _value()), (6, _value("r1", "r6"))]
    assert storage.apply_chosen(machine, "n1", chosen) == 6
    assert machine.applied == [(1, "r1"), (2, "r2"), (6, "r6")]
    assert storage.apply_chosen(machine, "n1", [(7, _value("r1", "r2"))]) == 1
    assert machine.applied[3:] == [(7, "r1")]
    assert _rows("SELECT request_id, slot FROM consensus_applied_request ORDER BY request_id") == [
        ("r1", 7),
        ("r2", 2),
        ("r6", 6),
    ]
    assert storage.apply_chosen(machine, "n1", [(8, _value("x"))]) == 1
    assert storage.apply_chosen(machine, "n1", [(s, _value()) for s in range(9, 13)]) == 4
    # at slot 12 the window starts at 7: r2 (slot 2) and r6 (slot 6) are gone
    assert _rows("SELECT request_id FROM consensus_applied_request ORDER BY request_id") == [
        ("r1",),
        ("x",),
    ]


def test_accepted_values_at_or_below_the_applied_index_are_pruned_a_bounded_number_at_a_time(
    monkeypatch,
):
    """Each apply transaction deletes the accepted values of slots applied by earlier ones,
    at most PRUNE_LIMIT (+ the rows it added) at a time; none above the applied index."""
    monkeypatch.setattr(storage, "PRUNE_LIMIT", 3)
    ballot = Ballot(1, "n1")
    storage.persist(Ready(accepted=[(s, ballot, _value()) for s in range(1, 13)]))
    machine = Recorder()
    assert storage.apply_chosen(machine, "n1", [(s, _value()) for s in range(1, 9)]) == 8
    slots = "SELECT slot FROM consensus_accepted_slot ORDER BY slot"
    assert _rows(slots) == [(s,) for s in range(1, 13)]  # nothing applied before: none pruned
    assert storage.apply_chosen(machine, "n1", [(9, _value())]) == 1
    assert _rows(slots) == [(s,) for s in range(4, 13)]  # 3 of the 8 applied before
    assert storage.apply_chosen(machine, "n1", [(10, _value())]) == 1
    assert storage.apply_chosen(machine, "n1", [(11, _value())]) == 1
    assert _rows(slots) == [(s,) for s in range(10, 13)]  # up to slot 9, never above 10


def test_compaction_prunes_the_log_through_its_point_and_a_restart_loads_the_point():
    """PostgresStorage.compact (NodeHost's Storage): accepted values and chosen entries at or
    below the point are gone, those above stay, the point survives a restart (load), never
    goes down, and the chosen log reads nothing below it (a peer needing those slots is
    sent a snapshot instead)."""
    ballot = Ballot(1, "n1")
    storage.persist(Ready(accepted=[(s, ballot, _value(f"r{s}")) for s in range(1, 11)]))
    machine = Recorder()
    assert storage.apply_chosen(machine, "n1", [(s, _value(f"r{s}")) for s in range(1, 9)]) == 8
    store = storage.PostgresStorage()
    store.compact(5)
    assert _rows("SELECT min(slot), max(slot) FROM consensus_chosen_slot") == [(6, 8)]
    assert _rows("SELECT min(slot) FROM consensus_accepted_slot") == [(6,)]
    durable, applied = storage.load()  # PostgresStorage.load, without its reconnect
    assert (durable.compacted_through, applied) == (5, 8)
    assert sorted(durable.accepted) == [9, 10]  # above the applied index: the open votes
    store.compact(3)  # never goes down
    assert storage.load()[0].compacted_through == 5
    assert store.compacted_through == 5
    assert store.read(4, 10, 1 << 20) == []
    assert [v.commands[0].request_id for v in store.read(6, 10, 1 << 20)] == ["r6", "r7", "r8"]
