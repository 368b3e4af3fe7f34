"""python -m benchmarks.rejoin [--writes 5000,20000,50000] [--clients 16] [--probe 0.05] [--detail]
[--transfer] [--broker-index-offset 0]

What a returning node costs a healthy 3-node cluster (issue "A node that comes back must
not hurt the cluster"), measured on real processes through the web tier's submit API
(devcluster.localcluster, as `manage.py bench`), on the servers named by
CONFIGSTORE_CLUSTER_DATABASE_URL / _BROKER_URL (else embedded ones):

for each count of writes: a follower's worker is SIGKILLed, that many writes commit
through the other two nodes (`--clients` threads), the two are left SETTLE seconds to
digest them, then the worker starts again. A probe writes at the leader every `--probe`
seconds throughout. Printed: leader changes and elections seen from the kill until the
node caught up, probe writes that failed, the probe's p99 before the kill (8 s), just
before the return (the last SETTLE/2 s), from the worker's start and from its core's start
until it caught up; the catch-up time (worker start until its applied index reaches the
leader's), with the slots it lacked.

Then restart time (worker start until its core publishes a status) and worker RSS, for the
smallest and the largest log of the run. Prints figures; asserts nothing.

`--transfer`: the cluster runs with its web servers (LocalCluster web=True), so every node's
CONFIGSTORE_PEER_URLS is set: the workers compact their logs to CONFIGSTORE_LOG_TAIL slots
below their applied index (default 5,000), and a node further behind than its peers'
compaction point is told to install a peer's snapshot (state transfer). Printed besides:
the leader's compaction point when the node returns, whether the node installed a snapshot
(its status's counters, and the worker log's "installed ... snapshot at slot N in S s"
lines), and the probe's p50 and p99 before the kill (all three nodes up: "without it") and
while the node catches up, with the ratio of the two p50s. Without it (the default) the
cluster has no web servers, so no compaction: the node always catches up by replay.
Catch-up ends when the node's applied index is at least the leader's as read just before it
(the leader's moves on with the probe's writes) and at least the others' when it returned.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import redis

from consensus.client import Committed
from consensus.runtime import status_key
from devcluster.localcluster import LocalCluster, free_ports

#: The issue's figures for today's code (catch-up seconds by writes while down).
BEFORE = {5000: 34.0, 20000: 178.0, 50000: 142.0}
#: Seconds the cluster is left alone after the writes, before the node returns; the second
#: half of it is the "before the return" baseline.
SETTLE = 16.0


def _payload(key: str, value: int) -> str:
    return json.dumps(
        {"op": "put", "key": key, "value": value, "at": datetime.now(UTC).isoformat()}
    )


def _pct(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


class Probe(threading.Thread):
    """Writes at the leader every `interval` seconds; records (start, latency ms or None)."""

    def __init__(self, cluster: LocalCluster, leader: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.cluster, self.leader, self.interval = cluster, leader, interval
        self.samples: list[tuple[float, float | None]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        submitter = self.cluster.submitter(self.leader)
        k = 0
        while not self.stopped.is_set():
            k += 1
            started = time.monotonic()
            outcome = submitter.submit(_payload("probe", k), timeout=5)
            elapsed = time.monotonic() - started
            ok = isinstance(outcome, Committed)
            self.samples.append((started, elapsed * 1000 if ok else None))
            self.stopped.wait(max(self.interval - elapsed, 0.0))

    def between(self, start: float, end: float) -> tuple[list[float], int]:
        picked = [lat for at, lat in self.samples if start <= at < end]
        return [lat for lat in picked if lat is not None], sum(1 for lat in picked if lat is None)


class Watcher(threading.Thread):
    """Polls the cluster's status every 0.25 s: the (leader, ballot) pairs seen."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.seen: list[tuple[float, str, str]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for node in self.cluster.status()["nodes"]:
                if node.get("role") == "leader":
                    pair = (node["node_id"], node.get("ballot", ""))
                    if not self.seen or self.seen[-1][1:] != pair:
                        self.seen.append((time.monotonic(), *pair))
            self.stopped.wait(0.25)

    def changes_between(self, start: float, end: float) -> int:
        before = [s for s in self.seen if s[0] < start]
        during = [s for s in self.seen if start <= s[0] < end]
        last = before[-1][1:] if before else None
        changes = 0
        for _, *pair in during:
            if tuple(pair) != last:
                changes += 1
                last = tuple(pair)
        return changes


def applied_index(cluster: LocalCluster, node: str) -> int:
    rows = cluster.query(node, "SELECT applied_index FROM consensus_applied_state")
    return rows[0][0] if rows else 0  # no row before the first slot is applied


def spread(count: int, clients: int, work) -> float:
    """`work(client, k)` `count` times in all over `clients` threads (k counts each client's
    calls from 1); returns the seconds it took."""
    left = [count]
    lock = threading.Lock()

    def client(c: int) -> None:
        k = 0
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            k += 1
            work(c, k)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started


