"""The pure Multi-Paxos core.

No I/O of any kind: no Django, Celery, database, sockets, threads, clock or global
randomness. Inputs (messages, ticks, client commands) come in with the current time;
outputs (`Ready`: what to persist, send and apply) go out. See node.py for the protocol
and ready.py for the contract the runtime obeys.
"""

from .acceptor import Acceptor
from .messages import (
    Accept,
    Accepted,
    Chosen,
    ChosenAck,
    Forward,
    Heartbeat,
    HeartbeatAck,
    InstallSnapshot,
    Message,
    Nack,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    ReadIndexReply,
    ReadIndexRequest,
    decode,
    encode,
    message_size,
)
from .node import KNOWN_BUGS, Config, InvariantViolation, Node, Role, commands_to_apply
from .ready import ChosenLog, DurableState, Ready
from .types import NOOP, Ballot, Command, ProtocolError, Value

__all__ = [
    "KNOWN_BUGS",
    "NOOP",
    "Accept",
    "Accepted",
    "Acceptor",
    "Ballot",
    "Chosen",
    "ChosenAck",
    "ChosenLog",
    "Command",
    "Config",
    "DurableState",
    "Forward",
    "Heartbeat",
    "HeartbeatAck",
    "InstallSnapshot",
    "InvariantViolation",
    "Message",
    "Nack",
    "Node",
    "PreVote",
    "PreVoteReply",
    "Prepare",
    "Promise",
    "ProtocolError",
    "ReadIndexReply",
    "ReadIndexRequest",
    "Ready",
    "Role",
    "Value",
    "commands_to_apply",
    "decode",
    "encode",
    "message_size",
]
