"""One seed, one simulated cluster: N nodes on a simulated network and clock.

Each node is the production loop, consensus.host.NodeHost, around its Paxos core, with
in-memory adapters: storage that fails now and then (the host must rebuild its core),
the simulated network as transport, and a state machine that applies at once or lags as
the runtime's applier thread does. Everything comes from one `random.Random(seed)`:
message loss, duplication, delay (and so reordering), partitions that form and heal,
failed persists, crashes at any point of a step (at the persist, at the send, at the
hand-over to the state machine, after the step), restarts from durable state only, and
clients that submit and retry commands. No wall clock, no threads: the same seed replays
the same run exactly.

Compaction and state transfer (most seeds): each state machine takes a snapshot in the
background now and then (a crash before it is durable loses it); each host compacts its
log on its ticks, keeping a drawn tail; a node that lacks a slot its peer pruned fetches
that peer's snapshot in chunks over the simulated network (lost, delayed, cut off by
partitions; a transfer keeps to the snapshot it started on, which the source keeps while
it is read; the receiver may crash between chunks, and resumes from the chunks it staged
while that snapshot still covers the peer's compaction point), then installs it in a step
of its own (which may crash before or after the install); now and then a snapshot arrives
damaged. The checks: a node compacts only slots it applied and its snapshot covers; the
core never reads a pruned slot; a snapshot asked for covers the asker's compaction point;
a damaged snapshot is refused; an installed snapshot is above the node's applied index,
holds exactly the history every node applied through its index, and leaves the node's
promise and votes as they were.

Safety is checked after every step (`Checker`); once the fault phase ends (heal, restart,
no loss, a majority up) every submitted command must be chosen and applied on every node
that is up within a bounded simulated time (liveness). Clients also issue linearizable
reads (ReadIndex): a read's index must cover every slot chosen before it was issued.
Every message's size is accounted and held to the core's bounds.

The "rejoin" scenario (`Params.scenario`) asks what a returning node costs a healthy
cluster: no faults, no loss; once a leader leads, one follower goes down (crashed, or cut
off and still running) while thousands of commands commit, then comes back. Disruption
check: no election and no change of leader from the moment it went down, and it catches
up (applies everything chosen) within a bound.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import random
from dataclasses import dataclass
from functools import partial

from consensus.host import HOST_BUGS, MemorySnapshot, MemoryStateMachine, MemoryStorage, NodeHost
from consensus.paxos import (
    KNOWN_BUGS,
    Accept,
    Accepted,
    Ballot,
    Chosen,
    Command,
    Config,
    DurableState,
    Forward,
    InvariantViolation,
    Message,
    Node,
    Promise,
    Ready,
    Role,
    Value,
    decode,
    encode,
    message_size,
)

from .checks import Checker, Violation

TICK = 0.01
#: Crashes during a snapshot transfer or install, at most, per run.
TRANSFER_CRASHES = 3

#: Where in a step a simulated crash strikes: at the persist, at the first send, at the
#: hand-over of chosen entries to the state machine (each: before it happens). A snapshot
#: install strikes at INSTALL: two armed crashes in three fall before it, one after.
PERSIST, SEND, APPLY = 0, 1, 2
INSTALL = SEND


class Crash(BaseException):
    """The simulated process dies here: none of its code runs after this point. (Not an
    Exception: the host's handling of a failed persist must not see it.)"""


class StorageFailure(Exception):
    """A simulated persist that failed and wrote nothing."""


class _Stop(BaseException):
    """Carries a Violation found inside a persist past the host, which takes any Exception
    from Storage.persist for a failed write."""

    def __init__(self, violation: Violation) -> None:
        super().__init__(str(violation))
        self.violation = violation


@dataclass(frozen=True)
class Params:
    """Knobs of one run; every one is drawn from the seed unless given."""

    nodes: int = 3
    fault_time: float = 2.0
    liveness_time: float = 15.0
    max_loss: float = 0.3
    mid_step_crash: float = 0.002
    persist_failure: float = 0.005
    wire: bool = False  # round-trip every message through its JSON form
    #: Deliberately broken behaviours: the core's (KNOWN_BUGS), the host's (HOST_BUGS) and
    #: "forget_on_restart" (a node comes back with empty storage).
    bugs: frozenset[str] = frozenset()
    scenario: str = "faults"  # or "rejoin" (see the module's docstring)
    #: rejoin: commands committed while the node is down; the catch-up bound after it returns.
    rejoin_writes: int = 2000
    catchup_time: float = 5.0
    #: Whether nodes snapshot and compact their logs (None: three seeds in four).
    compaction: bool | None = None


@dataclass
class Stats:
    steps: int = 0
    messages: int = 0
    crashes: int = 0
    persist_failures: int = 0
    partitions: int = 0
    submitted: int = 0
    reads: int = 0
    elections: int = 0
    leader_changes: int = 0
    bytes: int = 0  # estimated (message_size); exact in wire mode
    wire_messages: int = 0  # messages round-tripped through their JSON form (--wire)
    max_message: int = 0
    #: rejoin: simulated seconds from the node's return until it applied everything.
    catchup: float = 0.0
    snapshots: int = 0  # snapshots made durable
    compactions: int = 0
    installs: int = 0  # snapshots installed by state transfer
    transfer_chunks: int = 0
    transfer_crashes: int = 0  # a receiver crashed between chunks or at its install
    damaged_refused: int = 0  # damaged snapshots refused at install
    #: Fingerprint of the run (steps, messages, every node's applied log): equal for
    #: equal seeds, whatever the process or PYTHONHASHSEED.
    digest: str = ""


class Simulation:
    def __init__(self, seed: int, params: Params) -> None:
        self.seed = seed
        self.params = params
        self.rng = random.Random(seed * 16 + params.nodes)
        rng = self.rng
        self.ids = tuple(f"n{i}" for i in range(1, params.nodes + 1))
        self.f = (params.nodes - 1) // 2
        self.loss = rng.uniform(0.0, params.max_loss)
        self.duplicate = rng.uniform(0.0, 0.1)
        self.max_delay = rng.uniform(0.002, 0.03)
        self.mid_step_crash = params.mid_step_crash
        self.persist_failure = params.persist_failure
        #: The crash point armed for the step being run (PERSIST, SEND, APPLY), or None.
        self.crash_point: int | None = None
        core_bugs = frozenset(params.bugs) & KNOWN_BUGS
        self.host_bugs = frozenset(params.bugs) & HOST_BUGS
        rejoin = params.scenario == "rejoin"
        self.configs = {
            i: Config(
                node_id=i,
                nodes=self.ids,
                heartbeat_interval=0.03,
                election_timeout=0.15,
                retransmit_interval=0.05,
                window=rng.choice((2, 8, 32)),
                max_batch=rng.choice((1, 4, 64)) if not rejoin else rng.choice((1, 2)),
                max_batch_bytes=rng.choice((100, 4096, 1 << 20)),
                max_catchup=rng.choice((2, 16, 256)) if not rejoin else 256,
                max_chunk_bytes=rng.choice(
                    (200, 4096, 256 * 1024) if not rejoin else (4096, 1 << 18)
                ),
                catchup_in_flight=rng.choice((1, 2, 4) if not rejoin else (2, 4)),
                catchup_ahead=rng.choice((8, 64, 1024) if not rejoin else (64, 256)),
                catchup_bytes_per_second=rng.choice((0.0, 0.0, 20_000.0) if not rejoin else (0.0,)),
                kept_chosen=rng.choice((4, 64, 1024)),
                forward_interval=rng.choice((0.0, 0.005, 0.02)),
                bugs=core_bugs,
            )
            for i in self.ids
        }
        # Applier lag: a node's state machine applies at most this many slots per tick (0:
        # at once, in the step), as the runtime's applier thread lags; its host reports its
        # index to the core, and peers streaming it catch-up pace themselves by it.
        applier_rate = {i: rng.choice((32, 128) if rejoin else (0, 0, 4, 64)) for i in self.ids}
        # Compaction (three seeds in four): snapshots every `snapshot_interval` seconds on
        # average, a log tail per node, snapshot chunks of `chunk_slots` history entries.
        drawn = rng.random() < 0.75
        self.compacting = drawn if params.compaction is None else params.compaction
        self.snapshot_interval = rng.choice((0.05, 0.2, 0.8))
        self.log_tail = {i: rng.choice((0, 4, 32) if not rejoin else (16, 128)) for i in self.ids}
        self.chunk_slots = rng.choice((4, 16, 64) if not rejoin else (256, 1024))
        #: Chance that a node crashes between two snapshot chunks it receives, and in the
        #: step that installs a snapshot (in either phase, at most TRANSFER_CRASHES times a
        #: run: its supervisor starts it again soon after).
        self.transfer_crash = 0.05 if not rejoin else 0.0
        self.install_crash = 0.25 if not rejoin else 0.0
        #: Chance that a snapshot arrives damaged (its checksum then fails).
        self.damage = 0.3 if not rejoin else 0.0
        # Snapshot transfers: node -> (its incarnation, source, index asked), while one
        # runs; and what each node staged of a snapshot (durable: it resumes from there).
        self.transfers: dict[str, tuple[int, str, int]] = {}
        self.staging: dict[str, tuple[str, MemorySnapshot, int]] = {}
        self.now = 0.0
        self.clock = _SimClock(self)
        # A node's disk: its acceptor state and chosen log, and its state machine.
        self.durable = {i: DurableState() for i in self.ids}
        dedup = "no_dedup" not in params.bugs
        self.machines = {
            i: _SimStateMachine(
                self,
                i,
                self.durable[i],
                rate=applier_rate[i],
                dedup=dedup,
                observe=partial(self._applied, i),
                on_reads=partial(self._reads_answered, i),
                on_install=partial(self._install_asked, i),
                bugs=self.host_bugs,
            )
            for i in self.ids
        }
        self.storages = {i: _SimStorage(self, i) for i in self.ids}
        self.transports = {i: _SimTransport(self, i) for i in self.ids}
        self.nodes: dict[str, NodeHost | None] = {}
        self.incarnation = dict.fromkeys(self.ids, 0)
        self.blocked: set[tuple[str, str]] = set()
        self.paused: dict[str, float] = {}  # node -> when it resumes
        self.events: list = []
        self._seq = 0
        self.stats = Stats()
        self.checker = Checker(self.ids, self.configs[self.ids[0]].quorum)
        # Clients: request id -> (command, next retry time).
        self.outstanding: dict[str, tuple[Command, float]] = {}
        self._next_request = 0
        # Reads issued and not yet answered: read id -> the highest slot chosen before it.
        self.reads: dict[str, int] = {}
        self._ballots: set = set()
        self._leader_ballots: set = set()
        for i in self.ids:
            self._start(i)

    # ---------------------------------------------------------------- event loop

    def _at(self, when: float, kind: str, *args) -> None:
        self._seq += 1
        heapq.heappush(self.events, (when, self._seq, kind, args))

    def _run_until(self, deadline: float, stop=None) -> None:
        while self.events and self.events[0][0] <= deadline:
            when, _, kind, args = heapq.heappop(self.events)
            self.now = when
            getattr(self, "_ev_" + kind)(*args)
            if stop is not None and kind == "check" and stop():
                return
        self.now = max(self.now, deadline)

    def run(self) -> Stats:
        """The whole run: faults, then healing, then the liveness bound. Raises Violation."""
        if self.params.scenario == "rejoin":
            return self._run_rejoin()
        p = self.params
        rng = self.rng
        self._at(rng.uniform(0.0, 0.3), "nemesis")
        for client in range(3):
            self._at(rng.uniform(0.0, 0.1), "client", client)
        self._at(rng.uniform(0.0, 0.1), "reader")
        self._run_until(p.fault_time)
        self._heal()
        end = self.now + p.liveness_time
        self._at(self.now + 0.1, "check")
        self._run_until(end, stop=self._converged)
        if not self._converged():
            missing = sorted(rid for rid in self.outstanding)[:5]
            up = [i for i in self.ids if self.nodes[i] is not None]
            applied = {i: self.machines[i].applied_index for i in up}
            raise Violation(
                f"liveness: {len(self.outstanding)} submitted commands not applied on every "
                f"up node {p.liveness_time}s after faults stopped (e.g. {missing}); "
                f"applied indexes {applied}"
            )
        return self._finish_stats()

    def _finish_stats(self) -> Stats:
        logs = [self.machines[i].applied_log for i in self.ids]
        fingerprint = repr((self.stats.steps, self.stats.messages, logs)).encode()
        self.stats.digest = hashlib.sha256(fingerprint).hexdigest()[:16]
        return self.stats

    # ---------------------------------------------------------------- rejoin scenario

    def _run_rejoin(self) -> Stats:
        """A healthy cluster, one follower away while `rejoin_writes` commands commit, then
        back: the disruption check (see the module's docstring)."""
        p = self.params
        rng = self.rng
        self.loss = self.duplicate = 0.0
        self.mid_step_crash = self.persist_failure = 0.0
        self._at(0.0, "check")
        self._run_until(5.0, stop=lambda: self._leader() is not None)
        leader = None
        for _ in range(20):  # settled: one leader, everyone follows it, no candidate left
            self._run_until(self.now + 0.5)
            settled = self._leader()
            if (
                settled is not None
                and settled == leader
                and all(self._core(i).leader_id == leader for i in self.ids)
            ):
                break
            leader = settled
        else:
            raise Violation("rejoin: no settled leader within 10 s on a lossless network")
        elections_before, changes_before = self.stats.elections, self.stats.leader_changes
        away = rng.choice([i for i in self.ids if i != leader])
        isolate = rng.random() < 0.5
        if isolate:
            self.blocked = {
                (a, b) for a in self.ids for b in self.ids if (a == away) != (b == away)
            }
        else:
            self._crash(away)
        # The writes: one client submitting to the leader in bursts until all are applied.
        batch = rng.choice((1, 8, 32))
        written = 0
        while written < p.rejoin_writes:
            commands = []
            for _ in range(min(batch, p.rejoin_writes - written)):
                self._next_request += 1
                rid = f"w-{self._next_request}"
                command = Command(rid, f"set k{rng.randrange(5)} {self._next_request}")
                self.checker.on_submit(command)
                self.outstanding[rid] = (command, float("inf"))
                commands.append(command)
            written += len(commands)
            self.stats.submitted += len(commands)
            target = rng.choice([i for i in self.ids if i != away])
            self._step(target, lambda host, c=commands: host.submit(c))
            self._run_until(self.now + 0.002)
        others = [i for i in self.ids if i != away]
        # Time enough for the slowest configuration drawn (a window of 2 single-command slots).
        self._run_until(self.now + 60.0 + 0.05 * p.rejoin_writes, stop=lambda: not self.outstanding)
        if self.outstanding:
            raise Violation(f"rejoin: {len(self.outstanding)} writes not applied")
        # Back.
        back_at = self.now
        self.machines[away].most_held = 0
        if isolate:
            self.blocked.clear()
        else:
            self._start(away)
        target = max(self.machines[i].applied_index for i in others)
        # A client keeps writing at the leader meanwhile (as the real benchmark's probe):
        # the leader then sends Accepts rather than heartbeats, so what the returning node
        # reports must reach it in its Accepted too.
        self.probes = 0
        self._at(self.now, "probe", leader, back_at + p.catchup_time)
        self._run_until(
            back_at + p.catchup_time,
            stop=lambda: self.machines[away].applied_index >= target,
        )
        caught_up = self.machines[away].applied_index >= target
        self._run_until(self.now + 1.0)  # and nothing happens after it
        self.stats.catchup = self.now - back_at - 1.0
        elections = self.stats.elections - elections_before
        changes = self.stats.leader_changes - changes_before
        how = "cut off" if isolate else "crashed"
        if elections or changes or self._leader() != leader:
            raise Violation(
                f"disruption: {away} {how} while {p.rejoin_writes} writes committed; "
                f"{elections} elections and {changes} leader changes since (leader {leader})"
            )
        config = self.configs[leader]  # the leader paces the stream, by its own config
        # Besides the stream, the returning node learns the probe's slots, whose Accepts it
        # held, at once when the stream reaches them.
        bound = config.catchup_ahead + config.window + self.probes
        if self.machines[away].most_held > bound:
            raise Violation(
                f"unpaced catch-up: {away} held {self.machines[away].most_held} slots learned and "
                f"not applied (bound {bound}: catchup_ahead + the window + {self.probes} "
                "probe writes)"
            )
        if not caught_up:
            raise Violation(
                f"rejoin: {away} ({how}) applied {self.machines[away].applied_index} of "
                f"{target} slots {p.catchup_time}s after it came back"
            )
        return self._finish_stats()

    def _ev_probe(self, leader: str, until: float) -> None:
        if self.now >= until or self.nodes[leader] is None:
            return
        self._next_request += 1
        rid = f"p-{self._next_request}"
        command = Command(rid, f"set probe {self._next_request}")
        self.checker.on_submit(command)
        self.outstanding[rid] = (command, float("inf"))
        self.stats.submitted += 1
        self.probes += 1
        self._step(leader, lambda host: host.submit([command]))
        self._at(self.now + 0.02, "probe", leader, until)

    def _leader(self) -> str | None:
        leaders = [i for i in self.ids if self._role(i) is Role.LEADER]
        return leaders[0] if len(leaders) == 1 else None

    def _core(self, i: str) -> Node:
        """Node i's core (it is up), rebuilt from storage if a failed persist dropped it."""
        return self.nodes[i].node()

    def _role(self, i: str) -> Role | None:
        host = self.nodes[i]
        if host is None or host.core is None:
            return None
        return host.core.role

    # ---------------------------------------------------------------- nodes

    def _start(self, i: str) -> None:
        self.incarnation[i] += 1
        self.paused.pop(i, None)
        host = NodeHost(
            self.configs[i],
            storage=self.storages[i],
            transport=self.transports[i],
            state_machine=self.machines[i],
            clock=self.clock,
            rng=random.Random(self.rng.getrandbits(64)),
            log_tail=self.log_tail[i],
            bugs=self.host_bugs,
        )
        self.nodes[i] = host
        host.node()
        self._at(self.now + self.rng.uniform(0, TICK), "tick", i, self.incarnation[i])
        if self.compacting:
            delay = self.rng.uniform(0, self.snapshot_interval)
            self._at(self.now + delay, "snapshot", i, self.incarnation[i])

    def _crash(self, i: str) -> None:
        if self.nodes[i] is None:
            return
        self.nodes[i] = None
        self.machines[i].restart()
        self.stats.crashes += 1
        if "forget_on_restart" in self.params.bugs:
            durable = self.durable[i]
            durable.promised, durable.accepted, durable.chosen = Ballot.ZERO, {}, {}

    def _step(self, i: str, action, crash_chance: float | None = None) -> None:
        """Run one input through node i's host, with a rare crash (`crash_chance`, by default
        the run's) at a point of the step (volatile state lost, durable state kept)."""
        host = self.nodes[i]
        if host is None:
            return
        self.stats.steps += 1
        chance = self.mid_step_crash if crash_chance is None else crash_chance
        if chance and self.rng.random() < chance:
            self.crash_point = self.rng.choice((PERSIST, SEND, APPLY))
        try:
            action(host)
        except Crash:
            self.crash_point = None
            return self._crash(i)
        except _Stop as stop:
            raise stop.violation from None
        except InvariantViolation as e:
            raise Violation(f"node {i} detected: {e}") from None
        node = host.core
        if node is not None and node.role is not Role.FOLLOWER:
            if node.ballot not in self._ballots:
                self._ballots.add(node.ballot)
                self.stats.elections += 1
            if node.role is Role.LEADER and node.ballot not in self._leader_ballots:
                self._leader_ballots.add(node.ballot)
                self.stats.leader_changes += 1
        if self.crash_point is not None:  # the step passed every point: it dies after it
            self.crash_point = None
            self._crash(i)

    def _reach(self, point: int) -> None:
        """A step of the node being run reached `point`: the armed crash strikes here if
        it was armed for this point or an earlier one."""
        if self.crash_point is not None and point >= self.crash_point:
            raise Crash

    def _applied(self, i: str, slot: int, value: Value, fresh: list[Command]) -> None:
        self.checker.on_apply(i, slot, value, fresh, self.machines[i].applied_ids)
        for command in value.commands:
            self.outstanding.pop(command.request_id, None)

    # ---------------------------------------------------------------- network

    def _send(self, src: str, dst: str, message) -> None:
        self.stats.messages += 1
        size = self._account(src, message)
        if self.params.wire:
            text = json.dumps(encode(message))
            if len(text) > size:
                raise Violation(
                    f"{type(message).__name__} from {src} is {len(text)} bytes on the wire, "
                    f"above its estimate {size}"
                )
            message = decode(json.loads(text))
            self.stats.wire_messages += 1
        rng = self.rng
        if (src, dst) in self.blocked or rng.random() < self.loss:
            return
        copies = 2 if rng.random() < self.duplicate else 1
        for _ in range(copies):
            self._at(self.now + rng.uniform(0.0002, self.max_delay), "deliver", src, dst, message)

    def _account(self, src: str, message) -> int:
        """Count a message's size and hold it to the core's bounds: every message under the
        cap, and a message of many values (a batch of slots, a catch-up or promise chunk,
        forwarded commands) within the chunk bound."""
        config = self.configs[src]
        size = message_size(message)
        self.stats.bytes += size
        self.stats.max_message = max(self.stats.max_message, size)
        if size > config.max_message_bytes:
            raise Violation(f"{src} sent a {type(message).__name__} of {size} bytes")
        match message:
            case Accept(entries=entries) if len(entries) > 1:
                values = sum(v.size for _, v in entries)
            case Promise(accepted=accepted) if len(accepted) > 1:
                values = sum(v.size for _, _, v in accepted)
            case Chosen(values=chosen) if len(chosen) > 1:
                values = sum(v.size for v in chosen)
            case Forward(commands=commands) if len(commands) > 1:
                values = sum(len(c.request_id) + len(c.payload) + 8 for c in commands)
            case _:
                values = 0
        if values > config.max_chunk_bytes:
            raise Violation(
                f"{src} sent a {type(message).__name__} of {values} bytes of values, above "
                f"the chunk bound {config.max_chunk_bytes}"
            )
        return size

    def _ev_deliver(self, src: str, dst: str, message) -> None:
        if (src, dst) in self.blocked:
            return
        if self._paused(dst, "deliver", src, dst, message):
            return
        self._step(dst, lambda host: host.on_message(src, message))

    def _paused(self, i: str, kind: str, *args) -> bool:
        """Node i is paused (as by SIGSTOP): the event waits until it resumes."""
        until = self.paused.get(i)
        if until is None or until <= self.now:
            return False
        self._at(until + (TICK / 2 if kind == "tick" else 0.0), kind, *args)
        return True

    def _ev_tick(self, i: str, incarnation: int) -> None:
        if self.nodes[i] is None or self.incarnation[i] != incarnation:
            return
        if self._paused(i, "tick", i, incarnation):
            return
        self.machines[i].run()  # the applier thread's turn
        self._step(i, self._compact_and_tick if self.compacting else NodeHost.tick)
        self._at(self.now + TICK, "tick", i, incarnation)

    def _compact_and_tick(self, host: NodeHost) -> None:
        host.compact()
        host.tick()

    # ---------------------------------------------------------------- snapshots

    def _ev_snapshot(self, i: str, incarnation: int) -> None:
        """Node i's state machine starts a snapshot in the background: what it holds now,
        durable only once written in full (a crash before that loses it)."""
        if self.nodes[i] is None or self.incarnation[i] != incarnation:
            return
        if self._paused(i, "snapshot", i, incarnation):
            return
        snapshot = self.machines[i].take_snapshot()
        self._at(
            self.now + self.rng.uniform(0.001, 0.05), "snapshot_kept", i, incarnation, snapshot
        )
        interval = self.snapshot_interval
        self._at(
            self.now + self.rng.uniform(interval / 2, interval * 1.5), "snapshot", i, incarnation
        )

    def _ev_snapshot_kept(self, i: str, incarnation: int, snapshot: MemorySnapshot) -> None:
        if self.nodes[i] is None or self.incarnation[i] != incarnation:
            return
        self.machines[i].keep_snapshot(snapshot)
        self.stats.snapshots += 1

    def _install_asked(self, i: str, peer: str, index: int) -> None:
        """Node i's host asks for peer's snapshot (its log is compacted through `index`):
        a transfer starts unless one runs."""
        running = self.transfers.get(i)
        if running is not None and running[0] == self.incarnation[i]:
            return
        self.transfers[i] = (self.incarnation[i], peer, index)
        self._at(self.now + self.rng.uniform(0.0002, self.max_delay), "transfer", i, 0)

    def _ev_transfer(self, i: str, failures: int) -> None:
        """One chunk of node i's snapshot transfer: fetched from the source over the
        network (or failed: tried again, given up after a few failures, when the source
        asks again); the last one verified and installed in a step of node i's."""
        running = self.transfers.get(i)
        if self.nodes[i] is None or running is None or running[0] != self.incarnation[i]:
            return
        if self._paused(i, "transfer", i, failures):
            return
        _, source, index = running
        rng = self.rng
        latest = self.machines[source].snapshot if self.nodes[source] is not None else None
        cut = (i, source) in self.blocked or (source, i) in self.blocked
        if latest is None or cut or rng.random() < self.loss:
            if failures >= 5:
                del self.transfers[i]
            else:
                self._at(self.now + 0.02, "transfer", i, failures + 1)
            return
        if latest.index < index:
            raise Violation(
                f"{source} told {i} its log is compacted through {index}, but its latest "
                f"snapshot is at {latest.index}: the slots between are lost to {i}"
            )
        # The transfer is of the snapshot it started on (the source keeps a snapshot while
        # a transfer reads it): resumed from the chunks staged while that one still covers
        # what the source asks for, else started afresh on the latest.
        staged = self.staging.get(i)
        if staged is not None and staged[0] == source and staged[1].index >= index:
            _, snapshot, received = staged
        else:
            snapshot, received = latest, 0
        received += 1
        self.stats.transfer_chunks += 1
        if received < 1 + len(snapshot.applied_log) // self.chunk_slots:
            self.staging[i] = (source, snapshot, received)
            if self._transfer_crash_due(self.transfer_crash):
                self._crash(i)  # between two chunks: it resumes from those staged
                self._transfer_crashed(i)
                return
            self._at(self.now + rng.uniform(0.0002, self.max_delay), "transfer", i, 0)
            return
        self.staging.pop(i, None)
        del self.transfers[i]
        if rng.random() < self.damage:
            # A chunk arrived damaged: the checksum no longer matches (refused on install).
            damaged = ((0, ("damaged",)),) + snapshot.applied_log[1:]
            snapshot = dataclasses.replace(snapshot, applied_log=damaged)
        crash = self._transfer_crash_due(self.install_crash)
        self._step(i, partial(self._install, i, snapshot), crash_chance=1.0 if crash else 0.0)
        if self.nodes[i] is None:
            self._transfer_crashed(i)

    def _transfer_crash_due(self, chance: float) -> bool:
        return self.stats.transfer_crashes < TRANSFER_CRASHES and self.rng.random() < chance

    def _transfer_crashed(self, i: str) -> None:
        """Node i crashed during a transfer or an install: its supervisor restarts it."""
        self.stats.transfer_crashes += 1
        self._at(self.now + self.rng.uniform(0.05, 0.3), "restart", i, self.incarnation[i])

    def _ev_restart(self, i: str, incarnation: int) -> None:
        if self.nodes[i] is None and self.incarnation[i] == incarnation:
            self._start(i)

    def _install(self, i: str, snapshot: MemorySnapshot, host: NodeHost) -> None:
        if self.machines[i].install(snapshot):
            self.stats.installs += 1
        elif not snapshot.intact():
            self.stats.damaged_refused += 1
        host.tick()  # the core learns the new applied index and says so

    # ---------------------------------------------------------------- clients

    def _ev_client(self, client: int) -> None:
        """Submit a new command (during the fault phase) and retry overdue ones."""
        rng = self.rng
        if self.now < self.params.fault_time:
            self._next_request += 1
            rid = f"c{client}-{self._next_request}"
            command = Command(rid, f"set k{rng.randrange(5)} {self._next_request}")
            self.checker.on_submit(command)
            self.stats.submitted += 1
            self.outstanding[rid] = (command, self.now + 1.0)
            self._submit_to_random_node([command])
        overdue = [c for c, retry in self.outstanding.values() if retry <= self.now]
        for command in overdue:
            self.outstanding[command.request_id] = (command, self.now + 1.0)
        if overdue:
            self._submit_to_random_node(overdue)
        self._at(self.now + rng.uniform(0.02, 0.2), "client", client)

    def _ev_reader(self) -> None:
        """A client that reads, often, at random nodes, while faults go on."""
        if self.now < self.params.fault_time:
            self._issue_read(f"q{self._seq}")
            self._at(self.now + self.rng.uniform(0.002, 0.02), "reader")

    def _issue_read(self, rid: str) -> None:
        """A linearizable read at a random node that is up; it must be answered with an
        index at least the highest slot chosen by now."""
        up = [i for i in self.ids if self.nodes[i] is not None]
        if up:
            self.reads[rid] = self.checker.last_chosen_slot
            self._ev_read(self.rng.choice(up), rid)

    def _ev_read(self, i: str, rid: str) -> None:
        if self._paused(i, "read", i, rid):
            return
        self._step(i, lambda host: host.read_index([rid]))

    def _reads_answered(self, node: str, reads: list[tuple[str, int]]) -> None:
        for rid, index in reads:
            self._read_answered(node, rid, index)

    def _read_answered(self, node: str, rid: str, index: int) -> None:
        bound = self.reads.pop(rid, None)
        if bound is None:
            raise Violation(f"{node} answered read {rid}, which was never issued there or twice")
        self.stats.reads += 1
        if index < bound:
            raise Violation(
                f"stale read: {node} answered read {rid} with index {index}, but slot {bound} "
                f"was chosen before the read was issued (t={self.now:.3f})"
            )

    def _submit_to_random_node(self, commands: list[Command]) -> None:
        up = [
            i for i in self.ids if self.nodes[i] is not None and self.paused.get(i, 0.0) <= self.now
        ]
        if up:
            target = self.rng.choice(up)
            self._step(target, lambda host: host.submit(commands))

    # ---------------------------------------------------------------- nemesis

    def _ev_nemesis(self) -> None:
        if self.now >= self.params.fault_time:
            return
        rng = self.rng
        up = [i for i in self.ids if self.nodes[i] is not None]
        down = [i for i in self.ids if self.nodes[i] is None]
        roll = rng.random()
        if roll < 0.2 and up:
            self._crash(rng.choice(up))
        elif roll < 0.4 and down:
            self._start(rng.choice(down))
        elif roll < 0.5 and up:
            # Pause a node (the leader half the time): it resumes with its old view.
            leader = self._leader()
            target = leader if leader is not None and rng.random() < 0.5 else rng.choice(up)
            self.paused[target] = self.now + rng.uniform(0.2, 0.6)
            if rng.random() < 0.5:
                # ... and cut off from hearing the others, so it learns nothing on resuming.
                self.blocked = {(j, target) for j in self.ids if j != target}
        elif roll < 0.8:
            self._partition()
        else:
            self.blocked.clear()
        self._at(self.now + rng.uniform(0.05, 0.4), "nemesis")

    def _partition(self) -> None:
        rng = self.rng
        ids = list(self.ids)
        self.stats.partitions += 1
        kind = rng.choice(("split", "isolate_leader", "links"))
        self.blocked.clear()
        if kind == "links":
            for a in ids:
                for b in ids:
                    if a != b and rng.random() < 0.3:
                        self.blocked.add((a, b))
            return
        if kind == "isolate_leader":
            leaders = [i for i in ids if self._role(i) is Role.LEADER]
            side = {rng.choice(leaders)} if leaders else {rng.choice(ids)}
        else:
            rng.shuffle(ids)
            side = set(ids[: rng.randint(1, self.f)])
        for a in self.ids:
            for b in self.ids:
                if (a in side) != (b in side):
                    self.blocked.add((a, b))

    def _heal(self) -> None:
        """Faults stop: the network heals and loses nothing; all but at most f nodes up."""
        rng = self.rng
        self.blocked.clear()
        self.loss = 0.0
        self.duplicate = 0.0
        keep_down = set(rng.sample(self.ids, rng.randint(0, self.f)))
        for i in self.ids:
            if i in keep_down:
                self._crash(i)
            elif self.nodes[i] is None:
                self._start(i)
        self.mid_step_crash = self.persist_failure = 0.0

    def _ev_check(self) -> None:
        self._at(self.now + 0.1, "check")

    def _converged(self) -> bool:
        if self.outstanding:
            return False
        up = [i for i in self.ids if self.nodes[i] is not None]
        indexes = {self.machines[i].applied_index for i in up}
        return len(indexes) == 1 and indexes.pop() >= self.checker.last_chosen_slot


# ---------------------------------------------------------------------- the nodes' adapters


class _SimClock:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def now(self) -> float:
        return self.sim.now


class _SimStorage(MemoryStorage):
    """The node's in-memory storage, checked (a promise never lower after a restart or
    rebuild, every write against the checker's history), failing now and then (nothing
    written), and a crash point."""

    def __init__(self, sim: Simulation, i: str) -> None:
        super().__init__(sim.durable[i], sim.machines[i])
        self.sim = sim
        self.i = i

    def load(self) -> tuple[DurableState, int]:
        self.sim.checker.on_restart(self.i, self.durable)
        return super().load()

    def read(self, first_slot: int, max_slots: int, max_bytes: int) -> list[Value]:
        if first_slot <= self.durable.compacted_through:
            raise Violation(
                f"{self.i}'s core read slot {first_slot} from its log, compacted through "
                f"{self.durable.compacted_through}"
            )
        return super().read(first_slot, max_slots, max_bytes)

    def compact(self, through: int) -> None:
        sim = self.sim
        if sim.crash_point is not None:
            sim._reach(PERSIST)
        machine = sim.machines[self.i]
        sim.checker.on_compact(self.i, through, machine.snapshot_index)
        super().compact(through)
        sim.stats.compactions += 1

    def persist(self, ready: Ready) -> None:
        sim = self.sim
        if sim.crash_point is not None:
            sim._reach(PERSIST)
        if sim.persist_failure and sim.rng.random() < sim.persist_failure:
            sim.stats.persist_failures += 1
            raise StorageFailure
        try:
            sim.checker.on_persist(self.i, self.durable, ready, sim.now)
        except Violation as violation:
            raise _Stop(violation) from None
        self.durable.apply(ready)


#: The messages that report durable acceptor state (checked against it as they leave).
_VOTES = (Accepted, Promise)


class _SimTransport:
    """The simulated network, behind a crash point; every vote that leaves is checked
    against what the node made durable (persist before send)."""

    def __init__(self, sim: Simulation, i: str) -> None:
        self.sim = sim
        self.i = i

    def send(self, peer: str, messages: list[Message]) -> None:
        sim, i = self.sim, self.i
        if sim.crash_point is not None:
            sim._reach(SEND)
        for message in messages:
            if type(message) in _VOTES:
                sim.checker.on_send(i, sim.durable[i], message, sim.now)
            sim._send(i, peer, message)


class _SimStateMachine(MemoryStateMachine):
    """The node's in-memory state machine behind a crash point; what it learns is checked."""

    def __init__(self, sim: Simulation, i: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sim = sim
        self.i = i

    def learned(self, chosen: list[tuple[int, Value]]) -> None:
        if self.sim.crash_point is not None:
            self.sim._reach(APPLY)
        self.sim.checker.on_learned(self.i, chosen)
        super().learned(chosen)

    def install(self, snapshot: MemorySnapshot) -> bool:
        """Behind a crash point (before the install: nothing installed); checked."""
        if self.sim.crash_point is not None:
            self.sim._reach(INSTALL)
        votes = {s: e for s, e in self.log.accepted.items() if s > snapshot.index}
        if not super().install(snapshot):
            return False
        self.sim.checker.on_install(self.i, snapshot, self.log, votes)
        return True
