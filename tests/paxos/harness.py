"""A hand-driven cluster of cores for transcript-style tests: the test decides which
messages are delivered, dropped or held, and when time passes."""

from __future__ import annotations

import random

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
    commands_to_apply,
)


class Harness:
    def __init__(self, n: int = 3, **config) -> None:
        self.ids = tuple(f"n{i}" for i in range(1, n + 1))
        self.config = config
        self.now = 0.0
        self.durable = {i: DurableState() for i in self.ids}
        self.applied: dict[str, list[tuple[int, tuple[str, ...]]]] = {i: [] for i in self.ids}
        self.applied_ids: dict[str, set[str]] = {i: set() for i in self.ids}
        self.nodes: dict[str, Node | None] = {}
        self.in_flight: list[tuple[str, str, Message]] = []
        self.sent: list[tuple[str, str, Message]] = []
        for k, i in enumerate(self.ids):
            self.nodes[i] = self._new_node(i, seed=k)

    def _new_node(self, i: str, seed: int) -> Node:
        return Node(
            Config(i, self.ids, **self.config),
            self.durable[i],
            applied_index=len(self.applied[i]),
            now=self.now,
            rng=random.Random(seed),
        )

    def node(self, i: str) -> Node:
        node = self.nodes[i]
        assert node is not None, f"{i} is down"
        return node

    def handle(self, i: str, ready: Ready) -> Ready:
        self.durable[i].apply(ready)
        self.durable[i].learn(ready)
        for to, message in ready.messages:
            self.in_flight.append((i, to, message))
            self.sent.append((i, to, message))
        for slot, value in ready.committed:
            fresh = commands_to_apply(value, self.applied_ids[i])
            self.applied_ids[i].update(c.request_id for c in fresh)
            self.applied[i].append((slot, tuple(c.request_id for c in fresh)))
        return ready

    def tick(self, i: str) -> Ready:
        return self.handle(i, self.node(i).on_tick(self.now))

    def submit(self, i: str, *request_ids: str) -> Ready:
        commands = [Command(r, f"payload of {r}") for r in request_ids]
        return self.handle(i, self.node(i).submit(commands, self.now))

    def deliver(self, *, drop=lambda src, dst, msg: False, rounds: int = 1000) -> int:
        """Deliver in-flight messages (and what they cause) until none is left, dropping
        those `drop` selects and those addressed to crashed nodes. Returns how many."""
        delivered = 0
        for _ in range(rounds):
            if not self.in_flight:
                return delivered
            batch, self.in_flight = self.in_flight, []
            for src, dst, message in batch:
                if self.nodes[dst] is None or drop(src, dst, message):
                    continue
                delivered += 1
                self.handle(dst, self.node(dst).on_message(src, message, self.now))
        raise AssertionError("messages still flowing after many rounds")

    def advance(self, seconds: float, *, drop=lambda src, dst, msg: False, step: float = 0.01):
        """Let time pass: tick every live node every `step`, delivering as we go."""
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + step, 6)
            for i in self.ids:
                if self.nodes[i] is not None:
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
                if isinstance(message, (PreVote, PreVoteReply)) and self.nodes[dst] is not None:
                    self.handle(dst, self.node(dst).on_message(src, message, self.now))
        assert self.node(i).role is not Role.FOLLOWER, f"{i} lost its pre-vote"

    def elect(self, i: str) -> None:
        """Make node i leader: it times out first and everyone hears it."""
        self.now += 10.0
        self.tick(i)
        self.deliver()
        assert self.node(i).role is Role.LEADER

    def crash(self, i: str) -> None:
        self.nodes[i] = None

    def restart(self, i: str, seed: int = 99) -> Node:
        self.nodes[i] = self._new_node(i, seed)
        return self.nodes[i]

    def leaders(self) -> list[str]:
        return [i for i, n in self.nodes.items() if n is not None and n.role is Role.LEADER]