def write(cluster: LocalCluster, nodes: list[str], count: int, clients: int) -> float:
    """`count` writes through `nodes`, `clients` threads; returns the seconds it took."""

    def work(c: int, k: int) -> None:
        submitter = cluster.submitter(nodes[c % len(nodes)])
        submitter.submit(_payload(f"load/{c % 50}", k), timeout=10)

    return spread(count, clients, work)


def restart(cluster: LocalCluster, node: str) -> tuple[float, float, int]:
    """SIGKILL and start `node`'s worker: (seconds until its core published a status, its
    RSS in MB 3 s later, its applied index)."""
    cluster.kill_worker(node)
    started = time.monotonic()
    _start_and_wait_for_core(cluster, node)
    up = time.monotonic() - started
    time.sleep(3)
    rss = _worker_rss(cluster, node)
    return up, rss, applied_index(cluster, node)


def _start_and_wait_for_core(cluster: LocalCluster, node: str) -> None:
    """Start `node`'s worker and wait until its core has published a status."""
    broker = redis.Redis.from_url(cluster.broker_url(node))
    started_wall = time.time()
    cluster.start_worker(node)
    while True:
        raw = broker.get(status_key(node))
        if raw is not None and json.loads(raw).get("time", 0) > started_wall:
            return
        time.sleep(0.01)


