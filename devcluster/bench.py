"""python -m devcluster.bench: the Paxos core's own speed, without I/O.

Three nodes in one process, no faults: each is the production loop (consensus.host's
NodeHost) with its in-memory adapters; messages go straight from one node to another
through an in-memory FIFO, storage is in memory, and the state machine only records
request ids. Clients submit at every node (followers forward to the leader), in chunks.
The figure is commands committed and applied on all three nodes per second of one CPU,
which bounds what the core can contribute to a cluster's cost.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque

from consensus.host import ManualClock, MemoryStateMachine, MemoryStorage, NodeHost, Outbox
from consensus.paxos import Command, Config, DurableState, Role


class Bench:
    def __init__(self, n: int, window: int, max_batch: int) -> None:
        self.ids = tuple(f"n{i}" for i in range(1, n + 1))
        self.clock = ManualClock()
        self.inbox: deque = deque()
        self._delivered = 0
        self.machines: dict[str, MemoryStateMachine] = {}
        self.hosts: dict[str, NodeHost] = {}
        for k, i in enumerate(self.ids):
            durable = DurableState()
            machine = self.machines[i] = MemoryStateMachine(durable)
            self.hosts[i] = NodeHost(
                Config(i, self.ids, window=window, max_batch=max_batch),
                storage=MemoryStorage(durable, machine),
                transport=Outbox(i, self.inbox),
                state_machine=machine,
                clock=self.clock,
                rng=random.Random(k),
            )

    @property
    def messages(self) -> int:
        """Messages sent so far."""
        return self._delivered + len(self.inbox)

    def applied(self, i: str) -> int:
        """Commands node i applied."""
        return len(self.machines[i].applied_ids)

    def drain(self) -> None:
        inbox, hosts = self.inbox, self.hosts
        while inbox:
            src, dst, message = inbox.popleft()
            self._delivered += 1
            hosts[dst].on_message(src, message)

    def tick(self) -> None:
        self.clock.time += 0.01
        for host in self.hosts.values():
            host.tick()
        self.drain()

    def elect(self) -> str:
        while True:
            self.tick()
            for i, host in self.hosts.items():
                if host.node().role is Role.LEADER:
                    return i

    def run(self, commands: int, chunk: int) -> float:
        submitted = 0
        started = time.process_time()
        while submitted < commands:
            for i in self.ids:
                batch = [Command(f"r{submitted + k}", "set key value") for k in range(chunk)]
                submitted += chunk
                self.hosts[i].submit(batch)
            self.drain()
        while min(self.applied(i) for i in self.ids) < submitted:
            self.tick()
        return time.process_time() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devcluster.bench", description=__doc__)
    parser.add_argument("--commands", type=int, default=300_000)
    parser.add_argument("--chunk", type=int, default=100, help="commands per submit call")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args(argv)
    bench = Bench(args.nodes, args.window, args.max_batch)
    leader = bench.elect()
    seconds = bench.run(args.commands, args.chunk)
    total = min(bench.applied(i) for i in bench.ids)
    slots = bench.hosts[leader].node().commit_index
    print(
        f"paxos core: {total / seconds:,.0f} commands/s committed and applied on all "
        f"{args.nodes} cores (one CPU, {total:,} commands, {slots:,} slots, "
        f"{total / max(slots, 1):.0f} commands/slot, {bench.messages:,} messages, "
        f"{seconds:.2f}s CPU)"
    )


if __name__ == "__main__":
    main()
