"""Converting a cluster whose users, groups, tokens and prefix permissions were per node
(before they were replicated) -- `manage.py access convert --node n1=URL --node n2=URL ...`.

It reads the identities of every node's database and compares them. If any node differs
(a user missing on one, another password hash, other groups, permissions or tokens), it
refuses, listing every difference: an operator decides which is right and makes the nodes
agree first. If all agree, it records them as the access history's baseline: one
put_group per group, then one put_user per user (same password hash), through consensus,
which changes nothing but leaves the audit trail of what every node held. Tokens (already
hashed by migration 0004 alike on every node) are compared, not rewritten.
"""

from __future__ import annotations

import json

import psycopg
from django.core.management.base import CommandError

from configstore import access
from configstore.management.commands.ensure_admin import ACTOR, retrying

_READ = {
    "users": """
        SELECT u.username, jsonb_build_object('password', u.password, 'is_active', u.is_active,
          'is_staff', u.is_staff, 'is_superuser', u.is_superuser, 'email', u.email,
          'first_name', u.first_name, 'last_name', u.last_name,
          'groups', ARRAY(SELECT g.name FROM auth_group g JOIN auth_user_groups ug
                          ON ug.group_id = g.id WHERE ug.user_id = u.id ORDER BY g.name),
          'permissions', ARRAY(SELECT ct.app_label || '.' || p.codename FROM auth_permission p
                          JOIN django_content_type ct ON ct.id = p.content_type_id
                          JOIN auth_user_user_permissions up ON up.permission_id = p.id
                          WHERE up.user_id = u.id ORDER BY 1))::text
        FROM auth_user u""",
    "groups": """
        SELECT g.name, jsonb_build_object(
          'permissions', ARRAY(SELECT ct.app_label || '.' || p.codename FROM auth_permission p
                          JOIN django_content_type ct ON ct.id = p.content_type_id
                          JOIN auth_group_permissions gp ON gp.permission_id = p.id
                          WHERE gp.group_id = g.id ORDER BY 1),
          'prefixes', (SELECT coalesce(jsonb_agg(jsonb_build_object('prefix', pp.prefix,
                          'view', pp.can_view, 'change', pp.can_change,
                          'delete', pp.can_delete) ORDER BY pp.prefix), '[]'::jsonb)
                       FROM configstore_prefix_permission pp WHERE pp.group_id = g.id))::text
        FROM auth_group g""",
    "tokens": """
        SELECT t.key_hash, jsonb_build_object('username', u.username, 'name', t.name,
          'scope', t.scope, 'prefix', t.prefix, 'expires_at', t.expires_at)::text
        FROM configstore_api_token t JOIN auth_user u ON u.id = t.user_id""",
}


def read_identities(url: str) -> dict[str, dict[str, dict]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {
            kind: {name: json.loads(data) for name, data in conn.execute(sql).fetchall()}
            for kind, sql in _READ.items()
        }


def differences(by_node: dict[str, dict]) -> list[str]:
    """Every subject on which the nodes disagree, in words."""
    found = []
    nodes = sorted(by_node)
    for kind in _READ:
        names = sorted({n for ids in by_node.values() for n in ids[kind]})
        for name in names:
            seen = {node: by_node[node][kind].get(name) for node in nodes}
            if len({json.dumps(v, sort_keys=True) for v in seen.values()}) == 1:
                continue
            shown = name if kind != "tokens" else f"token {name[:12]}… of {_owner(seen)}"
            missing = [n for n, v in seen.items() if v is None]
            if missing:
                found.append(f"{kind[:-1]} {shown}: missing on {', '.join(missing)}")
                continue
            fields = sorted({f for v in seen.values() for f in v})
            for f in fields:
                values = {n: seen[n].get(f) for n in nodes}
                if len({json.dumps(v) for v in values.values()}) > 1:
                    if f == "password":
                        values = {n: "hash " + str(v)[-8:] for n, v in values.items()}
                    found.append(f"{kind[:-1]} {shown}: {f} differs: {values}")
    return found


def _owner(seen: dict) -> str:
    return next((v["username"] for v in seen.values() if v), "?")


def convert(node_urls: dict[str, str], out, wait: float) -> dict:
    if len(node_urls) < 2:
        raise CommandError("name every node of the cluster: --node n1=URL --node n2=URL ...")
    by_node = {node: read_identities(url) for node, url in node_urls.items()}
    found = differences(by_node)
    if found:
        raise CommandError(
            "the nodes' identities differ; make them agree first, nothing was changed:\n  "
            + "\n  ".join(found)
        )
    ids = next(iter(by_node.values()))
    reason = "convert: the identities every node held before they were replicated"
    base = {"actor": ACTOR, "reason": reason}
    last = 0
    for name, g in sorted(ids["groups"].items()):
        perms = [p for p in g["permissions"] if p.startswith("configstore.")]
        done = retrying(
            lambda n=name, p=perms, g=g: access.put_group(
                name=n, permissions=p, prefixes=g["prefixes"], **base
            ),
            wait,
        )
        last = done.index
    for name, u in sorted(ids["users"].items()):
        done = retrying(
            lambda n=name, u=u: access.put_user(
                username=n,
                password_hash=u["password"],
                is_active=u["is_active"],
                is_staff=u["is_staff"],
                is_superuser=u["is_superuser"],
                email=u["email"],
                first_name=u["first_name"],
                last_name=u["last_name"],
                groups=u["groups"],
                permissions=[p for p in u["permissions"] if p.startswith("configstore.")],
                **base,
            ),
            wait,
        )
        last = done.index
    out.write(
        f"the {len(node_urls)} nodes agree: {len(ids['users'])} users, {len(ids['groups'])} "
        f"groups and {len(ids['tokens'])} tokens recorded in the access history\n"
    )
    return {"users": len(ids["users"]), "groups": len(ids["groups"]), "index": last}
