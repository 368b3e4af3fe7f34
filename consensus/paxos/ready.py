"""What one input to the core produces (the etcd-raft "Ready" idea).

The runtime obeys, in this order:
  1. persist the acceptor state, `promised` and `accepted`, durably, in one atomic write;
  2. only then send `messages` (a message may depend on the state persisted in 1);
  3. record `chosen` and apply `committed` to the state machine, strictly in slot order,
     each slot atomically with the applied index and with the chosen entries it needs.
Only step 1 guards safety: an acceptor that forgot a promise or an accepted value could
vote against what it said. Chosen entries are facts any node can learn again (from its
peers), so they may become durable later, with their application, off the path of the
protocol's messages; a crash that loses some just means learning them again.
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
        """Whether step 1 has anything to write."""
        return self.promised is not None or bool(self.accepted)

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
        """Record a Ready's acceptor writes, step 1 (in-memory storage for tests and the
        simulator)."""
        if ready.promised is not None:
            self.promised = ready.promised
        for slot, ballot, value in ready.accepted:
            self.accepted[slot] = (ballot, value)

    def learn(self, ready: Ready) -> None:
        """Record a Ready's chosen entries, step 3."""
        for slot, value in ready.chosen:
            self.chosen[slot] = value
