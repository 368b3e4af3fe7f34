"""The replicated state machine: applies chosen commands to the entries, the schemas and the
audit history.

Deterministic: the outcome depends only on the command (configstore.commands) and the
database state before it -- never on the clock, the node applying it, or a setting -- so
every node reaches the same state and writes the same history. Runs inside the applier's
transaction (consensus.storage), on its psycopg cursor in pipeline mode, in raw SQL: it is
on the path of every commit. A write command costs one round trip (read the keys' versions
and the schemas that apply, in one statement); its writes are queued in the pipeline.

Never raises for a bad command: a payload that is not a valid command, a version that does
not match, a value its schema refuses -- each is applied as a rejected command, recorded in
the history with its reason, and the state is unchanged. Everything decode() decodes is
storable (configstore.validation), so no statement here fails on the content of a command.

Idempotency keys (a command's origin.idempotency_key, "<actor>:<client key>") are decided
here, at apply, identically on every node: the first command applied under a key is applied
as usual and its fingerprint and outcome are recorded (configstore_idempotency). A later
command under the same key, while that record is live (IDEMPOTENCY_WINDOW log indexes), is
not applied again:
    - same fingerprint (the same request, retried through any node): its outcome is the
      first command's, with "replay_of": {"request_id", "index"} of the first added to the
      result; it changes nothing and leaves no history row (the first one's row is the
      write's record);
    - another fingerprint: rejected with idempotency_key_reused (+ request_id, index of the
      first), one rejected history row per key it named, nothing else changed.
So two racing requests with one key are ordered by the log, and each waiter is told the
outcome recorded for its own command.

Results (the `result` of Committed/Rejected, stored with the request id's outcome):
    put            {"key", "version", "created", "created_index", "description", "updated_at"}
    delete         {"key", "version"}                      the version deleted
    txn            {"results": [{"op", "key", "version"}]}  delete: the version deleted
    put_schema     {"key", "version", "created", "created_index", "description", "updated_at"}
    delete_schema  {"key", "version"}
    noop           {}
    rejected       {"error": code, "detail": text, ...}; codes: malformed, version_conflict
                   (+ key, expected_version, current_version), not_found (+ key),
                   schema_violation (+ key, path, schema), txn_failed (+ failed: [{key,
                   expected_version, current_version}]), idempotency_key_reused (+ request_id,
                   index of the command applied first under that key)
    a replay       the first command's result + "replay_of": {"request_id", "index"}
"""

from __future__ import annotations

import json

from configstore import identity, schemas
from configstore.commands import (
    AccessOperation,
    Malformed,
    Noop,
    Origin,
    SchemaOperation,
    Write,
    WriteOperation,
    decode,
    fingerprint,
)
from configstore.validation import schema_targets
from consensus.api import Application, Command

COMMITTED, REJECTED = "committed", "rejected"

#: How long an idempotency key is remembered, in log indexes: a record made at index i
#: decides the commands under its key applied at indexes up to i + IDEMPOTENCY_WINDOW; after
#: that the key is free again. A constant, never a setting: every node must decide alike.
IDEMPOTENCY_WINDOW = 1_000_000
#: Expired records are deleted when a slot whose index is a multiple of this is applied
#: (deleting them changes no decision: expired records are ignored anyway).
IDEMPOTENCY_PRUNE_EVERY = 1000

# One round trip: the current version, created index and description of each key, the
# schemas attached to the given targets, and the records of the given idempotency keys.
_IDEMPOTENCY_RECORDS = (
    "(SELECT coalesce(jsonb_object_agg(key, jsonb_build_array(fingerprint, request_id, index, "
    "outcome, result)), '{}'::jsonb) FROM configstore_idempotency "
    "WHERE key = ANY(%s::text[]))::text"
)
_READ_STATE = (
    "SELECT (SELECT coalesce(jsonb_object_agg(key, jsonb_build_array(version, created_index, "
    "description)), '{}'::jsonb) FROM configstore_entry WHERE key = ANY(%s::text[]))::text, "
    "(SELECT coalesce(jsonb_object_agg(key, schema), '{}'::jsonb) FROM configstore_schema "
    f"WHERE key = ANY(%s::text[]))::text, {_IDEMPOTENCY_RECORDS}"
)
_RECORD_IDEMPOTENCY = (
    "INSERT INTO configstore_idempotency (key, fingerprint, request_id, index, outcome, result) "
    "VALUES (%s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (key) DO UPDATE SET "
    "fingerprint = EXCLUDED.fingerprint, request_id = EXCLUDED.request_id, "
    "index = EXCLUDED.index, outcome = EXCLUDED.outcome, result = EXCLUDED.result"
)
_PRUNE_IDEMPOTENCY = "DELETE FROM configstore_idempotency WHERE index < %s"

