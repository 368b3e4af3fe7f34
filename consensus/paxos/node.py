"""A Multi-Paxos node: acceptor, proposer (leader) and learner in one state machine.

Sans-I/O: every input (`on_message`, `on_tick`, `submit`) takes the current time and
returns a `Ready` (what to persist, what to send, what to apply); see ready.py for the
order the runtime must follow. Randomness (election timeouts) comes from the
`random.Random` passed in, so a seeded run replays exactly.

Protocol summary (DESIGN.md "Multi-Paxos"):
- A node that hears no leader for a randomized election timeout becomes a candidate:
  phase 1 once, `Prepare(ballot, first_unchosen)` covering every open slot.
- With a majority of promises it leads: for each open slot it re-proposes the value with
  the highest accepted ballot, fills gaps with no-ops, then proposes client batches, with
  up to `window` slots in flight and up to `max_batch` commands per slot.
- `Accept` counts as the leader's own vote (the leader persists its accept first), and
  acceptors send `Accepted` to the leader and, when a quorum needs more than two votes,
  to every node: so a follower learns a slot chosen one hop after the leader proposes it.
- The leader's heartbeats carry its commit index; acks carry the follower's first
  unchosen slot, and the leader answers a lagging follower with `Chosen` entries
  (catch-up). A leader that has not heard from a quorum for an election timeout steps
  down (check-quorum).
- Commands submitted at a node stay pending there (volatile) and are re-forwarded to the
  leader until the node learns them chosen. The leader drops commands whose request id is
  queued, in flight or recently chosen; the applier drops any that slip through
  (`commands_to_apply`), so a retried command is applied once.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

from .acceptor import Acceptor
from .messages import (
    Accept,
    Accepted,
    Chosen,
    Forward,
    Heartbeat,
    HeartbeatAck,
    Message,
    Nack,
    Prepare,
    Promise,
)
from .ready import DurableState, Ready
from .types import NOOP, Ballot, Command, Value

#: Names of deliberately broken behaviours, for tests that prove the checks can fail.
KNOWN_BUGS = frozenset({"ignore_promise", "no_adopt", "no_dedup"})


class InvariantViolation(AssertionError):
    """The node saw two different values chosen for one slot: safety is already lost."""


class Role(Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True)
class Config:
    node_id: str
    nodes: tuple[str, ...]
    heartbeat_interval: float = 0.05
    #: A follower waits a random time in [election_timeout, 2 * election_timeout).
    election_timeout: float = 0.3
    retransmit_interval: float = 0.1
    #: Slots proposed and not yet chosen, at most.
    window: int = 64
    #: Commands per slot, at most.
    max_batch: int = 1024
    #: A follower forwards new commands at once if it forwarded nothing for this long, and
    #: otherwise with its next tick: under load, many submissions share one Forward.
    forward_interval: float = 0.0
    #: Slots per catch-up message, at most.
    max_catchup: int = 256
    #: Request ids remembered as chosen, to drop retried duplicates early.
    recent_ids: int = 100_000
    #: Test-only broken behaviours (names from KNOWN_BUGS). Never set in production.
    bugs: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.node_id not in self.nodes:
            raise ValueError(f"node {self.node_id!r} is not one of the nodes {self.nodes!r}")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"duplicate node ids in {self.nodes!r}")
        unknown = set(self.bugs) - KNOWN_BUGS
        if unknown:
            raise ValueError(f"unknown bugs {sorted(unknown)}")

    @property
    def quorum(self) -> int:
        return len(self.nodes) // 2 + 1

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes if n != self.node_id)


def commands_to_apply(value: Value, applied_ids, *, dedup: bool = True) -> list[Command]:
    """The commands of a chosen value the state machine must apply: those whose request id
    was never applied (`applied_ids` supports `in`), each once. Deterministic, so every
    node applies the same commands."""
    if not dedup:
        return list(value.commands)
    fresh: list[Command] = []
    seen: set[str] = set()
    for command in value.commands:
        if command.request_id not in applied_ids and command.request_id not in seen:
            seen.add(command.request_id)
            fresh.append(command)
    return fresh


class Node:
    def __init__(
        self,
        config: Config,
        state: DurableState,
        *,
        applied_index: int,
        now: float,
        rng: random.Random,
    ) -> None:
        self.config = config
        self.id = config.node_id
        self._rng = rng
        self._bugs = config.bugs
        self.acceptor = Acceptor(
            state.promised,
            dict(state.accepted),
            ignore_promise="ignore_promise" in config.bugs,
        )
        # Learner.
        self.chosen: dict[int, Value] = dict(state.chosen)
        self.first_unchosen = 1
        self._advance_first_unchosen()
        self.applied_index = applied_index
        self._votes: dict[int, dict[Ballot, set[str]]] = {}
        self._proposed: dict[int, dict[Ballot, Value]] = {}
        self._recent_ids: OrderedDict[str, None] = OrderedDict()
        # Proposer.
        self.role = Role.FOLLOWER
        self.ballot = Ballot.ZERO  # own ballot while candidate or leader
        self._max_round = max(
            [state.promised.round] + [b.round for b, _ in state.accepted.values()]
        )
        self._promises: dict[str, Promise] = {}
        self._phase1_from = 1
        self._prepare_sent: dict[str, float] = {}
        self._next_slot = 1
        self._queue: OrderedDict[str, Command] = OrderedDict()
        self._in_flight_ids: set[str] = set()
        self._sent_at: dict[int, float] = {}
        self._heard_at: dict[str, float] = {}
        self._last_sent: dict[str, float] = {}
        self._heartbeat_seq = 0
        self._became_leader_at = 0.0
        # Follower's view of the leader.
        self.leader_ballot = Ballot.ZERO
        self._now = now
        self._election_deadline = now + self._election_delay()
        # Commands submitted here and not yet known chosen: re-sent to the leader every
        # retransmit interval until they are. `_unsent` have not gone out yet; `_pending`
        # have, ordered by when they last did.
        self._unsent: OrderedDict[str, Command] = OrderedDict()
        self._pending: OrderedDict[str, tuple[Command, float]] = OrderedDict()
        self._forwarded_at = float("-inf")
        # Per-step output buffers.
        self._ready = Ready()
        self._accept_out: dict[str, list[tuple[int, Value]]] = {}
        self._accepted_out: dict[Ballot, list[int]] = {}

    # ------------------------------------------------------------------ inputs

    def on_message(self, sender: str, message: Message, now: float) -> Ready:
        """Handle one message from `sender` (authenticated by the transport)."""
        self._now = now
        if sender == self.id or sender not in self.config.nodes:
            return self._finish(now)
        match message:
            case Prepare():
                self._on_prepare(sender, message, now)
            case Promise():
                self._on_promise(sender, message, now)
            case Nack():
                self._on_nack(message, now)
            case Accept():
                self._on_accept(sender, message, now)
            case Accepted():
                self._on_accepted(sender, message, now)
            case Heartbeat():
                self._on_heartbeat(sender, message, now)
            case HeartbeatAck():
                self._on_heartbeat_ack(sender, message, now)
            case Chosen():
                for slot, value in message.entries:
                    self._learn(slot, value)
            case Forward():
                self._on_forward(sender, message)
        return self._finish(now)

    def on_tick(self, now: float) -> Ready:
        """Timers: elections, heartbeats, retransmission, check-quorum, pending retries."""
        self._now = now
        if self.role is Role.LEADER:
            self._leader_tick(now)
        elif now >= self._election_deadline:
            self._start_election(now)
        elif self.role is Role.CANDIDATE:
            self._retransmit_prepare(now)
        self._send_pending(now, retry_after=self.config.retransmit_interval)
        return self._finish(now)

    def submit(self, commands: list[Command] | tuple[Command, ...], now: float) -> Ready:
        """Client commands submitted at this node. They are retried until chosen; the
        caller learns the outcome from the applied state (by request id)."""
        self._now = now
        for command in commands:
            rid = command.request_id
            if rid not in self._pending and rid not in self._unsent and rid not in self._recent_ids:
                self._unsent[rid] = command
        if self._unsent and (
            self.role is Role.LEADER or now - self._forwarded_at >= self.config.forward_interval
        ):
            self._send_pending(now, retry_after=None)
        return self._finish(now)

    # ------------------------------------------------------------------ status

    @property
    def promised(self) -> Ballot:
        return self.acceptor.promised

    @property
    def leader_id(self) -> str | None:
        if self.role is Role.LEADER:
            return self.id
        if self.role is Role.FOLLOWER and self.leader_ballot.node_id:
            return self.leader_ballot.node_id
        return None

    @property
    def commit_index(self) -> int:
        return self.first_unchosen - 1

    def has_quorum(self, now: float) -> bool:
        """Leader only: heard from a quorum (itself included) within an election timeout."""
        if self.role is not Role.LEADER:
            return False
        horizon = now - self.config.election_timeout
        recent = sum(
            1 for p in self.config.peers if self._heard_at.get(p, float("-inf")) >= horizon
        )
        return recent + 1 >= self.config.quorum

    def follows_live_leader(self, now: float) -> bool:
        """Follower only: it heard from its leader within an election timeout (its election
        deadline has not passed)."""
        return (
            self.role is Role.FOLLOWER
            and self.leader_ballot.node_id != ""
            and now < self._election_deadline
        )

    def status(self) -> dict:
        return {
            "node_id": self.id,
            "role": self.role.value,
            "leader": self.leader_id,
            "ballot": str(self.ballot if self.role is not Role.FOLLOWER else self.leader_ballot),
            "promised": str(self.promised),
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "pending": len(self._pending) + len(self._unsent),
        }

    # ------------------------------------------------------------------ acceptor side

    def _on_prepare(self, sender: str, msg: Prepare, now: float) -> None:
        self._observe(msg.ballot)
        reply = self.acceptor.promise(msg.ballot, msg.from_slot, self._ready)
        if isinstance(reply, Promise):
            if self.role is not Role.FOLLOWER and msg.ballot > self.ballot:
                self._step_down(now)
            # Give the candidate time to finish phase 1 before competing with it.
            self._election_deadline = now + self._election_delay()
        self._send(sender, reply, now)

    def _on_accept(self, sender: str, msg: Accept, now: float) -> None:
        self._observe(msg.ballot)
        result = self.acceptor.accept(msg.ballot, msg.entries, self._ready)
        if isinstance(result, Nack):
            self._send(sender, result, now)
            return
        self._follow(msg.ballot, now)
        for slot, value in msg.entries:
            if slot in self.chosen:
                continue
            self._proposed.setdefault(slot, {})[msg.ballot] = value
            self._vote(slot, msg.ballot, sender)
            self._vote(slot, msg.ballot, self.id)
        if result:
            self._accepted_out.setdefault(msg.ballot, []).extend(result)
        self._learn_commit_index(msg.ballot, msg.commit_index)

    def _on_heartbeat(self, sender: str, msg: Heartbeat, now: float) -> None:
        self._observe(msg.ballot)
        if msg.ballot < self.promised:
            self._send(sender, Nack(msg.ballot, self.promised), now)
            return
        self._follow(msg.ballot, now)
        self._learn_commit_index(msg.ballot, msg.commit_index)
        self._send(sender, HeartbeatAck(msg.ballot, msg.seq, self.first_unchosen), now)

    def _follow(self, ballot: Ballot, now: float) -> None:
        """`ballot`'s leader is alive: follow it (stepping down if it outranks us)."""
        if self.role is not Role.FOLLOWER and ballot > self.ballot:
            self._step_down(now)
        if self.role is Role.FOLLOWER:
            if ballot >= self.leader_ballot:
                newly = ballot != self.leader_ballot
                self.leader_ballot = ballot
                if newly:
                    self._send_pending(now, retry_after=0.0)
            self._election_deadline = now + self._election_delay()

    # ------------------------------------------------------------------ proposer side

    def _start_election(self, now: float) -> None:
        self._step_down(now)
        self._max_round = max(self._max_round, self.promised.round)
        self._max_round += 1
        self.ballot = Ballot(self._max_round, self.id)
        self.role = Role.CANDIDATE
        self.leader_ballot = Ballot.ZERO
        self._phase1_from = self.first_unchosen
        self._promises = {}
        self._prepare_sent = {}
        self._election_deadline = now + self._election_delay()
        own = self.acceptor.promise(self.ballot, self._phase1_from, self._ready)
        assert isinstance(own, Promise), "a fresh ballot is above every promise"
        self._promises[self.id] = own
        if len(self._promises) >= self.config.quorum:
            self._become_leader(now)
        else:
            self._retransmit_prepare(now)

    def _retransmit_prepare(self, now: float) -> None:
        for peer in self.config.peers:
            if peer in self._promises:
                continue
            if now - self._prepare_sent.get(peer, float("-inf")) >= self.config.retransmit_interval:
                self._prepare_sent[peer] = now
                self._send(peer, Prepare(self.ballot, self._phase1_from), now)

    def _on_promise(self, sender: str, msg: Promise, now: float) -> None:
        if self.role is not Role.CANDIDATE or msg.ballot != self.ballot:
            return
        self._promises[sender] = msg
        if len(self._promises) >= self.config.quorum:
            self._become_leader(now)

    def _on_nack(self, msg: Nack, now: float) -> None:
        self._observe(msg.promised)
        if (
            self.role is not Role.FOLLOWER
            and msg.ballot == self.ballot
            and msg.promised > self.ballot
        ):
            self._step_down(now)

    def _become_leader(self, now: float) -> None:
        """Phase 1 is complete: re-propose every open slot, then serve new commands."""
        self.role = Role.LEADER
        self._became_leader_at = now
        self._heard_at = {p: now for p in self._promises if p != self.id}
        highest: dict[int, tuple[Ballot, Value]] = {}
        for promise in self._promises.values():
            for slot, ballot, value in promise.accepted:
                if slot not in highest or ballot > highest[slot][0]:
                    highest[slot] = (ballot, value)
        self._promises = {}
        last = max([self.first_unchosen - 1, *highest, *self.chosen])
        proposals: list[tuple[int, Value]] = []
        for slot in range(self._phase1_from, last + 1):
            if slot in self.chosen:
                continue
            if slot in highest and "no_adopt" not in self._bugs:
                proposals.append((slot, highest[slot][1]))
            else:
                proposals.append((slot, NOOP))
        self._next_slot = last + 1
        self._propose(proposals, now)
        # Our own pending commands go first; others' arrive by forwarding and retries.
        self._send_pending(now, retry_after=0.0)
        self._send_heartbeats(now, force=True)

    def _enqueue(self, commands: list[Command]) -> None:
        dedup = "no_dedup" not in self._bugs
        for command in commands:
            rid = command.request_id
            if dedup and (
                rid in self._queue or rid in self._in_flight_ids or rid in self._recent_ids
            ):
                continue
            self._queue[rid] = command
        self._propose_queued()

    def _propose_queued(self) -> None:
        if self.role is not Role.LEADER:
            return
        proposals: list[tuple[int, Value]] = []
        limit = self.first_unchosen + self.config.window
        while self._queue and self._next_slot < limit:
            batch = []
            while self._queue and len(batch) < self.config.max_batch:
                batch.append(self._queue.popitem(last=False)[1])
            proposals.append((self._next_slot, Value(tuple(batch))))
            self._next_slot += 1
        if proposals:
            self._propose(proposals, self._now)

    def _propose(self, proposals: list[tuple[int, Value]], now: float) -> None:
        """Phase 2a for `proposals`: our acceptor accepts first (its write is in the Ready),
        then every peer gets them in this step's Accept."""
        if not proposals:
            return
        result = self.acceptor.accept(self.ballot, tuple(proposals), self._ready)
        assert not isinstance(result, Nack), "a leader's acceptor has promised its ballot"
        for slot, value in proposals:
            self._proposed.setdefault(slot, {})[self.ballot] = value
            self._sent_at[slot] = now
            for command in value.commands:
                self._in_flight_ids.add(command.request_id)
            self._vote(slot, self.ballot, self.id)
            for peer in self.config.peers:
                self._accept_out.setdefault(peer, []).append((slot, value))

    def _on_accepted(self, sender: str, msg: Accepted, now: float) -> None:
        self._observe(msg.ballot)
        self._heard_at[sender] = now
        if self.role is not Role.FOLLOWER and msg.ballot > self.ballot:
            self._step_down(now)
        for slot in msg.slots:
            if slot not in self.chosen:
                self._vote(slot, msg.ballot, sender)

    def _on_heartbeat_ack(self, sender: str, msg: HeartbeatAck, now: float) -> None:
        if self.role is not Role.LEADER or msg.ballot != self.ballot:
            return
        self._heard_at[sender] = now
        if msg.first_unchosen < self.first_unchosen:
            start = msg.first_unchosen
            stop = min(self.first_unchosen, start + self.config.max_catchup)
            entries = tuple((s, self.chosen[s]) for s in range(start, stop))
            self._send(sender, Chosen(entries), now)

    def _on_forward(self, sender: str, msg: Forward) -> None:
        if self.role is Role.LEADER:
            self._enqueue(list(msg.commands))
        elif msg.ttl > 0 and self.leader_id not in (None, sender):
            self._send(self.leader_id, Forward(msg.commands, msg.ttl - 1), self._now)
        # Otherwise drop: the node where the commands were submitted retries them.

    def _leader_tick(self, now: float) -> None:
        if (
            not self.has_quorum(now)
            and now - self._became_leader_at >= self.config.election_timeout
        ):
            # Check-quorum: a leader cut off from a majority stops claiming leadership.
            self._step_down(now)
            return
        self._retransmit_accepts(now)
        self._send_heartbeats(now, force=False)
        self._propose_queued()

    def _retransmit_accepts(self, now: float) -> None:
        due = [
            slot
            for slot, sent in self._sent_at.items()
            if now - sent >= self.config.retransmit_interval and slot not in self.chosen
        ]
        for slot in due:
            self._sent_at[slot] = now
            value = self._proposed[slot][self.ballot]
            voters = self._votes.get(slot, {}).get(self.ballot, set())
            for peer in self.config.peers:
                if peer not in voters:
                    self._accept_out.setdefault(peer, []).append((slot, value))

    def _send_heartbeats(self, now: float, *, force: bool) -> None:
        self._heartbeat_seq += 1
        for peer in self.config.peers:
            if peer in self._accept_out:
                continue  # the Accept going out now carries the commit index
            idle = now - self._last_sent.get(peer, float("-inf"))
            if force or idle >= self.config.heartbeat_interval:
                self._send(
                    peer, Heartbeat(self.ballot, self.commit_index, self._heartbeat_seq), now
                )

    def _step_down(self, now: float) -> None:
        if self.role is Role.FOLLOWER:
            return
        self.role = Role.FOLLOWER
        self._promises = {}
        self._queue.clear()
        self._in_flight_ids.clear()
        self._sent_at.clear()
        self._accept_out.clear()
        self._election_deadline = now + self._election_delay()

    def _send_pending(self, now: float, *, retry_after: float | None) -> None:
        """Send the unsent commands, and those sent at least `retry_after` ago (None: only
        the unsent), to the leader (or our own queue when we lead)."""
        batch = list(self._unsent.values())
        self._unsent.clear()
        if retry_after is not None:
            for command, sent_at in self._pending.values():
                if now - sent_at < retry_after:
                    break  # ordered by sending time: the rest are younger
                batch.append(command)
        if not batch:
            return
        leader = self.leader_id
        if leader is None:
            # Nobody to send to: keep them unsent until a leader is known.
            for command in batch:
                self._pending.pop(command.request_id, None)
                self._unsent[command.request_id] = command
            return
        for command in batch:
            self._pending.pop(command.request_id, None)
            self._pending[command.request_id] = (command, now)
        if self.role is Role.LEADER:
            self._enqueue(batch)
        else:
            self._forwarded_at = now
            self._send(leader, Forward(tuple(batch), ttl=2), now)

    # ------------------------------------------------------------------ learner side

    def _vote(self, slot: int, ballot: Ballot, voter: str) -> None:
        voters = self._votes.setdefault(slot, {}).setdefault(ballot, set())
        voters.add(voter)
        if len(voters) >= self.config.quorum:
            value = self._proposed.get(slot, {}).get(ballot)
            if value is not None:
                self._learn(slot, value)

    def _learn_commit_index(self, ballot: Ballot, commit_index: int) -> None:
        """The leader of `ballot` says every slot <= commit_index is chosen. A value we hold
        from that same ballot is the chosen one (the leader proposes one value per slot
        per ballot, and never one that contradicts a chosen value); the rest arrives by
        catch-up."""
        slot = self.first_unchosen
        while slot <= commit_index:
            value = self._proposed.get(slot, {}).get(ballot)
            if value is None:
                held = self.acceptor.accepted.get(slot)
                if held is None or held[0] != ballot:
                    break
                value = held[1]
            self._learn(slot, value)
            slot = self.first_unchosen

    def _learn(self, slot: int, value: Value) -> None:
        known = self.chosen.get(slot)
        if known is not None:
            if known != value:
                raise InvariantViolation(f"{self.id}: slot {slot} chosen as {known} and {value}")
            return
        self.chosen[slot] = value
        self._ready.chosen.append((slot, value))
        self._votes.pop(slot, None)
        self._proposed.pop(slot, None)
        self._sent_at.pop(slot, None)
        recent = self._recent_ids
        for command in value.commands:
            rid = command.request_id
            self._pending.pop(rid, None)
            self._unsent.pop(rid, None)
            self._in_flight_ids.discard(rid)
            recent[rid] = None
        while len(recent) > self.config.recent_ids:
            recent.popitem(last=False)
        if slot == self.first_unchosen:
            self._advance_first_unchosen()

    def _advance_first_unchosen(self) -> None:
        while self.first_unchosen in self.chosen:
            self.first_unchosen += 1

    # ------------------------------------------------------------------ plumbing

    def _observe(self, ballot: Ballot) -> None:
        if ballot.round > self._max_round:
            self._max_round = ballot.round

    def _election_delay(self) -> float:
        return self.config.election_timeout * (1.0 + self._rng.random())

    def _send(self, to: str, message: Message, now: float) -> None:
        self._ready.messages.append((to, message))
        self._last_sent[to] = now

    def _finish(self, now: float) -> Ready:
        """Close the step: new proposals may fit the window, flush coalesced Accept and
        Accepted messages, and hand out newly committed slots in order."""
        if self.role is Role.LEADER and self._queue:
            self._propose_queued()
        if self._accept_out:
            for peer, entries in self._accept_out.items():
                self._send(peer, Accept(self.ballot, tuple(entries), self.commit_index), now)
            self._accept_out = {}
        if self._accepted_out:
            for ballot, slots in self._accepted_out.items():
                leader = ballot.node_id
                message = Accepted(ballot, tuple(slots))
                self._send(leader, message, now)
                if self.config.quorum > 2:
                    for peer in self.config.peers:
                        if peer != leader:
                            self._send(peer, message, now)
            self._accepted_out = {}
        ready = self._ready
        while self.applied_index + 1 in self.chosen:
            self.applied_index += 1
            ready.committed.append((self.applied_index, self.chosen[self.applied_index]))
        self._ready = Ready()
        return ready
