"""The node host: the one loop around the pure Paxos core, for one node.

The core (consensus.paxos) decides; the host does what the core's `Ready` demands, in the
order ready.py states, through four small interfaces and nothing else:

  1. an input (an envelope's messages from a peer, commands submitted here, linearizable
     reads, a timer tick) goes to the core; several inputs may share one step (their
     Readys merge, `Ready.extend`): one persist, and one `Transport.send` per peer;
  2. `Storage.persist` writes the step's acceptor state (promise, accepted values) and
     returns only once it is durable;
  3. only then `Transport.send` sends the step's messages, one call per peer;
  4. `StateMachine.learned` gets the newly chosen entries, which it records and applies
     in slot order (now, or later on a thread of its own); the read indexes answered go
     to `StateMachine.read_indexes`;
     the snapshot installs the core asks for go to `StateMachine.install_snapshot`;
  5. before each step, the index the state machine reports applied goes back to the core
     (`Node.on_applied`): its acknowledgements carry it, a leader streaming it catch-up
     paces itself by it, and `status()` publishes it; an index beyond what the core knows
     chosen (a snapshot installed, typically) is followed by the log's compaction point
     as storage has it (`Storage.compacted_through`).

Compaction (`compact`, called by the driver now and then): the durable log is pruned
through min(the state machine's latest snapshot, its applied index - `log_tail`), never
further: a slot above the snapshot may still be needed by a peer that installs the
snapshot, and a slot not applied here is still needed here. A peer that lacks a pruned
slot is sent InstallSnapshot by the core and installs the snapshot (state transfer).

`Ready.committed` (the core's in-order hand-out of slots) is not used: the state machine
orders by slot itself, from the chosen log it records, as it must anyway after a restart.

If `Storage.persist` raises, the core's memory is ahead of storage: the step's messages,
chosen entries and reads are dropped, and the core is rebuilt from `Storage.load` before
the next input (lazily: storage may still be down then, and the input that finds it so
raises to its caller).

This is the production loop (consensus.runtime, with PostgreSQL, Celery and the config
store's applier) and the loop of the simulator, the bench and the core's test harness
(with the in-memory adapters below): there is no other. Modelled on etcd-io/raft's
RawNode and Storage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from consensus.paxos import (
    Ballot,
    Command,
    Config,
    DurableState,
    Message,
    Node,
    Ready,
    Value,
    commands_to_apply,
)

log = logging.getLogger(__name__)

#: Deliberately broken behaviours of the host and its in-memory adapters, for the
#: simulator's canaries (tests prove its checks catch each). Never set in production.
HOST_BUGS = frozenset(
    {
        "send_before_persist",
        "apply_out_of_order",
        "forget_applied_on_restart",
        # compaction prunes through the applied index, above the latest snapshot (a peer
        # that installs the snapshot then lacks the slots between)
        "compact_beyond_snapshot",
        # a snapshot install resets the node's acceptor state (promise, votes)
        "install_resets_acceptor",
        # a snapshot is installed without verifying its checksum
        "install_unverified",
    }
)


# ---------------------------------------------------------------------- interfaces


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a clock that never goes back (the core's timers); only differences
        between its readings mean anything."""
        ...


class Storage(Protocol):
    """The node's durable acceptor state and chosen log (etcd-raft's Storage). The host is
    its only writer of acceptor state; the state machine writes the chosen log."""

    def load(self) -> tuple[DurableState, int]:
        """The node as it was left: the promise, the accepted values and chosen entries of
        the slots above the applied index (at least those), and the applied index as the
        state machine last made it durable. Called at start and after a failed persist."""
        ...

    def persist(self, ready: Ready) -> None:
        """Make `ready.promised` and `ready.accepted` durable, all or nothing, and return
        only once they are (called only when `ready.must_persist`). Never lowers a promise.
        Raises if it cannot: the host then rebuilds the core from `load`."""
        ...

    def read(self, first_slot: int, max_slots: int, max_bytes: int) -> list[Value]:
        """The chosen log as the core's ChosenLog (consensus.paxos.ready): chosen values
        from `first_slot` on, without a gap, within the bounds."""
        ...

    def compact(self, through: int) -> None:
        """Prune the accepted values and chosen entries of every slot <= `through`, all or
        nothing, and record `through` as the compaction point (`load` returns it in
        DurableState.compacted_through). Only called with slots that are applied here and
        covered by the state machine's latest snapshot."""
        ...

    @property
    def compacted_through(self) -> int:
        """The compaction point as durable now: the host's compactions and the snapshot
        installs of the state machine (which prune the log below the snapshot) move it."""
        ...


