"""Writes to the config store: validate, build a command, submit it through consensus, wait
until this node has applied it, and return what was committed -- or raise the failure a
caller can act on (configstore.exceptions). The admin and the REST API call only these.

Nothing here writes a config row: the applier does (configstore.statemachine). A function
returns only once the command is applied on this node, so a read of this node that follows
sees the write.

Request ids are the idempotency keys: a call with the request id of a command already
applied returns (or raises) that command's outcome and submits nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

from configstore import commands, conf, exceptions, schemas, selectors
from configstore.commands import Check, Origin, SchemaCommand, Write, WriteCommand
from configstore.models import Entry, History, Schema
from configstore.validation import (
    InvalidValue,
    check_json,
    check_text,
    json_size,
    schema_target_error,
    validate_key,
)
from consensus import client
from consensus.cluster import node_has_quorum

__all__ = [
    "Check",
    "EntryDeleted",
    "EntryWritten",
    "SchemaDeleted",
    "SchemaWritten",
    "TxnCommitted",
    "Write",
    "entry_delete",
    "entry_put",
    "entry_txn",
    "read_barrier",
    "request_outcome",
    "schema_delete",
    "schema_put",
]


@dataclass(frozen=True)
class EntryWritten:
    """A committed put: `entry` is the entry as that command left it (unsaved instance)."""

    request_id: str
    index: int
    created: bool
    entry: Entry


@dataclass(frozen=True)
class EntryDeleted:
    request_id: str
    index: int
    key: str
    version: int  # the version that was deleted


@dataclass(frozen=True)
class TxnCommitted:
    request_id: str
    index: int
    results: list[dict]  # [{"op": "put"|"delete", "key", "version"}] in the txn's order


@dataclass(frozen=True)
class SchemaWritten:
    request_id: str
    index: int
    created: bool
    schema: Schema


@dataclass(frozen=True)
class SchemaDeleted:
    request_id: str
    index: int
    key: str
    version: int


# ------------------------------------------------------------------------------- entries


def entry_put(
    *,
    key: str,
    value: Any,
    actor: str,
    reason: str = "",
    description: str | None = None,
    expected_version: int | None = None,
    create_only: bool = False,
    must_exist: bool = False,
    request_id: str | None = None,
    timeout: float | None = None,
) -> EntryWritten:
    """Create or replace `key`. `expected_version` makes it a compare-and-set (0: must not
    exist); `create_only` refuses an existing key; `must_exist` an absent one. A None
    description keeps the current one."""
    _key(key)
    _value(value)
    _conditions(expected_version, create_only, must_exist)
    origin = _origin(actor, reason)
    if description is not None:
        _text(description, "description", commands.MAX_DESCRIPTION_LENGTH)
    write = Write("put", key, value, description, expected_version, create_only, must_exist)
    command = WriteCommand("put", (write,), origin)
    request_id, outcome = _submit(
        command, request_id, timeout, prevalidate=lambda: _prevalidate(key, value)
    )
    entry = _written(
        Entry,
        key,
        outcome,
        origin,
        datetime.fromisoformat(outcome.result["updated_at"]),
        value=value,
    )
    return EntryWritten(request_id, outcome.slot, outcome.result["created"], entry)


def _written(model, key: str, outcome: client.Committed, origin, updated_at, **content):
    """The Entry or Schema a committed write left, from the applier's result: no read."""
    result = outcome.result
    return model(
        key=key,
        description=result["description"],
        version=result["version"],
        created_index=result["created_index"],
        modified_index=outcome.slot,
        updated_by=origin.actor,
        updated_at=updated_at,
        **content,
    )


def entry_delete(
    *,
    key: str,
    actor: str,
    reason: str = "",
    expected_version: int | None = None,
    request_id: str | None = None,
    timeout: float | None = None,
) -> EntryDeleted:
    """Delete `key` (NotFound if absent); with `expected_version`, only at that version."""
    _key(key)
    _conditions(expected_version, False, False)
    command = WriteCommand(
        "delete", (Write("delete", key, expected_version=expected_version),), _origin(actor, reason)
    )
    request_id, outcome = _submit(command, request_id, timeout)
    return EntryDeleted(request_id, outcome.slot, key, outcome.result["version"])


