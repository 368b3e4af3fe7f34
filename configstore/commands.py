"""The config store's operations and their JSON form: the payload of a log command.

An `Operation` is what the config store was asked to do (a put, a txn, a schema or an
access change, a noop), decoded; the Paxos core's `Command` (consensus.paxos) is the
request id and the opaque payload it chooses, and a payload is an encoded `Operation`.
The web tier builds an operation and `encode`s it; the applier `decode`s it on every node. A
payload `decode` refuses is applied as a rejected command (recorded in the history with
the reason), never as an error: the applier must be able to apply every chosen slot.

Payloads (every command but noop also carries "actor", "reason", "node" -- the id of the
node that took the request --, "at", the ISO 8601 time the request was taken, and
"idempotency_key", null or the key under which a retry of the request is the same request,
namespaced by the actor: "<actor>:<client's key>"):

    {"op": "put", "key": k, "value": <json>, "description": str | null (null: keep),
     "expected_version": int | null, "create_only": bool, "must_exist": bool}
    {"op": "delete", "key": k, "expected_version": int | null}
    {"op": "txn", "checks": [{"key": k, "version": int}],          version 0: k must not exist
     "ops": [{"op": "put", "key": k, "value": <json>, "description": str | null},
             {"op": "delete", "key": k}]}
    {"op": "put_schema", "key": target, "schema": <JSON Schema>, "description": str | null,
     "expected_version": int | null}                  target: a key, or a namespace "a/b/"
    {"op": "delete_schema", "key": target, "expected_version": int | null}
    {"op": "noop"}                                    a read barrier: changes nothing

Access commands (identities: configstore.identity applies them; null fields keep the
current value, or take the default on create):
    {"op": "put_user", "username": u, "password": <Django password hash> | null,
     "is_active", "is_staff", "is_superuser": bool | null, "email", "first_name",
     "last_name": str | null, "groups": [name] | null, "permissions": [perm] | null,
     "create_only": bool, "must_exist": bool}
    {"op": "delete_user", "username": u}
    {"op": "put_group", "name": g, "permissions": [perm] | null,
     "prefixes": [{"prefix", "view", "change", "delete"}] | null, "create_only": bool}
    {"op": "delete_group", "name": g}
    {"op": "put_token", "token_id": id, "username": u, "name": str, "key_hash": sha256 hex,
     "scope": "read" | "write", "prefix": str | null, "expires_at": ISO 8601 | null}
    {"op": "delete_token", "token_id": id}
    perm: one of GRANTABLE ("configstore.view_entry", ...).

"auth" (optional, every command but noop): the credential the request was authorised
with, "session" or "token:<token id>". The applier checks it again against the replicated
identities in force at the command's log index (configstore.identity): a command whose
credential was revoked, expired or lacks the right meanwhile is rejected (forbidden).
Commands without it come from the operator's own tools (manage.py), not from a request.

An expected version of 0 means "must not exist". Pure: no Django, no I/O.

`fingerprint` is what makes two commands "the same request" for an idempotency key: a hash
of everything the request asked for (operation, keys, values, conditions, description,
actor, reason), not of where or when it was taken.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from configstore import schemas
from configstore.validation import (
    InvalidValue,
    check_json,
    check_text,
    key_error,
    schema_target_error,
    validate_prefix,
)

MAX_ACTOR_LENGTH = 150  # Entry.updated_by, and Django's username
MAX_NODE_LENGTH = 64
MAX_REASON_LENGTH = 2000
MAX_DESCRIPTION_LENGTH = 10_000
MAX_VERSION = 2**63 - 1
MAX_CLIENT_KEY_LENGTH = 100  # a client's own idempotency key (the API's Idempotency-Key)
MAX_IDEMPOTENCY_KEY_LENGTH = MAX_ACTOR_LENGTH + 1 + MAX_CLIENT_KEY_LENGTH

WRITE_OPS = ("put", "delete", "txn")
SCHEMA_OPS = ("put_schema", "delete_schema")
ACCESS_OPS = ("put_user", "delete_user", "put_group", "delete_group", "put_token", "delete_token")
OPS = (*WRITE_OPS, *SCHEMA_OPS, *ACCESS_OPS, "noop")

#: The permissions an access command may grant a user or a group (all of the config store:
#: the rest of Django's are not used by it).
GRANTABLE = (
    "configstore.view_entry",
    "configstore.change_entry",
    "configstore.delete_entry",
    "configstore.change_schema",
    "configstore.delete_schema",
    "configstore.manage_access",
)
MAX_USERNAME_LENGTH = 150
MAX_TOKEN_ID_LENGTH = 32
MAX_TOKEN_NAME_LENGTH = 100
MAX_PASSWORD_HASH_LENGTH = 128
MAX_NAMES = 1000  # groups of a user, permissions, prefixes of a group
_USERNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,150}")
_PERMISSION = re.compile(r"[a-z_]{1,50}\.[a-z_]{1,100}")
_TOKEN_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_KEY_HASH = re.compile(r"[0-9a-f]{64}")


class Malformed(ValueError):
    """A payload that is not a valid operation. Carries what could be read of it, so that the
    rejection can still be recorded with its actor, key and time."""

    def __init__(self, message: str, *, op: str = "", key: str = "", origin: Origin | None = None):
        super().__init__(message)
        self.op = op
        self.key = key
        self.origin = origin


@dataclass(frozen=True)
class Origin:
    """Who asked, why, through which node, when (the submitting node's clock: the applier
    never reads its own), and under which idempotency key ("<actor>:<client key>"), if any:
    a command whose key was already applied is not applied again (configstore.statemachine)."""

    at: datetime
    actor: str = ""
    reason: str = ""
    node: str = ""
    idempotency_key: str | None = None
    #: the credential the request was authorised with: "session", "token:<id>", or None
    #: (an operator's tool: not checked again at apply)
    auth: str | None = None

    def to_json(self) -> dict:
        data = {
            "actor": self.actor,
            "reason": self.reason,
            "node": self.node,
            "at": self.at.isoformat(),
        }
        if self.idempotency_key is not None:
            data["idempotency_key"] = self.idempotency_key
        if self.auth is not None:
            data["auth"] = self.auth
        return data

    @property
    def token_id(self) -> str | None:
        return self.auth[len("token:") :] if self.auth and self.auth.startswith("token:") else None


@dataclass(frozen=True)
class Write:
    """One change to one key: a put or a delete, with the conditions of a single-key write."""

    op: Literal["put", "delete"]
    key: str
    value: Any = None
    description: str | None = None  # None: keep the current description
    expected_version: int | None = None
    create_only: bool = False
    must_exist: bool = False


@dataclass(frozen=True)
class Check:
    """A txn guard: `key` is at `version` (0: does not exist)."""

    key: str
    version: int


@dataclass(frozen=True)
class WriteOperation:
    """put and delete (one write, with its own conditions) or txn (many writes, guarded by
    checks, all or nothing)."""

    op: Literal["put", "delete", "txn"]
    writes: tuple[Write, ...]
    origin: Origin
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True)
class SchemaOperation:
    op: Literal["put_schema", "delete_schema"]
    key: str
    origin: Origin
    schema: Any = None
    description: str | None = None
    expected_version: int | None = None


@dataclass(frozen=True)
class Noop:
    op: Literal["noop"] = "noop"


@dataclass(frozen=True)
class AccessOperation:
    """A change to the replicated identities (see the module's docstring for each op's
    fields). `subject` is the username, group name or token id it changes; `fields` the
    op's other fields, validated."""

    op: str
    subject: str
    origin: Origin
    fields: dict = field(default_factory=dict)

    @property
    def subject_label(self) -> str:
        kind = {"user": "user", "group": "group", "token": "token"}[self.op.split("_", 1)[1]]
        return f"{kind}:{self.subject}"


