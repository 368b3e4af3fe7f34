"""The values Paxos agrees on: ballots, commands and batches.

Everything here is immutable and has an explicit JSON form, because it travels
between nodes (through Celery) and is stored (in PostgreSQL).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import total_ordering


class ProtocolError(ValueError):
    """A message or value from a peer is malformed. The runtime drops it and counts it."""


@total_ordering
@dataclass(frozen=True, slots=True)
class Ballot:
    """A proposal number: (round, node_id), ordered lexicographically.

    Node ids make ballots of different proposers distinct, so two proposers never
    use the same ballot. `Ballot.ZERO` is below every real ballot.
    """

    round: int
    node_id: str

    def __lt__(self, other: Ballot) -> bool:
        return (self.round, self.node_id) < (other.round, other.node_id)

    def to_json(self) -> list:
        return [self.round, self.node_id]

    @classmethod
    def from_json(cls, data) -> Ballot:
        if (
            not isinstance(data, list)
            or len(data) != 2
            or not isinstance(data[0], int)
            or isinstance(data[0], bool)
            or data[0] < 0
            or not isinstance(data[1], str)
        ):
            raise ProtocolError(f"bad ballot {data!r}")
        return cls(data[0], data[1])

    def __str__(self) -> str:
        return f"{self.round}.{self.node_id}"


Ballot.ZERO = Ballot(0, "")


@dataclass(frozen=True, slots=True)
class Command:
    """A client command: opaque to Paxos. `request_id` is unique per client request;
    a retried request reuses it, and the applier applies each request id at most once."""

    request_id: str
    payload: str

    def to_json(self) -> list:
        return [self.request_id, self.payload]

    @classmethod
    def from_json(cls, data) -> Command:
        if (
            not isinstance(data, list)
            or len(data) != 2
            or not isinstance(data[0], str)
            or not data[0]
            or not isinstance(data[1], str)
        ):
            raise ProtocolError(f"bad command {data!r}")
        return cls(data[0], data[1])


@dataclass(frozen=True, slots=True)
class Value:
    """What one slot chooses: a batch of commands, in order. The empty batch is the no-op
    a new leader uses to fill gaps in the log."""

    commands: tuple[Command, ...] = ()

    @property
    def is_noop(self) -> bool:
        return not self.commands

    @property
    def size(self) -> int:
        """Its size on the wire, estimated: the characters of its request ids and payloads
        plus the JSON punctuation around them (escapes inside a payload not counted). What
        the core's byte bounds (batches, chunks, the message cap) measure."""
        return 2 + sum(len(c.request_id) + len(c.payload) + 8 for c in self.commands)

    def to_json(self) -> list:
        return [c.to_json() for c in self.commands]

    @classmethod
    def from_json(cls, data) -> Value:
        if not isinstance(data, list):
            raise ProtocolError(f"bad value {data!r}")
        return cls(tuple(Command.from_json(c) for c in data))


NOOP = Value(())