def entry_txn(
    *,
    ops: Sequence[Write],
    checks: Sequence[Check] = (),
    actor: str,
    reason: str = "",
    request_id: str | None = None,
    timeout: float | None = None,
) -> TxnCommitted:
    """Apply every op (Write("put", key, value[, description]) or Write("delete", key)) if
    every check holds (Check(key, version); version 0: absent), all or nothing. TxnFailed
    names the failed checks. No limit on the number of ops below CONFIGSTORE_MAX_TXN_BYTES."""
    if not ops:
        raise exceptions.InvalidInput("a txn needs at least one op", field="ops")
    writes: list[Write] = []
    total = 0
    for i, op in enumerate(ops):
        if not isinstance(op, Write) or op.op not in ("put", "delete"):
            raise exceptions.InvalidInput(f"ops[{i}] must be a put or a delete", field="ops")
        _key(op.key, field=f"ops[{i}].key")
        if op.expected_version is not None or op.create_only or op.must_exist:
            raise exceptions.InvalidInput(
                f"ops[{i}]: a txn op takes no conditions: use checks", field="ops"
            )
        if op.op == "put":
            total += _value(op.value, field=f"ops[{i}].value")
            if op.description is not None:
                _text(op.description, f"ops[{i}].description", commands.MAX_DESCRIPTION_LENGTH)
            writes.append(Write("put", op.key, op.value, op.description))
        else:
            writes.append(Write("delete", op.key))
    limit = conf.get("CONFIGSTORE_MAX_TXN_BYTES")
    if total > limit:
        raise exceptions.TooLarge(
            f"the txn's values total {total} bytes, over the limit of {limit}",
            size=total,
            limit=limit,
        )
    for i, check in enumerate(checks):
        if not isinstance(check, Check):
            raise exceptions.InvalidInput(f"checks[{i}] must be a Check", field="checks")
        _key(check.key, field=f"checks[{i}].key")
        _version(check.version, f"checks[{i}].version", required=True)
    for what, keys in (("ops", [w.key for w in writes]), ("checks", [c.key for c in checks])):
        if len(set(keys)) != len(keys):
            raise exceptions.InvalidInput(f"a txn may name each key once in its {what}", field=what)

    def prevalidate() -> None:
        for write in writes:
            if write.op == "put":
                _prevalidate(write.key, write.value)

    command = WriteCommand("txn", tuple(writes), _origin(actor, reason), tuple(checks))
    request_id, outcome = _submit(command, request_id, timeout, prevalidate=prevalidate)
    return TxnCommitted(request_id, outcome.slot, outcome.result["results"])


# ------------------------------------------------------------------------------- schemas


def schema_put(
    *,
    key: str,
    schema: Any,
    actor: str,
    reason: str = "",
    description: str | None = None,
    expected_version: int | None = None,
    request_id: str | None = None,
    timeout: float | None = None,
) -> SchemaWritten:
    """Attach a JSON Schema to a key, or to every key under a namespace ("payments/").
    Refused (SchemaViolation) if a current value under it fails the schema."""
    _schema_target(key)
    _value(schema, field="schema")
    if (error := schemas.schema_error(schema)) is not None:
        raise exceptions.InvalidInput(error, field="schema")
    _conditions(expected_version, False, False)
    if description is not None:
        _text(description, "description", commands.MAX_DESCRIPTION_LENGTH)
    origin = _origin(actor, reason)
    command = SchemaCommand("put_schema", key, origin, schema, description, expected_version)
    request_id, outcome = _submit(command, request_id, timeout)
    written = _written(Schema, key, outcome, origin, origin.at, schema=schema)
    return SchemaWritten(request_id, outcome.slot, outcome.result["created"], written)


