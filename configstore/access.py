"""Changes to the replicated identities: users, groups (with their permissions and prefix
permissions) and API tokens. Like configstore.services for entries: validate, build an
access command, submit it through consensus, wait until this node applied it, return what
was committed or raise (configstore.exceptions). The admin, the REST API
(/api/v1/access/...) and the manage.py commands call only these; the applier
(configstore.identity) alone writes the rows, on every node, with a row in the access
history for each change.

Passwords are hashed here, by Django's hasher, before the command is built: the log, like
the database, holds only the hash (and the access history not even that). A token's secret
is generated here and shown once: the command carries only its SHA-256.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.hashers import make_password

from configstore import commands, exceptions
from configstore.api.auth import hash_secret
from configstore.commands import AccessOperation
from configstore.services import Actor, _origin, _submit

TOKEN_PREFIX = "cs_"


@dataclass(frozen=True)
class AccessChanged:
    request_id: str
    index: int
    subject: str  # "user:alice", "group:ops", "token:ab12..."
    old: dict | None
    new: dict | None


@dataclass(frozen=True)
class TokenCreated(AccessChanged):
    secret: str = ""  # shown once: only its hash is kept anywhere


def new_secret() -> tuple[str, str, str]:
    """(token id, secret, SHA-256 of the secret) for a new token."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return secrets.token_hex(8), secret, hash_secret(secret)


def _change(
    op: str,
    subject: str,
    actor: str | Actor,
    reason: str,
    fields: dict[str, Any],
    idempotency_key: str | None,
    timeout: float | None,
) -> AccessChanged:
    command = AccessOperation(op, subject, _origin(actor, reason, idempotency_key), fields)
    try:
        commands.decode(commands.encode(command))
    except commands.Malformed as error:
        raise exceptions.InvalidInput(str(error)) from None
    done = _submit(command, timeout)
    return AccessChanged(
        done.request_id, done.index, done.result["subject"], done.result["old"], done.result["new"]
    )


def put_user(
    *,
    username: str,
    actor: str | Actor,
    reason: str = "",
    password: str | None = None,
    password_hash: str | None = None,
    is_active: bool | None = None,
    is_staff: bool | None = None,
    is_superuser: bool | None = None,
    email: str | None = None,
    first_name: str | None = None,
    last_name: str | None = None,
    groups: list[str] | None = None,
    permissions: list[str] | None = None,
    create_only: bool = False,
    must_exist: bool = False,
    idempotency_key: str | None = None,
    timeout: float | None = None,
) -> AccessChanged:
    """Create or change a user. None keeps a field (or takes the default on create: active,
    not staff, not superuser, no usable password). `password` is hashed here;
    `password_hash` is an already hashed one (the admin's forms hash themselves)."""
    if password is not None:
        password_hash = make_password(password)
    fields = {
        "password": password_hash,
        "is_active": is_active,
        "is_staff": is_staff,
        "is_superuser": is_superuser,
        "email": email,
        "first_name": first_name,
        "last_name": last_name,
        "groups": None if groups is None else sorted(set(groups)),
        "permissions": None if permissions is None else sorted(set(permissions)),
        "create_only": create_only,
        "must_exist": must_exist,
    }
    return _change("put_user", username, actor, reason, fields, idempotency_key, timeout)


def delete_user(
    *, username: str, actor: str | Actor, reason: str = "", idempotency_key=None, timeout=None
) -> AccessChanged:
    return _change("delete_user", username, actor, reason, {}, idempotency_key, timeout)


def put_group(
    *,
    name: str,
    actor: str | Actor,
    reason: str = "",
    permissions: list[str] | None = None,
    prefixes: list[dict] | None = None,
    create_only: bool = False,
    idempotency_key: str | None = None,
    timeout: float | None = None,
) -> AccessChanged:
    """Create or change a group: its permissions (commands.GRANTABLE) and its prefix
    permissions ([{"prefix", "view", "change", "delete"}]) replace the current ones; None
    keeps them."""
    fields = {
        "permissions": None if permissions is None else sorted(set(permissions)),
        "prefixes": prefixes,
        "create_only": create_only,
    }
    return _change("put_group", name, actor, reason, fields, idempotency_key, timeout)


def delete_group(
    *, name: str, actor: str | Actor, reason: str = "", idempotency_key=None, timeout=None
) -> AccessChanged:
    return _change("delete_group", name, actor, reason, {}, idempotency_key, timeout)


def create_token(
    *,
    username: str,
    name: str,
    actor: str | Actor,
    reason: str = "",
    scope: str = "write",
    prefix: str | None = None,
    expires_at: datetime | None = None,
    secret: str | None = None,
    idempotency_key: str | None = None,
    timeout: float | None = None,
) -> TokenCreated:
    """A new token for `username`. Its secret (generated unless given: the operator's tools
    may set a known one) is in the result, and nowhere else."""
    token_id, generated, key_hash = new_secret()
    if secret is not None:
        if len(secret) < 32 or not secret.isascii() or not secret.isprintable():
            raise exceptions.InvalidInput(
                "a token's secret must be at least 32 printable ASCII characters", field="secret"
            )
        key_hash = hash_secret(secret)
    if expires_at is not None and expires_at.tzinfo is None:
        raise exceptions.InvalidInput("expires_at needs a timezone", field="expires_at")
    fields = {
        "username": username,
        "name": name,
        "key_hash": key_hash,
        "scope": scope,
        "prefix": prefix,
        "expires_at": None if expires_at is None else expires_at.isoformat(),
    }
    done = _change("put_token", token_id, actor, reason, fields, idempotency_key, timeout)
    return TokenCreated(
        done.request_id, done.index, done.subject, done.old, done.new, secret or generated
    )


def delete_token(
    *, token_id: str, actor: str | Actor, reason: str = "", idempotency_key=None, timeout=None
) -> AccessChanged:
    return _change("delete_token", token_id, actor, reason, {}, idempotency_key, timeout)
