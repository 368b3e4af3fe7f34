"""A Multi-Paxos node: acceptor, proposer (leader) and learner in one state machine.

Sans-I/O: every input (`on_message`, `on_tick`, `submit`, `read_index`) takes the current
time and returns a `Ready` (what to persist, what to send, what to apply); see ready.py for
the order the runtime must follow. Randomness (election timeouts) comes from the
`random.Random` passed in, so a seeded run replays exactly.

Protocol summary (DESIGN.md "Multi-Paxos"):
- A node that hears no leader for a randomized election timeout first asks the others
  whether they would vote for it (PreVote, no state changes anywhere); a node that heard
  from a live leader within an election timeout, or knows more chosen slots than the
  asker, says no. Only with a majority of yeses does it become a candidate: phase 1 once,
  `Prepare(ballot, first_unchosen)` covering every open slot. A follower of a live leader
  (and the leader itself while it holds a quorum) ignores Prepares of other nodes: a
  node that comes back cannot depose a healthy leader (leader stickiness, etcd-raft's
  PreVote and CheckQuorum).
- A Promise reports the acceptor's commit index and what it accepted above it, in
  chunks bounded in bytes (the candidate asks for the next chunk). The candidate learns
  the slots up to the highest commit index reported by catch-up before it leads.
- With a majority of promises it leads: for each open slot it re-proposes the value with
  the highest accepted ballot, fills gaps with no-ops, then proposes client batches, with
  up to `window` slots in flight and up to `max_batch` commands (`max_batch_bytes`) per
  slot.
- `Accept` counts as the leader's own vote (the leader persists its accept first), and
  acceptors send `Accepted` to the leader and, when a quorum needs more than two votes,
  to every node: so a follower learns a slot chosen one hop after the leader proposes it.
- Catch-up: heartbeat acks and Accepted carry the follower's first unchosen slot; a
  leader that sees a follower lag streams it the chosen values it lacks (`Chosen`, a
  contiguous run of slots bounded in bytes), the next chunk on each `ChosenAck`, at most
  `catchup_in_flight` chunks unacknowledged. A node that promised a candidate behind it
  streams to the candidate the same way. Old chosen values come from the durable log
  (`ChosenLog`); the core keeps only the recent ones in memory.
- Compaction and state transfer: the host prunes the durable log (accepted values and
  chosen entries) through a compaction point at or below its state machine's latest
  snapshot and its applied index (`on_compacted`). A stream that reaches a slot pruned
  there sends `InstallSnapshot` instead of values; the peer installs the snapshot (the
  host fetches it outside Paxos) and its state machine reports the snapshot's index
  applied (`on_applied`), which the core takes as every slot through it chosen and
  applied, and the host the log's new compaction point; the stream resumes above it. Phase 1 never needs a pruned slot: a Promise
  reports only slots above the acceptor's commit index, which is at least its compaction
  point, and a candidate learns the slots below by catch-up (so by a snapshot, if need be).
  An install changes no acceptor state: promises and votes stay binding.
- Linearizable reads (ReadIndex): the leader records the highest slot it has proposed,
  confirms it still leads by one heartbeat round a majority acknowledges (shared by every
  read waiting), then answers; a follower asks the leader. The read is served once the
  node has applied the index. No log slot per read.
- A leader that has not heard from a quorum for an election timeout steps down
  (check-quorum).
- Commands submitted at a node stay pending there (volatile) and are re-forwarded to the
  leader until the node learns them chosen. The leader drops commands whose request id is
  queued, in flight or recently chosen; the applier drops any that slip through
  (`commands_to_apply`), so a retried command is applied once.
- Every message is bounded: batches, catch-up chunks and promise chunks by bytes, and a
  message above `max_message_bytes` (message_size) is dropped on receipt and counted.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum

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
    message_size,
)
from .ready import ChosenLog, DurableState, Ready, contiguous_run
from .types import NOOP, Ballot, Command, Value

#: Names of deliberately broken behaviours, for tests that prove the checks can fail.
KNOWN_BUGS = frozenset(
    {
        "ignore_promise",
        "no_adopt",
        "no_dedup",
        # a node campaigns without pre-vote and answers every Prepare (no stickiness)
        "ignore_prevote",
        # the leader answers reads at once, without confirming it still leads (so a deposed
        # leader that does not know it yet serves stale reads)
        "stale_read",
        # a catch-up chunk leaves out one slot (so the rest land one slot early)
        "catchup_skip",
        # catch-up streams without regard to the peer's applied index (its applier's
        # backlog grows with the gap)
        "catchup_unpaced",
        # forwarded commands are dropped (commands submitted at a follower are never
        # chosen: only the liveness check can see it)
        "ignore_forward",
    }
)

#: Read ids per ReadIndexRequest/Reply, at most.
READS_PER_MESSAGE = 1024


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
    retransmit_interval: float = 0.2
    #: Slots proposed and not yet chosen, at most. A small window makes commands that
    #: arrive while slots are in flight share the next slot: batching under load, no
    #: waiting when idle.
    window: int = 2
    #: Commands per slot, at most.
    max_batch: int = 512
    #: Bytes of commands per slot (Value.size), at most (a larger command goes alone).
    max_batch_bytes: int = 1 << 20
    #: A follower forwards new commands at once if it forwarded nothing for this long, and
    #: otherwise with its next tick: under load, many submissions share one Forward.
    forward_interval: float = 0.005
    #: Slots per catch-up chunk, at most.
    max_catchup: int = 256
    #: Bytes per catch-up chunk, promise chunk, Accept and Forward, at most (a larger
    #: single value goes alone).
    max_chunk_bytes: int = 256 * 1024
    #: Catch-up chunks sent to one peer and not yet acknowledged, at most.
    catchup_in_flight: int = 4
    #: Slots streamed to a peer beyond the index it reports applied, at most: catch-up
    #: goes at the pace of the peer's applier, and what it holds learned but unapplied
    #: stays bounded.
    catchup_ahead: int = 1024
    #: Bytes of catch-up values per second streamed to one peer, at most (0: no limit). A
    #: returning node's catch-up costs the sender reads and sends, and the returning node's
    #: own applying; on hosts it shares with the cluster, this bounds how much of them it
    #: takes (as Kafka's replication throttle). The bucket holds 0.1 s of the rate: a
    #: stream opens with one chunk, not a burst.
    catchup_bytes_per_second: float = 128 * 1024
    #: A message larger than this (message_size) is dropped on receipt.
    max_message_bytes: int = 8 << 20
    #: Chosen values kept in memory at and below the applied index (older ones are read
    #: from the ChosenLog for catch-up).
    kept_chosen: int = 1024
    #: How long a follower keeps asking the leader for a read index.
    read_timeout: float = 5.0
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


def _chunks(items: list, size_of, max_bytes: int) -> list[list]:
    """`items` cut, in order, into runs of at most `max_bytes` (at least one item each)."""
    runs: list[list] = []
    run: list = []
    size = 0
    for item in items:
        cost = size_of(item)
        if run and size + cost > max_bytes:
            runs.append(run)
            run, size = [], 0
        run.append(item)
        size += cost
    if run:
        runs.append(run)
    return runs


@dataclass
class _Stream:
    """Catch-up of one peer: chunks go out from `next`; `in_flight` holds (last slot,
    sent at) of the chunks not yet acknowledged; `match` is the peer's last reported
    first unchosen slot, `applied` the last index it reported applied."""

    next: int
    match: int
    heard: float
    applied: int
    in_flight: deque = field(default_factory=deque)
    #: Token bucket of catchup_bytes_per_second: bytes that may go now, as of `refilled`.
    budget: float = 0.0
    refilled: float = 0.0


class Node:
    def __init__(
        self,
        config: Config,
        state: DurableState,
        *,
        applied_index: int,
        now: float,
        rng: random.Random,
        log: ChosenLog | None = None,
    ) -> None:
        """`state` need only hold the acceptor state and chosen values above
        `applied_index` (what storage loads); older slots are chosen and applied, and
        `log` (default: `state` itself) serves their values for catch-up."""
        self.config = config
        self.id = config.node_id
        self._rng = rng
        self._bugs = config.bugs
        self._log: ChosenLog = log if log is not None else state
        self.acceptor = Acceptor(
            state.promised,
            {s: e for s, e in state.accepted.items() if s > applied_index},
            ignore_promise="ignore_promise" in config.bugs,
        )
        # Learner.
        self.chosen: dict[int, Value] = {s: v for s, v in state.chosen.items() if s > applied_index}
        self.first_unchosen = applied_index + 1
        self._advance_first_unchosen()
        self.applied_index = applied_index
        #: What the host reports applied (on_applied); None: the host applies what it is
        #: handed (Ready.committed) before the next input, so applied_index is it.
        self._host_applied: int | None = None
        self._forgotten_through = applied_index
        #: Slots <= it are pruned from the durable log (`on_compacted`: the host's
        #: compaction, or a snapshot installed here): a peer that lacks one is sent
        #: InstallSnapshot.
        self.compacted_through = state.compacted_through
        self._votes: dict[int, dict[Ballot, set[str]]] = {}
        self._proposed: dict[int, dict[Ballot, Value]] = {}
        self._recent_ids: OrderedDict[str, None] = OrderedDict()
        # Proposer.
        self.role = Role.FOLLOWER
        self.ballot = Ballot.ZERO  # own ballot while candidate or leader
        self._max_round = max(
            [state.promised.round] + [b.round for b, _ in self.acceptor.accepted.values()]
        )
        self._prevote: set[str] | None = None  # who granted our pre-vote, while asking
        self._prevote_ballot = Ballot.ZERO
        self._promises: dict[str, dict[int, tuple[Ballot, Value]]] = {}
        self._promised_by: set[str] = set()  # complete promises
        self._promise_next: dict[str, int] = {}  # the next chunk asked of a peer
        self._promise_commit = 0  # the highest commit index promises reported
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
        # Reads the leader confirms: (read id, origin node, heartbeat seq that confirms).
        self._reads: list[tuple[str, str, int]] = []
        self._acked_seq: dict[str, int] = {}
        self._read_round_due = False
        # Reads waiting here for the leader's read index: id -> (arrived, last asked).
        self._reads_waiting: OrderedDict[str, tuple[float, float]] = OrderedDict()
        # Catch-up streams this node sends, by peer.
        self._streams: dict[str, _Stream] = {}
        # Follower's view of the leader.
        self.leader_ballot = Ballot.ZERO
        self._leader_heard_at = float("-inf")
        self._now = now
        self._election_deadline = now + self._election_delay()
        # Commands submitted here and not yet known chosen: re-sent to the leader every
        # retransmit interval until they are. `_unsent` have not gone out yet; `_pending`
        # have, ordered by when they last did.
        self._unsent: OrderedDict[str, Command] = OrderedDict()
        self._pending: OrderedDict[str, tuple[Command, float]] = OrderedDict()
        self._forwarded_at = float("-inf")
        #: Counters (volatile): elections this node started, messages dropped as too large.
        self.elections = 0
        self.oversize_dropped = 0
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
        if message_size(message) > self.config.max_message_bytes:
            self.oversize_dropped += 1
            return self._finish(now)
        match message:
            case PreVote():
                self._on_pre_vote(sender, message, now)
            case PreVoteReply():
                self._on_pre_vote_reply(sender, message, now)
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
                self._on_chosen(sender, message, now)
            case InstallSnapshot():
                if message.index >= self.first_unchosen:
                    self._ready.snapshots.append((sender, message.index))
                else:  # installed already (or caught up otherwise): the stream goes on
                    self._send(sender, ChosenAck(self.first_unchosen, self.applied), now)
            case ChosenAck():
                self._report(
                    sender, message.first_unchosen, now, open_stream=False, applied=message.applied
                )
            case Forward():
                self._on_forward(sender, message)
            case ReadIndexRequest():
                if self.role is Role.LEADER:
                    self._register_reads(sender, message.read_ids)
            case ReadIndexReply():
                self._on_read_index_reply(message)
        return self._finish(now)

    def on_tick(self, now: float) -> Ready:
        """Timers: elections, heartbeats, retransmission, check-quorum, pending retries,
        catch-up streams and reads waiting for the leader."""
        self._now = now
        if self.role is Role.LEADER:
            self._leader_tick(now)
        elif now >= self._election_deadline:
            self._campaign(now)
        elif self.role is Role.CANDIDATE:
            self._retransmit_prepare(now)
        self._send_pending(now, retry_after=self.config.retransmit_interval)
        self._tick_streams(now)
        self._ask_read_index(now, retry=True)
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

    def read_index(self, read_ids: list[str] | tuple[str, ...], now: float) -> Ready:
        """Linearizable reads arriving at this node. Each is answered in a later (or this)
        Ready's `reads` with a read index: every command chosen before the read arrived is
        in a slot <= it. A read not answered within `read_timeout` is dropped (the caller
        times out)."""
        self._now = now
        if self.role is Role.LEADER:
            self._register_reads(self.id, tuple(read_ids))
        else:
            for rid in read_ids:
                if rid not in self._reads_waiting:
                    self._reads_waiting[rid] = (now, float("-inf"))
            self._ask_read_index(now, retry=False)
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
        """Follower only: it heard from its leader within an election timeout. (Not "its
        election deadline has not passed": a failed pre-vote campaign moves that deadline on
        while the leader stays silent.)"""
        return self.role is Role.FOLLOWER and self._leader_is_live(now)

    def on_applied(self, index: int) -> None:
        """The host's state machine has applied every slot up to `index` (a host whose
        applier runs behind what the core hands it reports this; peers streaming it
        catch-up pace themselves by it). An index at or above the first slot the core
        does not know chosen means every slot through it is chosen and applied all the
        same: a snapshot was installed there, or (after the core was rebuilt from storage)
        the state machine applied slots it had learned before; the core skips past it
        (`_skip_to`). Whether the log still holds those slots is storage's to say: the host
        then tells the core the log's compaction point (`on_compacted`). No Ready: nothing
        to persist or send."""
        if index >= self.first_unchosen:
            self._skip_to(index)
        if self._host_applied is None or index > self._host_applied:
            self._host_applied = min(index, self.applied_index)

    def on_compacted(self, through: int) -> None:
        """The host pruned its durable log through `through` (at most its state machine's
        latest snapshot index and its applied index): what it kept of those slots in
        memory goes too, so that catch-up below the point is by snapshot only."""
        self.compacted_through = max(self.compacted_through, through)
        self._forget_through(min(through, self.applied_index))

    @property
    def applied(self) -> int:
        """The applied index as the host reports it (`on_applied`), else as handed out."""
        return self.applied_index if self._host_applied is None else self._host_applied

    def status(self) -> dict:
        return {
            "node_id": self.id,
            "role": self.role.value,
            "leader": self.leader_id,
            "ballot": str(self.ballot if self.role is not Role.FOLLOWER else self.leader_ballot),
            "promised": str(self.promised),
            "commit_index": self.commit_index,
            "applied_index": self.applied,
            "handed_out_index": self.applied_index,
            "pending": len(self._pending) + len(self._unsent),
            "catching_up": sorted(self._streams),
            "compacted_through": self.compacted_through,
            "elections": self.elections,
            "oversize_dropped": self.oversize_dropped,
        }

    # ------------------------------------------------------------------ elections

    def _leader_is_live(self, now: float) -> bool:
        """Whether this node knows a live leader: it leads with a quorum, or it heard from
        its leader within an election timeout (the lease of leader stickiness)."""
        if self.role is Role.LEADER:
            return self.has_quorum(now)
        return (
            self.leader_ballot.node_id != ""
            and now - self._leader_heard_at < self.config.election_timeout
        )

    def _campaign(self, now: float) -> None:
        """The election timeout passed: ask for pre-votes (or, alone, run phase 1)."""
        if "ignore_prevote" in self._bugs:
            self._start_election(now)
            return
        self._election_deadline = now + self._election_delay()
        self._prevote_ballot = Ballot(max(self._max_round, self.promised.round) + 1, self.id)
        self._prevote = {self.id}
        if len(self._prevote) >= self.config.quorum:
            self._start_election(now)
            return
        for peer in self.config.peers:
            self._send(peer, PreVote(self._prevote_ballot, self.first_unchosen), now)

    def _on_pre_vote(self, sender: str, msg: PreVote, now: float) -> None:
        granted = not self._leader_is_live(now) and msg.first_unchosen >= self.first_unchosen
        self._send(sender, PreVoteReply(msg.ballot, granted), now)

    def _on_pre_vote_reply(self, sender: str, msg: PreVoteReply, now: float) -> None:
        if self._prevote is None or msg.ballot != self._prevote_ballot or not msg.granted:
            return
        self._prevote.add(sender)
        if len(self._prevote) >= self.config.quorum:
            self._start_election(now)

    def _start_election(self, now: float) -> None:
        self._step_down(now)
        self._prevote = None
        self.elections += 1
        self._max_round = max(self._max_round, self.promised.round)
        self._max_round += 1
        self.ballot = Ballot(self._max_round, self.id)
        self.role = Role.CANDIDATE
        self.leader_ballot = Ballot.ZERO
        self._phase1_from = self.first_unchosen
        self._promises = {}
        self._promised_by = set()
        self._promise_next = {}
        self._promise_commit = 0
        self._prepare_sent = {}
        self._election_deadline = now + self._election_delay()
        promised = self.acceptor.promise(self.ballot, self._ready)
        assert promised, "a fresh ballot is above every promise"
        own, _ = self.acceptor.accepted_from(self._phase1_from, 1 << 62)
        self._promises[self.id] = {slot: (b, v) for slot, b, v in own}
        self._promised_by.add(self.id)
        self._retransmit_prepare(now)
        self._maybe_lead(now)

    def _retransmit_prepare(self, now: float) -> None:
        for peer in self.config.peers:
            if peer in self._promised_by:
                continue
            if now - self._prepare_sent.get(peer, float("-inf")) >= self.config.retransmit_interval:
                self._prepare_sent[peer] = now
                from_slot = self._promise_next.get(peer, self._phase1_from)
                self._send(peer, Prepare(self.ballot, from_slot), now)

    # ------------------------------------------------------------------ acceptor side

    def _on_prepare(self, sender: str, msg: Prepare, now: float) -> None:
        self._observe(msg.ballot)
        if (
            "ignore_prevote" not in self._bugs
            and msg.ballot.node_id != self.leader_ballot.node_id
            and self._leader_is_live(now)
        ):
            return  # leader stickiness: a live leader is not deposed by a returning node
        if not self.acceptor.promise(msg.ballot, self._ready):
            self._send(sender, Nack(msg.ballot, self.promised), now)
            return
        if self.role is not Role.FOLLOWER and msg.ballot > self.ballot:
            self._step_down(now)
        # Give the candidate time to finish phase 1 before competing with it.
        self._election_deadline = now + self._election_delay()
        start = max(msg.from_slot, self.first_unchosen)
        accepted, complete = self.acceptor.accepted_from(start, self.config.max_chunk_bytes)
        self._send(
            sender, Promise(msg.ballot, msg.from_slot, accepted, self.commit_index, complete), now
        )
        if msg.from_slot <= self.commit_index:
            # The candidate must learn every slot up to our commit index before it leads.
            self._report(sender, msg.from_slot, now, open_stream=True)

    def _on_accept(self, sender: str, msg: Accept, now: float) -> None:
        self._observe(msg.ballot)
        result = self.acceptor.accept(msg.ballot, msg.entries, self._ready)
        if result is None:
            self._send(sender, Nack(msg.ballot, self.promised), now)
            return
        self._follow(msg.ballot, now)
        for slot, value in msg.entries:
            if slot in self.chosen or slot < self.first_unchosen:
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
        self._send(
            sender, HeartbeatAck(msg.ballot, msg.seq, self.first_unchosen, self.applied), now
        )

    def _follow(self, ballot: Ballot, now: float) -> None:
        """`ballot`'s leader is alive: follow it (stepping down if it outranks us)."""
        if self.role is not Role.FOLLOWER and ballot > self.ballot:
            self._step_down(now)
        if self.role is Role.FOLLOWER:
            if ballot >= self.leader_ballot:
                newly = ballot != self.leader_ballot
                self.leader_ballot = ballot
                self._leader_heard_at = now
                self._prevote = None
                if newly:
                    self._send_pending(now, retry_after=0.0)
                    self._ask_read_index(now, retry=False)
            self._election_deadline = now + self._election_delay()

    # ------------------------------------------------------------------ proposer side

    def _on_promise(self, sender: str, msg: Promise, now: float) -> None:
        if (
            self.role is not Role.CANDIDATE
            or msg.ballot != self.ballot
            or sender in self._promised_by
            or msg.from_slot != self._promise_next.get(sender, self._phase1_from)
            or (not msg.complete and not msg.accepted)
        ):
            return  # not ours, a duplicate, or a chunk we did not ask for (now)
        reported = self._promises.setdefault(sender, {})
        for slot, ballot, value in msg.accepted:
            reported[slot] = (ballot, value)
        self._promise_commit = max(self._promise_commit, msg.commit_index)
        if msg.complete:
            self._promised_by.add(sender)
        else:
            following = msg.accepted[-1][0] + 1
            self._promise_next[sender] = following
            self._prepare_sent[sender] = now
            self._send(sender, Prepare(self.ballot, following), now)
        self._maybe_lead(now)

    def _maybe_lead(self, now: float) -> None:
        """Lead once a quorum promised in full and we know every slot they know chosen."""
        if (
            self.role is Role.CANDIDATE
            and len(self._promised_by) >= self.config.quorum
            and self.first_unchosen > self._promise_commit
        ):
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
        self._heard_at = {p: now for p in self._promised_by if p != self.id}
        self._acked_seq = {}
        highest: dict[int, tuple[Ballot, Value]] = {}
        for reported in self._promises.values():
            for slot, (ballot, value) in reported.items():
                if slot not in highest or ballot > highest[slot][0]:
                    highest[slot] = (ballot, value)
        self._promises = {}
        self._promised_by = set()
        last = max([self.first_unchosen - 1, *highest, *self.chosen])
        proposals: list[tuple[int, Value]] = []
        for slot in range(max(self._phase1_from, self.first_unchosen), last + 1):
            if slot in self.chosen:
                continue
            if slot in highest and "no_adopt" not in self._bugs:
                proposals.append((slot, highest[slot][1]))
            else:
                proposals.append((slot, NOOP))
        self._next_slot = last + 1
        self._propose(proposals, now)
        # Reads that waited here for a leader are now ours to confirm.
        if self._reads_waiting:
            self._register_reads(self.id, tuple(self._reads_waiting))
            self._reads_waiting.clear()
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
        max_batch, max_bytes = self.config.max_batch, self.config.max_batch_bytes
        queue = self._queue
        while queue and self._next_slot < limit:
            batch: list[Command] = []
            size = 0
            while queue and len(batch) < max_batch:
                command = queue[next(iter(queue))]
                cost = len(command.request_id) + len(command.payload) + 8
                if batch and size + cost > max_bytes:
                    break
                batch.append(queue.popitem(last=False)[1])
                size += cost
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
        assert result is not None, "a leader's acceptor has promised its ballot"
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
            if slot not in self.chosen and slot >= self.first_unchosen:
                self._vote(slot, msg.ballot, sender)
        if self.role is Role.LEADER and msg.ballot == self.ballot and msg.first_unchosen:
            self._report(sender, msg.first_unchosen, now, open_stream=True, applied=msg.applied)

    def _on_heartbeat_ack(self, sender: str, msg: HeartbeatAck, now: float) -> None:
        if self.role is not Role.LEADER or msg.ballot != self.ballot:
            return
        self._heard_at[sender] = now
        if msg.seq > self._acked_seq.get(sender, 0):
            self._acked_seq[sender] = msg.seq
            self._confirm_reads()
        self._report(sender, msg.first_unchosen, now, open_stream=True, applied=msg.applied)

    def _on_forward(self, sender: str, msg: Forward) -> None:
        if "ignore_forward" in self._bugs:
            return
        if self.role is Role.LEADER:
            self._enqueue(list(msg.commands))
        elif msg.ttl > 0 and self.leader_id not in (None, sender):
            for run in _chunks(list(msg.commands), _command_size, self.config.max_chunk_bytes):
                self._send(self.leader_id, Forward(tuple(run), msg.ttl - 1), self._now)
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

    def _send_heartbeats(self, now: float, *, force: bool, everyone: bool = False) -> None:
        """Heartbeats to idle peers (`force`: to every peer without an Accept going out
        now, which carries the commit index; `everyone`: to every peer, for a read round,
        since only a HeartbeatAck confirms leadership at a sequence number)."""
        self._heartbeat_seq += 1
        for peer in self.config.peers:
            if peer in self._accept_out and not everyone:
                continue
            idle = now - self._last_sent.get(peer, float("-inf"))
            if everyone or force or idle >= self.config.heartbeat_interval:
                self._send(
                    peer, Heartbeat(self.ballot, self.commit_index, self._heartbeat_seq), now
                )

    def _step_down(self, now: float) -> None:
        if self.role is Role.FOLLOWER:
            return
        was_leader = self.role is Role.LEADER
        self.role = Role.FOLLOWER
        self._promises = {}
        self._promised_by = set()
        self._queue.clear()
        self._in_flight_ids.clear()
        self._sent_at.clear()
        self._accept_out.clear()
        self._election_deadline = now + self._election_delay()
        if was_leader:
            # Our own reads wait for the next leader; other nodes' reads are asked again
            # by those nodes.
            for rid, origin, _ in self._reads:
                if origin == self.id:
                    self._reads_waiting[rid] = (now, float("-inf"))
            self._reads = []
            self._read_round_due = False

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
            for run in _chunks(batch, _command_size, self.config.max_chunk_bytes):
                self._send(leader, Forward(tuple(run), ttl=2), now)

    # ------------------------------------------------------------------ reads

    def _register_reads(self, origin: str, read_ids: tuple[str, ...]) -> None:
        """Leader: confirm these reads with the next heartbeat round."""
        need = self._heartbeat_seq + 1
        if "stale_read" in self._bugs:
            need = 0
        self._reads.extend((rid, origin, need) for rid in read_ids)
        self._read_round_due = True

    def _confirm_reads(self) -> None:
        """Answer the reads whose heartbeat round a majority (us included) acknowledged.
        The index is the highest slot we have proposed or know chosen: a command chosen
        before a read arrived is in a slot we proposed or learned in phase 1 (a quorum
        still acknowledging our ballot after the read arrived means no higher ballot
        chose anything before)."""
        if not self._reads or self.role is not Role.LEADER:
            return
        acked = sorted((self._acked_seq.get(p, 0) for p in self.config.peers), reverse=True)
        needed = self.config.quorum - 1  # we are the other vote
        confirmed = acked[needed - 1] if needed else self._heartbeat_seq
        index = max(self.commit_index, self._next_slot - 1)
        answered: dict[str, list[str]] = {}
        waiting = []
        for read in self._reads:
            if read[2] <= confirmed:
                answered.setdefault(read[1], []).append(read[0])
            else:
                waiting.append(read)
        self._reads = waiting
        for origin, ids in answered.items():
            if origin == self.id:
                self._ready.reads.extend((rid, index) for rid in ids)
            else:
                for k in range(0, len(ids), READS_PER_MESSAGE):
                    run = tuple(ids[k : k + READS_PER_MESSAGE])
                    self._send(origin, ReadIndexReply(run, index), self._now)

    def _ask_read_index(self, now: float, *, retry: bool) -> None:
        """Follower: ask the leader for the read index of the reads waiting here (`retry`:
        those asked a retransmit interval ago too); drop those older than read_timeout."""
        if not self._reads_waiting or self.role is Role.LEADER:
            return
        timeout, interval = self.config.read_timeout, self.config.retransmit_interval
        while self._reads_waiting:
            rid, (arrived, _) = next(iter(self._reads_waiting.items()))
            if now - arrived < timeout:
                break
            del self._reads_waiting[rid]
        leader = self.leader_id
        if leader is None:
            return
        due = [
            rid
            for rid, (arrived, asked) in self._reads_waiting.items()
            if asked == float("-inf") or (retry and now - asked >= interval)
        ]
        for rid in due:
            self._reads_waiting[rid] = (self._reads_waiting[rid][0], now)
        for k in range(0, len(due), READS_PER_MESSAGE):
            self._send(leader, ReadIndexRequest(tuple(due[k : k + READS_PER_MESSAGE])), now)

    def _on_read_index_reply(self, msg: ReadIndexReply) -> None:
        for rid in msg.read_ids:
            if self._reads_waiting.pop(rid, None) is not None:
                self._ready.reads.append((rid, msg.index))

    # ------------------------------------------------------------------ catch-up

    def _on_chosen(self, sender: str, msg: Chosen, now: float) -> None:
        for slot, value in msg.entries:
            self._learn(slot, value)
        self._send(sender, ChosenAck(self.first_unchosen, self.applied), now)

    def _report(
        self,
        peer: str,
        first_unchosen: int,
        now: float,
        *,
        open_stream: bool,
        applied: int | None = None,
    ) -> None:
        """`peer` knows every slot below `first_unchosen` (and has applied up to `applied`,
        when it says): stream it what it lacks (when a stream is open, or `open_stream`),
        at most `catchup_in_flight` chunks and `catchup_ahead` slots past its applied
        index ahead."""
        if first_unchosen >= self.first_unchosen:
            self._streams.pop(peer, None)
            return
        stream = self._streams.get(peer)
        if stream is None:
            if not open_stream:
                return
            stream = self._streams[peer] = _Stream(
                first_unchosen, first_unchosen, now, first_unchosen - 1
            )
        stream.heard = now
        stream.match = first_unchosen
        # A stream opens on the guess that the peer applied what it learned; only what the
        # peer says it applied moves it on (an Accepted says what it learned, not that).
        if applied is not None:
            stream.applied = max(stream.applied, applied)
        while stream.in_flight and stream.in_flight[0][0] < first_unchosen:
            stream.in_flight.popleft()
        if first_unchosen > stream.next or not stream.in_flight:
            stream.next = first_unchosen  # ahead of us, or what we sent was lost
        self._pump(peer, stream, now)

    def _pump(self, peer: str, stream: _Stream, now: float) -> None:
        """One more chunk, if the bounds allow: one per acknowledgement or tick, so that
        no single step of the sender reads and sends more than one chunk (the leader's
        own writes wait behind its steps)."""
        config = self.config
        rate = config.catchup_bytes_per_second
        if rate:
            # The bucket holds a tenth of a second of the rate: a stream opens with one chunk
            # (which may overdraw it), not a burst of them.
            stream.budget = min(rate / 10, stream.budget + (now - stream.refilled) * rate)
            stream.refilled = now
            if stream.budget < 0:
                return
        if len(stream.in_flight) < config.catchup_in_flight:
            first = stream.next
            if first <= self.compacted_through:
                # Pruned here: the peer installs our snapshot (fetched outside Paxos, as
                # long as it takes); asked again only when this goes unanswered (tick).
                if not stream.in_flight:
                    stream.in_flight.append((self.compacted_through, now))
                    self._send(peer, InstallSnapshot(self.compacted_through), now)
                return
            end = min(self.first_unchosen, stream.applied + config.catchup_ahead + 1)
            if "catchup_unpaced" in self._bugs:
                end = self.first_unchosen
            if first >= end:
                return
            values = self._chosen_values(
                first, min(config.max_catchup, end - first), config.max_chunk_bytes
            )
            if not values:
                return  # not durable here yet: the next report or tick tries again
            stream.next = first + len(values)
            stream.in_flight.append((stream.next - 1, now))
            stream.budget -= sum(v.size for v in values)
            if "catchup_skip" in self._bugs and len(values) > 2:
                values = values[:1] + values[2:]
            self._send(peer, Chosen(first, tuple(values)), now)

    def _chosen_values(self, first: int, max_slots: int, max_bytes: int) -> list[Value]:
        """Chosen values of slots first, first + 1, ...: from memory, or from the log for
        slots no longer kept in memory."""
        if first not in self.chosen:
            return self._log.read(first, max_slots, max_bytes)
        return contiguous_run(self.chosen, first, max_slots, max_bytes)

    def _tick_streams(self, now: float) -> None:
        """Chunks unacknowledged for two retransmit intervals are sent again; a peer not
        heard from for two election timeouts is no longer streamed to."""
        for peer in list(self._streams):
            stream = self._streams[peer]
            if now - stream.heard >= 2 * self.config.election_timeout:
                del self._streams[peer]
            elif (
                stream.in_flight
                and now - stream.in_flight[0][1] >= 2 * self.config.retransmit_interval
            ):
                stream.in_flight.clear()
                stream.next = stream.match
                self._pump(peer, stream, now)
            else:
                self._pump(peer, stream, now)  # the window fills up, one chunk a tick

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
        if slot <= self._forgotten_through:
            return  # chosen and applied long ago (no longer kept in memory)
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

    def _forget(self) -> None:
        """Drop from memory the chosen values and accepted slots more than `kept_chosen`
        slots below the applied index (storage keeps them)."""
        horizon = self.applied_index - self.config.kept_chosen
        if horizon - self._forgotten_through >= 64:
            self._forget_through(horizon)

    def _forget_through(self, slot: int) -> None:
        """Drop from memory the chosen values and accepted slots <= `slot` (applied)."""
        for old in range(self._forgotten_through + 1, slot + 1):
            self.chosen.pop(old, None)
        self.acceptor.forget_through(slot)
        self._forgotten_through = max(self._forgotten_through, slot)

    def _skip_to(self, index: int) -> None:
        """The state machine applied every slot through `index`, which the core did not
        know chosen (see `on_applied`): it skips past them. The acceptor keeps its promise
        and its votes (only the memory of those slots is dropped, as `_forget` does)."""
        self.applied_index = index
        self._forgotten_through = max(self._forgotten_through, index)
        for table in (self.chosen, self._votes, self._proposed, self._sent_at):
            for slot in [s for s in table if s <= index]:
                del table[slot]
        self.acceptor.forget_through(index)
        self.first_unchosen = index + 1
        self._advance_first_unchosen()
        self._next_slot = max(self._next_slot, self.first_unchosen)

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
        """Close the step: a candidate that caught up leads, new proposals may fit the
        window, a read round goes out, coalesced Accept and Accepted messages are flushed
        (Accepts cut to the chunk bound), and newly committed slots are handed out in order."""
        if self.role is Role.CANDIDATE:
            self._maybe_lead(now)
        if self.role is Role.LEADER:
            if self._queue:
                self._propose_queued()
            if self._read_round_due:
                self._read_round_due = False
                self._send_heartbeats(now, force=True, everyone=True)
                self._confirm_reads()
        if self._accept_out:
            for peer, entries in self._accept_out.items():
                for run in _chunks(entries, _entry_size, self.config.max_chunk_bytes):
                    self._send(peer, Accept(self.ballot, tuple(run), self.commit_index), now)
            self._accept_out = {}
        if self._accepted_out:
            for ballot, slots in self._accepted_out.items():
                leader = ballot.node_id
                message = Accepted(ballot, tuple(slots), self.first_unchosen, self.applied)
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
        self._forget()
        self._ready = Ready()
        return ready


def _command_size(command: Command) -> int:
    return len(command.request_id) + len(command.payload) + 8


def _entry_size(entry: tuple[int, Value]) -> int:
    return entry[1].size