_HISTORY_COLUMNS = (
    "index, request_id, command, operation, key, old_value, new_value, old_version, "
    "new_version, actor, reason, node, idempotency_key, outcome, error, detail, at"
)
_ORIGIN = "%(actor)s, %(reason)s, %(node)s, %(idempotency_key)s"

# Each write and its history row in one statement: the CTEs see the state before it, so
# the history's old value comes straight from the table, never through Python.
_PUT = (
    "WITH old AS (SELECT value, version FROM configstore_entry WHERE key = %(key)s), "
    "new AS (INSERT INTO configstore_entry (key, value, description, version, created_index, "
    "modified_index, updated_by, updated_at) VALUES (%(key)s, %(value)s::jsonb, "
    "%(description)s, %(version)s, %(slot)s, %(slot)s, %(actor)s, %(at)s) "
    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, description = EXCLUDED.description, "
    "version = EXCLUDED.version, modified_index = EXCLUDED.modified_index, "
    "updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at RETURNING value) "
    f"INSERT INTO configstore_history ({_HISTORY_COLUMNS}) SELECT %(slot)s, %(request_id)s, "
    "%(command)s, 'put', %(key)s, (SELECT value FROM old), new.value, (SELECT version FROM old), "
    f"%(version)s, {_ORIGIN}, 'committed', '', '', %(at)s FROM new"
)
_DELETE = (
    "WITH old AS (DELETE FROM configstore_entry WHERE key = %(key)s RETURNING value, version) "
    f"INSERT INTO configstore_history ({_HISTORY_COLUMNS}) SELECT %(slot)s, %(request_id)s, "
    "%(command)s, 'delete', %(key)s, old.value, NULL, old.version, NULL, "
    f"{_ORIGIN}, 'committed', '', '', %(at)s FROM old"
)
_PUT_SCHEMA = (
    "WITH old AS (SELECT schema, version FROM configstore_schema WHERE key = %(key)s), "
    "new AS (INSERT INTO configstore_schema (key, schema, description, version, created_index, "
    "modified_index, updated_by, updated_at) VALUES (%(key)s, %(value)s::jsonb, "
    "%(description)s, %(version)s, %(slot)s, %(slot)s, %(actor)s, %(at)s) "
    "ON CONFLICT (key) DO UPDATE SET schema = EXCLUDED.schema, "
    "description = EXCLUDED.description, version = EXCLUDED.version, "
    "modified_index = EXCLUDED.modified_index, updated_by = EXCLUDED.updated_by, "
    "updated_at = EXCLUDED.updated_at RETURNING schema) "
    f"INSERT INTO configstore_history ({_HISTORY_COLUMNS}) SELECT %(slot)s, %(request_id)s, "
    "'put_schema', 'put_schema', %(key)s, (SELECT schema FROM old), new.schema, "
    f"(SELECT version FROM old), %(version)s, {_ORIGIN}, 'committed', '', '', %(at)s FROM new"
)
_DELETE_SCHEMA = (
    "WITH old AS (DELETE FROM configstore_schema WHERE key = %(key)s RETURNING schema, version) "
    f"INSERT INTO configstore_history ({_HISTORY_COLUMNS}) SELECT %(slot)s, %(request_id)s, "
    "'delete_schema', 'delete_schema', %(key)s, old.schema, NULL, old.version, NULL, "
    f"{_ORIGIN}, 'committed', '', '', %(at)s FROM old"
)
# A rejected row records the state the command met (old_*) and what it asked for.
_REJECTED = (
    f"INSERT INTO configstore_history ({_HISTORY_COLUMNS}) SELECT %(slot)s, %(request_id)s, "
    "%(command)s, %(operation)s, %(key)s, cur.value, %(value)s::jsonb, cur.version, NULL, "
    f"{_ORIGIN}, 'rejected', %(error)s, %(detail)s, %(at)s "
    "FROM (SELECT 1) AS one LEFT JOIN {table} AS cur ON cur.key = %(key)s"
)
_REJECTED_ENTRY = _REJECTED.format(table="(SELECT key, value, version FROM configstore_entry)")
_REJECTED_SCHEMA = _REJECTED.format(
    table="(SELECT key, schema AS value, version FROM configstore_schema)"
)


