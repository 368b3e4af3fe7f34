import json

import pytest

from consensus.paxos import (
    NOOP,
    Accept,
    Accepted,
    Ballot,
    Chosen,
    ChosenAck,
    Command,
    Forward,
    Heartbeat,
    HeartbeatAck,
    InstallSnapshot,
    Nack,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    ProtocolError,
    ReadIndexReply,
    ReadIndexRequest,
    Value,
    decode,
    encode,
    message_size,
)

b1 = Ballot(1, "n1")
b2 = Ballot(2, "n2")
batch = Value((Command("r1", '{"op": "put"}'), Command("r2", "x")))

EVERY_MESSAGE = [
    PreVote(b1, 9),
    PreVoteReply(b1, True),
    PreVoteReply(b1, False),
    Prepare(b1, 5),
    Promise(b2, 3, ((3, b1, batch), (4, b1, NOOP)), 2, True),
    Promise(b2, 3, ((5, b1, batch),), 4, False),
    Promise(b2, 3, ()),
    Nack(b1, b2),
    Accept(b2, ((7, batch), (8, NOOP)), 6),
    Accepted(b2, (7, 8), 7),
    Heartbeat(b2, 6, 42),
    HeartbeatAck(b2, 42, 7),
    Chosen(1, (batch, NOOP)),
    ChosenAck(3),
    InstallSnapshot(18),
    Forward((Command("r3", "y"),), 2),
    ReadIndexRequest(("q1", "q2")),
    ReadIndexReply(("q1",), 12),
]


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_json_text(message):
    assert decode(json.loads(json.dumps(encode(message)))) == message


def test_ballots_order_by_round_then_node_id():
    assert Ballot.ZERO < Ballot(1, "n1") < Ballot(1, "n2") < Ballot(2, "n1")
    assert max(Ballot(3, "n1"), Ballot(2, "n9")) == Ballot(3, "n1")


MALFORMED = [
    None,
    [],
    "prepare",
    {},
    {"type": "nonsense"},
    {"type": "prepare", "ballot": [1, "n1"]},
    {"type": "prepare", "ballot": [1, "n1"], "from_slot": -1},
    {"type": "prepare", "ballot": [1, "n1"], "from_slot": True},
    {"type": "prepare", "ballot": ["1", "n1"], "from_slot": 1},
    {"type": "prepare", "ballot": [1, 5], "from_slot": 1},
    {"type": "prepare", "ballot": [1], "from_slot": 1},
    {"type": "accept", "ballot": [1, "n1"], "entries": {"1": []}, "commit_index": 0},
    {"type": "accept", "ballot": [1, "n1"], "entries": [[1]], "commit_index": 0},
    {"type": "accept", "ballot": [1, "n1"], "entries": [[1, [["", "p"]]]], "commit_index": 0},
    {"type": "accept", "ballot": [1, "n1"], "entries": [[1, [["r", 5]]]], "commit_index": 0},
    {"type": "promise", "ballot": [1, "n1"], "from_slot": 1, "accepted": [[1, [1, "n1"]]]},
    {"type": "accepted", "ballot": [1, "n1"], "slots": [1, "2"]},
    {"type": "forward", "commands": "r1", "ttl": 1},
    {"type": "chosen", "entries": [[1, "noop"]]},
    {"type": "chosen", "first_slot": 1, "values": ["noop"]},
    {"type": "chosen_ack", "first_unchosen": -1},
    {"type": "install_snapshot"},
    {"type": "install_snapshot", "index": "18"},
    {"type": "install_snapshot", "index": -1},
    {"type": "pre_vote_reply", "ballot": [1, "n1"], "granted": 1},
    {"type": "read_index_request", "read_ids": [""]},
    {"type": "read_index_reply", "read_ids": ["q"], "index": "3"},
    {
        "type": "promise",
        "ballot": [1, "n1"],
        "from_slot": 1,
        "accepted": [],
        "commit_index": 0,
        "complete": "yes",
    },
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_messages_are_rejected_with_protocol_error(data):
    with pytest.raises(ProtocolError):
        decode(data)


def test_the_size_estimate_grows_with_the_values_a_message_carries():
    small = Chosen(1, (NOOP,))
    large = Chosen(1, (Value((Command("r", "x" * 10_000),)),))
    assert message_size(small) < 400 < 10_000 < message_size(large)
    encoded = len(json.dumps(encode(large)))
    assert encoded <= message_size(large) < encoded + 400
