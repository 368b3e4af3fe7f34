"""Guarantees of the PostgreSQL storage itself, on the test database: what holds even if
the core above it were wrong."""

from __future__ import annotations

import pytest
from django.db import connection

from consensus import storage
from consensus.paxos import Ballot, Ready

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
