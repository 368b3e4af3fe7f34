"""The long-poll listener's wake-up (configstore.watch.AppliedWatcher) under the race that
lost one: a waiter that registers while the listener is reading which keys a new slot
touched must not sleep until its timeout. Found by benchmarks/live_view.py: 3 of 50 live
views applied a write only at their long-poll's 10-s timeout."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.db import connection

from configstore.watch import AppliedWatcher, Wait
from consensus.client import LISTENER_NAME, Submitter, dsn_from_django
from consensus.storage import APPLIED_CHANNEL


class RacingRead:
    """Answers the watcher's read of the touched keys, registering a waiter meanwhile (as a
    long-poll arriving at that moment would)."""

    def __init__(self, late: threading.Event) -> None:
        self.late = late
        self.watcher: AppliedWatcher | None = None

    def __call__(self, after: int, upto: int) -> set[str]:
        # This long-poll read the state at index 1 and found nothing: it waits with seen=1.
        self.watcher._register(Wait(seen=1, key="a/b"), self.late.set)
        return {"a/b"}


def test_a_waiter_registering_during_an_advance_is_woken():
    early, late = threading.Event(), threading.Event()
    read = RacingRead(late)
    watcher = read.watcher = AppliedWatcher(subscribe=None, touched_keys=read)
    watcher._index = 1
    watcher._register(Wait(seen=1, key="a/b"), early.set)
    watcher._advance(2)  # slot 2 touched a/b
    assert early.is_set()
    assert late.is_set(), "the waiter that registered during the advance was not woken"
    assert watcher.index == 2


@pytest.mark.django_db
def test_one_listen_connection_wakes_both_submitters_and_watchers():
    """The watcher has no connection of its own to listen on: it subscribes to the
    submitter's listener, and one NOTIFY of the applier wakes a long-poll and a barrier's
    wait for the applied index alike."""
    dsn = dsn_from_django(connection.settings_dict)
    submitter = Submitter(node_id="n1", dsn=dsn, broker_url="redis://127.0.0.1:1/0", secret=b"s")
    reads: list[tuple[int, int]] = []
    watcher = AppliedWatcher(
        subscribe=submitter.subscribe,
        touched_keys=lambda after, upto: reads.append((after, upto)) or {"a/b"},
    )
    listeners = listener_connections()  # other tests' submitters may still listen
    long_poll = Waiting(lambda: watcher.wait(Wait(seen=1, key="a/b"), 10.0))
    barrier = Waiting(lambda: submitter._wait_applied(2, time.monotonic() + 10.0))
    try:
        watcher._ensure_started()  # subscribed: the listener is listening
        with psycopg.connect(dsn, autocommit=True) as applier:
            notify = "SELECT pg_notify(%s, %s)"
            applier.execute(notify, [APPLIED_CHANNEL, '{"index":1,"ids":[],"outcomes":{}}'])
            wait_for(lambda: watcher.index == 1)
            long_poll.start()
            barrier.start()
            time.sleep(0.2)  # both wait on index 2
            assert long_poll.result is None and barrier.result is None
            applier.execute(notify, [APPLIED_CHANNEL, '{"index":2,"ids":[],"outcomes":{}}'])
            long_poll.join(5.0)
            barrier.join(5.0)
        assert long_poll.result is True and barrier.result is True
        assert reads == [(1, 2)]
        assert listener_connections() == listeners + 1
    finally:
        watcher.stop()
        submitter.close()


def listener_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # a transaction caches the view
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s",
            [LISTENER_NAME],
        )
        return cursor.fetchone()[0]


class Waiting(threading.Thread):
    def __init__(self, wait) -> None:
        super().__init__(daemon=True)
        self.wait, self.result = wait, None

    def run(self) -> None:
        self.result = self.wait()


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
