"""The replicated identities, as the applier sees them: who may do what (Rights), the check
of a command's credential at apply, and the access commands' effect.

Users, groups, memberships, the config store's permissions of users and groups
(commands.GRANTABLE), prefix permissions and API tokens are replicated state: only the
applier writes them (Django's auth tables, configstore_prefix_permission,
configstore_api_token), from access commands (configstore.commands.AccessOperation), on every
node alike, each change leaving a row in configstore_access_history. Deterministic like
the rest of the state machine: a decision depends only on the command and the state before
it (a token's expiry is compared with the time the request was taken, the command's
`origin.at`, never with this node's clock).

A command that carries a credential (`origin.auth`: "session" or "token:<id>", set by the
web tier for every request it authorised) is authorised again here, against the
identities in force at its log index: a write racing a revocation either commits before
the revocation's index or is rejected `forbidden`. The web tier checks the same rules
(configstore.permissions) against this node's applied state before it submits.

Who may change identities: superusers, and users holding configstore.manage_access. Only a
superuser may create, change or delete a superuser, make one, or grant manage_access.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from configstore.commands import AccessOperation, Origin, SchemaOperation, WriteOperation

COMMITTED, REJECTED = "committed", "rejected"
VIEW, CHANGE, DELETE = "view", "change", "delete"
MANAGE = "configstore.manage_access"


@dataclass(frozen=True)
class TokenLimits:
    token_id: str
    scope: str  # "read" or "write"
    prefix: str | None
    expires_at: datetime | None

    def allows_key(self, action: str, key: str) -> bool:
        if action != VIEW and self.scope != "write":
            return False
        return self.prefix is None or key.startswith(self.prefix)


@dataclass(frozen=True)
class Rights:
    """What a user may do (with a token: within the token's limits too)."""

    username: str
    active: bool
    superuser: bool
    perms: frozenset[str]  # "configstore.view_entry", ...
    prefixes: tuple[tuple[str, bool, bool, bool], ...]  # (prefix, view, change, delete)
    token: TokenLimits | None = None

    def _key_by_user(self, action: str, key: str) -> bool:
        if self.superuser:
            return True
        if f"configstore.{action}_entry" in self.perms:
            return True
        if action == VIEW and "configstore.change_entry" in self.perms:
            return True
        column = {VIEW: 1, CHANGE: 2, DELETE: 3}[action]
        return any(
            key.startswith(p[0]) and (p[column] or (action == VIEW and p[2])) for p in self.prefixes
        )

    def allows_key(self, action: str, key: str) -> bool:
        if not self.active:
            return False
        if self.token is not None and not self.token.allows_key(action, key):
            return False
        return self._key_by_user(action, key)

    def allows_schema(self, action: str, key: str) -> bool:
        if action == VIEW:
            return self.allows_key(VIEW, key.rstrip("/"))
        if not self.active or (self.token is not None and not self.token.allows_key(action, key)):
            return False
        return self.superuser or f"configstore.{action}_schema" in self.perms

    def manages_access(self) -> bool:
        if not self.active:
            return False
        if self.token is not None and (self.token.scope != "write" or self.token.prefix):
            return False
        return self.superuser or MANAGE in self.perms


# The rights of (username, token id or NULL) pairs, as one JSON object keyed by
# "<username> <token id>": the user's flags, permissions (own and through groups), prefix
# permissions and the token named. One round trip; a pair whose user does not exist is
# absent. A subquery, so that the state machine's read of a slot can carry it.
RIGHTS_JSON = """(SELECT coalesce(jsonb_object_agg(q.actor || ' ' || coalesce(q.token, ''),
  jsonb_build_array(u.is_active, u.is_superuser,
    ARRAY(SELECT DISTINCT 'configstore.' || p.codename FROM auth_permission p
          JOIN django_content_type ct ON ct.id = p.content_type_id
          WHERE ct.app_label = 'configstore' AND (
            p.id IN (SELECT permission_id FROM auth_user_user_permissions WHERE user_id = u.id)
            OR p.id IN (SELECT gp.permission_id FROM auth_group_permissions gp
                        JOIN auth_user_groups ug ON ug.group_id = gp.group_id
                        WHERE ug.user_id = u.id))),
    (SELECT coalesce(jsonb_agg(jsonb_build_array(pp.prefix, pp.can_view, pp.can_change,
            pp.can_delete) ORDER BY pp.prefix), '[]'::jsonb)
     FROM configstore_prefix_permission pp JOIN auth_user_groups ug
     ON ug.group_id = pp.group_id WHERE ug.user_id = u.id),
    t.token_id, t.user_id = u.id, t.scope, t.prefix, t.expires_at)), '{}'::jsonb)
  FROM unnest(%s::text[], %s::text[]) AS q(actor, token)
  JOIN auth_user u ON u.username = q.actor
  LEFT JOIN configstore_api_token t ON t.token_id = q.token)::text"""


def credentials(commands) -> tuple[list[str], list[str | None]]:
    """The (usernames, token ids) of the commands that carry a credential: RIGHTS_JSON's
    parameters."""
    pairs = sorted(
        {(c.origin.actor, c.origin.token_id) for c in commands if c.origin.auth is not None},
        key=lambda p: (p[0], p[1] or ""),
    )
    return [p[0] for p in pairs], [p[1] for p in pairs]


def rights_of(pairs: tuple[list[str], list[str | None]], found_json: str) -> dict:
    """RIGHTS_JSON's answer as {(username, token id): Rights or why there are none}."""
    found = json.loads(found_json)
    rights: dict = {}
    for username, token_id in zip(*pairs, strict=True):
        row = found.get(f"{username} {token_id or ''}")
        rights[(username, token_id)] = _rights(username, token_id, row)
    return rights


def _rights(username: str, token_id: str | None, row) -> Rights | str:
    if row is None:
        return f"the user {username!r} does not exist"
    active, superuser, perms, prefixes, found, owned, scope, prefix, expires = row
    token = None
    if token_id is not None:
        if found is None or not owned:
            return f"the token {token_id} was revoked"
        expires = None if expires is None else datetime.fromisoformat(expires)
        token = TokenLimits(found, scope, prefix, expires)
    if not active:
        return f"the user {username!r} is inactive"
    return Rights(username, active, superuser, frozenset(perms), tuple(map(tuple, prefixes)), token)


def load_rights(cursor, username: str, token_id: str | None) -> Rights | str:
    """The rights of `username` (through `token_id` if given), or why there are none."""
    pairs = ([username], [token_id])
    cursor.execute(f"SELECT {RIGHTS_JSON}", pairs)
    return rights_of(pairs, cursor.fetchone()[0])[(username, token_id)]


def authorize(cursor, command, cache: dict | None = None) -> dict | None:
    """None if the command may be applied; else the `forbidden` refusal. Commands without a
    credential (an operator's tool) are not checked. `cache` (per slot, only while no
    access command is in it; configstore.statemachine fills it with the slot's read) saves
    loading the same rights twice."""
    origin: Origin = command.origin
    if origin.auth is None:
        return None
    key = (origin.actor, origin.token_id)
    if cache is not None and key in cache:
        rights = cache[key]
    else:
        rights = load_rights(cursor, origin.actor, origin.token_id)
        if cache is not None:
            cache[key] = rights
    if isinstance(rights, str):
        return _forbidden(rights)
    token = rights.token
    if token is not None and token.expires_at is not None and token.expires_at <= origin.at:
        return _forbidden(f"the token {token.token_id} had expired")
    if isinstance(command, WriteOperation):
        for write in command.writes:
            action = CHANGE if write.op == "put" else DELETE
            if not rights.allows_key(action, write.key):
                return _forbidden(f"{origin.actor} may not {action} {write.key}")
        for check in command.checks:
            if not rights.allows_key(VIEW, check.key):
                return _forbidden(f"{origin.actor} may not read {check.key}")
        return None
    if isinstance(command, SchemaOperation):
        action = CHANGE if command.op == "put_schema" else DELETE
        if not rights.allows_schema(action, command.key):
            return _forbidden(f"{origin.actor} may not {action} the schema of {command.key}")
        return None
    if isinstance(command, AccessOperation):
        if not rights.manages_access():
            return _forbidden(f"{origin.actor} may not change users, groups or tokens")
        if not rights.superuser and _escalates(cursor, command):
            return _forbidden(
                "only a superuser may create, change or delete a superuser, or grant "
                "configstore.manage_access"
            )
    return None


def _forbidden(detail: str) -> dict:
    return {"error": "forbidden", "detail": f"not authorised at apply: {detail}"}


def _escalates(cursor, command: AccessOperation) -> bool:
    f = command.fields
    if MANAGE in (f.get("permissions") or ()):
        return True
    if command.op == "put_user" and f.get("is_superuser"):
        return True
    if command.op in ("put_user", "delete_user"):
        cursor.execute("SELECT is_superuser FROM auth_user WHERE username = %s", [command.subject])
        row = cursor.fetchone()
        return bool(row and row[0])
    if command.op == "put_token":
        cursor.execute("SELECT is_superuser FROM auth_user WHERE username = %s", [f["username"]])
        row = cursor.fetchone()
        return bool(row and row[0])
    if command.op == "delete_token":
        cursor.execute(
            "SELECT u.is_superuser FROM auth_user u JOIN configstore_api_token t "
            "ON t.user_id = u.id WHERE t.token_id = %s",
            [command.subject],
        )
        row = cursor.fetchone()
        return bool(row and row[0])
    return False


# ------------------------------------------------------------------- access commands

_USER_SNAPSHOT = """
SELECT jsonb_build_object(
  'username', u.username, 'is_active', u.is_active, 'is_staff', u.is_staff,
  'is_superuser', u.is_superuser, 'email', u.email, 'first_name', u.first_name,
  'last_name', u.last_name,
  'groups', ARRAY(SELECT g.name FROM auth_group g JOIN auth_user_groups ug ON ug.group_id = g.id
                  WHERE ug.user_id = u.id ORDER BY g.name),
  'permissions', ARRAY(SELECT 'configstore.' || p.codename FROM auth_permission p
                  JOIN auth_user_user_permissions up ON up.permission_id = p.id
                  WHERE up.user_id = u.id ORDER BY p.codename))::text, u.id, u.password
FROM auth_user u WHERE u.username = %s
"""
_GROUP_SNAPSHOT = """
SELECT jsonb_build_object(
  'name', g.name,
  'permissions', ARRAY(SELECT 'configstore.' || p.codename FROM auth_permission p
                  JOIN auth_group_permissions gp ON gp.permission_id = p.id
                  WHERE gp.group_id = g.id ORDER BY p.codename),
  'prefixes', (SELECT coalesce(jsonb_agg(jsonb_build_object('prefix', pp.prefix,
                 'view', pp.can_view, 'change', pp.can_change, 'delete', pp.can_delete)
                 ORDER BY pp.prefix), '[]'::jsonb)
               FROM configstore_prefix_permission pp WHERE pp.group_id = g.id))::text, g.id
FROM auth_group g WHERE g.name = %s
"""
_TOKEN_SNAPSHOT = """
SELECT jsonb_build_object('token_id', t.token_id, 'username', u.username, 'name', t.name,
  'scope', t.scope, 'prefix', t.prefix, 'expires_at', t.expires_at,
  'created_at', t.created_at, 'created_index', t.created_index)::text
FROM configstore_api_token t JOIN auth_user u ON u.id = t.user_id WHERE t.token_id = %s
"""
_PERMISSION_IDS = (
    "SELECT p.id FROM auth_permission p JOIN django_content_type ct "
    "ON ct.id = p.content_type_id WHERE ct.app_label = 'configstore' "
    "AND 'configstore.' || p.codename = ANY(%s::text[]) ORDER BY p.id"
)
_ACCESS_HISTORY = (
    "INSERT INTO configstore_access_history (index, request_id, command, subject, old, new, "
    "actor, reason, node, outcome, error, detail, at) VALUES (%(slot)s, %(request_id)s, "
    "%(command)s, %(subject)s, %(old)s::jsonb, %(new)s::jsonb, %(actor)s, %(reason)s, "
    "%(node)s, %(outcome)s, %(error)s, %(detail)s, %(at)s)"
)


def _one(cursor, sql: str, params) -> tuple | None:
    cursor.execute(sql, params)
    return cursor.fetchone()


def record(
    cursor, slot, request_id, command: AccessOperation, outcome, old=None, new=None, refusal=None
) -> None:
    """The command's row in the access history."""
    origin = command.origin
    refusal = refusal or {}
    cursor.execute(
        _ACCESS_HISTORY,
        {
            "slot": slot,
            "request_id": request_id,
            "command": command.op,
            "subject": command.subject_label,
            "old": None if old is None else json.dumps(old),
            "new": None if new is None else json.dumps(new),
            "actor": origin.actor,
            "reason": origin.reason,
            "node": origin.node,
            "outcome": outcome,
            "error": refusal.get("error", ""),
            "detail": refusal.get("detail", ""),
            "at": origin.at,
        },
    )


def apply_access(cursor, slot: int, request_id: str, command: AccessOperation) -> tuple[str, dict]:
    """Apply an (authorised) access command; its row in the access history either way."""
    # The identity tables refuse other writers (migration 0005): this transaction may.
    cursor.execute("SELECT set_config('configstore.applying', 'on', true)")
    change = {
        "put_user": _put_user,
        "delete_user": _delete_user,
        "put_group": _put_group,
        "delete_group": _delete_group,
        "put_token": _put_token,
        "delete_token": _delete_token,
    }[command.op]
    old, new, refusal = change(cursor, slot, command)
    if refusal is not None:
        record(cursor, slot, request_id, command, REJECTED, old, None, refusal)
        return REJECTED, refusal
    record(cursor, slot, request_id, command, COMMITTED, old, new)
    return COMMITTED, {"subject": command.subject_label, "old": old, "new": new}


def _not_found(what: str) -> dict:
    return {"error": "not_found", "detail": f"{what} does not exist"}


def _conflict(detail: str) -> dict:
    return {"error": "conflict", "detail": detail}


def _user(cursor, username: str):
    row = _one(cursor, _USER_SNAPSHOT, [username])
    return (None, None, None) if row is None else (json.loads(row[0]), row[1], row[2])


_USER_FIELDS = ("is_active", "is_staff", "is_superuser", "email", "first_name", "last_name")


def _put_user(cursor, slot: int, command: AccessOperation):
    f, name, at = command.fields, command.subject, command.origin.at
    old, user_id, old_password = _user(cursor, name)
    if old is None and f["must_exist"]:
        return None, None, _not_found(f"the user {name!r}")
    if old is not None and f["create_only"]:
        return old, None, _conflict(f"the user {name!r} already exists")
    groups = f["groups"]
    if groups is not None:
        cursor.execute("SELECT name FROM auth_group WHERE name = ANY(%s::text[])", [groups])
        missing = sorted(set(groups) - {r[0] for r in cursor.fetchall()})
        if missing:
            return old, None, _not_found(f"the group(s) {', '.join(map(repr, missing))}")
    base = old or {
        "is_active": True,
        "is_staff": False,
        "is_superuser": False,
        "email": "",
        "first_name": "",
        "last_name": "",
    }
    values = {k: base[k] if f[k] is None else f[k] for k in _USER_FIELDS}
    password = f["password"] if f["password"] is not None else (old_password or "!")
    params = {**values, "password": password, "username": name, "at": at, "id": user_id}
    if old is None:
        cursor.execute(
            "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, "
            "email, is_staff, is_active, date_joined) VALUES (%(password)s, %(is_superuser)s, "
            "%(username)s, %(first_name)s, %(last_name)s, %(email)s, %(is_staff)s, "
            "%(is_active)s, %(at)s) RETURNING id",
            params,
        )
        user_id = cursor.fetchone()[0]
    else:
        cursor.execute(
            "UPDATE auth_user SET password = %(password)s, is_superuser = %(is_superuser)s, "
            "first_name = %(first_name)s, last_name = %(last_name)s, email = %(email)s, "
            "is_staff = %(is_staff)s, is_active = %(is_active)s WHERE id = %(id)s",
            params,
        )
    if groups is not None:
        cursor.execute("DELETE FROM auth_user_groups WHERE user_id = %s", [user_id])
        cursor.execute(
            "INSERT INTO auth_user_groups (user_id, group_id) SELECT %s, id FROM auth_group "
            "WHERE name = ANY(%s::text[]) ORDER BY name",
            [user_id, groups],
        )
    if f["permissions"] is not None:
        cursor.execute("DELETE FROM auth_user_user_permissions WHERE user_id = %s", [user_id])
        cursor.execute(
            "INSERT INTO auth_user_user_permissions (user_id, permission_id) "
            f"SELECT %s, id FROM ({_PERMISSION_IDS}) AS p",
            [user_id, f["permissions"]],
        )
    new, _, _ = _user(cursor, name)
    if f["password"] is not None:
        new["password_changed"] = True
    return old, new, None


def _delete_user(cursor, slot: int, command: AccessOperation):
    old, user_id, _ = _user(cursor, command.subject)
    if old is None:
        return None, None, _not_found(f"the user {command.subject!r}")
    delete_users(cursor, [user_id])
    return old, None, None


def delete_users(cursor, user_ids: list[int]) -> None:
    """Delete these users and everything that refers to them: their tokens (with this node's
    record of their last use), memberships, permissions and this node's admin log entries.
    The applier's, and a snapshot install's (configstore.snapshot.install)."""
    cursor.execute(
        "DELETE FROM configstore_token_use WHERE token_id IN "
        "(SELECT token_id FROM configstore_api_token WHERE user_id = ANY(%s))",
        [user_ids],
    )
    for table in (
        "auth_user_groups",
        "auth_user_user_permissions",
        "configstore_api_token",
        "django_admin_log",  # this node's own admin log: it refers to the user
    ):
        cursor.execute(f"DELETE FROM {table} WHERE user_id = ANY(%s)", [user_ids])
    cursor.execute("DELETE FROM auth_user WHERE id = ANY(%s)", [user_ids])


def _group(cursor, name: str):
    row = _one(cursor, _GROUP_SNAPSHOT, [name])
    return (None, None) if row is None else (json.loads(row[0]), row[1])


def _put_group(cursor, slot: int, command: AccessOperation):
    f, name = command.fields, command.subject
    old, group_id = _group(cursor, name)
    if old is not None and f["create_only"]:
        return old, None, _conflict(f"the group {name!r} already exists")
    if group_id is None:
        cursor.execute("INSERT INTO auth_group (name) VALUES (%s) RETURNING id", [name])
        group_id = cursor.fetchone()[0]
    if f["permissions"] is not None:
        cursor.execute("DELETE FROM auth_group_permissions WHERE group_id = %s", [group_id])
        cursor.execute(
            "INSERT INTO auth_group_permissions (group_id, permission_id) "
            f"SELECT %s, id FROM ({_PERMISSION_IDS}) AS p",
            [group_id, f["permissions"]],
        )
    if f["prefixes"] is not None:
        cursor.execute("DELETE FROM configstore_prefix_permission WHERE group_id = %s", [group_id])
        for p in f["prefixes"]:
            cursor.execute(
                "INSERT INTO configstore_prefix_permission (group_id, prefix, can_view, "
                "can_change, can_delete) VALUES (%s, %s, %s, %s, %s)",
                [group_id, p["prefix"], p["view"], p["change"], p["delete"]],
            )
    new, _ = _group(cursor, name)
    return old, new, None


def _delete_group(cursor, slot: int, command: AccessOperation):
    old, group_id = _group(cursor, command.subject)
    if old is None:
        return None, None, _not_found(f"the group {command.subject!r}")
    delete_groups(cursor, [group_id])
    return old, None, None


def delete_groups(cursor, group_ids: list[int]) -> None:
    """Delete these groups with their memberships, permissions and prefix permissions."""
    for table in ("auth_user_groups", "auth_group_permissions", "configstore_prefix_permission"):
        cursor.execute(f"DELETE FROM {table} WHERE group_id = ANY(%s)", [group_ids])
    cursor.execute("DELETE FROM auth_group WHERE id = ANY(%s)", [group_ids])


def _token(cursor, token_id: str):
    row = _one(cursor, _TOKEN_SNAPSHOT, [token_id])
    return None if row is None else json.loads(row[0])


def _put_token(cursor, slot: int, command: AccessOperation):
    f, token_id = command.fields, command.subject
    old = _token(cursor, token_id)
    if old is not None:
        return old, None, _conflict(f"the token {token_id} already exists (tokens never change)")
    row = _one(cursor, "SELECT id FROM auth_user WHERE username = %s", [f["username"]])
    if row is None:
        return None, None, _not_found(f"the user {f['username']!r}")
    taken = _one(cursor, "SELECT 1 FROM configstore_api_token WHERE key_hash = %s", [f["key_hash"]])
    if taken is not None:
        return None, None, _conflict("another token has this secret")
    cursor.execute(
        "INSERT INTO configstore_api_token (token_id, user_id, name, key_hash, scope, prefix, "
        "expires_at, created_at, created_index) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [
            token_id,
            row[0],
            f["name"],
            f["key_hash"],
            f["scope"],
            f["prefix"],
            f["expires_at"],
            command.origin.at,
            slot,
        ],
    )
    return None, _token(cursor, token_id), None


def _delete_token(cursor, slot: int, command: AccessOperation):
    old = _token(cursor, command.subject)
    if old is None:
        return None, None, _not_found(f"the token {command.subject}")
    delete_tokens(cursor, [command.subject])
    return old, None, None


def delete_tokens(cursor, token_ids: list[str]) -> None:
    """Delete these tokens; this node's record of their last use goes with them (nothing
    grows with token churn)."""
    cursor.execute("DELETE FROM configstore_api_token WHERE token_id = ANY(%s)", [token_ids])
    cursor.execute("DELETE FROM configstore_token_use WHERE token_id = ANY(%s)", [token_ids])
