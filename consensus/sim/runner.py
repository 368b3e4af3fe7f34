"""Running many seeds (in parallel processes) and reporting failures with their replay."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from .checks import Violation
from .cluster import Params, Simulation, Stats


@dataclass(frozen=True)
class Failure:
    seed: int
    nodes: int
    reason: str
    replay: str


@dataclass
class Summary:
    seeds: int = 0
    steps: int = 0
    messages: int = 0
    wire_messages: int = 0
    crashes: int = 0
    persist_failures: int = 0
    partitions: int = 0
    commands: int = 0
    reads: int = 0
    elections: int = 0
    bytes: int = 0
    max_message: int = 0
    snapshots: int = 0
    compactions: int = 0
    installs: int = 0
    transfer_chunks: int = 0
    transfer_crashes: int = 0
    damaged_refused: int = 0
    catchup: float = 0.0  # rejoin: the longest catch-up, simulated seconds
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)

    def line(self) -> str:
        verdict = "ok" if not self.failures else f"{len(self.failures)} FAILED"
        return (
            f"sim {verdict}: {self.seeds} seeds, {self.steps} steps, {self.messages} messages, "
            f"{self.crashes} crashes, {self.persist_failures} failed persists, "
            f"{self.partitions} partitions, {self.commands} commands, "
            f"{self.reads} reads, {self.elections} elections, {self.bytes / 1e6:.1f} MB sent "
            f"(largest message {self.max_message} B), {self.snapshots} snapshots, "
            f"{self.compactions} compactions, {self.installs} snapshot installs "
            f"({self.transfer_chunks} chunks, {self.transfer_crashes} crashes during a "
            f"transfer or install, {self.damaged_refused} damaged refused)"
            + (f", longest catch-up {self.catchup:.2f}s" if self.catchup else "")
            + f", {self.seconds:.1f}s"
        )


def replay_command(seed: int, params: Params) -> str:
    parts = ["python -m consensus.sim", f"--seeds 1 --first-seed {seed} --nodes {params.nodes}"]
    parts += [f"--bug {b}" for b in sorted(params.bugs)]
    if params.scenario != "faults":
        parts.append(f"--scenario {params.scenario} --writes {params.rejoin_writes}")
    if params.wire:
        parts.append("--wire")
    if params.compaction is not None:
        parts.append(f"--compaction {'on' if params.compaction else 'off'}")
    return " ".join(parts)


def run_seed(seed: int, params: Params) -> Stats | Failure:
    """One seed: its stats, or the violation it found with the command that replays it."""
    # The hosts log every failed persist, which the simulator causes on purpose.
    host_log = logging.getLogger("consensus.host")
    level = host_log.level
    host_log.setLevel(logging.CRITICAL)
    try:
        return Simulation(seed, params).run()
    except Violation as violation:
        return Failure(seed, params.nodes, str(violation), replay_command(seed, params))
    finally:
        host_log.setLevel(level)


def _run_chunk(args: tuple[list[tuple[int, Params]], bool]) -> list[Stats | Failure]:
    jobs, stop_at_first = args
    results: list[Stats | Failure] = []
    for seed, params in jobs:
        result = run_seed(seed, params)
        results.append(result)
        if stop_at_first and isinstance(result, Failure):
            break
    return results


#: The Summary's totals: (its field, the Stats field summed into it).
_SUMMED = tuple(
    (name, "submitted" if name == "commands" else name)
    for name in (
        "steps",
        "messages",
        "wire_messages",
        "crashes",
        "persist_failures",
        "partitions",
        "commands",
        "reads",
        "elections",
        "bytes",
        "snapshots",
        "compactions",
        "installs",
        "transfer_chunks",
        "transfer_crashes",
        "damaged_refused",
    )
)


def run_seeds(
    seeds: list[tuple[int, Params]], *, processes: int | None = None, stop_at_first: bool = False
) -> Summary:
    """Run every (seed, params); `processes` workers (default: one per CPU)."""
    started = time.perf_counter()
    processes = processes or os.cpu_count() or 1
    # Small chunks, handed out as workers free up: 3- and 5-node seeds cost differently.
    chunks = [(seeds[i : i + 20], stop_at_first) for i in range(0, len(seeds), 20)]
    if processes == 1 or len(seeds) < 4:
        results = _run_chunk((seeds, stop_at_first))
    else:
        with ProcessPoolExecutor(processes) as pool:
            results = [r for chunk in pool.map(_run_chunk, chunks) for r in chunk]
    summary = Summary(seconds=time.perf_counter() - started)
    for result in results:
        summary.seeds += 1
        if isinstance(result, Failure):
            summary.failures.append(result)
            continue
        for total, count in _SUMMED:
            setattr(summary, total, getattr(summary, total) + getattr(result, count))
        summary.max_message = max(summary.max_message, result.max_message)
        summary.catchup = max(summary.catchup, result.catchup)
    summary.failures.sort(key=lambda f: (f.seed, f.nodes))
    return summary