def schema_delete(
    *,
    key: str,
    actor: str,
    reason: str = "",
    expected_version: int | None = None,
    request_id: str | None = None,
    timeout: float | None = None,
) -> SchemaDeleted:
    _schema_target(key)
    _conditions(expected_version, False, False)
    command = SchemaCommand(
        "delete_schema", key, _origin(actor, reason), expected_version=expected_version
    )
    request_id, outcome = _submit(command, request_id, timeout)
    return SchemaDeleted(request_id, outcome.slot, key, outcome.result["version"])


# ------------------------------------------------------------------------------- reads


def read_barrier(*, timeout: float | None = None) -> int:
    """Make the next read of this node linearizable: commit a no-op through the log and wait
    until it is applied here. Returns the index it committed at. NoQuorum / NotConfirmed
    when the cluster cannot confirm it."""
    ok, _ = node_has_quorum()
    if not ok:
        raise exceptions.NoQuorum(
            "this node cannot reach a quorum: a linearizable read is not possible now "
            "(?consistency=stale reads this node's state)",
            request_id=uuid.uuid4().hex,
        )
    # Shared with this process's concurrent readers: never one submitted before this call.
    outcome = client.default_submitter().barrier(
        timeout=timeout if timeout is not None else conf.get("CONFIGSTORE_READ_TIMEOUT")
    )
    if isinstance(outcome, client.NotConfirmed):
        raise exceptions.NotConfirmed(
            "the cluster did not confirm a linearizable read in time",
            request_id=outcome.request_id,
        )
    return outcome.slot


def request_outcome(request_id: str) -> client.Committed | client.Rejected | None:
    """The outcome of a request id this node has applied, or None (not applied here yet)."""
    return client.default_submitter().lookup(request_id)


# ------------------------------------------------------------------------------- plumbing


def _submit(
    command: commands.Command,
    request_id: str | None,
    timeout: float | None,
    *,
    prevalidate=None,
) -> tuple[str, client.Committed]:
    """Submit and wait. Returns (request id, Committed); raises for every other outcome.
    `prevalidate` (checks against this node's state) runs unless the request id was already
    applied: a retry returns its first outcome even if the state has moved on since."""
    payload = commands.encode(command)
    try:  # the applier's own rules: what it would refuse is never submitted
        commands.decode(payload)
    except commands.Malformed as error:
        raise exceptions.InvalidInput(str(error)) from None
    submitter = client.default_submitter()
    fresh = request_id is None  # made here: never submitted before, nothing to look up
    if fresh:
        request_id = uuid.uuid4().hex
    else:
        known = submitter.lookup(request_id)  # a retry of a request already applied
        if known is not None:
            _check_replay(command, request_id)
            return request_id, _committed_or_raise(known)
    if prevalidate is not None:
        prevalidate()
    ok, _ = node_has_quorum()
    if not ok:
        raise exceptions.NoQuorum(
            "this node cannot reach a quorum: nothing was submitted, nothing committed",
            request_id=request_id,
        )
    outcome = submitter.submit(
        payload,
        request_id=request_id,
        fresh=fresh,
        timeout=timeout if timeout is not None else conf.get("CONFIGSTORE_WRITE_TIMEOUT"),
    )
    if isinstance(outcome, client.NotConfirmed):
        raise exceptions.NotConfirmed(
            f"not confirmed in time: it may still commit; look up request {request_id}",
            request_id=request_id,
        )
    return request_id, _committed_or_raise(outcome)


def _committed_or_raise(outcome: client.Committed | client.Rejected) -> client.Committed:
    if isinstance(outcome, client.Committed):
        return outcome
    error = rejection_error(outcome.result)
    error.request_id, error.index = outcome.request_id, outcome.slot
    raise error