def apply_command(cursor, slot: int, command: Command, node_id: str) -> tuple[str, dict]:
    """Apply one chosen command at `slot`. `node_id` (the node applying it) is deliberately
    unused: the history names the node that *took* the request, from the payload."""
    try:
        decoded = decode(command.payload)
    except Malformed as error:
        return _reject_malformed(cursor, slot, command.request_id, error)
    if isinstance(decoded, Noop):
        return COMMITTED, {}
    refusal = identity.authorize(cursor, decoded)
    if refusal is not None:
        return _reject(cursor, slot, command.request_id, decoded, refusal)
    if isinstance(decoded, WriteOperation):
        return _apply_writes(cursor, slot, command.request_id, decoded)
    if isinstance(decoded, AccessOperation):
        return _apply_access(cursor, slot, command.request_id, decoded)
    return _apply_schema(cursor, slot, command.request_id, decoded)


def apply_commands(
    cursor, slot: int, commands: list[Command], node_id: str
) -> list[tuple[str, dict]]:
    """Apply a slot's commands in order; the outcomes in the same order. Same results as
    `apply_command` on each, but a slot of writes reads the state it needs once, up front,
    and keeps it current in memory as it writes: one round trip per slot, not per command
    (the applier's hot path). A slot with a schema or an access command goes one command at
    a time (an access command may change the rights of the commands after it)."""
    if slot % IDEMPOTENCY_PRUNE_EVERY == 0:
        cursor.execute(_PRUNE_IDEMPOTENCY, [slot - IDEMPOTENCY_WINDOW])
    decoded = []
    for command in commands:
        try:
            decoded.append(decode(command.payload))
        except Malformed as error:
            decoded.append(error)
    writes = [d for d in decoded if isinstance(d, WriteOperation)]
    if not writes or any(isinstance(d, SchemaOperation | AccessOperation) for d in decoded):
        return [apply_command(cursor, slot, c, node_id) for c in commands]
    # No access command in this slot: rights do not change within it, and they come with
    # the state the slot's writes need, in its one round trip.
    state, rights = _read_state(cursor, writes, with_rights=True)
    outcomes = []
    for command, d in zip(commands, decoded, strict=True):
        if isinstance(d, Malformed):
            outcomes.append(_reject_malformed(cursor, slot, command.request_id, d))
        elif isinstance(d, Noop):
            outcomes.append((COMMITTED, {}))
        elif (refusal := identity.authorize(cursor, d, rights)) is not None:
            outcomes.append(_reject(cursor, slot, command.request_id, d, refusal))
        else:
            outcomes.append(_apply_writes(cursor, slot, command.request_id, d, state))
    return outcomes


def _reject(cursor, slot: int, request_id: str, cmd, refusal: dict) -> tuple[str, dict]:
    """A command refused as a whole (forbidden, idempotency_key_reused): its rows in the
    history, nothing else changed."""
    if isinstance(cmd, AccessOperation):
        identity.record(cursor, slot, request_id, cmd, REJECTED, refusal=refusal)
    elif isinstance(cmd, SchemaOperation):
        _record_rejected_schema(cursor, slot, request_id, cmd, refusal)
    else:
        for write in cmd.writes:
            _record_rejected(cursor, slot, request_id, cmd.op, write, cmd.origin, refusal)
    return REJECTED, refusal


def _apply_access(cursor, slot: int, request_id: str, cmd: AccessOperation) -> tuple[str, dict]:
    return _apply_one(cursor, slot, request_id, cmd, identity.apply_access)


# ---------------------------------------------------------------------------------- writes


