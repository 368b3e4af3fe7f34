"""Slow and waiting clients against one node: does it still answer?

    ./dev python -m benchmarks.hostile_web [--long-polls 1000] [--slow 200] [--requests 100]

Starts a fresh 3-node cluster with its web servers (the machine's PostgreSQL, databases
cs_web_{node}, unless --database-url says otherwise; embedded Redis), then on node n1:

1. unloaded: --requests writes (PUT) and linearizable reads (GET), one at a time: p50, p99;
2. hostile: --long-polls long-polls held open (half `GET /api/v1/keys/<k>?wait_index=999999`,
   half watches of an idle prefix, each re-issued when answered), --slow connections (half
   sending one header line every 5 s, half a 1,000,000-byte body one byte every 5 s), and
   the same writes and reads again, in the same run: p50, p99 and the ratio to (1);
3. what the server did with the slow connections (closed after its timeouts, how long);
4. PostgreSQL connections per node (pg_stat_activity by datname): idle, under the load of
   (2), and with 64 clients writing over the three nodes;
5. the web server's start: n1's web server restarted, seconds to its first /healthz 200.

Everything listens on 127.0.0.1 and stops by itself (about two minutes). The hostile clients
(`Hostiles`) are also what tests/configstore/test_web_hostile.py uses.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import requests

SLOW_INTERVAL = 5.0
SLOW_BODY_BYTES = 1_000_000


@dataclass
class HostileCounts:
    opened: int = 0
    refused: int = 0  # could not connect
    closed_by_server: int = 0  # the server answered (408/413/...) or hung up
    answered: int = 0  # long-polls answered
    close_seconds: list[float] = field(default_factory=list)


class Hostiles:
    """Hostile clients of one web server, on an event loop in a thread of their own, until
    stop(). Counts are per kind: "header", "body", "poll"."""

    def __init__(self, host: str, port: int, token: str, *, interval: float = SLOW_INTERVAL):
        self.host, self.port, self.token, self.interval = host, port, token, interval
        self.counts = {kind: HostileCounts() for kind in ("header", "body", "poll")}
        self._loop = asyncio.new_event_loop()
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    # --------------------------------------------------------------- what to open

    def slow_headers(self, count: int) -> None:
        """`count` connections that send one header line every interval, never the end."""
        self._spawn(count, self._slow_header)

    def slow_bodies(self, count: int) -> None:
        """`count` PUTs that announce SLOW_BODY_BYTES and send one byte every interval."""
        self._spawn(count, self._slow_body)

    def long_polls(self, count: int, paths: list[str]) -> None:
        """`count` long-polls kept outstanding: request i GETs paths[i % len(paths)] and is
        sent again whenever it is answered."""
        for i in range(count):
            path = paths[i % len(paths)]
            asyncio.run_coroutine_threadsafe(self._start(self._long_poll(path)), self._loop)

    def stop(self) -> None:
        self._stopping = True

        async def cancel() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # --------------------------------------------------------------- the clients

    def _spawn(self, count: int, make) -> None:
        for _ in range(count):
            asyncio.run_coroutine_threadsafe(self._start(make()), self._loop)

    async def _start(self, coroutine) -> None:
        self._tasks.append(asyncio.ensure_future(coroutine))

    async def _connect(self, kind: str):
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.counts[kind].refused += 1
            return None
        self.counts[kind].opened += 1
        return reader, writer

    async def _trickle(self, kind: str, first: bytes, more: bytes) -> None:
        """Send `first`, then `more` every interval until the server answers or hangs up."""
        connected = await self._connect(kind)
        if connected is None:
            return
        reader, writer = connected
        started = time.monotonic()
        try:
            writer.write(first)
            while True:
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(1024), self.interval)
                    break  # an answer or EOF: the server ended it
                except TimeoutError:
                    writer.write(more)
            self.counts[kind].closed_by_server += 1
            self.counts[kind].close_seconds.append(time.monotonic() - started)
        except OSError:
            self.counts[kind].closed_by_server += 1
            self.counts[kind].close_seconds.append(time.monotonic() - started)
        finally:
            writer.close()

    async def _slow_header(self) -> None:
        first = f"GET /healthz HTTP/1.1\r\nHost: {self.host}\r\n".encode()
        await self._trickle("header", first, b"X-Slow: 1\r\n")

    async def _slow_body(self) -> None:
        first = (
            f"PUT /api/v1/keys/hostile/slow-body HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Token {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {SLOW_BODY_BYTES}\r\n\r\n["
        ).encode()
        await self._trickle("body", first, b" ")

    async def _long_poll(self, path: str) -> None:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Token {self.token}\r\n\r\n"
        ).encode()
        while not self._stopping:
            connected = await self._connect("poll")
            if connected is None:
                await asyncio.sleep(0.5)
                continue
            reader, writer = connected
            try:
                while not self._stopping:
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    await reader.readexactly(length)
                    self.counts["poll"].answered += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                await asyncio.sleep(0.1)
            finally:
                writer.close()


# ------------------------------------------------------------------------ measuring


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed_requests(base: str, token: str, count: int, tag: str) -> dict[str, list[float]]:
    """`count` PUTs then `count` linearizable GETs of one key, one at a time: seconds each."""
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    times: dict[str, list[float]] = {"write": [], "read": []}
    key = f"{base}/api/v1/keys/hostile/measured-{tag}"
    for i in range(count):
        started = time.perf_counter()
        answer = session.put(key, json={"value": i, "reason": "benchmark"}, timeout=60)
        times["write"].append(time.perf_counter() - started)
        answer.raise_for_status()
    for _ in range(count):
        started = time.perf_counter()
        answer = session.get(key, timeout=60)
        times["read"].append(time.perf_counter() - started)
        answer.raise_for_status()
    return times


def pg_connections(database_url: str) -> int:
    """Connections to this URL's database (pg_stat_activity by datname), not counting ours."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchone()[0]


