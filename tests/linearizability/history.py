"""What the clients saw: operations on the store's entries, and a history's JSON form.

An Operation is one request of one client, as that client observed it: when it was sent
(`call`), when its response arrived (`ret`), what it asked (`kind` and its input) and what
it was told (`outcome` and its output). Every time in one history is read from one clock
(the monotonic clock of the process driving the clients), so that "A returned before B was
called" means the same for every client.

Input and output, by kind (the REST API's terms in brackets):

    read     output: ok + value + version  [200, ETag]  |  not_found  [404]
    put      input:  value; at most one condition: expected_version [If-Match: "<n>"; 0: must
             not exist], create_only [If-None-Match: *], must_exist [If-Match: *]
             output: ok + version, the entry's new version  |  conflict [412]
    delete   input:  expected_version [If-Match: "<n>"], optional
             output: ok [+ version, the version deleted]  |  not_found [404]  |  conflict [412]

`version` on a conflict is the current version the store reported (the 412's
`current_version`; 0 when the key did not exist), or None if it was not recorded. On a
delete's ok it is optional too; on a read's and a put's ok it is required.

An operation whose outcome is unknown (a timeout, a 503 that did not confirm, a lost
connection) has `outcome="unknown"` and `ret=None`: it may take effect at any time after
its call, or never. Values are JSON; two values are equal when their canonical JSON texts
(sorted keys) are.

The JSON form of a history (History.to_json / History.dump):

    {"format": "configstore-linearizability-history/1",
     "meta": {...},                       free-form: seed, duration, nodes... (optional)
     "operations": [
       {"client": "c1", "key": "k", "kind": "put", "call": 0.25, "ret": 0.31,
        "value": "v7", "expected_version": 3, "outcome": "ok", "version": 4},
       {"client": 2, "key": "k", "kind": "read", "call": 0.3, "ret": 0.32,
        "outcome": "ok", "value": "v7", "version": 4},
       {"client": "c1", "key": "k", "kind": "delete", "call": 0.4, "ret": null,
        "outcome": "unknown", "request_id": "c1-18"}]}

Fields equal to their defaults (version, expected_version, request_id null; create_only,
must_exist false) may be left out; `value` is written for every put and every ok read.
Pure: no I/O but History.dump and History.load.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "configstore-linearizability-history/1"

READ, PUT, DELETE = "read", "put", "delete"
KINDS = (READ, PUT, DELETE)
OK, NOT_FOUND, CONFLICT, UNKNOWN = "ok", "not_found", "conflict", "unknown"

# The outcomes each kind of operation can have.
OUTCOMES = {
    READ: (OK, NOT_FOUND, UNKNOWN),
    PUT: (OK, CONFLICT, UNKNOWN),
    DELETE: (OK, NOT_FOUND, CONFLICT, UNKNOWN),
}

_FIELDS = (
    "client",
    "key",
    "kind",
    "call",
    "ret",
    "outcome",
    "value",
    "version",
    "expected_version",
    "create_only",
    "must_exist",
    "request_id",
)
_REQUIRED = ("client", "key", "kind", "call", "ret", "outcome")


class InvalidHistory(ValueError):
    """An operation or a history file that does not follow this module's form. The message
    says which operation and why."""


def canonical(value: Any) -> str:
    """The canonical JSON text of a value: the identity the model compares values by."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Operation:
    """One request of one client and what the client was told. See the module docstring
    for the fields each kind takes. Raises InvalidHistory if the fields do not fit."""

    client: str | int
    key: str
    kind: str
    call: float
    ret: float | None  # None (or math.inf): the outcome is unknown
    outcome: str
    value: Any = None  # put: the value written; an ok read: the value read
    version: int | None = None
    expected_version: int | None = None
    create_only: bool = False
    must_exist: bool = False
    request_id: str | None = None  # the request's Idempotency-Key, to find it in the logs

    def __post_init__(self) -> None:
        if self.ret == math.inf:  # the other spelling of "no return"
            object.__setattr__(self, "ret", None)
        error = self._error()
        if error is not None:
            raise InvalidHistory(f"{error}: {self!r}")

    def _error(self) -> str | None:
        if not isinstance(self.client, str | int) or isinstance(self.client, bool):
            return "client must be a string or an integer"
        if not isinstance(self.key, str):
            return "key must be a string"
        if self.kind not in KINDS:
            return f"kind must be one of {', '.join(KINDS)}"
        if self.outcome not in OUTCOMES[self.kind]:
            return f"a {self.kind} has outcome {', '.join(OUTCOMES[self.kind])}"
        if not _is_time(self.call):
            return "call must be a finite number"
        if (self.ret is None) != (self.outcome == UNKNOWN):
            return "ret is None exactly when the outcome is unknown"
        if self.ret is not None and not (_is_time(self.ret) and self.call <= self.ret):
            return "ret must be a finite number, no earlier than call"
        if self.request_id is not None and not isinstance(self.request_id, str):
            return "request_id must be a string"
        for name in ("create_only", "must_exist"):
            if not isinstance(getattr(self, name), bool):
                return f"{name} must be true or false"
        if self.expected_version is not None and not _is_version(self.expected_version, 0):
            return "expected_version must be an integer >= 0"
        conditions = (self.expected_version is not None) + self.create_only + self.must_exist
        if self.kind == READ and conditions:
            return "a read takes no condition"
        if self.kind == DELETE and (self.create_only or self.must_exist):
            return "a delete takes no condition but expected_version"
        if conditions > 1:
            return "give at most one of expected_version, create_only and must_exist"
        return self._output_error()

    def _output_error(self) -> str | None:
        required = (self.kind, self.outcome) in ((READ, OK), (PUT, OK))
        if required and not _is_version(self.version, 1):
            return f"an ok {self.kind} needs the version, an integer >= 1"
        if self.version is None:
            return None
        if self.outcome in (NOT_FOUND, UNKNOWN):
            return f"a {self.outcome} outcome has no version"
        if self.outcome == CONFLICT:
            if _is_version(self.version, 0):
                return None
            return "a conflict's version (the current one; 0: absent) must be an integer >= 0"
        if not _is_version(self.version, 1):
            return "version must be an integer >= 1"
        return None

    @property
    def unknown(self) -> bool:
        return self.outcome == UNKNOWN

    def describe(self) -> str:
        """One line for a human: when, who, what, and what it was told."""
        ret = "?" if self.ret is None else f"{self.ret:.6f}"
        text = f"[{self.call:.6f} .. {ret}] client {self.client}: {self.kind} {self.key}"
        if self.kind == PUT:
            text += f" {canonical(self.value)}"
        if self.expected_version is not None:
            text += f' If-Match "{self.expected_version}"'
        elif self.create_only:
            text += " If-None-Match *"
        elif self.must_exist:
            text += " If-Match *"
        text += f" -> {self.outcome}"
        if self.kind == READ and self.outcome == OK:
            text += f" {canonical(self.value)}"
        if self.version is not None:
            text += f" (current version {self.version})" if self.outcome == CONFLICT else ""
            text += f" version {self.version}" if self.outcome == OK else ""
        if self.request_id is not None:
            text += f"  request {self.request_id}"
        return text

    def to_json(self) -> dict:
        data = {
            "client": self.client,
            "key": self.key,
            "kind": self.kind,
            "call": self.call,
            "ret": self.ret,
            "outcome": self.outcome,
        }
        if self.kind == PUT or (self.kind == READ and self.outcome == OK):
            data["value"] = self.value
        for name in ("version", "expected_version", "request_id"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        for name in ("create_only", "must_exist"):
            if getattr(self, name):
                data[name] = True
        return data

    @classmethod
    def from_json(cls, data: object) -> Operation:
        if not isinstance(data, dict):
            raise InvalidHistory(f"an operation must be a JSON object, not {data!r}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise InvalidHistory(f"unknown fields {unknown} in {data!r}")
        missing = [name for name in _REQUIRED if name not in data]
        if missing:
            raise InvalidHistory(f"missing fields {missing} in {data!r}")
        return cls(**data)


@dataclass(frozen=True)
class History:
    """A list of operations in any order, and free-form notes on the run that made it."""

    operations: tuple[Operation, ...]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "operations", tuple(self.operations))

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "meta": self.meta,
            "operations": [op.to_json() for op in self.operations],
        }

    @classmethod
    def from_json(cls, data: object) -> History:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InvalidHistory(f'a history is a JSON object with "format": "{FORMAT}"')
        unknown = sorted(set(data) - {"format", "meta", "operations"})
        if unknown:
            raise InvalidHistory(f"unknown fields {unknown} in the history")
        meta, operations = data.get("meta", {}), data.get("operations")
        if not isinstance(meta, dict) or not isinstance(operations, list):
            raise InvalidHistory('"meta" must be an object and "operations" a list')
        ops = []
        for index, op in enumerate(operations):
            try:
                ops.append(Operation.from_json(op))
            except (InvalidHistory, TypeError) as error:
                raise InvalidHistory(f"operation {index}: {error}") from None
        return cls(tuple(ops), meta)

    def dump(self, path: str | Path) -> None:
        """Write the history to `path` as JSON, one operation a line."""
        data = self.to_json()
        lines = ",\n".join(f"  {json.dumps(op, ensure_ascii=False)}" for op in data["operations"])
        head = f'{{"format": {json.dumps(FORMAT)},\n "meta": {json.dumps(self.meta)},\n'
        Path(path).write_text(f'{head} "operations": [\n{lines}\n]}}\n', encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> History:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise InvalidHistory(f"{path}: not JSON: {error}") from None
        return cls.from_json(data)


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_version(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least