class Transport(Protocol):
    def send(self, peer: str, messages: list[Message]) -> None:
        """Send `messages` to `peer`, in order, best effort: they may be lost, delayed,
        duplicated or reordered (Paxos retransmits), but must not be altered. Called only
        with state the messages depend on already persisted. Never raises for a message
        that could not go: it is lost."""
        ...


class StateMachine(Protocol):
    """The replicated state machine as the host sees it: a sink of chosen entries that
    reports how far it applied (the config store's applier, consensus.applier)."""

    @property
    def applied_index(self) -> int | None:
        """The highest slot applied, durably, with every slot below it; None while not
        known yet (the host then keeps the last index it knew)."""
        ...

    def learned(self, chosen: list[tuple[int, Value]]) -> None:
        """Entries the core newly learned as chosen, in the order it learned them (not
        necessarily slot order; gaps possible). Record them, and apply every chosen slot
        after the applied index strictly in slot order, each exactly once, each atomically
        with the applied index, now or later. Entries lost in a crash before they were
        recorded are learned again from peers."""
        ...

    def read_indexes(self, reads: list[tuple[str, int]]) -> None:
        """Linearizable reads answered: (read id, read index). A read may be served once
        the applied index reaches its read index, never before. Best effort: a reader not
        told times out and asks again."""
        ...

    @property
    def snapshot_index(self) -> int:
        """The applied index of its latest durable, checksummed snapshot (0: none). The
        host compacts the log only through it."""
        ...

    def install_snapshot(self, peer: str, index: int) -> None:
        """`peer`'s log is compacted through `index` and this node lacks a slot there:
        fetch `peer`'s latest snapshot (at an index >= `index`) in chunks, verify its
        checksum and, if it is above the applied index, install it atomically and report
        its index as applied. Outside the step (it takes as long as it takes);
        one transfer at a time (asks while one runs are ignored); best effort: the peer
        asks again. Never touches the acceptor state (promises and votes stay binding)."""
        ...


# ---------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class FromPeer:
    """Messages of one envelope from a peer (authenticated by the transport)."""

    sender: str
    messages: Sequence[Message]


@dataclass(frozen=True, slots=True)
class Submission:
    """Commands submitted at this node; their outcome is read from the applied state."""

    commands: Sequence[Command]


@dataclass(frozen=True, slots=True)
class ReadRequests:
    """Linearizable reads arriving at this node, by read id."""

    read_ids: Sequence[str]


Input = FromPeer | Submission | ReadRequests


# ---------------------------------------------------------------------- the host