#: A decoded config-store operation (the payload of a consensus.paxos.Command).
Operation = WriteOperation | SchemaOperation | AccessOperation | Noop


@dataclass
class _Reader:
    """Reads fields of a payload object, raising Malformed with what is known so far."""

    data: dict
    op: str = ""
    key: str = ""
    origin: Origin | None = None
    where: str = ""
    _fields: dict = field(default_factory=dict)

    def fail(self, message: str):
        raise Malformed(f"{self.where}{message}", op=self.op, key=self.key, origin=self.origin)

    def key_field(self, name: str = "key", *, schema_target: bool = False) -> str:
        value = self.data.get(name)
        error = schema_target_error(value) if schema_target else key_error(value)
        if error is not None:
            self.fail(f"{name}: {error}")
        return value

    def text(self, name: str, max_length: int, *, optional: bool = False) -> str | None:
        value = self.data.get(name)
        if value is None:
            return None if optional else ""
        try:
            return check_text(value, name, max_length)
        except InvalidValue as error:
            self.fail(str(error))

    def version(self, name: str, *, required: bool = False) -> int | None:
        value = self.data.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_VERSION:
            self.fail(f"{name} must be an integer from 0 to {MAX_VERSION}")
        return value

    def flag(self, name: str) -> bool:
        value = self.data.get(name, False)
        if not isinstance(value, bool):
            self.fail(f"{name} must be true or false")
        return value

    def json(self, name: str) -> Any:
        if name not in self.data:
            self.fail(f"{name} is required")
        try:
            check_json(self.data[name], name)
        except InvalidValue as error:
            self.fail(str(error))
        return self.data[name]

    def list(self, name: str) -> list:
        value = self.data.get(name, [])
        if not isinstance(value, list):
            self.fail(f"{name} must be a list")
        return value


