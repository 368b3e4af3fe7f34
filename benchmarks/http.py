"""The one HTTP client both systems are measured through, and the load driver.

A client is one thread with one keep-alive `http.client.HTTPConnection` to one endpoint,
issuing one request at a time (closed loop, no think time). Client c talks to endpoint
c mod (number of endpoints), so clients are spread over the nodes (members) the same way
for both systems, and runs in worker process c mod P: several processes, so that one
interpreter's GIL does not bound the load at 64 clients. Only what differs between the
systems, the requests themselves, comes from an `Api` (see `benchmarks.ours` and
`benchmarks.etcd`).

Workload: 8-byte keys k0000000..k0000099, 256-byte ASCII values, unconditional writes.
"""

from __future__ import annotations

import contextlib
import http.client
import multiprocessing
import queue
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

KEYS = 100
KEY_BYTES = 8
VALUE_BYTES = 256
#: A request that has not answered within this is an error (the client reconnects).
REQUEST_TIMEOUT = 10.0

OPS = ("write", "read", "local_read")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Api(Protocol):
    """How one system spells the benchmark's operations. Must be picklable (it is sent to
    the worker processes) and pure: building a request does no I/O."""

    name: str

    def write(self, key: str, value: str) -> Request: ...

    def read(self, key: str, *, linearizable: bool) -> Request: ...

    def succeeded(self, status: int, body: bytes) -> bool: ...


def key_name(n: int) -> str:
    """The n-th key of the workload: exactly KEY_BYTES bytes."""
    return f"k{n % KEYS:0{KEY_BYTES - 1}d}"


def value_for(client: int, seq: int) -> str:
    """A distinct VALUE_BYTES-byte ASCII value for a client's seq-th write."""
    head = f"c{client:03d}s{seq:09d}-"
    return (head + "v" * VALUE_BYTES)[:VALUE_BYTES]


def request_for(api: Api, op: str, client: int, seq: int, clients: int) -> Request:
    """The seq-th request of `client` among `clients` for operation `op`. Clients walk the
    key space in an interleaved order, so concurrent clients mostly touch different keys."""
    key = key_name(client + seq * clients)
    if op == "write":
        return api.write(key, value_for(client, seq))
    if op == "read":
        return api.read(key, linearizable=True)
    if op == "local_read":
        return api.read(key, linearizable=False)
    raise ValueError(f"unknown operation {op!r}")


class Client:
    """One keep-alive connection to one endpoint; reconnects after any failure."""

    def __init__(self, endpoint: Endpoint, timeout: float = REQUEST_TIMEOUT) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def connect(self) -> None:
        self._conn = http.client.HTTPConnection(
            self.endpoint.host, self.endpoint.port, timeout=self.timeout
        )
        self._conn.connect()
        self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def exchange(self, request: Request) -> tuple[int, bytes]:
        """Send `request`, read the whole answer: (status, body). Raises OSError or
        http.client.HTTPException on failure, after dropping the connection."""
        try:
            if self._conn is None:
                self.connect()
            self._conn.request(request.method, request.path, request.body, dict(request.headers))
            response = self._conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def attempt(api: Api, endpoint: Endpoint, request: Request, timeout: float) -> bool:
    """One request on a fresh connection: did it succeed within `timeout`?"""
    client = Client(endpoint, timeout)
    try:
        status, body = client.exchange(request)
    except (OSError, http.client.HTTPException):
        return False
    finally:
        client.close()
    return api.succeeded(status, body)


# ---------------------------------------------------------------------- the load driver


@dataclass
class Tally:
    """What some clients did during one phase."""

    ok: int = 0  # succeeded and answered within the window
    late: int = 0  # succeeded but answered after the window closed
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # of the `ok` requests
    first_error: str | None = None

    def add(self, other: Tally) -> None:
        self.ok += other.ok
        self.late += other.late
        self.errors += other.errors
        self.latencies_ms.extend(other.latencies_ms)
        self.first_error = self.first_error or other.first_error


@dataclass
class PhaseResult:
    op: str
    clients: int
    seconds: float
    tally: Tally

    @property
    def throughput(self) -> float:
        """Successful operations per second within the window."""
        return self.tally.ok / self.seconds

    @property
    def succeeded(self) -> int:
        """Every successful operation, also those answered after the window."""
        return self.tally.ok + self.tally.late


def _run_client(
    api: Api,
    endpoint: Endpoint,
    op: str,
    client: int,
    clients: int,
    start_at: float,
    end_at: float,
    tally: Tally,
) -> None:
    connection = Client(endpoint)
    try:
        try:
            connection.connect()  # before the window: connecting is not measured
        except OSError as exc:
            tally.errors += 1
            tally.first_error = f"{endpoint}: {exc!r}"
        time.sleep(max(0.0, start_at - time.monotonic()))
        seq = 0
        while time.monotonic() < end_at:
            request = request_for(api, op, client, seq, clients)
            seq += 1
            started = time.perf_counter()
            try:
                status, body = connection.exchange(request)
            except (OSError, http.client.HTTPException) as exc:
                tally.errors += 1
                tally.first_error = tally.first_error or f"{endpoint}: {exc!r}"
                continue
            elapsed_ms = (time.perf_counter() - started) * 1000
            if not api.succeeded(status, body):
                tally.errors += 1
                tally.first_error = tally.first_error or f"{endpoint}: {status} {body[:200]!r}"
            elif time.monotonic() <= end_at:
                tally.ok += 1
                tally.latencies_ms.append(elapsed_ms)
            else:
                tally.late += 1
    finally:
        connection.close()


def _run_process(
    api: Api,
    endpoints: Sequence[Endpoint],
    op: str,
    mine: Sequence[int],
    clients: int,
    start_at: float,
    end_at: float,
    results: multiprocessing.Queue,
) -> None:
    tallies = [Tally() for _ in mine]
    threads = [
        threading.Thread(
            target=_run_client,
            args=(api, endpoints[c % len(endpoints)], op, c, clients, start_at, end_at, t),
            daemon=True,
        )
        for c, t in zip(mine, tallies, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = Tally()
    for tally in tallies:
        total.add(tally)
    results.put(total)


def run_phase(
    api: Api,
    endpoints: Sequence[Endpoint],
    op: str,
    clients: int,
    seconds: float,
    processes: int = 4,
) -> PhaseResult:
    """`clients` closed-loop clients doing `op` for `seconds`, spread over `processes`
    worker processes (client c in process c mod P) and over `endpoints`. Every client
    connects first; the measured window opens for all of them at once."""
    if op not in OPS:
        raise ValueError(f"unknown operation {op!r}")
    context = multiprocessing.get_context("fork")
    count = max(1, min(processes, clients))
    groups = [list(range(p, clients, count)) for p in range(count)]
    # CLOCK_MONOTONIC is one clock for every process of the machine.
    start_at = time.monotonic() + 0.5 + 0.01 * clients
    end_at = start_at + seconds
    results = context.Queue()
    workers = [
        context.Process(
            target=_run_process,
            args=(api, list(endpoints), op, group, clients, start_at, end_at, results),
            daemon=True,
        )
        for group in groups
    ]
    for worker in workers:
        worker.start()
    total = Tally()
    try:
        for _ in workers:
            total.add(results.get(timeout=seconds + REQUEST_TIMEOUT + 30))
    except queue.Empty:
        raise RuntimeError(f"{op} with {clients} clients: a load process did not report") from None
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
                with contextlib.suppress(Exception):
                    worker.join(5)
    total.latencies_ms.sort()
    return PhaseResult(op, clients, seconds, total)
