"""Envelopes: what travels through Celery between nodes.

An envelope carries every message one core step produced for one peer, the sender's id and
an HMAC-SHA256 over its body with the cluster secret:

    {"body": "<canonical JSON text>", "mac": "<hex>"}
    body = {"v": 1, "kind": "paxos" | "submit", "from": "n1", "to": "n2", "messages": [...]}

`open_envelope` refuses (with `BadEnvelope` and a reason the runtime counts) anything whose
MAC does not verify, whose sender is not a configured node, that is addressed to another
node, or whose body or messages are malformed. Nothing refused reaches the core.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass

from consensus.paxos import Command, Message, ProtocolError, decode, encode

VERSION = 1


class BadEnvelope(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # one of: malformed, bad_mac, unknown_sender, misaddressed


@dataclass(frozen=True)
class Opened:
    kind: str
    sender: str
    messages: tuple[Message, ...] = ()
    commands: tuple[Command, ...] = ()


def _mac(secret: bytes, body: str) -> str:
    return hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()


def seal(secret: bytes, sender: str, to: str, messages: list[Message]) -> dict:
    body = {
        "v": VERSION,
        "kind": "paxos",
        "from": sender,
        "to": to,
        "messages": [encode(m) for m in messages],
    }
    text = json.dumps(body, separators=(",", ":"), sort_keys=True)
    return {"body": text, "mac": _mac(secret, text)}


def seal_submit(secret: bytes, node: str, commands: list[Command]) -> dict:
    """A submission from a node's web tier to the node's own worker."""
    body = {
        "v": VERSION,
        "kind": "submit",
        "from": node,
        "to": node,
        "commands": [c.to_json() for c in commands],
    }
    text = json.dumps(body, separators=(",", ":"), sort_keys=True)
    return {"body": text, "mac": _mac(secret, text)}


def open_envelope(secret: bytes, me: str, nodes: tuple[str, ...], envelope) -> Opened:
    if not isinstance(envelope, dict) or not isinstance(envelope.get("body"), str):
        raise BadEnvelope("malformed", "not an envelope")
    mac = envelope.get("mac")
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(secret, envelope["body"])):
        raise BadEnvelope("bad_mac", "MAC does not verify")
    try:
        body = json.loads(envelope["body"])
    except ValueError:
        raise BadEnvelope("malformed", "body is not JSON") from None
    if not isinstance(body, dict) or body.get("v") != VERSION:
        raise BadEnvelope("malformed", "unknown envelope version")
    sender, to, kind = body.get("from"), body.get("to"), body.get("kind")
    if sender not in nodes:
        raise BadEnvelope("unknown_sender", f"sender {sender!r} is not a node of this cluster")
    if to != me:
        raise BadEnvelope("misaddressed", f"envelope for {to!r} reached {me!r}")
    try:
        if kind == "paxos" and isinstance(body.get("messages"), list):
            return Opened(kind, sender, messages=tuple(decode(m) for m in body["messages"]))
        if kind == "submit" and sender == me and isinstance(body.get("commands"), list):
            return Opened(
                kind, sender, commands=tuple(Command.from_json(c) for c in body["commands"])
            )
    except ProtocolError as e:
        raise BadEnvelope("malformed", str(e)) from None
    raise BadEnvelope("malformed", f"bad {kind!r} envelope")
