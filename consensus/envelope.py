"""Envelopes: what travels through Celery between nodes.

An envelope carries every message one core step produced for one peer, the sender's id,
its freshness and an HMAC-SHA256 over its body with the cluster secret:

    {"body": "<canonical JSON text>", "mac": "<hex>"}
    body = {"v": 2, "kind": "paxos" | "submit", "from": "n1", "to": "n2",
            "inc": "<ms>-<16 hex>", "seq": 7, "at": <ms>, "messages": [...]}

Freshness is inside the MAC: `inc` is the sealing process's incarnation (its start time in
ms and 64 random bits, drawn once per process), `seq` counts the envelopes that
incarnation sealed for that receiver (1, 2, ...), `at` is the sealing time in ms. A
`Freshness` on the receiving side refuses an envelope sealed more than FRESH_FOR seconds
from its own clock (nodes' clocks must agree that closely, as Celery's expiry already
needs), one it has seen already (a sliding window of each
incarnation's recent sequence numbers: the transport may reorder), and a node's worker
incarnation older than one it has heard from (a restarted sender is a newer one).

`open_envelope` refuses (with `BadEnvelope` and a reason the runtime counts) anything whose
MAC does not verify, whose sender is not a configured node, that is addressed to another
node, or whose body or messages are malformed; `Freshness.admit` then refuses replays.
Nothing refused reaches the core.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass

from consensus.paxos import Command, Message, ProtocolError, decode, encode

VERSION = 2
FRESH_FOR = 10.0  # seconds an envelope stays fresh (transport.EXPIRES is the same)
SEQ_WINDOW = 4096  # sequence numbers remembered per incarnation, below its highest
MAX_INCARNATIONS = 256  # incarnations remembered per (kind, sender)

_INCARNATION = re.compile(r"\A(\d{1,15})-[0-9a-f]{16}\Z")


class BadEnvelope(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        # One of: malformed, bad_mac, unknown_sender, misaddressed (open_envelope);
        # stale, replayed, superseded (Freshness.admit).
        self.reason = reason


@dataclass(frozen=True)
class Opened:
    kind: str
    sender: str
    messages: tuple[Message, ...] = ()
    commands: tuple[Command, ...] = ()
    incarnation: str = ""
    seq: int = 0
    at: int = 0  # sealing time, ms since the epoch


def _mac(secret: bytes, body: str) -> str:
    return hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()


def new_incarnation(now: float, random_bytes: bytes) -> str:
    """An incarnation id: the start time in ms, then 8 random bytes in hex."""
    return f"{int(now * 1000)}-{random_bytes[:8].hex()}"


class Sealer:
    """Seals the envelopes of one sending process as one incarnation. Thread-safe."""

    def __init__(self, secret: bytes, sender: str, incarnation: str | None = None) -> None:
        self.secret = secret
        self.sender = sender
        self.incarnation = incarnation or new_incarnation(time.time(), os.urandom(8))
        self._seq: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _seal(self, body: dict, now: float | None) -> dict:
        with self._lock:
            self._seq[body["to"]] += 1
            seq = self._seq[body["to"]]
        body.update(
            v=VERSION,
            inc=self.incarnation,
            seq=seq,
            at=int((time.time() if now is None else now) * 1000),
        )
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
        return {"body": text, "mac": _mac(self.secret, text)}

    def seal(self, to: str, messages: list[Message], now: float | None = None) -> dict:
        body = {
            "kind": "paxos",
            "from": self.sender,
            "to": to,
            "messages": [encode(m) for m in messages],
        }
        return self._seal(body, now)

    def seal_submit(self, commands: list[Command], now: float | None = None) -> dict:
        """A submission from a node's web tier to the node's own worker."""
        body = {
            "kind": "submit",
            "from": self.sender,
            "to": self.sender,
            "commands": [c.to_json() for c in commands],
        }
        return self._seal(body, now)


def process_sealer(secret: bytes, sender: str) -> Sealer:
    """This process's sealer for `sender`: one incarnation per process (kept by
    consensus.conf, which gives a forked child its own: reusing its parent's incarnation
    and sequence numbers would make receivers take its envelopes for replays)."""
    from consensus import conf

    return conf.process().get(("consensus.sealer", secret, sender), lambda: Sealer(secret, sender))


def seal(secret: bytes, sender: str, to: str, messages: list[Message]) -> dict:
    return process_sealer(secret, sender).seal(to, messages)


def seal_submit(secret: bytes, node: str, commands: list[Command]) -> dict:
    """A submission from a node's web tier to the node's own worker."""
    return process_sealer(secret, node).seal_submit(commands)


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
    incarnation, seq, at = body.get("inc"), body.get("seq"), body.get("at")
    if not (
        isinstance(incarnation, str)
        and _INCARNATION.match(incarnation)
        and type(seq) is int
        and seq > 0
        and type(at) is int
    ):
        raise BadEnvelope("malformed", "no freshness (inc, seq, at)")
    fresh = {"incarnation": incarnation, "seq": seq, "at": at}
    try:
        if kind == "paxos" and isinstance(body.get("messages"), list):
            messages = tuple(decode(m) for m in body["messages"])
            return Opened(kind, sender, messages=messages, **fresh)
        if kind == "submit" and sender == me and isinstance(body.get("commands"), list):
            commands = tuple(Command.from_json(c) for c in body["commands"])
            return Opened(kind, sender, commands=commands, **fresh)
    except ProtocolError as e:
        raise BadEnvelope("malformed", str(e)) from None
    raise BadEnvelope("malformed", f"bad {kind!r} envelope")


@dataclass
class _Window:
    """What one incarnation sent: its highest sequence number and, as bits, which of the
    SEQ_WINDOW below it have arrived (bit i: highest - i)."""

    highest: int = 0
    seen: int = 0
    last_heard: float = 0.0


def _born(incarnation: str) -> int:
    return int(incarnation.split("-", 1)[0])


class Freshness:
    """Refuses replayed envelopes at the receiver; bounded memory, no I/O (time comes in).

    - `stale`: sealed more than FRESH_FOR seconds away from `now`: nothing older can be
      told from a replay;
    - `replayed`: this incarnation's sequence number was seen already, or is more than
      SEQ_WINDOW below its highest (too old to tell);
    - `superseded` (peers' workers only, one process per node): the sender's incarnation
      started before another incarnation of that node this receiver has heard from; once
      the newer one has been silent for FRESH_FOR, it is forgotten (so a restarted sender
      whose clock went back is refused for that long at most).

    Web processes submit to their own node as many incarnations at once; at most
    MAX_INCARNATIONS are remembered per sender, those silent for FRESH_FOR forgotten first
    (their envelopes are stale by then).

    The windows live in memory: for FRESH_FOR seconds after this receiver starts, an
    envelope sealed shortly before it started may be taken once more. Paxos messages are
    safe to take twice; a submission taken twice is applied once (request-id dedup).
    Envelopes queued while the worker was down are not refused for that."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], dict[str, _Window]] = {}
        self._newest: dict[str, str] = {}  # a peer's newest worker incarnation

    def admit(self, opened: Opened, now: float) -> None:
        at = opened.at / 1000
        if abs(now - at) > FRESH_FOR:
            raise BadEnvelope("stale", f"sealed {now - at:.3f} s ago")
        windows = self._windows.setdefault((opened.kind, opened.sender), {})
        self._forget_silent(windows, now)
        if opened.kind == "paxos":
            self._check_incarnation(windows, opened)
        window = windows.get(opened.incarnation)
        if window is None:
            if len(windows) >= MAX_INCARNATIONS:
                del windows[min(windows, key=lambda i: windows[i].last_heard)]
            window = windows[opened.incarnation] = _Window()
        self._check_seq(window, opened.seq)
        window.last_heard = now

    def _forget_silent(self, windows: dict[str, _Window], now: float) -> None:
        for incarnation in [i for i, w in windows.items() if now - w.last_heard > FRESH_FOR]:
            del windows[incarnation]

    def _check_incarnation(self, windows: dict[str, _Window], opened: Opened) -> None:
        newest = self._newest.get(opened.sender)
        if newest is not None and newest not in windows:
            newest = None  # silent for FRESH_FOR: forgotten
        if newest is None or _born(opened.incarnation) > _born(newest):
            self._newest[opened.sender] = opened.incarnation
            for older in [i for i in windows if i != opened.incarnation]:
                del windows[older]
        elif _born(opened.incarnation) < _born(newest):
            raise BadEnvelope(
                "superseded", f"{opened.sender} incarnation {opened.incarnation} after {newest}"
            )

    @staticmethod
    def _check_seq(window: _Window, seq: int) -> None:
        if seq > window.highest:
            shift = seq - window.highest
            window.seen = ((window.seen << shift) | 1) & ((1 << SEQ_WINDOW) - 1)
            window.highest = seq
            return
        behind = window.highest - seq
        if behind >= SEQ_WINDOW:
            raise BadEnvelope("replayed", f"sequence {seq} is {behind} behind {window.highest}")
        if window.seen >> behind & 1:
            raise BadEnvelope("replayed", f"sequence {seq} seen already")
        window.seen |= 1 << behind