def _read_state(cursor, cmds: list[WriteOperation], *, with_rights: bool = False):
    """(entries: key -> (version, created_index, description), attached schemas, idempotency
    records: key -> [fingerprint, request_id, index, outcome, result]) for every key, schema
    target and idempotency key the commands touch, in one round trip; `with_rights`: that
    and the rights of the commands' credentials (configstore.identity.rights_of)."""
    keys = sorted({w.key for c in cmds for w in c.writes} | {k.key for c in cmds for k in c.checks})
    targets = sorted(
        {t for c in cmds for w in c.writes if w.op == "put" for t in schema_targets(w.key)}
    )
    idempotency_keys = sorted({c.origin.idempotency_key for c in cmds} - {None})
    if not with_rights:
        cursor.execute(_READ_STATE, [keys, targets, idempotency_keys])
        entries_json, schemas_json, records_json = cursor.fetchone()
    else:
        pairs = identity.credentials(cmds)
        cursor.execute(
            f"{_READ_STATE}, {identity.RIGHTS_JSON}", [keys, targets, idempotency_keys, *pairs]
        )
        entries_json, schemas_json, records_json, rights_json = cursor.fetchone()
    entries = {k: tuple(v) for k, v in json.loads(entries_json).items()}
    state = entries, json.loads(schemas_json), json.loads(records_json)
    return (state, identity.rights_of(pairs, rights_json)) if with_rights else state


def _apply_writes(
    cursor, slot: int, request_id: str, cmd: WriteOperation, state: tuple | None = None
) -> tuple[str, dict]:
    """`state` (from _read_state, covering this command) is kept current as this writes."""
    entries, attached, records = state if state is not None else _read_state(cursor, [cmd])
    decided = _idempotent(cursor, slot, request_id, cmd, records)
    if decided is not None:
        return decided
    outcome, result = _write(cursor, slot, request_id, cmd, entries, attached)
    _remember(cursor, slot, request_id, cmd, outcome, result, records)
    return outcome, result


def _write(
    cursor, slot: int, request_id: str, cmd: WriteOperation, entries: dict, attached: dict
) -> tuple[str, dict]:
    def version_of(key: str) -> int:
        return entries[key][0] if key in entries else 0

    refusal = _txn_refusal(cmd, version_of) if cmd.op == "txn" else _single_refusal(cmd, version_of)
    if refusal is None:
        refusal = _schema_refusal(cmd, attached)
    if refusal is not None:
        for write in cmd.writes:
            _record_rejected(cursor, slot, request_id, cmd.op, write, cmd.origin, refusal)
        return REJECTED, refusal

    results = []
    for write in cmd.writes:
        params = {
            "slot": slot,
            "request_id": request_id,
            "command": cmd.op,
            "key": write.key,
            **_origin_params(cmd.origin),
        }
        current = entries.get(write.key)
        if write.op == "delete":
            cursor.execute(_DELETE, params)
            entries.pop(write.key, None)
            results.append({"op": "delete", "key": write.key, "version": current[0]})
            continue
        version = (current[0] if current else 0) + 1
        description = write.description
        if description is None:
            description = current[2] if current else ""
        cursor.execute(
            _PUT,
            {
                **params,
                "value": json.dumps(write.value),
                "description": description,
                "version": version,
            },
        )
        entries[write.key] = (version, current[1] if current else slot, description)
        results.append(
            {
                "op": "put",
                "key": write.key,
                "version": version,
                "created": current is None,
                "created_index": current[1] if current else slot,
                "description": description,
                "updated_at": cmd.origin.at.isoformat(),
            }
        )
    if cmd.op == "txn":
        return COMMITTED, {
            "results": [{k: r[k] for k in ("op", "key", "version")} for r in results]
        }
    (result,) = results
    del result["op"]
    return COMMITTED, result


def _conflict(key: str, expected, current: int, what: str = "") -> dict:
    current_version = current or None
    return {
        "error": "version_conflict",
        "detail": f"{key}: {what or f'expected version {expected}'}, "
        f"current version {current_version}",
        "key": key,
        "expected_version": expected,
        "current_version": current_version,
    }


def _single_refusal(cmd: WriteOperation, version_of) -> dict | None:
    (w,) = cmd.writes
    current = version_of(w.key)
    if w.op == "delete" and not current:
        return {"error": "not_found", "detail": f"{w.key} does not exist", "key": w.key}
    if w.create_only and current:
        return _conflict(w.key, 0, current, "create-only, but it exists")
    if w.must_exist and not current:
        return _conflict(w.key, None, current, "must exist")
    if w.expected_version is not None and current != w.expected_version:
        return _conflict(w.key, w.expected_version, current)
    return None


