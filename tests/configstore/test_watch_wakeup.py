"""The long-poll listener's wake-up (configstore.watch.AppliedWatcher) under the race that
lost one: a waiter that registers while the listener is reading which keys a new slot
touched must not sleep until its timeout. Found by benchmarks/live_view.py: 3 of 50 live
views applied a write only at their long-poll's 10-s timeout."""

from __future__ import annotations

import threading

from configstore.watch import AppliedWatcher, Wait


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
