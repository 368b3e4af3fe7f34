"""The acceptor: the only role whose state must survive a crash.

Contract: every change it makes is recorded in the `Ready` it writes to (a new promise,
new accepted entries); the runtime persists them durably before any message of the same
step leaves the node. Its promise never goes down and it never accepts below it.

It keeps in memory only the slots that may still be open: its node tells it which slots
are chosen and applied (`forget_through`), and a restarted node loads only the slots above
its applied index. Accepted slots are kept in a sorted index, so answering a Prepare costs
the size of the answer, not the length of the log.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

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
        self._slots = sorted(accepted)  # the keys of `accepted`, in order
        # Test-only broken behaviour: accept whatever arrives, ignoring the promise.
        self._ignore_promise = ignore_promise

    def promise(self, ballot: Ballot, ready: Ready) -> bool:
        """Phase 1b. Promises `ballot` if it is at least the current promise; False means
        the caller answers with a Nack naming `promised`."""
        if ballot < self.promised:
            return False
        self._raise_promise(ballot, ready)
        return True

    def accepted_from(
        self, from_slot: int, max_bytes: int
    ) -> tuple[tuple[tuple[int, Ballot, Value], ...], bool]:
        """What it accepted at slots >= `from_slot`, in slot order, at most about
        `max_bytes` of values (at least one entry); and whether that is all of it."""
        start = bisect_left(self._slots, from_slot)
        entries = []
        size = 0
        for k in range(start, len(self._slots)):
            slot = self._slots[k]
            ballot, value = self.accepted[slot]
            if entries and size + value.size > max_bytes:
                return tuple(entries), False
            entries.append((slot, ballot, value))
            size += value.size
        return tuple(entries), True

    def accept(
        self, ballot: Ballot, entries: tuple[tuple[int, Value], ...], ready: Ready
    ) -> tuple[int, ...] | None:
        """Phase 2b. Accepts every entry if `ballot` is at least the promise (raising the
        promise to it) and returns the accepted slots; None if it refused (the caller
        answers with a Nack naming `promised`)."""
        if ballot < self.promised and not self._ignore_promise:
            return None
        self._raise_promise(ballot, ready)
        slots = self._slots
        for slot, value in entries:
            if slot not in self.accepted:
                if not slots or slot > slots[-1]:
                    slots.append(slot)
                else:
                    insort(slots, slot)
            self.accepted[slot] = (ballot, value)
            ready.accepted.append((slot, ballot, value))
        return tuple(slot for slot, _ in entries)

    def forget_through(self, slot: int) -> None:
        """Slots <= `slot` are chosen and applied: drop them from memory (storage keeps
        them; a Prepare never asks for them again, see Promise)."""
        cut = bisect_right(self._slots, slot)
        if cut:
            for s in self._slots[:cut]:
                del self.accepted[s]
            del self._slots[:cut]

    def _raise_promise(self, ballot: Ballot, ready: Ready) -> None:
        if ballot > self.promised:
            self.promised = ballot
            ready.promised = ballot