def connections_at_clients(cluster, clients: int, seconds: float) -> dict[str, int]:
    """The most PostgreSQL connections each node's database had while `clients` threads
    wrote over the nodes (round robin) for `seconds`."""
    stop = threading.Event()
    errors: list[str] = []

    def client(i: int) -> None:
        node = cluster.ids[i % len(cluster.ids)]
        session = requests.Session()
        session.headers["Authorization"] = f"Token {cluster.api_token}"
        url = f"{cluster.web_url(node)}/api/v1/keys/hostile/load-{i}"
        n = 0
        while not stop.is_set():
            n += 1
            try:
                answer = session.put(url, json={"value": n, "reason": "load"}, timeout=30)
                if answer.status_code >= 500:
                    errors.append(str(answer.status_code))
            except requests.RequestException as error:
                errors.append(type(error).__name__)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    most = dict.fromkeys(cluster.ids, 0)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for node in cluster.ids:
            most[node] = max(most[node], pg_connections(cluster.database_url(node)))
        time.sleep(0.25)
    stop.set()
    for thread in threads:
        thread.join(60)
    if errors:
        print(f"  ({len(errors)} failed writes with {clients} clients: {sorted(set(errors))})")
    return most


def web_start_seconds(cluster, node: str) -> float:
    """Restart `node`'s web server: seconds from spawning it to its first /healthz 200."""
    cluster.kill_web(node)
    started = time.monotonic()
    cluster.start_web(node)
    while time.monotonic() - started < 60:
        try:
            if requests.get(f"{cluster.web_url(node)}/healthz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"the web server of {node} did not answer within 60 s")


def summary(label: str, times: list[float], base: list[float] | None = None) -> str:
    p50, p99 = statistics.median(times) * 1000, percentile(times, 0.99) * 1000
    ratio = "" if base is None else f"  ({p50 / (statistics.median(base) * 1000):.2f}x unloaded)"
    return f"  {label:<28} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms{ratio}"


def main(argv: list[str] | None = None) -> None:
    from devcluster.localcluster import LocalCluster, free_ports

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long-polls", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument(
        "--database-url", default="postgresql://postgres@127.0.0.1:5432/cs_web_{node}"
    )
    args = parser.parse_args(argv)

    data = Path(tempfile.mkdtemp(prefix="configstore-hostile-"))
    data.chmod(0o755)
    cluster = LocalCluster(
        data,
        base_port=free_ports(3, consecutive=True)[0],
        database_url_template=args.database_url,
        fresh=True,
    )
    hostiles = None
    try:
        cluster.start()
        cluster.ensure_admin()
        cluster.wait_for_leader()
        node, token = "n1", cluster.api_token
        base = cluster.web_url(node)
        print(f"cluster up; measuring node {node} ({base})")
        timed_requests(base, token, 10, "warmup")
        idle = {n: pg_connections(cluster.database_url(n)) for n in cluster.ids}
        unloaded = timed_requests(base, token, args.requests, "unloaded")

        hostiles = Hostiles("127.0.0.1", cluster.web_port(node), token)
        half = args.long_polls // 2
        hostiles.long_polls(half, ["/api/v1/keys/hostile/idle?wait_index=999999&timeout=60"])
        hostiles.long_polls(
            args.long_polls - half, ["/api/v1/watch/?prefix=hostile-idle/&timeout=60"]
        )
        hostiles.slow_headers(args.slow // 2)
        hostiles.slow_bodies(args.slow - args.slow // 2)
        time.sleep(5)  # every hostile connection open and waiting
        loaded_connections = pg_connections(cluster.database_url(node))
        loaded = timed_requests(base, token, args.requests, "loaded")
        health_started = time.perf_counter()
        health = requests.get(f"{base}/healthz", timeout=60)
        health_seconds = time.perf_counter() - health_started
        opened = {kind: c.opened for kind, c in hostiles.counts.items()}
        time.sleep(12)  # past the header and body timeouts (10 s)
        hostiles.stop()
        counts = hostiles.counts
        hostiles = None

        print(f"\n1,2. writes and reads on {node}, {args.requests} each, one at a time")
        print(summary("write, unloaded", unloaded["write"]))
        print(summary("read, unloaded", unloaded["read"]))
        print(
            f"  with {opened['poll']} long-polls/watches, {opened['header']} slow-header and "
            f"{opened['body']} slow-body connections open on {node}:"
        )
        print(summary("write, hostile", loaded["write"], unloaded["write"]))
        print(summary("read, hostile", loaded["read"], unloaded["read"]))
        print(f"  /healthz under the same load: {health.status_code} in {health_seconds:.3f} s")
        print("\n3. the server's answer to slow clients")
        for kind, what in (("header", "slow-header"), ("body", "slow-body")):
            c = counts[kind]
            when = (
                f" after {min(c.close_seconds):.1f}-{max(c.close_seconds):.1f} s"
                if c.close_seconds
                else ""
            )
            print(f"  {what}: {c.opened} opened, {c.closed_by_server} closed by the server{when}")
        print(f"  long-polls answered meanwhile: {counts['poll'].answered} (none is due)")
        print("\n4. PostgreSQL connections per node (pg_stat_activity by datname)")
        print(f"  idle cluster: {idle}")
        print(f"  {node} under the hostile load: {loaded_connections}")
        at_clients = connections_at_clients(cluster, args.clients, 8.0)
        print(f"  at {args.clients} clients (most seen): {at_clients}")
        print("\n5. web server start")
        seconds = [web_start_seconds(cluster, node) for _ in range(3)]
        print(
            "  spawn to first /healthz 200: "
            + ", ".join(f"{s:.2f} s" for s in seconds)
            + " (3 restarts)"
        )
        print("\n(one run on a shared 2-core machine: compare the ratios, not the figures)")
    finally:
        if hostiles is not None:
            hostiles.stop()
        cluster.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