class NodeHost:
    def __init__(
        self,
        config: Config,
        *,
        storage: Storage,
        transport: Transport,
        state_machine: StateMachine,
        clock: Clock,
        rng: random.Random,
        log_tail: int = 1024,
        trace: bool = False,
        bugs: frozenset[str] = frozenset(),
    ) -> None:
        unknown = set(bugs) - HOST_BUGS
        if unknown:
            raise ValueError(f"unknown host bugs {sorted(unknown)}")
        self.config = config
        self.storage = storage
        self.transport = transport
        self.state_machine = state_machine
        self.clock = clock
        self.rng = rng
        #: Slots kept in the durable log below the applied index when compacting, so that
        #: a short outage catches up by replay rather than by a snapshot install.
        self.log_tail = log_tail
        self._compact_beyond_snapshot = "compact_beyond_snapshot" in bugs
        #: Log every step's timings (for profiling, not production).
        self.trace = trace
        self._send_first = "send_before_persist" in bugs
        self.core: Node | None = None  # None: (re)built from storage before the next input
        self.storage_failures = 0

    # ------------------------------------------------------------------ inputs

    def on_message(self, sender: str, message: Message) -> Ready:
        """One message from a peer, in a step of its own. Returns the Ready handled."""
        core = self._core_for_step()
        return self._handle(core.on_message(sender, message, self.clock.now()), sender)

    def submit(self, commands: Sequence[Command]) -> Ready:
        core = self._core_for_step()
        return self._handle(core.submit(commands, self.clock.now()), "submit")

    def read_index(self, read_ids: Sequence[str]) -> Ready:
        core = self._core_for_step()
        return self._handle(core.read_index(read_ids, self.clock.now()), "reads")

    def tick(self) -> Ready:
        core = self._core_for_step()
        return self._handle(core.on_tick(self.clock.now()), "tick")

    def step(self, inputs: Iterable[Input]) -> Ready:
        """Several inputs in one step: one Ready, persisted once, one send per peer."""
        core = self._core_for_step()
        now = self.clock.now()
        ready = Ready()
        count = 0
        for item in inputs:
            count += 1
            match item:
                case FromPeer(sender=sender, messages=messages):
                    for message in messages:
                        ready.extend(core.on_message(sender, message, now))
                case Submission(commands=commands):
                    ready.extend(core.submit(commands, now))
                case ReadRequests(read_ids=read_ids):
                    ready.extend(core.read_index(read_ids, now))
                case _:
                    raise TypeError(f"not an input of the host: {item!r}")
        return self._handle(ready, f"{count} inputs")

    def compact(self, max_slots: int | None = None) -> int:
        """Prune the durable log as far as the rule allows (see the module's docstring), by
        at most `max_slots` slots at once if given; the compaction point after it. Called by
        the driver between steps (I/O)."""
        core = self._core_for_step()
        applied = self.state_machine.applied_index
        if applied is None:
            return core.compacted_through
        through = min(self.state_machine.snapshot_index, applied - self.log_tail)
        if self._compact_beyond_snapshot:
            through = applied - self.log_tail
        if max_slots is not None:
            through = min(through, core.compacted_through + max_slots)
        if through > core.compacted_through:
            self.storage.compact(through)
            core.on_compacted(through)
        return core.compacted_through

    # ------------------------------------------------------------------ state

    def node(self) -> Node:
        """The core, (re)built from storage if it has none (I/O)."""
        if self.core is None:
            state, applied = self.storage.load()
            self.core = Node(
                self.config,
                state,
                applied_index=applied,
                now=self.clock.now(),
                rng=self.rng,
                log=self.storage,
            )
            # What storage holds applied; the state machine reports its progress from here.
            self.core.on_applied(applied)
            log.info(
                "node %s started: promised %s, %d accepted, %d chosen, applied %d",
                self.config.node_id,
                state.promised,
                len(state.accepted),
                len(state.chosen),
                applied,
            )
        return self.core

    def status(self) -> dict:
        """The core's status, with the applied index the state machine reports (what it
        durably applied, not what the core handed out)."""
        status = self.node().status()
        applied = self.state_machine.applied_index
        if applied is not None:
            status["applied_index"] = applied
        return status

    # ------------------------------------------------------------------ the loop

    def _core_for_step(self) -> Node:
        core = self.core if self.core is not None else self.node()
        applied = self.state_machine.applied_index
        if applied is not None:
            beyond = applied >= core.first_unchosen
            core.on_applied(applied)
            if beyond:  # a snapshot installed, or slots applied that the core never saw
                core.on_compacted(self.storage.compacted_through)
        return core

    def _handle(self, ready: Ready, what: str) -> Ready:
        """Persist, then send, then hand the chosen entries and the reads on."""
        started = time.perf_counter() if self.trace else 0.0
        if self._send_first and ready.messages:  # the send_before_persist canary
            self._send(ready.messages)
        if ready.must_persist:
            try:
                self.storage.persist(ready)
            except Exception:
                self._drop_core()
                return ready
        persisted = time.perf_counter() if self.trace else 0.0
        if ready.messages and not self._send_first:
            self._send(ready.messages)
        sent = time.perf_counter() if self.trace else 0.0
        if ready.chosen:
            self.state_machine.learned(ready.chosen)
        if ready.reads:
            self.state_machine.read_indexes(ready.reads)
        for peer, index in ready.snapshots:
            self.state_machine.install_snapshot(peer, index)
        if self.trace and (ready.must_persist or ready.messages or ready.chosen):
            log.warning(
                "%s: persisted %d accepted in %.2f ms; sent %s in %.2f ms; "
                "%d chosen to the state machine",
                what,
                len(ready.accepted),
                (persisted - started) * 1000,
                [type(m).__name__ for _, m in ready.messages],
                (sent - persisted) * 1000,
                len(ready.chosen),
            )
        return ready

    def _send(self, messages: list[tuple[str, Message]]) -> None:
        if len(messages) == 1:
            to, message = messages[0]
            self.transport.send(to, [message])
            return
        by_peer: dict[str, list[Message]] = {}
        for to, message in messages:
            batch = by_peer.get(to)
            if batch is None:
                by_peer[to] = [message]
            else:
                batch.append(message)
        for peer, batch in by_peer.items():
            self.transport.send(peer, batch)

    def _drop_core(self) -> None:
        """The core's memory is ahead of storage: drop it; `node()` reloads it."""
        log.exception(
            "persisting a step failed; rebuilding node %s from storage", self.config.node_id
        )
        self.core = None
        self.storage_failures += 1


