"""What the client's live view gives a service, in one run on a real 3-node cluster:

    ./dev python -m benchmarks.live_view [--views 50] [--writes 100] [--seconds 3]

1. reads per second from a live view (in memory), on one core;
2. change propagation: from a committed write (its answer) to each of `--views` live views
   (spread over the three nodes) having applied it, p50/p99 over `--writes` writes;
3. the same reads done as REST calls (a stale read of one node, and a linearizable one),
   for comparison.

Servers: CONFIGSTORE_CLUSTER_DATABASE_URL / CONFIGSTORE_CLUSTER_BROKER_URL, or embedded ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from configstore_client import Client, LiveView

from devcluster.localcluster import LocalCluster


def _per_second(call, seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        done += 1
    return done / (time.perf_counter() - started)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=50)
    parser.add_argument("--writes", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    cluster = LocalCluster.from_environment(Path(tempfile.mkdtemp(prefix="cs-live-")), web=True)
    if cluster.database_url_template:
        cluster.fresh = True
    cluster.start()
    try:
        cluster.ensure_admin()
        urls = [cluster.web_url(n) for n in cluster.ids]
        writer = Client(urls, cluster.api_token)
        prefix = "bench/"
        for n in range(20):
            writer.put(f"{prefix}k{n}", {"n": n})
        # Each view asks its own node first (its client's first URL), spread over the nodes.
        views = [
            LiveView(Client(urls[i % 3 :] + urls[: i % 3], cluster.api_token), prefix)
            for i in range(args.views)
        ]
        view = views[0]
        memory = _per_second(lambda: view.get("bench/k7"), args.seconds)
        stale_client = Client(urls[:1], cluster.api_token)
        stale = _per_second(lambda: stale_client.get("bench/k7", consistency="stale"), args.seconds)
        linear = _per_second(lambda: stale_client.get("bench/k7"), args.seconds)

        delays: list[float] = []
        for n in range(args.writes):
            entry = writer.put(f"{prefix}k{n % 20}", {"n": n, "write": True})
            answered = time.perf_counter()
            seen: dict[int, float] = {}
            deadline = answered + 10
            while len(seen) < len(views) and time.perf_counter() < deadline:
                for i, v in enumerate(views):
                    if i not in seen and v.index >= entry.index:
                        seen[i] = time.perf_counter() - answered
                time.sleep(0.0005)
            if len(seen) < len(views):
                print(f"write {n}: only {len(seen)} of {len(views)} views applied it in 10 s")
            delays += list(seen.values())
        for v in views:
            v.close(timeout=1)
        print(f"machine: {os.cpu_count()} cores; {args.views} live views over 3 nodes")
        print(f"reads from a live view (memory), one thread: {memory:,.0f}/s")
        print(f"REST reads of one node, stale:        {stale:,.0f}/s")
        print(f"REST reads of one node, linearizable: {linear:,.0f}/s")
        print(
            f"write answered -> applied in each view ({len(delays)} samples): "
            f"p50 {statistics.median(delays) * 1000:.1f} ms, "
            f"p99 {_percentile(delays, 0.99) * 1000:.1f} ms, "
            f"max {max(delays) * 1000:.1f} ms"
        )
        print(f"threads alive: {threading.active_count()}")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
