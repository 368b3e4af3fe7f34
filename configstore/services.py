"""Writes to the config store: validate, build a command, submit it through consensus, wait
until this node has applied it, and return what was committed -- or raise the failure a
caller can act on (configstore.exceptions). The admin and the REST API call only these.

Nothing here writes a config row: the applier does (configstore.statemachine). A function
returns only once the command is applied on this node, so a read of this node that follows
sees the write.

Idempotency: a write may carry a client's `idempotency_key`, namespaced here by the actor
(the username) into the command ("<actor>:<key>"), so that it is the same key through any
node. Every submission has its own fresh request id; whether a command under a key already
applied is a replay or a reuse is decided by the state machine at apply, on every node alike
(configstore.statemachine), and each caller is told the outcome recorded for its own
command. A key this node already knows is answered without submitting: the first command's
outcome if the request is the same (same fingerprint), IdempotencyKeyReused if not.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from configstore import commands, conf, exceptions, schemas, selectors
from configstore.commands import Check, Origin, SchemaOperation, Write, WriteOperation
from configstore.models import Entry, IdempotencyRecord, Schema
from configstore.statemachine import IDEMPOTENCY_WINDOW
from configstore.validation import (
    InvalidValue,
    check_json,
    check_text,
    json_size,
    schema_target_error,
    validate_key,
)
from consensus import api as consensus

__all__ = [
    "Actor",
    "Check",
    "EntryDeleted",
    "EntryWritten",
    "SchemaDeleted",
    "SchemaWritten",
    "TxnCommitted",
    "Write",
    "actor_of",
    "entry_delete",
    "entry_put",
    "entry_txn",
    "idempotent_outcome",
    "read_barrier",
    "request_outcome",
    "schema_delete",
    "schema_put",
]


@dataclass(frozen=True)
class Actor:
    """Who asks: a username, and the credential the request was authorised with ("session",
    "token:<id>"; None for the operator's own tools), which the applier checks again."""

    name: str
    auth: str | None = None


def actor_of(request) -> Actor:
    from configstore.api.auth import credential

    return Actor(request.user.get_username(), credential(request))


def _actor_parts(actor: str | Actor) -> tuple[str, str | None]:
    return (actor.name, actor.auth) if isinstance(actor, Actor) else (actor, None)


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
    actor: str | Actor,
    reason: str = "",
    description: str | None = None,
    expected_version: int | None = None,
    create_only: bool = False,
    must_exist: bool = False,
    idempotency_key: str | None = None,
    timeout: float | None = None,
) -> EntryWritten:
    """Create or replace `key`. `expected_version` makes it a compare-and-set (0: must not
    exist); `create_only` refuses an existing key; `must_exist` an absent one. A None
    description keeps the current one."""
    _key(key)
    _value(value)
    _conditions(expected_version, create_only, must_exist)
    origin = _origin(actor, reason, idempotency_key)
    if description is not None:
        _text(description, "description", commands.MAX_DESCRIPTION_LENGTH)
    write = Write("put", key, value, description, expected_version, create_only, must_exist)
    command = WriteOperation("put", (write,), origin)
    done = _submit(command, timeout, prevalidate=lambda: _prevalidate(key, value))
    entry = _written(Entry, key, done, origin, value=value)
    return EntryWritten(done.request_id, done.index, done.result["created"], entry)


def _written(model, key: str, done: _Done, origin: Origin, **content):
    """The Entry or Schema a committed write left, from the applier's result: no read."""
    result = done.result
    return model(
        key=key,
        description=result["description"],
        version=result["version"],
        created_index=result["created_index"],
        modified_index=done.index,
        updated_by=origin.actor,
        updated_at=datetime.fromisoformat(result["updated_at"]),
        **content,
    )


def entry_delete(
    *,
    key: str,
    actor: str | Actor,
    reason: str = "",
    expected_version: int | None = None,
    idempotency_key: str | None = None,
    timeout: float | None = None,
) -> EntryDeleted:
    """Delete `key` (NotFound if absent); with `expected_version`, only at that version."""
    _key(key)
    _conditions(expected_version, False, False)
    command = WriteOperation(
        "delete",
        (Write("delete", key, expected_version=expected_version),),
        _origin(actor, reason, idempotency_key),
    )
    done = _submit(command, timeout)
    return EntryDeleted(done.request_id, done.index, key, done.result["version"])


