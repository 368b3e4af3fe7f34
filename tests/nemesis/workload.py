"""The clients of a fault run: each sends reads, puts, compare-and-sets and deletes to the
REST API, like a user, and records what it saw as linearizability operations.

What an answer means (tests.linearizability.history has the operation's fields):
- 200/201 and 204 are ok; 404 not_found; 412 a conflict, with the current version the
  store reported (0 when the key did not exist).
- A write that may have taken effect without the client learning it is `unknown`: a
  timeout, a connection lost after the request was sent, a 503 other than "no_quorum"
  (e.g. "not_confirmed"). It may take effect at any time after its call, or never.
- Any other 5xx (a 500, 502, ...) breaks the API's promise (a JSON 4xx or a 503 for
  anything): the write is recorded as unknown, and the run fails. So does a 5xx other
  than 503 to a read.
- A write that certainly did not take effect is left out of the history and remembered
  as `failed`: a connection refused (the web server was down), a 503 "no_quorum" (the
  node says it did not submit it). The audit checks that none of them is in the log.
- A read that failed in any way is left out: a read changes nothing.

Every write carries an Idempotency-Key, which becomes its request id in the log and the
audit history: that is how the audit finds each client operation there.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

from tests.linearizability.history import (
    CONFLICT,
    DELETE,
    NOT_FOUND,
    OK,
    PUT,
    READ,
    UNKNOWN,
    Operation,
)

CONNECT_TIMEOUT = 1.0
WRITE_SERVER_TIMEOUT_MS = 1500  # the nodes' CONFIGSTORE_WRITE/READ_TIMEOUT_MS in a fault run
REQUEST_TIMEOUT = 3.0  # the client's own: above the server's, so most waits end in a 503
BACKOFF = 0.1  # seconds a client waits after a request that got no answer


@dataclass
class KeySpace:
    """A few keys at a time, renewed every `rotate_every` seconds: the checker's search
    grows with the operations of one key, so each key gets a bounded share of the run."""

    keys: int = 10
    rotate_every: float = 10.0
    prefix: str = "jepsen"
    started: float = field(default_factory=time.monotonic)

    def pick(self, rng: random.Random) -> str:
        generation = int((time.monotonic() - self.started) / self.rotate_every)
        return f"{self.prefix}/g{generation}/k{rng.randrange(self.keys)}"


@dataclass
class Recorder:
    """Every client's operations and failed writes, and counts of what happened."""

    clock_zero: float = field(default_factory=time.monotonic)
    operations: list[Operation] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> why
    counts: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # a client that crashed: the run fails
    broken: list[str] = field(default_factory=list)  # answers 5xx other than 503: it fails
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.clock_zero

    def record(self, op: Operation) -> None:
        with self.lock:
            self.operations.append(op)
            self.counts[f"{op.kind} {op.outcome}"] += 1

    def fail(self, kind: str, idempotency_key: str | None, why: str) -> None:
        with self.lock:
            self.counts[f"{kind} failed ({why})"] += 1
            if idempotency_key is not None:
                self.failed[idempotency_key] = why