def _origin(r: _Reader) -> Origin:
    at = r.data.get("at")
    try:
        when = datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        r.fail("at must be an ISO 8601 time with a timezone")
    auth = r.data.get("auth")
    if auth is not None and not (
        auth == "session"
        or (isinstance(auth, str) and auth.startswith("token:") and _TOKEN_ID.fullmatch(auth[6:]))
    ):
        r.fail('auth must be "session" or "token:<token id>"')
    return Origin(
        at=when,
        actor=r.text("actor", MAX_ACTOR_LENGTH),
        reason=r.text("reason", MAX_REASON_LENGTH),
        node=r.text("node", MAX_NODE_LENGTH),
        idempotency_key=r.text("idempotency_key", MAX_IDEMPOTENCY_KEY_LENGTH, optional=True)
        or None,
        auth=auth,
    )


def decode(payload: str) -> Operation:
    """The operation of a payload; Malformed if it is not one."""
    try:
        data = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, RecursionError, TypeError) as error:
        raise Malformed(f"unreadable command: {error}") from None
    if not isinstance(data, dict):
        raise Malformed("a command must be a JSON object")
    op = data.get("op")
    if op not in OPS:
        raise Malformed(f"unknown operation {op!r}")
    r = _Reader(data, op=op)
    if op == "noop":
        return Noop()
    if isinstance(data.get("key"), str) and key_error(data["key"].rstrip("/")) is None:
        r.key = data["key"]
    r.origin = _origin(r)
    if op in ACCESS_OPS:
        return _decode_access(r)
    if op in SCHEMA_OPS:
        return _decode_schema(r)
    if op == "txn":
        return _decode_txn(r)
    return WriteOperation(op=op, writes=(_decode_write(r, op, single=True),), origin=r.origin)


def _decode_write(r: _Reader, op: str, *, single: bool) -> Write:
    key = r.key_field()
    if op == "delete":
        return Write(
            "delete", key, expected_version=r.version("expected_version") if single else None
        )
    value = r.json("value")
    description = r.text("description", MAX_DESCRIPTION_LENGTH, optional=True)
    if not single:
        return Write("put", key, value, description)
    write = Write(
        "put",
        key,
        value,
        description,
        expected_version=r.version("expected_version"),
        create_only=r.flag("create_only"),
        must_exist=r.flag("must_exist"),
    )
    if write.create_only and write.must_exist:
        r.fail("create_only and must_exist exclude each other")
    return write


