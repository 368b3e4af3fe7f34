"""python manage.py bench [--seconds 10] [--clients 1,16,64] [--nodes 3]

Starts a fresh 3-node cluster (workers and databases as in runcluster; on the servers named
by CONFIGSTORE_CLUSTER_DATABASE_URL / _BROKER_URL, else embedded ones) and measures, through
the same submit API the web tier uses, with clients spread over the nodes:
- commit latency p50/p99 for one client (each call: submit, then wait until applied on the
  node it was submitted to);
- commits per second for each client count;
- Celery tasks sent per committed command (web-tier submissions plus Paxos envelopes),
  and PostgreSQL transactions committed per command (all nodes);
- linearizable reads per second for each reader count (--readers): each read is a read
  barrier (Submitter.barrier, shared by the concurrent readers of one node) followed by a
  read of the node's own state, as GET /api/v1/keys/<key> does; and barriers per read.
Prints a table; the README records the figures with the machine they came from.
"""

from __future__ import annotations

import json
import queue
import shutil
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from django.core.management.base import BaseCommand

from consensus.client import Committed
from devcluster.localcluster import LocalCluster


def _payload(key: str, value: int) -> str:
    return json.dumps(
        {"op": "put", "key": key, "value": value, "at": datetime.now(UTC).isoformat()}
    )


