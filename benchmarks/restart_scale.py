"""python -m benchmarks.restart_scale [--slots 1000,100000] [--clients 64] [--rounds 3]

Does a worker's start, or a leader's failover, cost more as the log grows? One real 3-node
cluster (devcluster.localcluster, on the servers named by CONFIGSTORE_CLUSTER_DATABASE_URL /
_BROKER_URL, else embedded ones) is grown to each size of `--slots` in turn; at each size a
follower's worker is SIGKILLed and started `--rounds` times, and printed: the time from its
start until its core published a status, the time until it applied a new write, and its RSS
(worker and children) 3 s after the start. Then the leader's worker is SIGKILLed `--rounds`
times (started again and caught up between rounds), and printed: the time from the kill
until a write submitted after it commits at a surviving node. Then the ratios between the
largest and the smallest size, from this one run.

So that a log of 100,000 slots grows in minutes, the nodes run with one command per slot
(CONFIGSTORE_MAX_BATCH=1) and a window of 64 slots: every write is a log slot, a chosen-log
row, an accepted-slot row, an applied-request row and a history row, as in a cluster that
ran that many writes one at a time. The start path reads none of that (it loads the open
slots above the applied index only): this prints whether that holds. Asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.rejoin import (
    _payload,
    _start_and_wait_for_core,
    _worker_rss,
    applied_index,
    write,
)
from consensus.client import Committed
from devcluster.localcluster import LocalCluster


def _rows(cluster: LocalCluster, node: str) -> str:
    counts = cluster.query(
        node,
        "SELECT (SELECT count(*) FROM consensus_chosen_slot), "
        "(SELECT count(*) FROM consensus_accepted_slot), "
        "(SELECT count(*) FROM consensus_applied_request), "
        "(SELECT count(*) FROM configstore_history)",
    )[0]
    return "chosen {:,} / accepted {:,} / applied-request {:,} / history {:,} rows".format(*counts)


def _restart_once(
    cluster: LocalCluster, node: str, leader: str, k: int
) -> tuple[float, float, float]:
    """(seconds until the core publishes, seconds until it applied a write made after its
    start, RSS MB 3 s after the start)."""
    cluster.kill_worker(node)
    started = time.monotonic()
    _start_and_wait_for_core(cluster, node)
    up = time.monotonic() - started
    outcome = cluster.submitter(leader).submit(_payload(f"restart/{k}", k), timeout=30)
    if not isinstance(outcome, Committed):
        raise SystemExit(f"the write after the restart did not commit: {outcome}")
    target = applied_index(cluster, leader)
    while applied_index(cluster, node) < target:
        time.sleep(0.02)
    applying = time.monotonic() - started
    time.sleep(max(0.0, 3 - applying))
    return up, applying, _worker_rss(cluster, node)


def _failover_once(cluster: LocalCluster, k: int) -> float:
    """Seconds from SIGKILLing the leader's worker until a write submitted after the kill
    commits at a surviving node (a write the dead leader proposed before it does not count:
    each attempt is a new request, submitted after the kill)."""
    leader = cluster.wait_for_leader()
    others = [i for i in cluster.ids if i != leader]
    cluster.kill_worker(leader)
    killed = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        node = others[attempt % len(others)]
        outcome = cluster.submitter(node).submit(_payload(f"failover/{k}", attempt), timeout=1.0)
        if isinstance(outcome, Committed):
            took = time.monotonic() - killed
            break
        if time.monotonic() - killed > 60:
            raise SystemExit(f"no write committed within 60 s of killing {leader}")
    _start_and_wait_for_core(cluster, leader)
    target = applied_index(cluster, node)
    while applied_index(cluster, leader) < target:
        time.sleep(0.05)
    return took


def measure(cluster: LocalCluster, rounds: int, k: int) -> tuple[int, float, float, float, float]:
    leader = cluster.wait_for_leader()
    node = next(i for i in cluster.ids if i != leader)
    samples = [_restart_once(cluster, node, leader, k * 100 + r) for r in range(rounds)]
    ups, applying, rss = (statistics.median(s) for s in zip(*samples, strict=True))
    failovers = [_failover_once(cluster, k * 100 + 50 + r) for r in range(rounds)]
    failover = statistics.median(failovers)
    slots = applied_index(cluster, node)
    print(
        f"at {slots:,} slots ({_rows(cluster, node)}): core running {ups:.2f} s after the "
        f"start, applying new writes after {applying:.2f} s, worker RSS {rss:.0f} MB "
        f"(medians of {rounds}: {', '.join(f'{u:.2f}' for u, _, _ in samples)} s); leader "
        f"failover {failover:.2f} s ({', '.join(f'{f:.2f}' for f in failovers)} s)",
        flush=True,
    )
    return slots, ups, applying, rss, failover


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.restart_scale", description=__doc__)
    parser.add_argument("--slots", default="1000,100000")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="configstore-restart-"))
    data.chmod(0o755)
    cluster = LocalCluster.from_environment(
        data,
        web=False,
        fresh=True,
        extra_env={"CONFIGSTORE_MAX_BATCH": "1", "CONFIGSTORE_WINDOW": "64"},
    )
    results = []
    try:
        cluster.start()
        for k, size in enumerate(int(s) for s in args.slots.split(",") if s):
            leader = cluster.wait_for_leader()
            grown = time.monotonic()
            have = applied_index(cluster, leader)
            if size > have:
                write(cluster, list(cluster.ids), size - have, args.clients)
            print(
                f"grew the log from {have:,} to {applied_index(cluster, leader):,} slots in "
                f"{time.monotonic() - grown:.0f} s",
                flush=True,
            )
            results.append(measure(cluster, args.rounds, k))
        (small, *_), (large, *_) = results[0], results[-1]
        for name, i in (("core running", 1), ("applying", 2), ("RSS", 3), ("leader failover", 4)):
            print(
                f"{name}: {results[-1][i] / results[0][i]:.2f}x at {large:,} slots vs {small:,}",
                flush=True,
            )
    finally:
        cluster.stop()
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
