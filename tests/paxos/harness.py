"""A hand-driven cluster for transcript-style tests: the test decides which messages are
delivered, dropped or held, and when time passes. Each node is the production loop
(consensus.host's NodeHost) with its in-memory adapters; every step returns the Ready
its host handled."""

from __future__ import annotations

import random
from functools import partial

from consensus.host import ManualClock, MemoryStateMachine, MemoryStorage, NodeHost
from consensus.paxos import (
    Command,
    Config,
    DurableState,
    Message,
    Node,
    PreVote,
    PreVoteReply,
    Ready,
    Role,
)


class _Wire:
    """The harness's network: every message sent goes in flight (and on the record)."""

    def __init__(self, harness: Harness, sender: str) -> None:
        self.harness = harness
        self.sender = sender

    def send(self, peer: str, messages: list[Message]) -> None:
        for message in messages:
            self.harness.in_flight.append((self.sender, peer, message))
            self.harness.sent.append((self.sender, peer, message))


class Harness:
    def __init__(self, n: int = 3, *, log_tail: int = 1024, **config) -> None:
        self.ids = tuple(f"n{i}" for i in range(1, n + 1))
        self.config = config
        self.log_tail = log_tail
        self.clock = ManualClock()
        self.durable = {i: DurableState() for i in self.ids}
        #: Snapshot installs each node's host asked for: (peer, index), in order.
        self.install_asks: dict[str, list[tuple[str, int]]] = {i: [] for i in self.ids}
        self.machines = {
            i: MemoryStateMachine(self.durable[i], on_install=partial(self._asked, i))
            for i in self.ids
        }
        self.hosts: dict[str, NodeHost | None] = {}
        self.in_flight: list[tuple[str, str, Message]] = []
        self.sent: list[tuple[str, str, Message]] = []
        for k, i in enumerate(self.ids):
            self.hosts[i] = self._new_host(i, seed=k)

    @property
    def now(self) -> float:
        return self.clock.time

    @now.setter
    def now(self, value: float) -> None:
        self.clock.time = value

    @property
    def applied(self) -> dict[str, list[tuple[int, tuple[str, ...]]]]:
        """Each node's applied log: (slot, request ids applied), in the order applied."""
        return {i: self.machines[i].applied_log for i in self.ids}

    def _new_host(self, i: str, seed: int) -> NodeHost:
        machine = self.machines[i]
        host = NodeHost(
            Config(i, self.ids, **self.config),
            storage=MemoryStorage(self.durable[i], machine),
            transport=_Wire(self, i),
            state_machine=machine,
            clock=self.clock,
            rng=random.Random(seed),
            log_tail=self.log_tail,
        )
        host.node()
        return host

    def _asked(self, i: str, peer: str, index: int) -> None:
        self.install_asks[i].append((peer, index))

    def snapshot_and_compact(self, i: str) -> int:
        """Node i's state machine makes a snapshot of what it applied; its host compacts.
        Returns the compaction point."""
        machine = self.machines[i]
        machine.keep_snapshot(machine.take_snapshot())
        return self.host(i).compact()

    def transfer(self, i: str, peer: str) -> bool:
        """Node i fetches peer's latest snapshot whole and installs it (state transfer,
        outside Paxos). Whether it was installed."""
        return self.machines[i].install(self.machines[peer].snapshot)

    def host(self, i: str) -> NodeHost:
        host = self.hosts[i]
        assert host is not None, f"{i} is down"
        return host

    def node(self, i: str) -> Node:
        """Node i's core (to inspect, or to step by hand without handling the Ready)."""
        return self.host(i).node()

    def receive(self, i: str, sender: str, message: Message) -> Ready:
        return self.host(i).on_message(sender, message)

    def read(self, i: str, *read_ids: str) -> Ready:
        return self.host(i).read_index(read_ids)

    def tick(self, i: str) -> Ready:
        return self.host(i).tick()

    def submit(self, i: str, *request_ids: str) -> Ready:
        commands = [Command(r, f"payload of {r}") for r in request_ids]
        return self.host(i).submit(commands)

    def submit_each(self, i: str, request_ids, *, drop=lambda src, dst, msg: False) -> None:
        """Submit each command at node i in turn, delivering what it causes in between."""
        for rid in request_ids:
            self.submit(i, rid)
            self.deliver(drop=drop)

    def deliver(self, *, drop=lambda src, dst, msg: False, rounds: int = 1000) -> int:
        """Deliver in-flight messages (and what they cause) until none is left, dropping
        those `drop` selects and those addressed to crashed nodes. Returns how many."""
        delivered = 0
        for _ in range(rounds):
            if not self.in_flight:
                return delivered
            batch, self.in_flight = self.in_flight, []
            for src, dst, message in batch:
                if self.hosts[dst] is None or drop(src, dst, message):
                    continue
                delivered += 1
                self.receive(dst, src, message)
        raise AssertionError("messages still flowing after many rounds")

    def advance(self, seconds: float, *, drop=lambda src, dst, msg: False, step: float = 0.01):
        """Let time pass: tick every live node every `step`, delivering as we go."""
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + step, 6)
            for i in self.ids:
                if self.hosts[i] is not None:
                    self.tick(i)
            self.deliver(drop=drop)

    def campaign(self, i: str) -> None:
        """Node i times out (after everyone's lease) and wins its pre-vote: its Prepares
        are left in flight, everything else delivered so far is dropped."""
        self.now += 10.0
        self.tick(i)
        while any(isinstance(m, (PreVote, PreVoteReply)) for _, _, m in self.in_flight):
            batch, self.in_flight = self.in_flight, []
            for src, dst, message in batch:
                if isinstance(message, (PreVote, PreVoteReply)) and self.hosts[dst] is not None:
                    self.receive(dst, src, message)
        assert self.node(i).role is not Role.FOLLOWER, f"{i} lost its pre-vote"

    def elect(self, i: str) -> None:
        """Make node i leader: it times out first and everyone hears it."""
        self.now += 10.0
        self.tick(i)
        self.deliver()
        assert self.node(i).role is Role.LEADER

    def crash(self, i: str) -> None:
        self.hosts[i] = None
        self.machines[i].restart()

    def restart(self, i: str, seed: int = 99) -> Node:
        self.hosts[i] = self._new_host(i, seed)
        return self.node(i)

    def leaders(self) -> list[str]:
        return [i for i, h in self.hosts.items() if h is not None and h.node().role is Role.LEADER]
