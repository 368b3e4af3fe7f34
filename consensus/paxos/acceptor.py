"""The acceptor: the only role whose state must survive a crash.

Contract: every change it makes is recorded in the `Ready` it writes to (a new promise,
new accepted entries); the runtime persists them durably before any message of the same
step leaves the node. Its promise never goes down and it never accepts below it.
"""

from __future__ import annotations

from .messages import Nack, Promise
from .ready import Ready
from .types import Ballot, Value


class Acceptor:
    def __init__(
        self,
        promised: Ballot,
        accepted: dict[int, tuple[Ballot, Value]],
        *,
        ignore_promise: bool = False,
    ) -> None:
        self.promised = promised
        self.accepted = accepted
        # Test-only broken behaviour: accept whatever arrives, ignoring the promise.
        self._ignore_promise = ignore_promise

    def promise(self, ballot: Ballot, from_slot: int, ready: Ready) -> Promise | Nack:
        """Phase 1b. Promises `ballot` if it is at least the current promise."""
        if ballot < self.promised:
            return Nack(ballot, self.promised)
        self._raise_promise(ballot, ready)
        entries = tuple(
            (slot, b, value)
            for slot, (b, value) in sorted(self.accepted.items())
            if slot >= from_slot
        )
        return Promise(ballot, from_slot, entries)

    def accept(
        self, ballot: Ballot, entries: tuple[tuple[int, Value], ...], ready: Ready
    ) -> tuple[int, ...] | Nack:
        """Phase 2b. Accepts every entry if `ballot` is at least the promise (raising the
        promise to it); returns the accepted slots, or a Nack naming the promise."""
        if ballot < self.promised and not self._ignore_promise:
            return Nack(ballot, self.promised)
        self._raise_promise(ballot, ready)
        for slot, value in entries:
            self.accepted[slot] = (ballot, value)
            ready.accepted.append((slot, ballot, value))
        return tuple(slot for slot, _ in entries)

    def _raise_promise(self, ballot: Ballot, ready: Ready) -> None:
        if ballot > self.promised:
            self.promised = ballot
            ready.promised = ballot
