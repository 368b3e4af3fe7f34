"""One seed, one simulated cluster: N Paxos cores on a simulated network and clock.

Everything comes from one `random.Random(seed)`: message loss, duplication, delay (and so
reordering), partitions that form and heal, crashes at any point of a step (before the
persist, between persist and send, after sending), restarts from durable state only,
and clients that submit and retry commands. No wall clock, no threads: the same seed
replays the same run exactly.

Safety is checked after every step (`Checker`); once the fault phase ends (heal, restart,
no loss, a majority up) every submitted command must be chosen and applied on every node
that is up within a bounded simulated time (liveness).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
from dataclasses import dataclass, field

from consensus.paxos import (
    Command,
    Config,
    DurableState,
    InvariantViolation,
    Node,
    Ready,
    Role,
    commands_to_apply,
    decode,
    encode,
)

from .checks import Checker, Violation

TICK = 0.01


@dataclass(frozen=True)
class Params:
    """Knobs of one run; every one is drawn from the seed unless given."""

    nodes: int = 3
    fault_time: float = 2.0
    liveness_time: float = 15.0
    max_loss: float = 0.3
    mid_step_crash: float = 0.002
    wire: bool = False  # round-trip every message through its JSON form
    bugs: frozenset[str] = frozenset()  # core bugs (KNOWN_BUGS) and "forget_on_restart"


@dataclass
class StateMachine:
    """The replicated state machine of one node: durable, like the node's database."""

    applied_index: int = 0
    applied_ids: set[str] = field(default_factory=set)
    log: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)