def _txn_refusal(cmd: WriteOperation, version_of) -> dict | None:
    failed = [
        {"key": c.key, "expected_version": c.version, "current_version": version_of(c.key) or None}
        for c in cmd.checks
        if version_of(c.key) != c.version
    ]
    failed += [
        {"key": w.key, "expected_version": None, "current_version": None, "op": "delete"}
        for w in cmd.writes
        if w.op == "delete" and not version_of(w.key)
    ]
    if not failed:
        return None
    named = ", ".join(
        f"{f['key']} (deleted, but does not exist)"
        if f.get("op") == "delete"
        else f"{f['key']} (expected version {f['expected_version']}, "
        f"current {f['current_version']})"
        for f in failed
    )
    return {"error": "txn_failed", "detail": f"txn checks failed: {named}", "failed": failed}


def _schema_refusal(cmd: WriteOperation, attached: dict) -> dict | None:
    budget = schemas.Budget()  # one per command: a txn of many values is bounded too
    for write in cmd.writes:
        if write.op != "put":
            continue
        applicable = [(t, attached[t]) for t in schema_targets(write.key) if t in attached]
        found = schemas.first_violation(applicable, write.value, budget)
        if found is not None:
            return {
                "error": "schema_violation",
                "detail": found.describe(write.key),
                "key": write.key,
                "path": found.path,
                "schema": found.schema_key,
            }
    return None


def _origin_params(origin: Origin | None) -> dict:
    if origin is None:
        return {"actor": "", "reason": "", "node": "", "idempotency_key": "", "at": None}
    return {
        "actor": origin.actor,
        "reason": origin.reason,
        "node": origin.node,
        "idempotency_key": origin.idempotency_key or "",
        "at": origin.at,
    }


# ----------------------------------------------------------------------- idempotency


def _idempotent(
    cursor, slot: int, request_id: str, cmd: WriteOperation | SchemaOperation, records: dict
) -> tuple[str, dict] | None:
    """The outcome of a command whose idempotency key has a live record: the first one's
    (a replay: nothing written) or idempotency_key_reused (rejected history rows written).
    None: the command is to be applied."""
    key = cmd.origin.idempotency_key
    found = records.get(key) if key else None
    if found is None or found[2] < slot - IDEMPOTENCY_WINDOW:
        return None
    first_fingerprint, first_request_id, first_index, outcome, result = found
    first = {"request_id": first_request_id, "index": first_index}
    if fingerprint(cmd) == first_fingerprint:
        return outcome, {**result, "replay_of": first}
    refusal = {
        "error": "idempotency_key_reused",
        "detail": f"this idempotency key was used for another request (request "
        f"{first_request_id}, log index {first_index}): nothing applied; use a new key for a "
        "new request",
        **first,
    }
    return _reject(cursor, slot, request_id, cmd, refusal)


def _remember(
    cursor,
    slot: int,
    request_id: str,
    cmd: WriteOperation | SchemaOperation,
    outcome: str,
    result: dict,
    records: dict,
) -> None:
    """Record the outcome of a command applied under an idempotency key (in `records` too,
    for the commands after it in the same slot)."""
    key = cmd.origin.idempotency_key
    if not key:
        return
    record = [fingerprint(cmd), request_id, slot, outcome, result]
    cursor.execute(_RECORD_IDEMPOTENCY, [key, *record[:4], json.dumps(result)])
    records[key] = record


def _record_rejected(
    cursor, slot, request_id, command: str, write: Write, origin, refusal: dict
) -> None:
    cursor.execute(
        _REJECTED_ENTRY,
        {
            "slot": slot,
            "request_id": request_id,
            "command": command,
            "operation": write.op,
            "key": write.key,
            "value": json.dumps(write.value) if write.op == "put" else None,
            "error": refusal["error"],
            "detail": refusal["detail"],
            **_origin_params(origin),
        },
    )


def _reject_malformed(cursor, slot: int, request_id: str, error: Malformed) -> tuple[str, dict]:
    refusal = {"error": "malformed", "detail": str(error)[:2000]}
    schema_op = error.op in ("put_schema", "delete_schema")
    cursor.execute(
        _REJECTED_SCHEMA if schema_op else _REJECTED_ENTRY,
        {
            "slot": slot,
            "request_id": request_id,
            "command": error.op or "malformed",
            "operation": "malformed",
            "key": error.key,
            "value": None,
            "error": refusal["error"],
            "detail": refusal["detail"],
            **_origin_params(error.origin),
        },
    )
    return REJECTED, refusal


