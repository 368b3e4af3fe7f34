"""Paxos messages: small immutable dataclasses with an explicit JSON form.

Messages do not carry their sender: the transport authenticates the envelope that
carries them (HMAC with the cluster secret) and hands the core `(sender, message)`.
`decode` rejects anything malformed with `ProtocolError`; it never trusts a peer's JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

from .types import Ballot, Command, ProtocolError, Value


@dataclass(frozen=True, slots=True)
class PreVote:
    """Before an election: would the addressee vote for a candidate of `ballot` whose log
    is chosen below `first_unchosen`? Changes no state anywhere (etcd-raft's PreVote)."""

    ballot: Ballot
    first_unchosen: int


@dataclass(frozen=True, slots=True)
class PreVoteReply:
    """The answer to PreVote `ballot`: granted only by a node that has not heard from a
    live leader within an election timeout and knows no more chosen slots than the
    candidate."""

    ballot: Ballot
    granted: bool


@dataclass(frozen=True, slots=True)
class Prepare:
    """Phase 1a: a candidate asks for promises not to accept below `ballot`, and for what
    was accepted at slots >= `from_slot` (once per leadership, for all open slots; asked
    again from a later slot when a Promise came in chunks)."""

    ballot: Ballot
    from_slot: int


@dataclass(frozen=True, slots=True)
class Promise:
    """Phase 1b: the acceptor promised `ballot`. Every slot <= `commit_index` is chosen and
    the acceptor's node can send it by catch-up, so `accepted` lists (slot, ballot, value)
    only for the slots above both `commit_index` and `from_slot - 1` in which the acceptor
    accepted a value, in slot order and bounded in bytes: `complete` is False when more
    follow, which the candidate asks for with a Prepare from the slot after the last."""

    ballot: Ballot
    from_slot: int
    accepted: tuple[tuple[int, Ballot, Value], ...]
    commit_index: int = 0
    complete: bool = True


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
    """Phase 2b: the sender durably accepted `ballot`'s value at each of `slots`; it knows
    every slot below `first_unchosen` (the leader starts catch-up when that lags) and has
    applied every slot up to `applied` (None: it does not say; catch-up's pace: under
    load a follower answers Accepts, not heartbeats, so this is what the leader hears)."""

    ballot: Ballot
    slots: tuple[int, ...]
    first_unchosen: int = 0
    applied: int | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The leader of `ballot` is alive; every slot <= `commit_index` is chosen."""

    ballot: Ballot
    commit_index: int
    seq: int


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    """A follower heard heartbeat `seq`; it knows every slot below `first_unchosen` and
    has applied every slot up to `applied` (None: it does not say; catch-up flow control)."""

    ballot: Ballot
    seq: int
    first_unchosen: int
    applied: int | None = None


@dataclass(frozen=True, slots=True)
class Chosen:
    """Catch-up: the chosen values of the contiguous slots `first_slot`,
    `first_slot + 1`, ... (one chunk of a stream, bounded in bytes)."""

    first_slot: int
    values: tuple[Value, ...]

    @property
    def entries(self) -> tuple[tuple[int, Value], ...]:
        return tuple((self.first_slot + k, v) for k, v in enumerate(self.values))


@dataclass(frozen=True, slots=True)
class ChosenAck:
    """Catch-up flow control: the receiver of Chosen knows every slot below
    `first_unchosen`; the sender's next chunk starts there. `applied`: the receiver has
    applied every slot up to it (None: it does not say); the sender streams at most
    Config.catchup_ahead slots beyond it."""

    first_unchosen: int
    applied: int | None = None


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Catch-up by state transfer: the sender's log is compacted through `index`, so the
    chosen slots the receiver lacks there cannot be streamed. The receiver installs the
    sender's snapshot of its state machine (at an index >= `index`, the sender's promise:
    it compacts only below its latest snapshot), fetched outside Paxos in chunks, and the
    stream resumes above it. Carries no state: installing changes no acceptor state."""

    index: int


@dataclass(frozen=True, slots=True)
class Forward:
    """Client commands on their way to the leader. `ttl` bounds re-forwarding between
    nodes whose views of the leader disagree."""

    commands: tuple[Command, ...]
    ttl: int


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    """Linearizable reads waiting at the sender: the leader answers each with a read index
    once a majority has acknowledged a heartbeat it sent after the request arrived."""

    read_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReadIndexReply:
    """The reads `read_ids` may be served once the reader's node has applied `index`."""

    read_ids: tuple[str, ...]
    index: int


Message = (
    PreVote
    | PreVoteReply
    | Prepare
    | Promise
    | Nack
    | Accept
    | Accepted
    | Heartbeat
    | HeartbeatAck
    | Chosen
    | ChosenAck
    | InstallSnapshot
    | Forward
    | ReadIndexRequest
    | ReadIndexReply
)

#: Bytes a message costs on the wire besides its values, estimated generously (node ids
#: and numbers of ordinary length).
_ENVELOPE_BYTES = 192
_ENTRY_BYTES = 64


def message_size(message: Message) -> int:
    """The size of a message on the wire, estimated from its values (Value.size) and a
    generous constant per entry: what the core's message cap compares."""
    match message:
        case Promise(accepted=accepted):
            return _ENVELOPE_BYTES + sum(_ENTRY_BYTES + v.size for _, _, v in accepted)
        case Accept(entries=entries):
            return _ENVELOPE_BYTES + sum(_ENTRY_BYTES + v.size for _, v in entries)
        case Chosen(values=values):
            return _ENVELOPE_BYTES + sum(_ENTRY_BYTES + v.size for v in values)
        case Forward(commands=commands):
            return _ENVELOPE_BYTES + sum(
                _ENTRY_BYTES + len(c.request_id) + len(c.payload) for c in commands
            )
        case Accepted(slots=slots):
            return _ENVELOPE_BYTES + 12 * len(slots)
        case ReadIndexRequest(read_ids=ids) | ReadIndexReply(read_ids=ids):
            return _ENVELOPE_BYTES + sum(len(r) + 4 for r in ids)
    return _ENVELOPE_BYTES


def _slot(data) -> int:
    if not isinstance(data, int) or isinstance(data, bool) or data < 0:
        raise ProtocolError(f"bad slot {data!r}")
    return data


def _optional_slot(data) -> int | None:
    return None if data is None else _slot(data)


def _bool(data) -> bool:
    if not isinstance(data, bool):
        raise ProtocolError(f"bad flag {data!r}")
    return data


def _read_ids(data) -> tuple[str, ...]:
    ids = _list(data, "read ids")
    if not all(isinstance(r, str) and r for r in ids):
        raise ProtocolError(f"bad read ids {data!r}")
    return tuple(ids)


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
        case PreVote(ballot, first_unchosen):
            return {
                "type": "pre_vote",
                "ballot": ballot.to_json(),
                "first_unchosen": first_unchosen,
            }
        case PreVoteReply(ballot, granted):
            return {"type": "pre_vote_reply", "ballot": ballot.to_json(), "granted": granted}
        case Prepare(ballot, from_slot):
            return {"type": "prepare", "ballot": ballot.to_json(), "from_slot": from_slot}
        case Promise(ballot, from_slot, accepted, commit_index, complete):
            return {
                "type": "promise",
                "ballot": ballot.to_json(),
                "from_slot": from_slot,
                "accepted": [[s, b.to_json(), v.to_json()] for s, b, v in accepted],
                "commit_index": commit_index,
                "complete": complete,
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
        case Accepted(ballot, slots, first_unchosen, applied):
            return {
                "type": "accepted",
                "ballot": ballot.to_json(),
                "slots": list(slots),
                "first_unchosen": first_unchosen,
                "applied": applied,
            }
        case Heartbeat(ballot, commit_index, seq):
            return {
                "type": "heartbeat",
                "ballot": ballot.to_json(),
                "commit_index": commit_index,
                "seq": seq,
            }
        case HeartbeatAck(ballot, seq, first_unchosen, applied):
            return {
                "type": "heartbeat_ack",
                "ballot": ballot.to_json(),
                "seq": seq,
                "first_unchosen": first_unchosen,
                "applied": applied,
            }
        case Chosen(first_slot, values):
            return {
                "type": "chosen",
                "first_slot": first_slot,
                "values": [v.to_json() for v in values],
            }
        case ChosenAck(first_unchosen, applied):
            return {"type": "chosen_ack", "first_unchosen": first_unchosen, "applied": applied}
        case InstallSnapshot(index):
            return {"type": "install_snapshot", "index": index}
        case Forward(commands, ttl):
            return {"type": "forward", "commands": [c.to_json() for c in commands], "ttl": ttl}
        case ReadIndexRequest(read_ids):
            return {"type": "read_index_request", "read_ids": list(read_ids)}
        case ReadIndexReply(read_ids, index):
            return {"type": "read_index_reply", "read_ids": list(read_ids), "index": index}
    raise TypeError(f"not a message: {message!r}")


def decode(data) -> Message:
    """The message a JSON dict encodes. Raises ProtocolError for anything malformed."""
    if not isinstance(data, dict):
        raise ProtocolError(f"message is not an object: {data!r}")
    try:
        kind = data["type"]
        match kind:
            case "pre_vote":
                return PreVote(Ballot.from_json(data["ballot"]), _slot(data["first_unchosen"]))
            case "pre_vote_reply":
                return PreVoteReply(Ballot.from_json(data["ballot"]), _bool(data["granted"]))
            case "prepare":
                return Prepare(Ballot.from_json(data["ballot"]), _slot(data["from_slot"]))
            case "promise":
                return Promise(
                    Ballot.from_json(data["ballot"]),
                    _slot(data["from_slot"]),
                    tuple(_accepted_entry(e) for e in _list(data["accepted"], "accepted")),
                    _slot(data["commit_index"]),
                    _bool(data["complete"]),
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
                    _slot(data["first_unchosen"]),
                    _optional_slot(data.get("applied")),
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
                    _optional_slot(data.get("applied")),
                )
            case "chosen":
                return Chosen(
                    _slot(data["first_slot"]),
                    tuple(Value.from_json(v) for v in _list(data["values"], "values")),
                )
            case "chosen_ack":
                return ChosenAck(_slot(data["first_unchosen"]), _optional_slot(data.get("applied")))
            case "install_snapshot":
                return InstallSnapshot(_slot(data["index"]))
            case "forward":
                commands = tuple(Command.from_json(c) for c in _list(data["commands"], "commands"))
                return Forward(commands, _slot(data["ttl"]))
            case "read_index_request":
                return ReadIndexRequest(_read_ids(data["read_ids"]))
            case "read_index_reply":
                return ReadIndexReply(_read_ids(data["read_ids"]), _slot(data["index"]))
    except KeyError as missing:
        raise ProtocolError(f"message {data.get('type')!r} lacks field {missing}") from None
    raise ProtocolError(f"unknown message type {data.get('type')!r}")