def entry_txn(
    *,
    ops: Sequence[Write],
    checks: Sequence[Check] = (),
    actor: str | Actor,
    reason: str = "",
    idempotency_key: str | None = None,
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
    limit = conf.store().max_txn_bytes
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
        budget = schemas.Budget()  # as the applier: one for the whole txn
        for write in writes:
            if write.op == "put":
                _prevalidate(write.key, write.value, budget)

    command = WriteOperation(
        "txn", tuple(writes), _origin(actor, reason, idempotency_key), tuple(checks)
    )
    done = _submit(command, timeout, prevalidate=prevalidate)
    return TxnCommitted(done.request_id, done.index, done.result["results"])


@dataclass(frozen=True)
class ImportPlan:
    """What makes every key under `prefix` hold exactly a mapping's {key: value}: the txn's
    ops, its checks (the version of every key it read, 0 for absent: the txn is refused if
    anything moved meanwhile) and the diff, one line per change ("+ key: value",
    "~ key: old -> new", "- key: old")."""

    prefix: str
    ops: list[Write]
    checks: list[Check]
    diff: list[str]


def import_plan(prefix: str, wanted: dict[str, Any]) -> ImportPlan:
    """The plan of an import of `wanted` under `prefix`, against this node's applied state."""
    if not isinstance(wanted, dict):
        raise exceptions.InvalidInput("an import is a JSON object {key: value}", field="file")
    outside = sorted(k for k in wanted if not str(k).startswith(prefix))
    if outside:
        raise exceptions.InvalidInput(
            f"keys outside the prefix {prefix!r}: {', '.join(outside[:5])}", field="file"
        )
    current = {e.key: e for e in selectors.entry_list(prefix=prefix)}
    ops, checks, diff = [], [], []
    for key in sorted(current.keys() | wanted.keys()):
        entry = current.get(key)
        shown = json.dumps(wanted.get(key), ensure_ascii=False)
        if key not in wanted:
            ops.append(Write("delete", key))
            diff.append(f"- {key}: {json.dumps(entry.value, ensure_ascii=False)}")
        elif entry is None:
            ops.append(Write("put", key, wanted[key]))
            diff.append(f"+ {key}: {shown}")
        elif entry.value != wanted[key]:
            ops.append(Write("put", key, wanted[key]))
            diff.append(f"~ {key}: {json.dumps(entry.value, ensure_ascii=False)} -> {shown}")
        checks.append(Check(key, entry.version if entry else 0))
    return ImportPlan(prefix, ops, checks, diff)


def import_apply(plan: ImportPlan, *, actor: str | Actor, reason: str = "") -> TxnCommitted | None:
    """Commit `plan` as one txn (all or nothing, through consensus); None if it changes
    nothing. TxnFailed if a key it read moved meanwhile: nothing applied."""
    if not plan.ops:
        return None
    return entry_txn(ops=plan.ops, checks=plan.checks, actor=actor, reason=reason)


# ------------------------------------------------------------------------------- schemas


def schema_put(
    *,
    key: str,
    schema: Any,
    actor: str | Actor,
    reason: str = "",
    description: str | None = None,
    expected_version: int | None = None,
    idempotency_key: str | None = None,
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
    origin = _origin(actor, reason, idempotency_key)
    command = SchemaOperation("put_schema", key, origin, schema, description, expected_version)
    done = _submit(command, timeout)
    written = _written(Schema, key, done, origin, schema=schema)
    return SchemaWritten(done.request_id, done.index, done.result["created"], written)


def schema_delete(
    *,
    key: str,
    actor: str | Actor,
    reason: str = "",
    expected_version: int | None = None,
    idempotency_key: str | None = None,
    timeout: float | None = None,
) -> SchemaDeleted:
    _schema_target(key)
    _conditions(expected_version, False, False)
    command = SchemaOperation(
        "delete_schema",
        key,
        _origin(actor, reason, idempotency_key),
        expected_version=expected_version,
    )
    done = _submit(command, timeout)
    return SchemaDeleted(done.request_id, done.index, key, done.result["version"])


# ------------------------------------------------------------------------------- reads


def read_barrier(*, timeout: float | None = None) -> int:
    """Make the next read of this node linearizable: a read barrier (consensus.barrier: a
    read index, no log slot), waited for until this node has applied it. Returns that index.
    NoQuorum / NotConfirmed when the cluster cannot confirm it."""
    ok, _ = consensus.node_has_quorum()
    if not ok:
        raise exceptions.NoQuorum(
            "this node cannot reach a quorum: a linearizable read is not possible now "
            "(?consistency=stale reads this node's state)",
            request_id=uuid.uuid4().hex,
        )
    # Shared with this process's concurrent readers: never one submitted before this call.
    outcome = consensus.barrier(
        timeout=timeout if timeout is not None else conf.store().read_timeout
    )
    if isinstance(outcome, consensus.TimedOut):
        raise exceptions.NotConfirmed(
            "the cluster did not confirm a linearizable read in time",
            request_id=outcome.request_id,
        )
    return outcome.slot


def request_outcome(request_id: str) -> consensus.Committed | consensus.Rejected | None:
    """The outcome of a request id this node has applied, or None (not applied here yet)."""
    return consensus.lookup(request_id)


def idempotent_outcome(
    *, actor: str | Actor, idempotency_key: str
) -> consensus.Committed | consensus.Rejected | None:
    """The outcome of the first command `actor` had applied under `idempotency_key`, as this
    node has applied it (live: within the window), or None."""
    record = _recorded(_namespaced(_actor_parts(actor)[0], idempotency_key))
    return None if record is None else _recorded_outcome(record)


# ------------------------------------------------------------------------------- plumbing


@dataclass(frozen=True)
class _Done:
    """A committed command as its caller is answered: for a replay, the first command's
    request id, index and result."""

    request_id: str
    index: int
    result: dict


def _submit(command: commands.Operation, timeout: float | None, *, prevalidate=None) -> _Done:
    """Submit under a fresh request id and wait. Returns the committed outcome; raises for
    every other one. A command under an idempotency key this node already knows is not
    submitted (nor prevalidated: a retry gets its first outcome even if the state has moved
    on since)."""
    payload = commands.encode(command)
    try:  # the applier's own rules: what it would refuse is never submitted
        commands.decode(payload)
    except commands.Malformed as error:
        raise exceptions.InvalidInput(str(error)) from None
    key = command.origin.idempotency_key
    if key is not None and (record := _recorded(key)) is not None:
        if record.fingerprint != commands.fingerprint(command):
            raise exceptions.IdempotencyKeyReused(
                f"this Idempotency-Key was used for another request (request "
                f"{record.request_id}, log index {record.index}): nothing was submitted; use "
                "a new key for a new request"
            )
        return _done(_recorded_outcome(record))
    if prevalidate is not None:
        prevalidate()
    request_id = uuid.uuid4().hex
    ok, _ = consensus.node_has_quorum()
    if not ok:
        raise exceptions.NoQuorum(
            "this node cannot reach a quorum: nothing was submitted, nothing committed",
            request_id=request_id,
        )
    outcome = consensus.submit(
        payload,
        request_id=request_id,
        fresh=True,
        timeout=timeout if timeout is not None else conf.store().write_timeout,
    )
    if isinstance(outcome, consensus.TimedOut):
        raise exceptions.NotConfirmed(
            f"not confirmed in time: it may still commit; look up request {request_id}",
            request_id=request_id,
        )
    return _done(outcome)


def _done(outcome: consensus.Committed | consensus.Rejected) -> _Done:
    """The answer for an applied command: a replay answers as the first command did."""
    first = outcome.result.get("replay_of")
    request_id, index = (
        (first["request_id"], first["index"]) if first else (outcome.request_id, outcome.slot)
    )
    if isinstance(outcome, consensus.Rejected):
        error = rejection_error(outcome.result)
        error.request_id, error.index = request_id, index
        raise error
    return _Done(request_id, index, outcome.result)


def _namespaced(actor: str, idempotency_key: str) -> str:
    """Idempotency keys are per actor: the same through every node, never another user's."""
    return f"{actor}:{idempotency_key}"


def _recorded(key: str) -> IdempotencyRecord | None:
    """This node's live record of an idempotency key (see statemachine.IDEMPOTENCY_WINDOW)."""
    record = IdempotencyRecord.objects.filter(key=key).first()
    if record is None or record.index < selectors.applied_index() - IDEMPOTENCY_WINDOW:
        return None
    return record


def _recorded_outcome(record: IdempotencyRecord) -> consensus.Committed | consensus.Rejected:
    kind = consensus.Committed if record.outcome == "committed" else consensus.Rejected
    first = {"request_id": record.request_id, "index": record.index}
    return kind(record.request_id, record.index, {**record.result, "replay_of": first})


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
    if code == "idempotency_key_reused":
        return exceptions.IdempotencyKeyReused(detail)
    if code == "forbidden":
        return exceptions.Forbidden(detail)
    if code == "conflict":
        return exceptions.Conflict(detail)
    return exceptions.InvalidInput(detail)


def _origin(actor: str | Actor, reason: str, idempotency_key: str | None = None) -> Origin:
    actor, auth = _actor_parts(actor)
    _text(actor, "actor", commands.MAX_ACTOR_LENGTH)
    _text(reason, "reason", commands.MAX_REASON_LENGTH)
    if idempotency_key is not None:
        _text(idempotency_key, "idempotency_key", commands.MAX_CLIENT_KEY_LENGTH)
        if not idempotency_key:
            raise exceptions.InvalidInput(
                "an idempotency key must not be empty", field="Idempotency-Key"
            )
        idempotency_key = _namespaced(actor, idempotency_key)
    return Origin(
        at=datetime.now(UTC),
        actor=actor,
        reason=reason,
        node=consensus.node_id(),
        idempotency_key=idempotency_key,
        auth=auth,
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
    limit = conf.store().max_value_bytes
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


def _prevalidate(key: str, value: Any, budget: schemas.Budget | None = None) -> None:
    """Check the value against this node's copy of the schemas that apply. The applier
    checks again against the schemas in force when the command is applied."""
    found = schemas.first_violation(selectors.schemas_for_key(key), value, budget)
    if found is not None:
        raise exceptions.SchemaViolation(
            found.describe(key), key=key, path=found.path, schema=found.schema_key
        )
