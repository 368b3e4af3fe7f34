"""What one input to the core produces (the etcd-raft "Ready" idea).

The runtime obeys, in this order:
  1. persist `promised`, `accepted` and `chosen` durably, in one atomic write;
  2. only then send `messages` (a message may depend on the state persisted in 1);
  3. apply `committed` to the state machine, strictly in slot order, each slot atomically
     with the applied index.
If step 1 fails the runtime must drop this node object and rebuild it from storage: the
core's memory already reflects the write.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .messages import Message
from .types import Ballot, Value


@dataclass(slots=True)
class Ready:
    promised: Ballot | None = None
    accepted: list[tuple[int, Ballot, Value]] = field(default_factory=list)
    chosen: list[tuple[int, Value]] = field(default_factory=list)
    messages: list[tuple[str, Message]] = field(default_factory=list)
    committed: list[tuple[int, Value]] = field(default_factory=list)

    @property
    def must_persist(self) -> bool:
        return self.promised is not None or bool(self.accepted) or bool(self.chosen)

    def extend(self, later: Ready) -> None:
        """Merge the Ready of a later step into this one, so that several steps (the
        messages of one envelope) are persisted in one write and sent in one envelope per
        peer. Order is kept: later writes win, messages and committed slots append."""
        if later.promised is not None:
            self.promised = later.promised
        self.accepted.extend(later.accepted)
        self.chosen.extend(later.chosen)
        self.messages.extend(later.messages)
        self.committed.extend(later.committed)


@dataclass(slots=True)
class DurableState:
    """Everything a node keeps across crashes (what storage loads on start)."""

    promised: Ballot = Ballot.ZERO
    accepted: dict[int, tuple[Ballot, Value]] = field(default_factory=dict)
    chosen: dict[int, Value] = field(default_factory=dict)

    def apply(self, ready: Ready) -> None:
        """Record a Ready's writes (the in-memory storage used by tests and the simulator)."""
        if ready.promised is not None:
            self.promised = ready.promised
        for slot, ballot, value in ready.accepted:
            self.accepted[slot] = (ballot, value)
        for slot, value in ready.chosen:
            self.chosen[slot] = value