class Command(BaseCommand):
    # A tool that starts a cluster of its own on this machine, with secrets it generates for
    # the nodes: this process signs nothing and serves nothing, so the deploy checks (e.g.
    # configstore.E001, a development secret) are the nodes' business, not its own.
    requires_system_checks = []
    help = "Benchmark a local 3-node cluster: commit latency and throughput."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--seconds", type=float, default=10.0, help="per client count")
        parser.add_argument("--clients", default="1,16,64")
        parser.add_argument("--nodes", type=int, default=3)
        parser.add_argument("--latency-samples", type=int, default=500)
        parser.add_argument("--readers", default="1,64", help="linearizable readers; '' for none")

    def handle(
        self,
        *args,
        seconds: float,
        clients: str,
        nodes: int,
        latency_samples: int,
        readers: str,
        **kw,
    ):
        data = Path(tempfile.mkdtemp(prefix="configstore-bench-"))
        data.chmod(0o755)
        cluster = LocalCluster.from_environment(data, nodes=nodes, web=False, fresh=True)
        try:
            cluster.start()
            cluster.wait_for_leader()
            self._warm_up(cluster)
            self.stdout.write(f"cluster of {nodes} nodes up, leader {cluster.leader()}")
            self._latency(cluster, latency_samples)
            for count in [int(c) for c in clients.split(",")]:
                self._throughput(cluster, count, seconds)
            for count in [int(c) for c in readers.split(",") if c]:
                self._reads(cluster, count, seconds)
        finally:
            cluster.stop()
            shutil.rmtree(data, ignore_errors=True)

    def _warm_up(self, cluster: LocalCluster) -> None:
        for k in range(30):
            cluster.submitter(cluster.ids[k % len(cluster.ids)]).submit(_payload("warm", k))

    def _latency(self, cluster: LocalCluster, samples: int) -> None:
        by_role: dict[str, list[float]] = {"leader": [], "follower": []}
        leader = cluster.leader()
        for k in range(samples):
            node = cluster.ids[k % len(cluster.ids)]
            started = time.perf_counter()
            outcome = cluster.submitter(node).submit(_payload("latency", k), timeout=10)
            elapsed = (time.perf_counter() - started) * 1000
            if isinstance(outcome, Committed):
                by_role["leader" if node == leader else "follower"].append(elapsed)
        every = sorted(by_role["leader"] + by_role["follower"])
        self.stdout.write(
            f"1 client, {len(every)} sequential commits: p50 {_pct(every, 50):.1f} ms, "
            f"p99 {_pct(every, 99):.1f} ms (submitted at the leader: p50 "
            f"{_pct(sorted(by_role['leader']), 50):.1f} ms; at a follower: p50 "
            f"{_pct(sorted(by_role['follower']), 50):.1f} ms)"
        )

    def _counters(self, cluster: LocalCluster) -> tuple[int, int]:
        """(Celery tasks sent so far by all nodes, PostgreSQL commits so far on all nodes)."""
        time.sleep(0.7)  # statuses are published every 0.5 s
        tasks = sum(
            n.get("counters", {}).get("envelopes_out", 0) for n in cluster.status()["nodes"]
        )
        tasks += sum(cluster.submitter(i).transport.sent for i in cluster.ids)  # submissions
        # Transaction ids are assigned only to transactions that write, server-wide: the
        # nodes' databases share a server here, and nothing else writes to it meanwhile.
        rows = cluster.query(cluster.ids[0], "SELECT txid_snapshot_xmax(txid_current_snapshot())")
        return tasks, rows[0][0]

    def _throughput(self, cluster: LocalCluster, count: int, seconds: float) -> None:
        done: list[int] = [0] * count
        latencies: list[list[float]] = [[] for _ in range(count)]
        submitted: list[int] = [0] * count
        stop = threading.Event()

        def client(c: int) -> None:
            submitter = cluster.submitter(cluster.ids[c % len(cluster.ids)])
            k = 0
            while not stop.is_set():
                k += 1
                started = time.perf_counter()
                outcome = submitter.submit(_payload(f"bench/{c % 50}", k), timeout=10)
                submitted[c] += 1
                if isinstance(outcome, Committed):
                    done[c] += 1
                    latencies[c].append((time.perf_counter() - started) * 1000)

        tasks_before, commits_before = self._counters(cluster)
        elapsed = _run_for(seconds, client, count, stop)
        tasks_after, commits_after = self._counters(cluster)
        committed = sum(done)
        tasks = tasks_after - tasks_before
        every = sorted(x for per in latencies for x in per)
        self.stdout.write(
            f"{count:>3} clients: {committed / elapsed:7.1f} commits/s over {elapsed:.1f} s, "
            f"latency p50 {_pct(every, 50):.1f} ms p99 {_pct(every, 99):.1f} ms, "
            f"{tasks / max(committed, 1):.2f} Celery tasks/commit, "
            f"{(commits_after - commits_before) / max(committed, 1):.2f} PostgreSQL write commits/commit"
        )

    def _reads(self, cluster: LocalCluster, count: int, seconds: float) -> None:
        # A few database connections per node, shared by its readers (the server's
        # connection limit is shared with everything else on this machine).
        pools = {i: queue.Queue() for i in cluster.ids}
        for i, pool in pools.items():
            for _ in range(4):
                pool.put(psycopg.connect(cluster.database_url(i), autocommit=True))
        done = [0] * count
        latencies: list[list[float]] = [[] for _ in range(count)]
        stop = threading.Event()
        before = {i: cluster.submitter(i).barriers_submitted for i in cluster.ids}

        def reader(c: int) -> None:
            node = cluster.ids[c % len(cluster.ids)]
            submitter = cluster.submitter(node)
            while not stop.is_set():
                started = time.perf_counter()
                if not isinstance(submitter.barrier(timeout=10), Committed):
                    continue
                conn = pools[node].get()
                try:
                    conn.execute(
                        "SELECT value, version FROM configstore_entry WHERE key = 'latency'"
                    ).fetchone()
                finally:
                    pools[node].put(conn)
                done[c] += 1
                latencies[c].append((time.perf_counter() - started) * 1000)

        elapsed = _run_for(seconds, reader, count, stop)
        for pool in pools.values():
            while not pool.empty():
                pool.get().close()
        reads = sum(done)
        barriers = sum(cluster.submitter(i).barriers_submitted - before[i] for i in cluster.ids)
        every = sorted(x for per in latencies for x in per)
        self.stdout.write(
            f"{count:>3} readers: {reads / elapsed:7.1f} linearizable reads/s over {elapsed:.1f} s, "
            f"latency p50 {_pct(every, 50):.1f} ms p99 {_pct(every, 99):.1f} ms, "
            f"{barriers / max(reads, 1):.2f} barriers/read"
        )


def _run_for(seconds: float, work, count: int, stop: threading.Event) -> float:
    """Run `work(c)` in `count` threads for `seconds`, then set `stop` and wait for them;
    returns the time it took."""
    threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in range(count)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    return time.perf_counter() - started


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]
        if p < 100
        else values[-1]
    )
