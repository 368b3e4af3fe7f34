"""The replicated state machine: applies chosen commands to the config entries.

Deterministic: the outcome depends only on the command and the state before it, so every
node reaches the same state. Runs inside the applier's transaction (consensus.storage),
on its psycopg cursor, in raw SQL: it is on the path of every commit.

A command's payload is JSON:
    {"op": "put", "key": k, "value": v, "expected_version": n | null, "create_only": bool,
     "description": "...", "actor": "...", "reason": "...", "at": "<ISO time of submission>"}
    {"op": "delete", "key": k, "expected_version": n | null, "actor": ..., "reason": ..., "at": ...}
A version check that fails rejects the command (nothing changes) with its reason.
"""

from __future__ import annotations

import json

from consensus.paxos import Command

COMMITTED, REJECTED = "committed", "rejected"


def apply_command(cursor, slot: int, command: Command, node_id: str) -> tuple[str, dict]:
    try:
        payload = json.loads(command.payload)
        op = payload["op"]
    except (ValueError, KeyError, TypeError):
        return REJECTED, {"error": "malformed", "detail": "unreadable command"}
    if op == "put":
        return _put(cursor, slot, payload)
    if op == "delete":
        return _delete(cursor, payload)
    if op == "noop":
        return COMMITTED, {}
    return REJECTED, {"error": "malformed", "detail": f"unknown operation {op!r}"}


def _current_version(cursor, key: str) -> int | None:
    cursor.execute("SELECT version FROM configstore_entry WHERE key = %s", [key])
    row = cursor.fetchone()
    return row[0] if row else None


def _conflict(key: str, expected, current: int | None) -> tuple[str, dict]:
    return REJECTED, {
        "error": "version_conflict",
        "detail": f"{key}: expected version {expected}, current version {current}",
        "key": key,
        "current_version": current,
    }


def _put(cursor, slot: int, p: dict) -> tuple[str, dict]:
    key = p["key"]
    current = _current_version(cursor, key)
    if p.get("create_only") and current is not None:
        return _conflict(key, 0, current)
    expected = p.get("expected_version")
    if expected is not None and (current or 0) != expected:
        return _conflict(key, expected, current)
    version = (current or 0) + 1
    cursor.execute(
        "INSERT INTO configstore_entry (key, value, description, version, created_index, "
        "modified_index, updated_by, updated_at) VALUES (%s, %s::jsonb, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, "
        "description = EXCLUDED.description, version = EXCLUDED.version, "
        "modified_index = EXCLUDED.modified_index, updated_by = EXCLUDED.updated_by, "
        "updated_at = EXCLUDED.updated_at",
        [
            key,
            json.dumps(p["value"]),
            p.get("description", ""),
            version,
            slot,
            slot,
            p.get("actor", ""),
            p["at"],
        ],
    )
    return COMMITTED, {"key": key, "version": version}


def _delete(cursor, p: dict) -> tuple[str, dict]:
    key = p["key"]
    current = _current_version(cursor, key)
    if current is None:
        return REJECTED, {"error": "not_found", "detail": f"{key} does not exist", "key": key}
    expected = p.get("expected_version")
    if expected is not None and current != expected:
        return _conflict(key, expected, current)
    cursor.execute("DELETE FROM configstore_entry WHERE key = %s", [key])
    return COMMITTED, {"key": key, "version": current}