@dataclass
class Stats:
    steps: int = 0
    messages: int = 0
    crashes: int = 0
    partitions: int = 0
    submitted: int = 0
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
        core_bugs = frozenset(params.bugs) - {"forget_on_restart"}
        self.configs = {
            i: Config(
                node_id=i,
                nodes=self.ids,
                heartbeat_interval=0.03,
                election_timeout=0.15,
                retransmit_interval=0.05,
                window=rng.choice((2, 8, 32)),
                max_batch=rng.choice((1, 4, 64)),
                max_catchup=rng.choice((2, 16, 256)),
                forward_interval=rng.choice((0.0, 0.005, 0.02)),
                bugs=core_bugs,
            )
            for i in self.ids
        }
        self.now = 0.0
        self.durable = {i: DurableState() for i in self.ids}
        self.machines = {i: StateMachine() for i in self.ids}
        self.nodes: dict[str, Node | None] = {}
        self.incarnation = dict.fromkeys(self.ids, 0)
        self.blocked: set[tuple[str, str]] = set()
        self.events: list = []
        self._seq = 0
        self.stats = Stats()
        self.checker = Checker(self.ids, self.configs[self.ids[0]].quorum)
        # Clients: request id -> (command, next retry time).
        self.outstanding: dict[str, tuple[Command, float]] = {}
        self._next_request = 0
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
        p = self.params
        rng = self.rng
        self._at(rng.uniform(0.0, 0.3), "nemesis")
        for client in range(3):
            self._at(rng.uniform(0.0, 0.1), "client", client)
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
        logs = [self.machines[i].log for i in self.ids]
        fingerprint = repr((self.stats.steps, self.stats.messages, logs)).encode()
        self.stats.digest = hashlib.sha256(fingerprint).hexdigest()[:16]
        return self.stats

    # ---------------------------------------------------------------- nodes

    def _start(self, i: str) -> None:
        sm = self.machines[i]
        state = self.durable[i]
        self.checker.on_restart(i, state)
        self.incarnation[i] += 1
        self.nodes[i] = Node(
            self.configs[i],
            state,
            applied_index=sm.applied_index,
            now=self.now,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        self._at(self.now + self.rng.uniform(0, TICK), "tick", i, self.incarnation[i])

    def _crash(self, i: str) -> None:
        if self.nodes[i] is None:
            return
        self.nodes[i] = None
        self.stats.crashes += 1
        if "forget_on_restart" in self.params.bugs:
            self.durable[i] = DurableState()

    def _step(self, i: str, action) -> None:
        """Run one input on node i, then persist, send and apply, with a rare crash at any
        point in between (volatile state lost, durable state kept)."""
        node = self.nodes[i]
        if node is None:
            return
        self.stats.steps += 1
        try:
            ready: Ready = action(node)
        except InvariantViolation as e:
            raise Violation(f"node {i} detected: {e}") from None
        crash_at = None
        if self.rng.random() < self.mid_step_crash:
            crash_at = self.rng.choice(("before_persist", "before_send", "before_apply"))
        if crash_at == "before_persist":
            return self._crash(i)
        if ready.must_persist or ready.chosen:
            self.checker.on_persist(i, self.durable[i], ready, self.now)
            self.durable[i].apply(ready)
        if crash_at == "before_send":
            return self._crash(i)
        for to, message in ready.messages:
            self._send(i, to, message)
        if crash_at == "before_apply":
            return self._crash(i)
        # Step 3: chosen entries become durable with their application (or are lost).
        self.durable[i].learn(ready)
        self._apply(i, ready)

    def _apply(self, i: str, ready: Ready) -> None:
        sm = self.machines[i]
        dedup = "no_dedup" not in self.params.bugs
        for slot, value in ready.committed:
            fresh = commands_to_apply(value, sm.applied_ids, dedup=dedup)
            self.checker.on_apply(i, sm.applied_index, slot, value, fresh, sm.applied_ids)
            for command in fresh:
                sm.applied_ids.add(command.request_id)
            sm.log.append((slot, tuple(c.request_id for c in fresh)))
            sm.applied_index = slot
            for command in value.commands:
                self.outstanding.pop(command.request_id, None)

    # ---------------------------------------------------------------- network

    def _send(self, src: str, dst: str, message) -> None:
        self.stats.messages += 1
        if self.params.wire:
            message = decode(json.loads(json.dumps(encode(message))))
        rng = self.rng
        if (src, dst) in self.blocked or rng.random() < self.loss:
            return
        copies = 2 if rng.random() < self.duplicate else 1
        for _ in range(copies):
            self._at(self.now + rng.uniform(0.0002, self.max_delay), "deliver", src, dst, message)

    def _ev_deliver(self, src: str, dst: str, message) -> None:
        if (src, dst) in self.blocked:
            return
        self._step(dst, lambda node: node.on_message(src, message, self.now))

    def _ev_tick(self, i: str, incarnation: int) -> None:
        if self.nodes[i] is None or self.incarnation[i] != incarnation:
            return
        self._step(i, lambda node: node.on_tick(self.now))
        self._at(self.now + TICK, "tick", i, incarnation)

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

    def _submit_to_random_node(self, commands: list[Command]) -> None:
        up = [i for i in self.ids if self.nodes[i] is not None]
        if up:
            target = self.rng.choice(up)
            self._step(target, lambda node: node.submit(commands, self.now))

    # ---------------------------------------------------------------- nemesis

    def _ev_nemesis(self) -> None:
        if self.now >= self.params.fault_time:
            return
        rng = self.rng
        up = [i for i in self.ids if self.nodes[i] is not None]
        down = [i for i in self.ids if self.nodes[i] is None]
        roll = rng.random()
        if roll < 0.25 and up:
            self._crash(rng.choice(up))
        elif roll < 0.5 and down:
            self._start(rng.choice(down))
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
            leaders = [
                i for i in ids if self.nodes[i] is not None and self.nodes[i].role is Role.LEADER
            ]
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
        self.mid_step_crash = 0.0

    def _ev_check(self) -> None:
        self._at(self.now + 0.1, "check")

    def _converged(self) -> bool:
        if self.outstanding:
            return False
        up = [i for i in self.ids if self.nodes[i] is not None]
        indexes = {self.machines[i].applied_index for i in up}
        return len(indexes) == 1 and indexes.pop() >= self.checker.last_chosen_slot
