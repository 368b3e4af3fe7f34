"""Hostile clients of a fault run: what an attacker or a careless client does to a cluster
beside the nemesis, seeded from the run's seed.

    queue poison   onto each node's broker queue (`consensus.<id>`, the node's own Redis):
                   garbage bytes, JSON that is not an object, Celery-shaped task messages
                   with wrong fields, an oversized task message (a few MB, bad MAC), and
                   replays of real task messages captured from the queues before the worker
                   took them (as captured, and with their unsigned expiry pushed forward)
    slow clients   raw connections to each node's web port that send a request header one
                   line every few seconds, or a 1,000,000-byte body one byte at a time
    long polls     a flood of `GET /api/v1/keys/<k>?wait_index=999999&timeout=20` and
                   `GET /api/v1/watch/?timeout=20` on one node (chosen by the seed)
    ReDoS schema   `PUT /api/v1/schemas/hostile/redos/` with the pattern `^(a+)+$` while a
                   key under it holds "a"*(n-2)+"!", then writes of "a"*n+"!" under it

Everything happens under the `hostile/` prefix, which the workload never uses. Every loop
ends at the run's stop event or its deadline and is bounded in count. What the clients did
and every answer they got are counted; an answer 5xx other than 503 is a problem of the
run (the API promises a JSON 4xx or a 503 for anything).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis
import requests

from consensus.transport import (
    DELIVER_TASK,
    Undeliverable,
    queue_name,
    read_task_message,
    task_message,
)
from devcluster.localcluster import LocalCluster

PREFIX = "hostile"
REDOS_PATTERN = "^(a+)+$"
POISON_KINDS = ("garbage", "not-an-object", "wrong-fields", "oversized", "replay")


@dataclass(frozen=True)
class Intensity:
    """How hard the hostile clients push (run.py's command line sets each); 0 for
    poison_every, slow_connections, long_polls or redos_length leaves that attack out."""

    poison_every: float = 0.5  # seconds between two queue items (each to a random node)
    oversize_mb: float = 4.0  # size of an oversized queue item
    oversize_max: int = 20  # oversized items per run at most
    slow_connections: int = 24  # slow clients held open per node
    slow_interval: float = 3.0  # seconds between two header lines / body bytes
    slow_hold: float = 30.0  # seconds a slow client keeps dribbling before it hangs up
    long_polls: int = 300  # long polls and watches kept in flight on the flood node
    long_poll_timeout: float = 20.0  # their ?timeout=
    redos_length: int = 29  # characters of "a" in a catastrophic value
    redos_writes: int = 4  # catastrophic writes per run
    max_items: int = 100_000  # any one loop stops after this many actions


#: The intensity of the short form and the long form unless the command line says otherwise.
DEFAULT_INTENSITY = Intensity()


@dataclass
class Hostile:
    """Start with start(); everything ends at `stop` or after `duration` seconds; join()
    waits for every loop to end. `counts` says what was done and answered; `broken` lists
    the answers the API must never give; `problems` are failures of the clients themselves."""

    cluster: LocalCluster
    token: str
    rng: random.Random
    stop: threading.Event
    duration: float
    intensity: Intensity = field(default_factory=Intensity)
    counts: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # the harness failed
    broken: list[str] = field(default_factory=list)  # answers 5xx other than 503

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.duration
        self.lock = threading.Lock()
        self.flood_node = self.rng.choice(self.cluster.ids)
        self.redos_node = self.rng.choice(self.cluster.ids)
        # Task messages seen on each node's queue (the replay pool) and the digests of the
        # items we pushed ourselves (never captured for replay).
        self.captured: dict[str, deque[bytes]] = {n: deque(maxlen=200) for n in self.cluster.ids}
        self.pushed: set[bytes] = set()
        seeds = [self.rng.randrange(2**32) for _ in range(3)]
        self.threads = [
            threading.Thread(target=self._guard(self._poison, seeds[0]), name="hostile-poison"),
            threading.Thread(target=self._guard(self._capture), name="hostile-capture"),
            threading.Thread(target=self._guard(self._redos, seeds[1]), name="hostile-redos"),
            threading.Thread(target=self._guard(self._connections, seeds[2]), name="hostile-io"),
        ]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for thread in self.threads:
            thread.daemon = True
            thread.start()

    def join(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, end - time.monotonic()))
            if thread.is_alive():
                self.problem(f"hostile client {thread.name} did not stop within {timeout:.0f} s")

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def _guard(self, loop, *args):
        def run() -> None:
            try:
                loop(*args)
            except Exception as error:  # noqa: BLE001 - a bug of the harness: the run fails
                self.problem(f"hostile client crashed: {error!r}")

        return run

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def problem(self, text: str) -> None:
        with self.lock:
            if len(self.problems) < 100:
                self.problems.append(text)

    def answered(self, what: str, status: int, body: bytes = b"") -> None:
        """Count an HTTP answer; a 5xx other than 503 is remembered in `broken`."""
        self.count(f"{what} answered {status}")
        if status >= 500 and status != 503:
            with self.lock:
                self.broken.append(f"{what} answered {status}: {_payload(body)[:200]!r}")

    def summary_lines(self) -> list[str]:
        """The counts, grouped by attack."""
        groups: dict[str, list[str]] = {}
        for what, n in sorted(self.counts.items()):
            head, _, rest = what.partition(" ")
            groups.setdefault(head, []).append(f"{rest} {n}")
        return [f"  hostile {head}: " + ", ".join(items) for head, items in groups.items()]

    # ------------------------------------------------------------------ queue poison

    def _capture(self) -> None:
        """Peek at every node's queue (the oldest items, which the worker takes next) and
        keep real task messages for replay."""
        if self.intensity.poison_every <= 0:
            return
        clients = {n: redis.Redis.from_url(self.cluster.broker_url(n)) for n in self.cluster.ids}
        for _ in range(self.intensity.max_items):
            if not self.running():
                break
            for node, client in clients.items():
                try:
                    items = client.lrange(queue_name(node), -8, -1)
                except redis.RedisError:
                    continue
                for item in items:
                    digest = hashlib.sha256(item).digest()
                    if digest in self.pushed or item in self.captured[node]:
                        continue
                    try:
                        drained = read_task_message(item, max_bytes=len(item))
                    except Undeliverable:
                        continue  # not a task message (e.g. our own poison)
                    with self.lock:  # the poison loop copies the pool
                        self.captured[node].append(item)
                    self.count(f"queue captured {_envelope_kind(drained.envelope)} envelopes")
            self.stop.wait(0.02)
        for client in clients.values():
            client.close()

    def _poison(self, seed: int) -> None:
        if self.intensity.poison_every <= 0:
            return
        rng = random.Random(seed)
        clients = {n: redis.Redis.from_url(self.cluster.broker_url(n)) for n in self.cluster.ids}
        oversized = 0
        for _ in range(self.intensity.max_items):
            if not self.running():
                break
            node = rng.choice(self.cluster.ids)
            kind = rng.choice(POISON_KINDS)
            if kind == "oversized":
                if oversized >= self.intensity.oversize_max:
                    kind = "garbage"
                oversized += 1
            item, label = self._poison_item(kind, node, rng)
            if item is None:
                self.count(f"queue {label}")
            else:
                self.pushed.add(hashlib.sha256(item).digest())
                try:
                    clients[node].lpush(queue_name(node), item)
                    self.count(f"queue {label}")
                except redis.RedisError as error:
                    self.count(f"queue not pushed ({type(error).__name__})")
            self.stop.wait(self.intensity.poison_every)
        for client in clients.values():
            client.close()

    def _poison_item(self, kind: str, node: str, rng: random.Random) -> tuple[bytes | None, str]:
        """(the item to push, its label for the counts); None when there is nothing to push."""
        queue = queue_name(node)
        if kind == "garbage":
            return b"\x00\xff" + rng.randbytes(rng.randrange(1, 200)), "garbage pushed"
        if kind == "not-an-object":
            return rng.choice(NOT_AN_OBJECT), "not-an-object pushed"
        if kind == "wrong-fields":
            name, mutate = rng.choice(WRONG_FIELDS)
            message = json.loads(task_message(DELIVER_TASK, [_fake_envelope(node)], queue))
            return json.dumps(mutate(message)).encode(), f"wrong-fields pushed ({name})"
        if kind == "oversized":
            size = int(self.intensity.oversize_mb * 1_000_000)
            envelope = {"body": "x" * size, "mac": "0" * 64}
            return task_message(DELIVER_TASK, [envelope], queue).encode(), "oversized pushed"
        with self.lock:
            pool = list(self.captured[node])
        if not pool:
            return None, "replay skipped (nothing captured yet)"
        original = rng.choice(pool)
        if rng.random() < 0.5:
            return original, "replay pushed (as captured)"
        return _refreshed(original), "replay pushed (expiry pushed forward)"

    # ------------------------------------------------------------------ catastrophic schema

    def _redos(self, seed: int) -> None:
        """A value under hostile/redos/, then a schema with a catastrophic pattern on the
        namespace, then catastrophic values: each must be answered (a refusal, or 503) and
        the cluster must keep serving meanwhile (the workload's floor says whether it did).
        A step that got no answer or a 503 is tried up to 8 times, moving on to the next
        node each time (the nemesis may have killed the web server it asked)."""
        if self.intensity.redos_length <= 0:
            return
        rng = random.Random(seed)
        session = requests.Session()
        session.headers["Authorization"] = f"Token {self.token}"
        ids = list(self.cluster.ids)
        order = ids[ids.index(self.redos_node) :] + ids[: ids.index(self.redos_node)]
        attempt = 0
        n = self.intensity.redos_length
        schema = {"type": "string", "pattern": REDOS_PATTERN}
        steps = [
            ("redos pre-existing value", f"keys/{PREFIX}/redos/k0", {"value": "a" * (n - 2) + "!"}),
            ("redos schema put", f"schemas/{PREFIX}/redos/", {"schema": schema}),
        ] + [
            ("redos catastrophic write", f"keys/{PREFIX}/redos/k{i}", {"value": "a" * n + "!"})
            for i in range(1, self.intensity.redos_writes + 1)
        ]
        self.stop.wait(min(5.0, self.duration / 6))
        with session:
            for what, path, body in steps:
                for _ in range(8):
                    if not self.running():
                        return
                    url = self.cluster.web_url(order[attempt % len(order)])
                    started = time.monotonic()
                    try:
                        response = session.put(
                            f"{url}/api/v1/{path}",
                            json={**body, "reason": "hostile: a catastrophic pattern"},
                            timeout=(2.0, 60.0),
                        )
                    except requests.RequestException as error:
                        self.count(f"redos no answer ({what}: {type(error).__name__})")
                        status = None
                    else:
                        status = response.status_code
                        self.answered(what, status, response.content)
                    took_ms = int((time.monotonic() - started) * 1000)
                    with self.lock:
                        slowest = self.counts.get("redos slowest answer (ms)", 0)
                        self.counts["redos slowest answer (ms)"] = max(slowest, took_ms)
                    self.stop.wait(rng.uniform(1.0, 2.0))
                    if status not in (None, 503):
                        break
                    attempt += 1
                self.stop.wait(rng.uniform(1.0, max(1.0, self.duration / (len(steps) + 1))))

    # ------------------------------------------------------------------ slow clients, floods

    def _connections(self, seed: int) -> None:
        asyncio.run(self._connections_async(seed))

    async def _connections_async(self, seed: int) -> None:
        rng = random.Random(seed)
        tasks = [
            asyncio.create_task(self._slow_client(node, i, random.Random(rng.randrange(2**32))))
            for node in self.cluster.ids
            for i in range(self.intensity.slow_connections)
        ] + [
            asyncio.create_task(self._long_poller(i, random.Random(rng.randrange(2**32))))
            for i in range(self.intensity.long_polls)
        ]
        while self.running():
            await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def _connection(self, node: str, what: str):
        """(reader, writer) of a connection to `node`'s web port, or None if none could be
        opened; closed at the end. A connection lost meanwhile is counted, not raised."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.cluster.web_port(node)), 2.0
            )
        except (OSError, TimeoutError):
            self.count(f"{what} not connected")
            yield None
            return
        self.count(f"{what} opened")
        try:
            yield reader, writer
        except (OSError, asyncio.IncompleteReadError):
            self.count(f"{what} lost")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _slow_client(self, node: str, i: int, rng: random.Random) -> None:
        """Open, dribble a header (even i) or a body (odd i), hang up after slow_hold; again."""
        what = "slow-header" if i % 2 == 0 else "slow-body"
        interval = self.intensity.slow_interval
        await asyncio.sleep(rng.uniform(0, interval))  # spread them out
        for _ in range(self.intensity.max_items):
            if not self.running():
                return
            async with self._connection(node, what) as opened:
                if opened is None:
                    await asyncio.sleep(interval)
                    continue
                reader, writer = opened
                if what == "slow-header":
                    lines = _slow_header_lines(self.cluster.web_port(node))
                else:
                    head = _request_head(
                        "PUT",
                        f"/api/v1/keys/{PREFIX}/slow/k{i}",
                        self.cluster.web_port(node),
                        self.token,
                        {"Content-Type": "application/json", "Content-Length": "1000000"},
                    )
                    lines = _chain([head], _slow_body())
                end = time.monotonic() + self.intensity.slow_hold
                outcome = "held to the end"  # or closed, or answered (counted by answered())
                while time.monotonic() < end and self.running():
                    writer.write(next(lines))
                    await writer.drain()
                    try:
                        data = await asyncio.wait_for(reader.read(65536), interval)
                    except TimeoutError:
                        continue
                    if not data:
                        outcome = "closed by the server"
                    else:
                        self.answered(what, _status(data), data)
                        outcome = ""
                    break
                if outcome:
                    self.count(f"{what} {outcome}")

    async def _long_poller(self, i: int, rng: random.Random) -> None:
        """Keep one long poll (even i: a key's, odd i: a watch) in flight on the flood node."""
        node = self.flood_node
        timeout = self.intensity.long_poll_timeout
        await asyncio.sleep(rng.uniform(0, 2.0))
        for _ in range(self.intensity.max_items):
            if not self.running():
                return
            if i % 2 == 0:
                what = "long-poll"
                path = f"/api/v1/keys/{PREFIX}/poll/k{i % 10}?wait_index=999999&timeout={timeout:g}"
            else:
                what = "watch"
                path = f"/api/v1/watch/?prefix={PREFIX}/poll&timeout={timeout:g}"
            async with self._connection(node, what) as opened:
                if opened is None:
                    await asyncio.sleep(1.0)
                    continue
                reader, writer = opened
                writer.write(_request_head("GET", path, self.cluster.web_port(node), self.token))
                await writer.drain()
                try:
                    data = await asyncio.wait_for(_read_all(reader), timeout + 15.0)
                except TimeoutError:
                    self.count(f"{what} no answer within {timeout + 15:g} s")
                    continue
                except asyncio.CancelledError:
                    self.count(f"{what} still unanswered when the run ended")
                    raise
                if data:
                    self.answered(what, _status(data), data)
                else:
                    self.count(f"{what} closed without an answer")


# ---------------------------------------------------------------------- items and requests

NOT_AN_OBJECT = (b"[]", b'"just a string"', b"42", b"null", b"[1, 2, 3]", b"true", b"{")


def _fake_envelope(node: str) -> dict:
    body = json.dumps({"v": 1, "kind": "paxos", "from": "n9", "to": node, "messages": []})
    return {"body": body, "mac": "0" * 64}


def _body(message: dict, body) -> dict:
    message["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    return message


def _drop(message: dict, *path: str) -> dict:
    holder = message
    for part in path[:-1]:
        holder = holder[part]
    holder.pop(path[-1], None)
    return message


def _set(message: dict, value, *path: str) -> dict:
    holder = message
    for part in path[:-1]:
        holder = holder[part]
    holder[path[-1]] = value
    return message


#: Celery task messages each with one thing wrong: (name, mutation of a good message).
WRONG_FIELDS = (
    ("no headers", lambda m: _drop(m, "headers")),
    ("no task name", lambda m: _drop(m, "headers", "task")),
    ("unknown task", lambda m: _set(m, "consensus.nope", "headers", "task")),
    ("headers not an object", lambda m: _set(m, [1, 2], "headers")),
    ("body not base64", lambda m: _set(m, "%%%not base64%%%", "body")),
    ("body not JSON", lambda m: _set(m, base64.b64encode(b"\x00\xff").decode(), "body")),
    ("body an object", lambda m: _body(m, {"args": 1})),
    ("args not a list", lambda m: _body(m, ["x", {}, {}])),
    ("no args", lambda m: _body(m, [[], {}, {}])),
    ("envelope a string", lambda m: _body(m, [["junk"], {}, {}])),
    ("envelope a list", lambda m: _body(m, [[[1, 2]], {}, {}])),
    ("kwargs not an object", lambda m: _body(m, [[{}], [], {}])),
    ("expires not a date", lambda m: _set(m, "tomorrow", "headers", "expires")),
    ("eta not a date", lambda m: _set(m, "soon", "headers", "eta")),
    ("eta far ahead", lambda m: _set(m, "2999-01-01T00:00:00+00:00", "headers", "eta")),
    ("wrong content type", lambda m: _set(m, "application/x-python-serialize", "content-type")),
    ("no properties", lambda m: _drop(m, "properties")),
    ("delivery tag a number", lambda m: _set(m, 7, "properties", "delivery_tag")),
    ("timelimit not a pair", lambda m: _set(m, "forever", "headers", "timelimit")),
    ("retries a string", lambda m: _set(m, "many", "headers", "retries")),
)


def _envelope_kind(envelope) -> str:
    try:
        return str(json.loads(envelope["body"])["kind"])
    except (TypeError, KeyError, ValueError):
        return "unreadable"


def _refreshed(item: bytes) -> bytes:
    """A captured task message with its (unsigned) expiry moved 10 s from now."""
    message = json.loads(item)
    message["headers"]["expires"] = (datetime.now(UTC) + timedelta(seconds=10)).isoformat()
    return json.dumps(message).encode()


def _request_head(method: str, path: str, port: int, token: str, extra=None) -> bytes:
    headers = {
        "Host": f"127.0.0.1:{port}",
        "Authorization": f"Token {token}",
        "Connection": "close",
        **(extra or {}),
    }
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _slow_header_lines(port: int):
    yield b"GET /healthz HTTP/1.1\r\n"
    yield f"Host: 127.0.0.1:{port}\r\n".encode()
    n = 0
    while True:  # the header never ends
        n += 1
        yield f"X-Slow-{n}: {'x' * 20}\r\n".encode()


def _slow_body():
    yield b'{"value": "'
    while True:
        yield b"x"


def _chain(*parts):
    for part in parts:
        yield from part


async def _read_all(reader: asyncio.StreamReader, limit: int = 1 << 20) -> bytes:
    data = b""
    while len(data) < limit:
        chunk = await reader.read(65536)
        if not chunk:
            break
        data += chunk
    return data


def _payload(data: bytes) -> bytes:
    """An HTTP response's body (all of `data` if it has no header)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    return body if sep and head.startswith(b"HTTP/") else data


def _status(data: bytes) -> int:
    """The status code of an HTTP response's first line (0 if it is not one)."""
    parts = data.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return 0