def _check_replay(command: commands.Command, request_id: str) -> None:
    """A request id already applied may only be retried with the same command: its history
    rows (one per key) must name the same keys, operations and values."""
    if isinstance(command, SchemaCommand):
        asked = [(command.key, command.op, command.schema)]
    else:
        asked = [(w.key, w.op, w.value if w.op == "put" else None) for w in command.writes]
    found = [
        (key, operation, value)
        for key, operation, value in History.objects.filter(request_id=request_id)
        .order_by("id")
        .values_list("key", "operation", "new_value")
    ]
    if found != asked:
        raise exceptions.IdempotencyKeyReused(
            f"request {request_id} was already applied with a different request; "
            "use a new Idempotency-Key for a new request",
            field="Idempotency-Key",
        )


def rejection_error(result: dict) -> exceptions.ConfigstoreError:
    """The exception for the result of a command the applier rejected."""
    code = result.get("error", "")
    detail = result.get("detail", "rejected")
    if code == "version_conflict":
        return exceptions.VersionConflict(
            detail,
            key=result.get("key", ""),
            expected_version=result.get("expected_version"),
            current_version=result.get("current_version"),
        )
    if code == "not_found":
        return exceptions.NotFound(detail, key=result.get("key", ""))
    if code == "schema_violation":
        return exceptions.SchemaViolation(
            detail,
            key=result.get("key", ""),
            path=result.get("path", "$"),
            schema=result.get("schema", ""),
        )
    if code == "txn_failed":
        return exceptions.TxnFailed(detail, failed=result.get("failed", []))
    return exceptions.InvalidInput(detail)


def _origin(actor: str, reason: str) -> Origin:
    _text(actor, "actor", commands.MAX_ACTOR_LENGTH)
    _text(reason, "reason", commands.MAX_REASON_LENGTH)
    return Origin(
        at=datetime.now(UTC), actor=actor, reason=reason, node=settings.CONFIGSTORE_NODE_ID
    )


def _key(key: object, *, field: str = "key") -> None:
    try:
        validate_key(key)
    except InvalidValue as error:
        raise exceptions.InvalidKey(str(error), field=field) from None


def _schema_target(key: object) -> None:
    if (error := schema_target_error(key)) is not None:
        raise exceptions.InvalidKey(
            f"invalid schema key {key!r}: {error} (a key, or a namespace ending in '/')",
            field="key",
        )


def _value(value: object, *, field: str = "value") -> int:
    """Check a JSON value is storable and within the size limit; returns its size."""
    try:
        check_json(value, field)
    except InvalidValue as error:
        raise exceptions.InvalidInput(str(error), field=field) from None
    size = json_size(value)
    limit = conf.get("CONFIGSTORE_MAX_VALUE_BYTES")
    if size > limit:
        raise exceptions.TooLarge(
            f"{field} is {size} bytes as JSON, over the limit of {limit}", size=size, limit=limit
        )
    return size


def _text(value: object, field: str, max_length: int) -> None:
    try:
        check_text(value, field, max_length)
    except InvalidValue as error:
        raise exceptions.InvalidInput(str(error), field=field) from None


def _version(value: object, field: str, *, required: bool = False) -> None:
    if value is None and not required:
        return
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not 0 <= value <= commands.MAX_VERSION
    ):
        raise exceptions.InvalidInput(f"{field} must be a non-negative integer", field=field)


def _conditions(expected_version: object, create_only: bool, must_exist: bool) -> None:
    _version(expected_version, "expected_version")
    if sum([expected_version is not None, bool(create_only), bool(must_exist)]) > 1:
        raise exceptions.InvalidInput(
            "give at most one of expected_version, create_only and must_exist"
        )


def _prevalidate(key: str, value: Any) -> None:
    """Check the value against this node's copy of the schemas that apply. The applier
    checks again against the schemas in force when the command is applied."""
    found = schemas.first_violation(selectors.schemas_for_key(key), value)
    if found is not None:
        raise exceptions.SchemaViolation(
            found.describe(key), key=key, path=found.path, schema=found.schema_key
        )
