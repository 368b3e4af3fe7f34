"""Paxos messages: small immutable dataclasses with an explicit JSON form.

Messages do not carry their sender: the transport authenticates the envelope that
carries them (HMAC with the cluster secret) and hands the core `(sender, message)`.
`decode` rejects anything malformed with `ProtocolError`; it never trusts a peer's JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

from .types import Ballot, Command, ProtocolError, Value


@dataclass(frozen=True, slots=True)
class Prepare:
    """Phase 1a: a candidate asks for promises not to accept below `ballot`, and for
    everything accepted at slots >= `from_slot` (once per leadership, for all open slots)."""

    ballot: Ballot
    from_slot: int


@dataclass(frozen=True, slots=True)
class Promise:
    """Phase 1b: the acceptor promised `ballot`; `accepted` lists (slot, ballot, value) for
    every slot >= `from_slot` it has accepted a value in."""

    ballot: Ballot
    from_slot: int
    accepted: tuple[tuple[int, Ballot, Value], ...]


@dataclass(frozen=True, slots=True)
class Nack:
    """The acceptor refused `ballot` because it has promised the higher `promised`."""

    ballot: Ballot
    promised: Ballot


@dataclass(frozen=True, slots=True)
class Accept:
    """Phase 2a, for many slots at once. Sent only after the leader's own acceptor has
    durably accepted every entry, so it also counts as the leader's vote.
    `commit_index`: every slot <= it is chosen (the leader knows their values)."""

    ballot: Ballot
    entries: tuple[tuple[int, Value], ...]
    commit_index: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """Phase 2b: the sender durably accepted `ballot`'s value at each of `slots`."""

    ballot: Ballot
    slots: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The leader of `ballot` is alive; every slot <= `commit_index` is chosen."""

    ballot: Ballot
    commit_index: int
    seq: int


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    """A follower heard heartbeat `seq`; it knows every slot below `first_unchosen`."""

    ballot: Ballot
    seq: int
    first_unchosen: int


@dataclass(frozen=True, slots=True)
class Chosen:
    """Catch-up: these (slot, value) entries are chosen."""

    entries: tuple[tuple[int, Value], ...]


@dataclass(frozen=True, slots=True)
class Forward:
    """Client commands on their way to the leader. `ttl` bounds re-forwarding between
    nodes whose views of the leader disagree."""

    commands: tuple[Command, ...]
    ttl: int


Message = Prepare | Promise | Nack | Accept | Accepted | Heartbeat | HeartbeatAck | Chosen | Forward


def _slot(data) -> int:
    if not isinstance(data, int) or isinstance(data, bool) or data < 0:
        raise ProtocolError(f"bad slot {data!r}")
    return data


def _list(data, what: str) -> list:
    if not isinstance(data, list):
        raise ProtocolError(f"bad {what} {data!r}")
    return data


def _entry(data) -> tuple[int, Value]:
    slot, value = _pair(data, "entry")
    return _slot(slot), Value.from_json(value)


def _pair(data, what: str) -> list:
    if not isinstance(data, list) or len(data) != 2:
        raise ProtocolError(f"bad {what} {data!r}")
    return data


def _accepted_entry(data) -> tuple[int, Ballot, Value]:
    if not isinstance(data, list) or len(data) != 3:
        raise ProtocolError(f"bad accepted entry {data!r}")
    return _slot(data[0]), Ballot.from_json(data[1]), Value.from_json(data[2])


def encode(message: Message) -> dict:
    """The JSON form of a message: a dict with a "type" and the message's fields."""
    match message:
        case Prepare(ballot, from_slot):
            return {"type": "prepare", "ballot": ballot.to_json(), "from_slot": from_slot}
        case Promise(ballot, from_slot, accepted):
            return {
                "type": "promise",
                "ballot": ballot.to_json(),
                "from_slot": from_slot,
                "accepted": [[s, b.to_json(), v.to_json()] for s, b, v in accepted],
            }
        case Nack(ballot, promised):
            return {"type": "nack", "ballot": ballot.to_json(), "promised": promised.to_json()}
        case Accept(ballot, entries, commit_index):
            return {
                "type": "accept",
                "ballot": ballot.to_json(),
                "entries": [[s, v.to_json()] for s, v in entries],
                "commit_index": commit_index,
            }
        case Accepted(ballot, slots):
            return {"type": "accepted", "ballot": ballot.to_json(), "slots": list(slots)}
        case Heartbeat(ballot, commit_index, seq):
            return {
                "type": "heartbeat",
                "ballot": ballot.to_json(),
                "commit_index": commit_index,
                "seq": seq,
            }
        case HeartbeatAck(ballot, seq, first_unchosen):
            return {
                "type": "heartbeat_ack",
                "ballot": ballot.to_json(),
                "seq": seq,
                "first_unchosen": first_unchosen,
            }
        case Chosen(entries):
            return {"type": "chosen", "entries": [[s, v.to_json()] for s, v in entries]}
        case Forward(commands, ttl):
            return {"type": "forward", "commands": [c.to_json() for c in commands], "ttl": ttl}
    raise TypeError(f"not a message: {message!r}")


def decode(data) -> Message:
    """The message a JSON dict encodes. Raises ProtocolError for anything malformed."""
    if not isinstance(data, dict):
        raise ProtocolError(f"message is not an object: {data!r}")
    try:
        kind = data["type"]
        match kind:
            case "prepare":
                return Prepare(Ballot.from_json(data["ballot"]), _slot(data["from_slot"]))
            case "promise":
                return Promise(
                    Ballot.from_json(data["ballot"]),
                    _slot(data["from_slot"]),
                    tuple(_accepted_entry(e) for e in _list(data["accepted"], "accepted")),
                )
            case "nack":
                return Nack(Ballot.from_json(data["ballot"]), Ballot.from_json(data["promised"]))
            case "accept":
                return Accept(
                    Ballot.from_json(data["ballot"]),
                    tuple(_entry(e) for e in _list(data["entries"], "entries")),
                    _slot(data["commit_index"]),
                )
            case "accepted":
                return Accepted(
                    Ballot.from_json(data["ballot"]),
                    tuple(_slot(s) for s in _list(data["slots"], "slots")),
                )
            case "heartbeat":
                return Heartbeat(
                    Ballot.from_json(data["ballot"]),
                    _slot(data["commit_index"]),
                    _slot(data["seq"]),
                )
            case "heartbeat_ack":
                return HeartbeatAck(
                    Ballot.from_json(data["ballot"]),
                    _slot(data["seq"]),
                    _slot(data["first_unchosen"]),
                )
            case "chosen":
                return Chosen(tuple(_entry(e) for e in _list(data["entries"], "entries")))
            case "forward":
                commands = tuple(Command.from_json(c) for c in _list(data["commands"], "commands"))
                return Forward(commands, _slot(data["ttl"]))
    except KeyError as missing:
        raise ProtocolError(f"message {data.get('type')!r} lacks field {missing}") from None
    raise ProtocolError(f"unknown message type {data.get('type')!r}")
