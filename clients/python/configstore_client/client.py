"""The client: every call of configstore's REST API a service needs, against all the nodes
of a cluster.

- Retries: a connection error, a timeout or a 503 moves on to the next node, after an
  exponential backoff with full jitter (as AWS's architecture blog advises), up to
  `retries` times; other errors are raised at once as configstore_client.errors.
- Exactly-once writes: every write carries an `Idempotency-Key` (a random one unless the
  caller gives its own), the same on each retry, so a retried write is applied at most
  once, whichever node takes it (the cluster decides it in its log).
- `not_confirmed`: a write that was submitted but not confirmed in time is retried with
  its key (the cluster answers it as the first was, once it committed);
  `request_outcome(request_id)` looks one up by hand.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from configstore_client import errors

INDEX_HEADER = "X-Configstore-Index"


@dataclass(frozen=True)
class Entry:
    key: str
    value: Any
    version: int
    description: str = ""
    created_index: int = 0
    modified_index: int = 0
    updated_by: str = ""
    updated_at: str = ""
    #: the applied index of the state the answer reflects (a write: its log index)
    index: int = 0

    @classmethod
    def from_json(cls, data: dict, index: int) -> Entry:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "index"}
        return cls(**fields, index=index)


@dataclass(frozen=True)
class Listing:
    entries: list[Entry]
    index: int  # the applied index the first page reflects


@dataclass(frozen=True)
class Changes:
    """One long-poll's answer: the history rows after the asked index, and the index to ask
    after next."""

    events: list[dict] = field(default_factory=list)
    index: int = 0


def _index(response: httpx.Response) -> int:
    try:
        return int(response.headers.get(INDEX_HEADER, "0"))
    except ValueError:
        return 0


def _version_tag(version: int) -> str:
    return f'"{version}"'


class Client:
    """A client of one cluster. `urls`: every node's base URL ("http://host:8001"); calls
    start at the first and move on when a node fails. Thread-safe (one httpx.Client)."""

    def __init__(
        self,
        urls: Sequence[str],
        token: str,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        retries: int = 4,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not urls:
            raise ValueError("give the URL of at least one node")
        self.urls = [u.rstrip("/") for u in urls]
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self._node = 0
        self._random = random.Random()
        self._http = httpx.Client(
            headers={"Authorization": f"Token {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
        )

    @property
    def current_url(self) -> str:
        """The base URL of the node the next call goes to first: the one that answered the
        last call, or the one the client moved on to after a node failed."""
        return self.urls[self._node % len(self.urls)]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        body: Any = None,
        headers: dict | None = None,
        timeout: float | None = None,
        ok: Sequence[int] = (200, 201, 204),
    ) -> httpx.Response:
        """One request, retried on another node after a connection error, a timeout or a
        503; any other error is raised as its exception."""
        last: errors.ConfigstoreError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                ceiling = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                time.sleep(self._random.uniform(0, ceiling))  # full jitter
            url = self.urls[self._node % len(self.urls)] + path
            try:
                response = self._http.request(
                    method,
                    url,
                    params=params,
                    json=body,
                    headers=headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as error:
                last = errors.Unavailable(f"{url}: {error.__class__.__name__}: {error}")
                self._node += 1
                continue
            if response.status_code in ok:
                return response
            try:
                answer = response.json()
            except ValueError:
                answer = {"detail": response.text[:200]}
            error = errors.error_for(response.status_code, answer)
            if not isinstance(error, errors.Unavailable):
                raise error
            last = error
            self._node += 1
        assert last is not None
        raise last

    # ------------------------------------------------------------------ reads

    def get(self, key: str, *, consistency: str = "linearizable") -> Entry:
        """The entry; NotFound if the key does not exist. `consistency="stale"` reads the
        node's own copy (no round through the log)."""
        response = self._call("GET", f"/api/v1/keys/{key}", params={"consistency": consistency})
        return Entry.from_json(response.json(), _index(response))

    def _pages(self, path: str, params: dict) -> Iterator[tuple[dict, httpx.Response]]:
        """Every page of a list, in order, following each page's `next_cursor` (keyset
        pagination: each row once, whatever is written between pages)."""
        cursor = None
        while True:
            page_params = params if cursor is None else {**params, "cursor": cursor}
            response = self._call("GET", path, params=page_params)
            data = response.json()
            yield data, response
            cursor = data.get("next_cursor")
            if not cursor:
                return

    def iter_entries(
        self, prefix: str = "", *, consistency: str = "linearizable", page_size: int = 1000
    ) -> Iterator[Entry]:
        """Every entry under `prefix` the token may read, in key order, a page at a time
        (each entry present from the first page to the last comes once; one created ahead
        of the page being read comes too, one created behind it does not). Each entry's
        `index` is that of its own page."""
        params = {"prefix": prefix, "page_size": page_size, "consistency": consistency}
        for data, response in self._pages("/api/v1/keys/", params):
            index = _index(response)
            yield from (Entry.from_json(e, index) for e in data["results"])

    def list(self, prefix: str = "", *, consistency: str = "linearizable") -> Listing:
        """Every entry under `prefix` the token may read, all pages; `index` (also each
        entry's) is the applied index the first page reflects."""
        entries: list[Entry] = []
        index = 0
        params = {"prefix": prefix, "page_size": 1000, "consistency": consistency}
        for data, response in self._pages("/api/v1/keys/", params):
            index = index or _index(response)
            entries += [Entry.from_json(e, index) for e in data["results"]]
        return Listing(entries, index)

    def iter_history(
        self, *, key: str | None = None, prefix: str | None = None, **filters
    ) -> Iterator[dict]:
        """History rows (oldest first), a page at a time (`page_size`, 1000 by default);
        filters as the API's (`since_index`, `actor`, `outcome`, `request_id`). Rows are
        only ever added at the end: every row committed before the last page is read comes,
        once, in log order."""
        params = {
            k: v for k, v in {"key": key, "prefix": prefix, **filters}.items() if v is not None
        }
        params.setdefault("page_size", 1000)
        for data, _ in self._pages("/api/v1/history/", params):
            yield from data["results"]

    def history(
        self, *, key: str | None = None, prefix: str | None = None, **filters
    ) -> list[dict]:
        """History rows (oldest first), all pages (see iter_history)."""
        return list(self.iter_history(key=key, prefix=prefix, **filters))

    def changes(
        self, prefix: str = "", since_index: int | None = None, *, timeout: float = 30.0
    ) -> Changes:
        """One long-poll of /api/v1/watch/: the history rows after `since_index` under
        `prefix` (waits up to `timeout` seconds for one)."""
        params: dict[str, Any] = {"prefix": prefix, "timeout": timeout}
        if since_index is not None:
            params["since_index"] = since_index
        response = self._call("GET", "/api/v1/watch/", params=params, timeout=timeout + 10)
        data = response.json()
        return Changes(data["events"], int(data["index"]))

    def watch(self, prefix: str = "", since_index: int | None = None) -> Iterator[dict]:
        """Every change under `prefix` after `since_index` (now, if None), in log order,
        forever: long-polls one after another, from the index the last one reached, moving
        to another node when one fails (so none is missed or repeated)."""
        index = since_index
        while True:
            changes = self.changes(prefix, index)
            yield from changes.events
            index = changes.index

    def schemas(self, prefix: str = "", *, consistency: str = "stale") -> dict[str, Any]:
        """The JSON Schemas attached at or under `prefix` (key or namespace "a/b/" ->
        schema), all pages."""
        params = {"prefix": prefix, "page_size": 1000, "consistency": consistency}
        return {
            row["key"]: row["schema"]
            for data, _ in self._pages("/api/v1/schemas/", params)
            for row in data["results"]
        }

    def schema(self, key: str, *, consistency: str = "stale") -> Any | None:
        """The JSON Schema attached to `key` (a namespace ends with "/"), or None."""
        try:
            response = self._call(
                "GET", f"/api/v1/schemas/{key}", params={"consistency": consistency}
            )
        except errors.NotFound:
            return None
        return response.json()["schema"]

    def ping(self, prefix: str = "") -> int:
        """One linearizable read of at most one entry under `prefix`: raises what a read
        would (Unavailable, NoQuorum, Unauthorized, Forbidden); returns the applied index."""
        response = self._call("GET", "/api/v1/keys/", params={"prefix": prefix, "page_size": 1})
        return _index(response)

    def request_outcome(self, request_id: str) -> dict | None:
        """A request's outcome ({"outcome", "index", "result"}) on the node asked, or None if
        that node has not applied it (yet)."""
        try:
            return self._call("GET", f"/api/v1/requests/{request_id}").json()
        except errors.NotFound:
            return None

    def cluster(self) -> dict:
        return self._call("GET", "/api/v1/cluster/").json()

    # ------------------------------------------------------------------ writes

    def put(
        self,
        key: str,
        value: Any,
        *,
        reason: str = "",
        description: str | None = None,
        expected_version: int | None = None,
        create_only: bool = False,
        idempotency_key: str | None = None,
    ) -> Entry:
        """Create or replace `key`; `expected_version` makes it a compare-and-set
        (VersionConflict if the key moved on), `create_only` refuses an existing key."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        if expected_version is not None:
            headers["If-Match"] = _version_tag(expected_version)
        if create_only:
            headers["If-None-Match"] = "*"
        body: dict[str, Any] = {"value": value, "reason": reason}
        if description is not None:
            body["description"] = description
        response = self._call("PUT", f"/api/v1/keys/{key}", body=body, headers=headers)
        return Entry.from_json(response.json(), _index(response))

    def cas(self, key: str, value: Any, expected_version: int, **kwargs) -> Entry:
        return self.put(key, value, expected_version=expected_version, **kwargs)

    def create(self, key: str, value: Any, **kwargs) -> Entry:
        return self.put(key, value, create_only=True, **kwargs)

    def delete(
        self,
        key: str,
        *,
        reason: str = "",
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Delete `key` (NotFound if absent); returns the log index it committed at."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        if expected_version is not None:
            headers["If-Match"] = _version_tag(expected_version)
        response = self._call(
            "DELETE", f"/api/v1/keys/{key}", params={"reason": reason}, headers=headers
        )
        return _index(response)

    def txn(
        self,
        ops: Sequence[dict],
        checks: Sequence[dict] = (),
        *,
        reason: str = "",
        idempotency_key: str | None = None,
    ) -> dict:
        """All `ops` ({"op": "put", "key", "value"} / {"op": "delete", "key"}) if every check
        ({"key", "version"}; version 0: absent) holds, else none (Conflict naming them)."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        body = {"ops": list(ops), "checks": list(checks), "reason": reason}
        return self._call("POST", "/api/v1/txn", body=body, headers=headers).json()