def _decode_txn(r: _Reader) -> WriteOperation:
    writes: list[Write] = []
    for i, item in enumerate(r.list("ops")):
        sub = _Reader(
            item if isinstance(item, dict) else {}, op="txn", origin=r.origin, where=f"ops[{i}]: "
        )
        if not isinstance(item, dict) or item.get("op") not in ("put", "delete"):
            sub.fail('each op must be an object with "op": "put" or "delete"')
        writes.append(_decode_write(sub, item["op"], single=False))
    if not writes:
        r.fail("a txn needs at least one op")
    checks: list[Check] = []
    for i, item in enumerate(r.list("checks")):
        sub = _Reader(
            item if isinstance(item, dict) else {},
            op="txn",
            origin=r.origin,
            where=f"checks[{i}]: ",
        )
        if not isinstance(item, dict):
            sub.fail('each check must be an object {"key", "version"}')
        checks.append(Check(sub.key_field(), sub.version("version", required=True)))
    for what, keys in (("ops", [w.key for w in writes]), ("checks", [c.key for c in checks])):
        if len(set(keys)) != len(keys):
            r.fail(f"a txn names a key twice in its {what}")
    return WriteOperation(op="txn", writes=tuple(writes), checks=tuple(checks), origin=r.origin)


def _decode_schema(r: _Reader) -> SchemaOperation:
    key = r.key_field(schema_target=True)
    expected = r.version("expected_version")
    if r.op == "delete_schema":
        return SchemaOperation("delete_schema", key, r.origin, expected_version=expected)
    schema = r.json("schema")
    if (error := schemas.schema_error(schema)) is not None:
        r.fail(f"schema: {error}")
    description = r.text("description", MAX_DESCRIPTION_LENGTH, optional=True)
    return SchemaOperation("put_schema", key, r.origin, schema, description, expected)


def _decode_access(r: _Reader) -> AccessOperation:
    kind = r.op.split("_", 1)[1]
    name = {"user": "username", "group": "name", "token": "token_id"}[kind]
    subject = r.data.get(name)
    if kind == "user":
        ok = isinstance(subject, str) and _USERNAME.fullmatch(subject)
        what = "a username of 1-150 letters, digits and _ . @ + -"
    elif kind == "group":
        ok = isinstance(subject, str) and _USERNAME.fullmatch(subject)
        what = "a group name of 1-150 letters, digits and _ . @ + -"
    else:
        ok = isinstance(subject, str) and _TOKEN_ID.fullmatch(subject)
        what = "a token id of 1-32 letters, digits, _ and -"
    if not ok:
        r.fail(f"{name} must be {what}")
    fields: dict[str, Any] = {}
    if r.op == "put_user":
        password = r.text("password", MAX_PASSWORD_HASH_LENGTH, optional=True)
        fields["password"] = password
        for flag in ("is_active", "is_staff", "is_superuser"):
            fields[flag] = None if r.data.get(flag) is None else r.flag(flag)
        for text in ("email", "first_name", "last_name"):
            fields[text] = r.text(text, 254 if text == "email" else 150, optional=True)
        fields["groups"] = _names(r, "groups", _USERNAME)
        fields["permissions"] = _permissions(r)
        fields["create_only"] = r.flag("create_only")
        fields["must_exist"] = r.flag("must_exist")
        if fields["create_only"] and fields["must_exist"]:
            r.fail("create_only and must_exist exclude each other")
    elif r.op == "put_group":
        fields["permissions"] = _permissions(r)
        fields["prefixes"] = _prefixes(r)
        fields["create_only"] = r.flag("create_only")
    elif r.op == "put_token":
        username = r.data.get("username")
        if not (isinstance(username, str) and _USERNAME.fullmatch(username)):
            r.fail("username must be a username")
        fields["username"] = username
        fields["name"] = r.text("name", MAX_TOKEN_NAME_LENGTH)
        key_hash = r.data.get("key_hash")
        if not (isinstance(key_hash, str) and _KEY_HASH.fullmatch(key_hash)):
            r.fail("key_hash must be a SHA-256 in lowercase hex")
        fields["key_hash"] = key_hash
        scope = r.data.get("scope", "write")
        if scope not in ("read", "write"):
            r.fail('scope must be "read" or "write"')
        fields["scope"] = scope
        prefix = r.data.get("prefix")
        if prefix is not None:
            try:
                validate_prefix(prefix)
            except InvalidValue as error:
                r.fail(f"prefix: {error}")
        fields["prefix"] = prefix
        expires = r.data.get("expires_at")
        if expires is not None:
            try:
                when = datetime.fromisoformat(expires) if isinstance(expires, str) else None
            except ValueError:
                when = None
            if when is None or when.tzinfo is None:
                r.fail("expires_at must be an ISO 8601 time with a timezone, or null")
            expires = when.isoformat()
        fields["expires_at"] = expires
    return AccessOperation(r.op, subject, r.origin, fields)


