"""Under load a worker takes the task messages waiting in its inbox off the broker and
handles them in merged steps (one persist, one envelope per peer). Nothing is lost or
applied twice that way, and delayed links (the fault switch) still deliver."""

from __future__ import annotations

import threading
import time

import pytest

from consensus.client import Committed
from consensus.faults import write_faults
from tests.runtime.test_cluster import assert_identical, put

pytestmark = pytest.mark.cluster


def _hammer(cluster, clients: int, seconds: float) -> list:
    outcomes: list = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(c: int) -> None:
        node = cluster.ids[c % len(cluster.ids)]
        k = 0
        while not stop.is_set():
            k += 1
            outcome = put(cluster, node, f"k{c % 8}", [c, k], timeout=10)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(20)
    return outcomes


def _counted(cluster, counter: str) -> int:
    time.sleep(0.7)  # statuses are published every 0.5 s
    return sum(n.get("counters", {}).get(counter, 0) for n in cluster.status()["nodes"])


def test_queued_messages_are_handled_in_merged_steps_and_every_write_commits_once(make_cluster):
    cluster = make_cluster()
    cluster.wait_for_leader()
    outcomes = _hammer(cluster, clients=48, seconds=4)
    assert len(outcomes) > 100
    assert all(isinstance(o, Committed) for o in outcomes)
    assert _counted(cluster, "drained") > 0, (
        "no node ever found messages waiting: nothing was merged"
    )
    state = assert_identical(cluster)
    applied_ids = [row[0] for row in state["applied"]]
    assert len(applied_ids) == len(set(applied_ids))
    assert {o.request_id for o in outcomes} <= set(applied_ids)
    # Each key's versions count its committed puts: none applied twice, none lost.
    versions = dict((row[0], row[2]) for row in state["entries"])
    for k in range(8):
        puts = [o for o in outcomes if o.result["key"] == f"k{k}"]
        assert versions[f"k{k}"] == len(puts) == max(o.result["version"] for o in puts)


def test_delayed_links_still_deliver_when_messages_are_drained(make_cluster):
    cluster = make_cluster()
    cluster.wait_for_leader()
    links = [(a, b, 0.03) for a in cluster.ids for b in cluster.ids if a != b]
    write_faults(cluster.faults_file, delay=links)
    try:
        outcomes = _hammer(cluster, clients=12, seconds=3)
    finally:
        cluster.heal()
    assert len(outcomes) > 10
    assert all(isinstance(o, Committed) for o in outcomes)
    assert_identical(cluster)
    print("delayed messages drained early and held back:", _counted(cluster, "drained_delayed"))