# --------------------------------------------------------------------------------- schemas


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _apply_schema(cursor, slot: int, request_id: str, cmd: SchemaOperation) -> tuple[str, dict]:
    return _apply_one(cursor, slot, request_id, cmd, _change_schema)


def _apply_one(cursor, slot: int, request_id: str, cmd, change) -> tuple[str, dict]:
    """A schema or access command, one at a time, under its idempotency key if any."""
    records: dict = {}
    if cmd.origin.idempotency_key:
        cursor.execute(f"SELECT {_IDEMPOTENCY_RECORDS}", [[cmd.origin.idempotency_key]])
        records = json.loads(cursor.fetchone()[0])
    decided = _idempotent(cursor, slot, request_id, cmd, records)
    if decided is not None:
        return decided
    outcome, result = change(cursor, slot, request_id, cmd)
    _remember(cursor, slot, request_id, cmd, outcome, result, records)
    return outcome, result


def _record_rejected_schema(cursor, slot, request_id, cmd: SchemaOperation, refusal: dict) -> None:
    cursor.execute(
        _REJECTED_SCHEMA,
        {
            "slot": slot,
            "request_id": request_id,
            "key": cmd.key,
            **_origin_params(cmd.origin),
            "command": cmd.op,
            "operation": cmd.op,
            "value": json.dumps(cmd.schema) if cmd.op == "put_schema" else None,
            "error": refusal["error"],
            "detail": refusal["detail"],
        },
    )


def _change_schema(cursor, slot: int, request_id: str, cmd: SchemaOperation) -> tuple[str, dict]:
    cursor.execute(
        "SELECT version, description, created_index FROM configstore_schema WHERE key = %s",
        [cmd.key],
    )
    row = cursor.fetchone()
    current, old_description, created_index = row if row else (0, "", slot)
    refusal = None
    if cmd.op == "delete_schema" and not current:
        refusal = {"error": "not_found", "detail": f"no schema for {cmd.key}", "key": cmd.key}
    elif cmd.expected_version is not None and current != cmd.expected_version:
        refusal = _conflict(cmd.key, cmd.expected_version, current)
    elif cmd.op == "put_schema":
        refusal = _existing_values_refusal(cursor, cmd)
    params = {"slot": slot, "request_id": request_id, "key": cmd.key, **_origin_params(cmd.origin)}
    if refusal is not None:
        _record_rejected_schema(cursor, slot, request_id, cmd, refusal)
        return REJECTED, refusal
    if cmd.op == "delete_schema":
        cursor.execute(_DELETE_SCHEMA, params)
        return COMMITTED, {"key": cmd.key, "version": current}
    description = old_description if cmd.description is None else cmd.description
    cursor.execute(
        _PUT_SCHEMA,
        {
            **params,
            "value": json.dumps(cmd.schema),
            "description": description,
            "version": current + 1,
        },
    )
    return COMMITTED, {
        "key": cmd.key,
        "version": current + 1,
        "created": not current,
        "created_index": created_index,
        "description": description,
        "updated_at": cmd.origin.at.isoformat(),
    }


def _existing_values_refusal(cursor, cmd: SchemaOperation) -> dict | None:
    """A schema is attached only if every value it would govern already satisfies it: no
    node may hold a value its schema forbids."""
    if cmd.key.endswith("/"):
        cursor.execute(
            "SELECT key, value::text FROM configstore_entry WHERE key LIKE %s "
            'ORDER BY key COLLATE "C"',
            [_like_prefix(cmd.key)],
        )
    else:
        cursor.execute("SELECT key, value::text FROM configstore_entry WHERE key = %s", [cmd.key])
    budget = schemas.Budget()  # one for every value the schema would govern
    for key, value in cursor.fetchall():
        found = schemas.violation(cmd.key, cmd.schema, json.loads(value), budget)
        if found is not None:
            return {
                "error": "schema_violation",
                "detail": f"the schema refuses a current value: {found.describe(key)}",
                "key": key,
                "path": found.path,
                "schema": cmd.key,
            }
    return None


def _install_from_peer(peer: str, at_least: int) -> int | None:
    from configstore.transfer import install_from_peer  # the web tier's modules, on demand

    return install_from_peer(peer, at_least)


#: The config store as the runtime replicates it (the setting CONFIGSTORE_STATE_MACHINE).
APPLICATION = Application(apply_commands, install_snapshot=_install_from_peer)
