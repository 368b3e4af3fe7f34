"""python -m consensus.bench: the Paxos core's own speed, without I/O.

Three cores in one process, no faults: messages go straight from one core to another
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

from consensus.paxos import Command, Config, DurableState, Node, Ready, Role, commands_to_apply


class Bench:
    def __init__(self, n: int, window: int, max_batch: int) -> None:
        self.ids = tuple(f"n{i}" for i in range(1, n + 1))
        self.now = 0.0
        self.durable = {i: DurableState() for i in self.ids}
        self.applied_ids: dict[str, set[str]] = {i: set() for i in self.ids}
        self.applied = dict.fromkeys(self.ids, 0)
        self.nodes = {
            i: Node(
                Config(i, self.ids, window=window, max_batch=max_batch),
                self.durable[i],
                applied_index=0,
                now=0.0,
                rng=random.Random(k),
            )
            for k, i in enumerate(self.ids)
        }
        self.inbox: deque = deque()
        self.messages = 0
        self.slots = 0

    def handle(self, i: str, ready: Ready) -> None:
        self.durable[i].apply(ready)
        self.durable[i].learn(ready)
        for to, message in ready.messages:
            self.inbox.append((i, to, message))
        self.messages += len(ready.messages)
        for _slot, value in ready.committed:
            fresh = commands_to_apply(value, self.applied_ids[i])
            self.applied_ids[i].update(c.request_id for c in fresh)
            self.applied[i] += len(fresh)

    def drain(self) -> None:
        while self.inbox:
            src, dst, message = self.inbox.popleft()
            self.handle(dst, self.nodes[dst].on_message(src, message, self.now))

    def elect(self) -> str:
        while True:
            self.now += 0.01
            for i in self.ids:
                self.handle(i, self.nodes[i].on_tick(self.now))
            self.drain()
            for i, node in self.nodes.items():
                if node.role is Role.LEADER:
                    return i

    def run(self, commands: int, chunk: int) -> float:
        submitted = 0
        started = time.process_time()
        while submitted < commands:
            for i in self.ids:
                batch = [Command(f"r{submitted + k}", "set key value") for k in range(chunk)]
                submitted += chunk
                self.handle(i, self.nodes[i].submit(batch, self.now))
            self.drain()
        while min(self.applied.values()) < submitted:
            self.now += 0.01
            for i in self.ids:
                self.handle(i, self.nodes[i].on_tick(self.now))
            self.drain()
        return time.process_time() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m consensus.bench", description=__doc__)
    parser.add_argument("--commands", type=int, default=300_000)
    parser.add_argument("--chunk", type=int, default=100, help="commands per submit call")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args(argv)
    bench = Bench(args.nodes, args.window, args.max_batch)
    leader = bench.elect()
    seconds = bench.run(args.commands, args.chunk)
    total = min(bench.applied.values())
    slots = bench.nodes[leader].commit_index
    print(
        f"paxos core: {total / seconds:,.0f} commands/s committed and applied on all "
        f"{args.nodes} cores (one CPU, {total:,} commands, {slots:,} slots, "
        f"{total / max(slots, 1):.0f} commands/slot, {bench.messages:,} messages, "
        f"{seconds:.2f}s CPU)"
    )


if __name__ == "__main__":
    main()