class Client(threading.Thread):
    """One client: a node of its own (`nodes` has one URL) or a random one per request."""

    def __init__(
        self,
        name: str,
        nodes: list[str],
        token: str,
        keys: KeySpace,
        recorder: Recorder,
        stop: threading.Event,
        *,
        seed: int,
        run_id: str,
    ) -> None:
        super().__init__(name=f"client-{name}", daemon=True)
        self.client = name
        self.nodes = nodes
        self.keys = keys
        self.recorder = recorder
        self.stop_event = stop
        self.rng = random.Random(seed)
        self.run_id = run_id
        self.seq = 0
        self.versions: dict[str, int] = {}  # the last version this client saw per key
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                if not self.one(self.keys.pick(self.rng)):
                    self.stop_event.wait(BACKOFF)  # as a real client would, after a failure
        except Exception as error:  # noqa: BLE001 - reported by the run, which then fails
            with self.recorder.lock:
                self.recorder.errors.append(f"client {self.client}: {error!r}")

    def one(self, key: str) -> bool:
        """One random operation on `key`; False if it got no answer."""
        roll = self.rng.random()
        if roll < 0.4:
            return self.read(key) is not None
        if roll < 0.65:
            return self.put(key)
        if roll < 0.85:
            return self.put(key, expected_version=self._guess_version(key))
        if roll < 0.9:
            return self.put(key, create_only=True)
        if roll < 0.95:
            return self.delete(key)
        return self.delete(key, expected_version=self._guess_version(key))

    def _guess_version(self, key: str) -> int:
        """Mostly the last version seen (a real compare-and-set), sometimes a stale one."""
        seen = self.versions.get(key, 0)
        return seen if self.rng.random() < 0.8 else max(0, seen - self.rng.randrange(1, 3))

    def _url(self, key: str) -> str:
        return f"{self.rng.choice(self.nodes)}/api/v1/keys/{key}"

    # ------------------------------------------------------------------ operations

    def read(self, key: str, url: str | None = None) -> Operation | None:
        call = self.recorder.now()
        try:
            response = self.session.get(
                url or self._url(key), timeout=(CONNECT_TIMEOUT, REQUEST_TIMEOUT)
            )
        except requests.RequestException:
            self.recorder.fail(READ, None, "no answer")
            return None
        ret = self.recorder.now()
        if response.status_code == 200:
            body = response.json()
            self.versions[key] = body["version"]
            op = Operation(
                self.client, key, READ, call, ret, OK, value=body["value"], version=body["version"]
            )
        elif response.status_code == 404:
            self.versions[key] = 0
            op = Operation(self.client, key, READ, call, ret, NOT_FOUND)
        else:
            self.recorder.fail(READ, None, _error_code(response))
            self._broken_promise(READ, response)
            return None
        self.recorder.record(op)
        return op

    def put(
        self, key: str, *, expected_version: int | None = None, create_only: bool = False
    ) -> bool:
        self.seq += 1
        value = {"client": self.client, "n": self.seq, "run": self.run_id}
        headers = {}
        if expected_version is not None:
            headers["If-Match"] = f'"{expected_version}"'
        if create_only:
            headers["If-None-Match"] = "*"
        conditions = {"expected_version": expected_version, "create_only": create_only}
        return self._write(PUT, key, headers, conditions, value)

    def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        self.seq += 1
        headers = {} if expected_version is None else {"If-Match": f'"{expected_version}"'}
        return self._write(DELETE, key, headers, {"expected_version": expected_version}, None)

    def _write(self, kind: str, key: str, headers: dict, conditions: dict, value) -> bool:
        """Send one write and record it; False if it certainly failed (left out)."""
        idempotency_key = f"{self.run_id}-{self.client}-{self.seq}"
        headers = {**headers, "Idempotency-Key": idempotency_key}
        url = self._url(key)
        call = self.recorder.now()

        def record(outcome: str, version: int | None = None) -> None:
            ret = None if outcome == UNKNOWN else self.recorder.now()
            self.recorder.record(
                Operation(
                    self.client,
                    key,
                    kind,
                    call,
                    ret,
                    outcome,
                    value=value,
                    version=version,
                    request_id=idempotency_key,
                    **conditions,
                )
            )

        try:
            if kind == PUT:
                response = self.session.put(
                    url,
                    json={"value": value, "reason": "fault run"},
                    headers=headers,
                    timeout=(CONNECT_TIMEOUT, REQUEST_TIMEOUT),
                )
            else:
                response = self.session.delete(
                    url, headers=headers, timeout=(CONNECT_TIMEOUT, REQUEST_TIMEOUT)
                )
        except requests.ConnectionError as error:
            if _refused(error):  # nothing reached the server
                self.recorder.fail(kind, idempotency_key, "connection refused")
                return False
            record(UNKNOWN)
            return True
        except requests.RequestException:  # a timeout: sent, maybe applied
            record(UNKNOWN)
            return True
        status = response.status_code
        if status in (200, 201):
            version = response.json()["version"]
            self.versions[key] = version
            record(OK, version)
        elif status == 204:
            self.versions[key] = 0
            record(OK)
        elif status == 404:
            self.versions[key] = 0
            record(NOT_FOUND)
        elif status == 412:
            current = response.json().get("current_version") or 0
            self.versions[key] = current
            record(CONFLICT, current)
        elif status == 503 and _error_code(response) == "no_quorum":
            self.recorder.fail(kind, idempotency_key, "no_quorum")
            return False
        elif status >= 500:
            with self.recorder.lock:
                self.recorder.counts[f"{kind} {status} {_error_code(response)}"] += 1
            self._broken_promise(kind, response)
            record(UNKNOWN)
        else:  # a 4xx the workload never provokes on purpose: a bug of the run or the API
            raise AssertionError(f"{kind} {url} answered {status}: {response.text[:500]}")
        return True

    def _broken_promise(self, kind: str, response: requests.Response) -> None:
        """A 5xx other than 503 is an error of the run."""
        if response.status_code >= 500 and response.status_code != 503:
            with self.recorder.lock:
                self.recorder.broken.append(
                    f"{response.request.method} {response.url} answered "
                    f"{response.status_code}: {response.text[:300]!r}"
                )


def _error_code(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", response.status_code))
    except ValueError:
        return str(response.status_code)


def _refused(error: requests.ConnectionError) -> bool:
    """Whether the connection was refused (so no request was sent)."""
    seen = error
    for _ in range(6):
        if isinstance(seen, ConnectionRefusedError):
            return True
        nxt = seen.__cause__ or seen.__context__ or (seen.args[0] if seen.args else None)
        if not isinstance(nxt, BaseException):
            break
        seen = nxt
    return "Connection refused" in str(error)
