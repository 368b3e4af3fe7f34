"""How fast a node's worker comes back: prints figures, asserts nothing.

    ./dev python -m benchmarks.worker_start [--rounds 3]

Starts a fresh 3-node cluster (workers only; the servers named by
CONFIGSTORE_CLUSTER_DATABASE_URL / _BROKER_URL, else embedded ones) and measures, per round:

- one worker restarted: from the spawn of a follower's worker to (a) its first published
  status and (b) the first commit of a write submitted through it from its spawn on, again
  every second (the worker must take the submission off its inbox, forward it, learn and
  apply the slot), and the
  CPU time the worker process used until (b) (less sensitive to a busy machine);
- a whole-cluster crash: every worker SIGKILLed at once, then restarted one after the
  other; from the last spawn to the first write committed through n1 (submitted again
  every second until one commits).

The machine is shared: compare figures taken in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil
import redis

from consensus.client import Committed
from consensus.runtime import status_key
from devcluster.localcluster import LocalCluster


def _payload(key: str) -> str:
    return json.dumps({"op": "put", "key": key, "value": 1, "at": datetime.now(UTC).isoformat()})


def _first_status(cluster: LocalCluster, node: str, after: float, timeout: float) -> float:
    """Seconds from `after` (time.time()) until `node` publishes a status newer than it."""
    client = redis.Redis.from_url(cluster.broker_url(node))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = client.get(status_key(node))
        if raw:
            published = json.loads(raw).get("time", 0.0)
            if published > after:
                return time.time() - after
        time.sleep(0.01)
    raise TimeoutError(f"{node} published no status within {timeout}s")


def _commit_through(cluster: LocalCluster, node: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = cluster.submitter(node).submit(
            _payload(f"bench/{uuid.uuid4().hex[:8]}"), timeout=1.0
        )
        if isinstance(outcome, Committed):
            return
    raise TimeoutError(f"no write committed through {node} within {timeout}s")


def one_worker(cluster: LocalCluster) -> tuple[float, float, float]:
    leader = cluster.wait_for_leader(30)
    node = next(n for n in cluster.ids if n != leader)
    cluster.kill_worker(node, signal.SIGKILL)
    time.sleep(0.5)
    started_wall, started = time.time(), time.monotonic()
    cluster.start_worker(node)
    _commit_through(cluster, node, 60.0)
    committed = time.monotonic() - started
    cpu = psutil.Process(cluster.processes[node].worker.pid).cpu_times()
    status = _first_status(cluster, node, started_wall, 30.0)
    return status, committed, cpu.user + cpu.system


def whole_cluster(cluster: LocalCluster) -> float:
    for node in cluster.ids:
        cluster.kill_worker(node, signal.SIGKILL)
    time.sleep(0.5)
    for node in cluster.ids:
        cluster.start_worker(node)
    last = time.monotonic()
    _commit_through(cluster, cluster.ids[0], 60.0)
    return time.monotonic() - last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="configstore-worker-start-"))
    cluster = LocalCluster.from_environment(data, web=False, fresh=True)
    load = os.getloadavg()[0]
    try:
        cluster.start()
        _commit_through(cluster, "n1", 30.0)
        singles, wholes = [], []
        for _ in range(args.rounds):
            singles.append(one_worker(cluster))
            wholes.append(whole_cluster(cluster))
    finally:
        cluster.stop()
        shutil.rmtree(data, ignore_errors=True)

    def show(values: list[float]) -> str:
        return (
            f"median {statistics.median(values):.2f} s "
            f"(min {min(values):.2f}, max {max(values):.2f}; {len(values)} rounds)"
        )

    print(f"load average at start {load:.1f} ({os.cpu_count()} cores, shared)")
    print(f"one worker restarted, to its first status:        {show([s[0] for s in singles])}")
    print(f"one worker restarted, to a write committed via it: {show([s[1] for s in singles])}")
    print(f"  CPU time the worker used until then:             {show([s[2] for s in singles])}")
    print(f"every worker killed, last restart to a commit:     {show(wholes)}")


if __name__ == "__main__":
    main()
