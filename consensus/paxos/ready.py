"""What one input to the core produces (the etcd-raft "Ready" idea).

The runtime obeys, in this order:
  1. persist the acceptor state, `promised` and `accepted`, durably, in one atomic write;
  2. only then send `messages` (a message may depend on the state persisted in 1);
  3. record `chosen` and apply `committed` to the state machine, strictly in slot order,
     each slot atomically with the applied index and with the chosen entries it needs;
     start the snapshot installs in `snapshots` (state transfer, off the protocol's path).
Only step 1 guards safety: an acceptor that forgot a promise or an accepted value could
vote against what it said. Chosen entries are facts any node can learn again (from its
peers), so they may become durable later, with their application, off the path of the
protocol's messages; a crash that loses some just means learning them again.
If step 1 fails the runtime must drop this node object and rebuild it from storage: the
core's memory already reflects the write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .messages import Message
from .types import Ballot, Value


@dataclass(slots=True)
class Ready:
    promised: Ballot | None = None
    accepted: list[tuple[int, Ballot, Value]] = field(default_factory=list)
    chosen: list[tuple[int, Value]] = field(default_factory=list)
    messages: list[tuple[str, Message]] = field(default_factory=list)
    committed: list[tuple[int, Value]] = field(default_factory=list)
    #: Linearizable reads answered: (read id, read index). The read may be served once
    #: this node has applied the read index (never before).
    reads: list[tuple[str, int]] = field(default_factory=list)
    #: Snapshot installs asked for: (peer, index). The peer's log is compacted through
    #: `index`: fetch its snapshot (at an index >= `index`), install it atomically, and
    #: report the new applied index (Node.on_applied). The acceptor state stays untouched.
    snapshots: list[tuple[str, int]] = field(default_factory=list)

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
        self.reads.extend(later.reads)
        self.snapshots.extend(later.snapshots)


class ChosenLog(Protocol):
    """The node's durable chosen log, read by the core to send catch-up chunks of slots it
    no longer keeps in memory (etcd-raft's Storage idea: the core reads, never writes)."""

    def read(self, first_slot: int, max_slots: int, max_bytes: int) -> list[Value]:
        """The values of the chosen slots first_slot, first_slot + 1, ... as far as the log
        holds them without a gap: at most `max_slots`, and at most about `max_bytes`
        (Value.size) unless the first alone is larger. May be empty."""
        ...


@dataclass(slots=True)
class DurableState:
    """Everything a node keeps across crashes (what storage loads on start)."""

    promised: Ballot = Ballot.ZERO
    accepted: dict[int, tuple[Ballot, Value]] = field(default_factory=dict)
    chosen: dict[int, Value] = field(default_factory=dict)
    #: Slots <= it are pruned: no accepted value and no chosen entry is kept for them (the
    #: state machine's snapshot covers them). Never goes down.
    compacted_through: int = 0

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

    def compact(self, through: int) -> None:
        """Prune every slot <= `through`, accepted values and chosen entries alike, and
        record it as the compaction point (in-memory storage for tests and the simulator)."""
        if through <= self.compacted_through:
            return
        for table in (self.chosen, self.accepted):
            for slot in [s for s in table if s <= through]:
                del table[slot]
        self.compacted_through = through

    def read(self, first_slot: int, max_slots: int, max_bytes: int) -> list[Value]:
        """The chosen log as a ChosenLog."""
        return contiguous_run(self.chosen, first_slot, max_slots, max_bytes)


def contiguous_run(
    chosen: dict[int, Value], first_slot: int, max_slots: int, max_bytes: int
) -> list[Value]:
    """The values of slots first_slot, first_slot + 1, ... in `chosen`, up to the first
    missing one: at most `max_slots`, and at most about `max_bytes` (Value.size) unless
    the first alone is larger (the ChosenLog.read contract)."""
    values: list[Value] = []
    size = 0
    slot = first_slot
    while len(values) < max_slots and slot in chosen:
        value = chosen[slot]
        if values and size + value.size > max_bytes:
            break
        values.append(value)
        size += value.size
        slot += 1
    return values