# ---------------------------------------------------------------------- adapters


class MonotonicClock:
    """The machine's monotonic clock (production)."""

    def now(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told (the simulator, the bench, tests)."""

    def __init__(self, now: float = 0.0) -> None:
        self.time = now

    def now(self) -> float:
        return self.time


class MemoryStorage:
    """Storage in memory: `durable` outlives the host that writes it, as a disk would
    (the simulator keeps it across a node's crashes). The applied index comes from the
    node's state machine, whose own durable record it is."""

    def __init__(self, durable: DurableState, state_machine: StateMachine) -> None:
        self.durable = durable
        self.state_machine = state_machine

    def load(self) -> tuple[DurableState, int]:
        return self.durable, self.state_machine.applied_index or 0

    def persist(self, ready: Ready) -> None:
        self.durable.apply(ready)

    def read(self, first_slot: int, max_slots: int, max_bytes: int) -> list[Value]:
        return self.durable.read(first_slot, max_slots, max_bytes)

    def compact(self, through: int) -> None:
        self.durable.compact(through)

    @property
    def compacted_through(self) -> int:
        return self.durable.compacted_through


class Outbox:
    """A transport that appends (sender, peer, message) to a queue: whoever drives the
    nodes delivers them (the bench, the core's test harness)."""

    def __init__(self, sender: str, queue) -> None:
        self.sender = sender
        self.queue = queue

    def send(self, peer: str, messages: list[Message]) -> None:
        sender, queue = self.sender, self.queue
        for message in messages:
            queue.append((sender, peer, message))


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    """A MemoryStateMachine's whole state at an applied index, checksummed: its idempotency
    records and its history (the config store's snapshot, in miniature)."""

    index: int
    applied_ids: frozenset[str]
    applied_log: tuple[tuple[int, tuple[str, ...]], ...]
    checksum: str

    @classmethod
    def of(cls, index: int, applied_ids, applied_log) -> MemorySnapshot:
        ids, history = frozenset(applied_ids), tuple(applied_log)
        return cls(index, ids, history, _checksum(index, ids, history))

    def intact(self) -> bool:
        return self.checksum == _checksum(self.index, self.applied_ids, self.applied_log)


def _checksum(index: int, ids: frozenset[str], history: tuple) -> str:
    text = json.dumps([index, sorted(ids), history], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class MemoryStateMachine:
    """A state machine in memory that records the request ids it applies, durable as a
    node's database is (it survives its host's crash; `restart()` is the crash): the
    simulator's, the bench's and the tests'.

    As the runtime's applier, it records learned entries in the chosen log (`log`, the
    node's DurableState.chosen, which storage loads) and applies from it in slot order,
    each slot with the applied index: at once (`rate` 0), or at most `rate` slots per
    `run()` (the applier thread's turn, which also picks up slots recorded but not applied
    before a crash). Learned entries not yet recorded are lost in a crash, as the applier's
    queue is. `observe(slot, value, fresh)` is called before each slot's application.

    Test-only broken behaviours (HOST_BUGS): `apply_out_of_order` applies entries in the
    order learned, skipping gaps; `forget_applied_on_restart` comes back from a crash with
    applied index 0 (its applied state kept); `install_resets_acceptor` and
    `install_unverified`: see HOST_BUGS.

    Snapshots: `take_snapshot()` captures its state, `keep_snapshot()` makes one its
    latest durable snapshot (the simulator takes them in the background: a crash between
    the two loses it); `install(snapshot)` replaces its state by a peer's. Fetching a
    peer's snapshot is the driver's: `install_snapshot` hands the ask to `on_install`."""

    def __init__(
        self,
        log: DurableState,
        *,
        rate: int = 0,
        dedup: bool = True,
        observe: Callable[[int, Value, list[Command]], None] | None = None,
        on_reads: Callable[[list[tuple[str, int]]], None] | None = None,
        on_install: Callable[[str, int], None] | None = None,
        bugs: frozenset[str] = frozenset(),
    ) -> None:
        self.log = log
        self.rate = rate
        self.dedup = dedup
        self.observe = observe
        self.on_reads = on_reads
        self.on_install = on_install
        #: Its latest durable snapshot.
        self.snapshot: MemorySnapshot | None = None
        self.applied_index = 0
        self.applied_ids: set[str] = set()
        #: (slot, request ids applied) in the order applied.
        self.applied_log: list[tuple[int, tuple[str, ...]]] = []
        #: The most slots ever held learned and not applied (since `most_held` was reset).
        self.most_held = 0
        self._queue: list[tuple[int, Value]] = []  # learned, not recorded (volatile)
        self._ahead = 0  # slots recorded above the applied index
        self._out_of_order = "apply_out_of_order" in bugs
        self._forget_applied = "forget_applied_on_restart" in bugs
        self._install_resets = "install_resets_acceptor" in bugs
        self._install_unverified = "install_unverified" in bugs

    def learned(self, chosen: list[tuple[int, Value]]) -> None:
        if self.rate:
            self._queue.extend(chosen)
            self._held()
            return
        self._record_and_apply(chosen, None)

    def run(self) -> None:
        """The applier's turn: record what was learned, apply up to `rate` slots (all with
        rate 0) from the chosen log."""
        if not self._queue and self.applied_index + 1 not in self.log.chosen:
            return
        queue, self._queue = self._queue, []
        self._record_and_apply(queue, self.rate or None)

    def read_indexes(self, reads: list[tuple[str, int]]) -> None:
        if self.on_reads is not None:
            self.on_reads(reads)

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.index if self.snapshot is not None else 0

    def install_snapshot(self, peer: str, index: int) -> None:
        if self.on_install is not None:
            self.on_install(peer, index)

    def take_snapshot(self) -> MemorySnapshot:
        """Its state now (as a repeatable-read transaction would see it)."""
        return MemorySnapshot.of(self.applied_index, self.applied_ids, self.applied_log)

    def keep_snapshot(self, snapshot: MemorySnapshot) -> None:
        """Make `snapshot` (one of its own, or one it installed) its latest durable one."""
        if snapshot.index > self.snapshot_index:
            self.snapshot = snapshot

    def install(self, snapshot: MemorySnapshot) -> bool:
        """Replace its state by `snapshot`'s, atomically: its applied index, idempotency
        records and history; the chosen log through the snapshot's index is pruned (it is
        compacted through there now). Refused (False) unless it is intact and above the
        applied index. The acceptor's promise and votes for slots above it stay."""
        if snapshot.index <= self.applied_index:
            return False
        if not snapshot.intact() and not self._install_unverified:
            return False
        self.applied_index = snapshot.index
        self.applied_ids = set(snapshot.applied_ids)
        self.applied_log = list(snapshot.applied_log)
        self.log.compact(snapshot.index)
        self._queue = [entry for entry in self._queue if entry[0] > snapshot.index]
        self._ahead = sum(1 for slot in self.log.chosen if slot > snapshot.index)
        self.keep_snapshot(snapshot)
        if self._install_resets:
            self.log.promised, self.log.accepted = Ballot.ZERO, {}
        return True

    def restart(self) -> None:
        """Its host crashed: what was learned and not recorded is lost."""
        self._queue = []
        if self._forget_applied:
            self.applied_index = 0

    def held(self) -> int:
        """Slots learned and not applied now."""
        return len(self._queue) + self._ahead

    def _held(self) -> None:
        held = len(self._queue) + self._ahead
        if held > self.most_held:
            self.most_held = held

    def _record_and_apply(self, chosen: list[tuple[int, Value]], limit: int | None) -> None:
        log = self.log.chosen
        compacted = self.log.compacted_through
        for slot, value in chosen:
            if slot not in log and slot > compacted:
                log[slot] = value
                if slot > self.applied_index:
                    self._ahead += 1
        self._held()
        if self._out_of_order:
            for slot, value in chosen:
                if slot > self.applied_index:
                    self._apply(slot, value)
            return
        applied = 0
        slot = self.applied_index + 1
        while slot in log and (limit is None or applied < limit):
            self._apply(slot, log[slot])
            applied += 1
            slot += 1

    def _apply(self, slot: int, value: Value) -> None:
        fresh = commands_to_apply(value, self.applied_ids, dedup=self.dedup)
        if self.observe is not None:
            self.observe(slot, value, fresh)
        self.applied_ids.update(c.request_id for c in fresh)
        self.applied_log.append((slot, tuple(c.request_id for c in fresh)))
        self.applied_index = slot
        if self._ahead:
            self._ahead -= 1