def _names(r: _Reader, name: str, pattern: re.Pattern) -> list[str] | None:
    value = r.data.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_NAMES:
        r.fail(f"{name} must be a list of at most {MAX_NAMES} names, or null")
    for item in value:
        if not (isinstance(item, str) and pattern.fullmatch(item)):
            r.fail(f"{name}: {item!r} is not a name")
    return sorted(set(value))


def _permissions(r: _Reader) -> list[str] | None:
    names = _names(r, "permissions", _PERMISSION)
    for perm in names or ():
        if perm not in GRANTABLE:
            r.fail(f"permissions: {perm!r} is not one of {', '.join(GRANTABLE)}")
    return names


def _prefixes(r: _Reader) -> list[dict] | None:
    value = r.data.get("prefixes")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_NAMES:
        r.fail(f"prefixes must be a list of at most {MAX_NAMES} objects, or null")
    seen: dict[str, dict] = {}
    for i, item in enumerate(value):
        sub = _Reader(item if isinstance(item, dict) else {}, op=r.op, where=f"prefixes[{i}]: ")
        if not isinstance(item, dict) or not isinstance(item.get("prefix"), str):
            sub.fail('each prefix must be an object {"prefix", "view", "change", "delete"}')
        try:
            validate_prefix(item["prefix"])
        except InvalidValue as error:
            sub.fail(str(error))
        if item["prefix"] in seen:
            r.fail(f"prefixes: {item['prefix']!r} is given twice")
        seen[item["prefix"]] = {
            "prefix": item["prefix"],
            "view": sub.flag("view") if "view" in item else True,
            "change": sub.flag("change"),
            "delete": sub.flag("delete"),
        }
    return [seen[p] for p in sorted(seen)]


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def encode(command: Operation) -> str:
    """The payload of an operation. `decode(encode(o)) == o` for every valid operation."""
    if isinstance(command, Noop):
        return json.dumps({"op": "noop"})
    data: dict[str, Any] = {"op": command.op}
    if isinstance(command, AccessOperation):
        kind = command.op.split("_", 1)[1]
        data[{"user": "username", "group": "name", "token": "token_id"}[kind]] = command.subject
        data.update(command.fields)
    elif isinstance(command, SchemaOperation):
        data["key"] = command.key
        if command.op == "put_schema":
            data["schema"] = command.schema
            data["description"] = command.description
        data["expected_version"] = command.expected_version
    elif command.op == "txn":
        data["checks"] = [{"key": c.key, "version": c.version} for c in command.checks]
        data["ops"] = [
            {"op": "put", "key": w.key, "value": w.value, "description": w.description}
            if w.op == "put"
            else {"op": "delete", "key": w.key}
            for w in command.writes
        ]
    else:
        (w,) = command.writes
        data["key"] = w.key
        if w.op == "put":
            data.update(
                value=w.value,
                description=w.description,
                create_only=w.create_only,
                must_exist=w.must_exist,
            )
        data["expected_version"] = w.expected_version
    data.update(command.origin.to_json())
    return json.dumps(data, separators=(",", ":"))


#: What a fingerprint leaves out: where and when the request was taken, and the key itself.
_NOT_FINGERPRINTED = ("at", "node", "idempotency_key", "auth")


def fingerprint(command: WriteOperation | SchemaOperation | AccessOperation) -> str:
    """The SHA-256 (hex) of the canonical JSON of what `command` asks for: equal for a retry
    of the same request through any node at any time, different if anything it asks differs
    (an operation, a key, a value, a condition, the description, the actor or the reason)."""
    data = json.loads(encode(command))
    for name in _NOT_FINGERPRINTED:
        data.pop(name, None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