def _worker_rss(cluster: LocalCluster, node: str) -> float:
    process = psutil.Process(cluster.processes[node].worker.pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 1e6


def rejoin(
    cluster: LocalCluster,
    writes: int,
    clients: int,
    interval: float,
    detail: bool = False,
    transfer: bool = False,
) -> str:
    leader = cluster.wait_for_leader()
    away = next(i for i in cluster.ids if i != leader)
    others = [i for i in cluster.ids if i != away]
    worker_log = cluster.data_dir / "logs" / f"worker-{away}.log"
    probe, watcher = Probe(cluster, leader, interval), Watcher(cluster)
    probe.start()
    watcher.start()
    time.sleep(8)  # the probe's "before"
    before_end = time.monotonic()
    cluster.kill_worker(away)
    behind_from = applied_index(cluster, away)
    took = write(cluster, others, writes, clients)
    # Let the two nodes digest the writes (their appliers' backlogs, autovacuum), then take
    # a second baseline: the same cluster, the node still down, just before it returns.
    settle = time.monotonic()
    while len({applied_index(cluster, i) for i in others}) > 1 and time.monotonic() - settle < 60:
        time.sleep(0.1)
    time.sleep(SETTLE)
    target = max(applied_index(cluster, i) for i in others)
    compacted = _published(cluster, leader).get("compacted_through")
    log_from = worker_log.stat().st_size if worker_log.exists() else 0
    back = time.monotonic()
    _start_and_wait_for_core(cluster, away)
    core_up = time.monotonic()
    while True:
        top = applied_index(cluster, leader)  # the leader's first: it only grows
        reached = applied_index(cluster, away)
        if reached >= max(top, target) or time.monotonic() - back > 600:
            break
        time.sleep(0.05)
    caught = time.monotonic()
    caught_up = reached >= max(top, target)
    time.sleep(2)  # and nothing happens right after (and the node publishes its status)
    probe.stopped.set()
    watcher.stopped.set()
    probe.join(10)
    watcher.join(10)
    before, _ = probe.between(before_end - 8, before_end)
    before_return, _ = probe.between(back - SETTLE / 2, back)
    during, failed_during = probe.between(back, caught)
    streaming, _ = probe.between(core_up, caught)
    _, failed_all = probe.between(before_end, caught + 2)
    changes_writing = watcher.changes_between(before_end, back)
    changes = watcher.changes_between(back, caught + 2)
    published = _published(cluster, away)
    elections = published.get("elections")
    installs = _installs(published, worker_log, log_from)
    if detail:
        print(
            "  probes from the kill (s after the worker start: ms): "
            + ", ".join(
                f"{at - back:+.2f}:{'FAIL' if lat is None else f'{lat:.0f}'}"
                for at, lat in probe.samples
                if back - 1 <= at < caught + 2
            ),
            flush=True,
        )
    old = BEFORE.get(writes)
    phases = (
        _transfer_phases(installs, compacted, before, during, target - behind_from)
        if transfer
        else ""
    )
    return (
        f"{writes:>6} writes while {away} was down ({target - behind_from} slots behind, "
        f"written in {took:.0f} s): leader changes after it came back {changes} "
        f"(while it was down: {changes_writing}), elections by {away} "
        f"{elections}, failed leader writes {failed_all} ({failed_during} during catch-up), "
        f"leader write p99 before the kill {_pct(before, 99):.0f} ms (p50 "
        f"{statistics.median(before) if before else 0:.0f} ms, {len(before)} probes) / "
        f"before the return {_pct(before_return, 99):.0f} ms (p50 "
        f"{statistics.median(before_return) if before_return else 0:.0f} ms, "
        f"{len(before_return)} probes) / from "
        f"the worker's start until caught up {_pct(during, 99):.0f} ms (p50 "
        f"{statistics.median(during) if during else 0:.0f} ms, {len(during)} probes) / "
        f"from its core's start (the stream) {_pct(streaming, 99):.0f} ms "
        f"({len(streaming)} probes), catch-up "
        + (
            f"{caught - back:.1f} s ({caught - core_up:.1f} s after its core started)"
            if caught_up
            else f"NOT DONE after {caught - back:.0f} s"
        )
        + (f" (issue's figure for today's code: {old:.0f} s)" if old else "")
        + phases
    )


def _published(cluster: LocalCluster, node: str) -> dict:
    """`node`'s worker's last published status ({} if none)."""
    return json.loads(redis.Redis.from_url(cluster.broker_url(node)).get(status_key(node)) or "{}")


INSTALLED = re.compile(r"installed (\S+)'s snapshot at slot (\d+) in ([\d.]+) s")


def _installs(published: dict, worker_log: Path, log_from: int) -> dict:
    """What the node's worker says of snapshot installs since its start: its status's
    counters and index, and the worker log's lines written since `log_from` (bytes)."""
    lines = []
    if worker_log.exists():
        with open(worker_log, "rb") as f:
            f.seek(log_from)
            lines = INSTALLED.findall(f.read().decode(errors="replace"))
    counters = published.get("counters", {})
    return {
        "state_transfer": published.get("state_transfer"),
        "installs": counters.get("snapshot_installs"),
        "failures": counters.get("snapshot_install_failures"),
        "installed_index": published.get("snapshot_installed_index"),
        "logged": [(peer, int(slot), float(secs)) for peer, slot, secs in lines],
    }


def _transfer_phases(
    installs: dict, compacted, before: list[float], during: list[float], behind: int
) -> str:
    """The state-transfer figures of one rejoin, as printed lines."""
    base = statistics.median(before) if before else float("nan")
    catching = statistics.median(during) if during else float("nan")
    logged = "; ".join(f"from {p} at slot {s} in {t:.1f} s" for p, s, t in installs["logged"])
    return (
        f"\n  state transfer {installs['state_transfer']}: {behind} slots behind, the "
        f"leader's log compacted through {compacted} at the return; snapshot installs "
        f"{installs['installs']} (failures {installs['failures']}), installed index "
        f"{installs['installed_index']}; worker log: {logged or 'no install line'}"
        f"\n  leader write probe: before the kill (3 nodes up) p50 {base:.1f} ms p99 "
        f"{_pct(before, 99):.1f} ms ({len(before)} probes); while it caught up p50 "
        f"{catching:.1f} ms p99 {_pct(during, 99):.1f} ms ({len(during)} probes); "
        f"p50 ratio caught-up/before {catching / base:.2f}x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rejoin", description=__doc__)
    parser.add_argument("--writes", default="5000,20000,50000")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--probe", type=float, default=0.05)
    parser.add_argument(
        "--detail", action="store_true", help="print every probe around the catch-up"
    )
    parser.add_argument(
        "--transfer",
        action="store_true",
        help="web servers on: log compaction and state transfer (see above)",
    )
    parser.add_argument(
        "--broker-index-offset",
        type=int,
        default=0,
        help="added to {index} of CONFIGSTORE_CLUSTER_BROKER_URL",
    )
    args = parser.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="configstore-rejoin-"))
    data.chmod(0o755)
    cluster = LocalCluster.from_environment(
        data,
        web=args.transfer,
        fresh=True,
        broker_index_offset=args.broker_index_offset,
        **({"base_port": free_ports(3, consecutive=True)[0]} if args.transfer else {}),
    )
    try:
        cluster.start()
        if args.transfer:
            tail = cluster.env(cluster.ids[0]).get("CONFIGSTORE_LOG_TAIL")
            tail = tail or os.environ.get("CONFIGSTORE_LOG_TAIL") or "5000 (default)"
            print(
                f"state transfer on: web servers at {cluster.web_url(cluster.ids[0])}.., "
                f"CONFIGSTORE_LOG_TAIL {tail}",
                flush=True,
            )
        leader = cluster.wait_for_leader()
        write(cluster, list(cluster.ids), 1000, 1)  # ~1,000 slots: one client, one per slot
        node = next(i for i in cluster.ids if i != leader)
        small = restart(cluster, node)
        print(
            f"restart at {small[2]} slots: {small[0]:.2f} s until the core runs, "
            f"worker RSS {small[1]:.0f} MB",
            flush=True,
        )
        for count in [int(w) for w in args.writes.split(",") if w]:
            print(
                rejoin(cluster, count, args.clients, args.probe, args.detail, args.transfer),
                flush=True,
            )
        cluster.wait_for_leader()
        node = next(i for i in cluster.ids if i != cluster.wait_for_leader())
        large = restart(cluster, node)
        print(
            f"restart at {large[2]} slots: {large[0]:.2f} s until the core runs, "
            f"worker RSS {large[1]:.0f} MB (ratios to {small[2]} slots: time "
            f"{large[0] / small[0]:.2f}x, RSS {large[1] / small[1]:.2f}x)",
            flush=True,
        )
    finally:
        cluster.stop()
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
