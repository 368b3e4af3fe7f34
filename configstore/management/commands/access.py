"""python manage.py access SUBCOMMAND ...: the replicated identities from the command line.

Every change goes through consensus (configstore.access), as the admin's and the REST
API's do: run it on any one node. Each prints one JSON object (what was committed, at
which log index); a failure prints the reason and exits 1 (2 for bad arguments).

    access user NAME [--password-stdin] [--superuser|--no-superuser] [--staff|--no-staff]
                     [--active|--inactive] [--group G ...] [--perm P ...] [--create-only]
    access delete-user NAME
    access group NAME [--perm P ...] [--prefix 'PREFIX=view,change,delete' ...]
    access delete-group NAME
    access token NAME --name N [--scope read|write] [--prefix P] [--expires ISO8601]
                 [--secret-stdin]          prints the secret, once
    access revoke TOKEN_ID
    access convert --node NODE=DATABASE_URL ...   (see configstore.conversion)

--reason R (all): why, kept in the access history. The actor recorded is "manage.py".
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError

from configstore import access, exceptions
from configstore.management.commands.ensure_admin import ACTOR, retrying


def _prefix_right(text: str) -> dict:
    prefix, _, rights = text.partition("=")
    given = {r.strip() for r in rights.split(",") if r.strip()} or {"view"}
    unknown = given - {"view", "change", "delete"}
    if unknown:
        raise CommandError(f"--prefix {text!r}: unknown right(s) {', '.join(sorted(unknown))}")
    return {
        "prefix": prefix,
        "view": True,
        "change": "change" in given,
        "delete": "delete" in given,
    }


class Command(BaseCommand):
    help = "Change users, groups and API tokens of the cluster (through consensus)."

    def add_arguments(self, parser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        user = sub.add_parser("user", help="create or change a user")
        user.add_argument("username")
        user.add_argument("--password-stdin", action="store_true", help="read it from stdin")
        for flag in ("superuser", "staff"):
            group = user.add_mutually_exclusive_group()
            group.add_argument(f"--{flag}", dest=flag, action="store_true", default=None)
            group.add_argument(f"--no-{flag}", dest=flag, action="store_false")
        active = user.add_mutually_exclusive_group()
        active.add_argument("--active", dest="active", action="store_true", default=None)
        active.add_argument("--inactive", dest="active", action="store_false")
        user.add_argument("--group", action="append", dest="groups")
        user.add_argument("--perm", action="append", dest="perms")
        user.add_argument("--create-only", action="store_true")
        sub.add_parser("delete-user").add_argument("username")
        group = sub.add_parser("group", help="create or replace a group")
        group.add_argument("name")
        group.add_argument("--perm", action="append", dest="perms", default=[])
        group.add_argument("--prefix", action="append", dest="prefixes", default=[])
        sub.add_parser("delete-group").add_argument("name")
        token = sub.add_parser("token", help="create a token (its secret is printed once)")
        token.add_argument("username")
        token.add_argument("--name", required=True)
        token.add_argument("--scope", choices=["read", "write"], default="write")
        token.add_argument("--prefix")
        token.add_argument("--expires", help="ISO 8601 time with a timezone")
        token.add_argument("--secret-stdin", action="store_true", help="a secret of your own")
        sub.add_parser("revoke").add_argument("token_id")
        convert = sub.add_parser("convert", help="adopt per-node users as the cluster's")
        convert.add_argument("--node", action="append", required=True, metavar="NODE=URL")
        for p in sub.choices.values():
            p.add_argument("--reason", default="")
            p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for quorum")

    def handle(self, *args, action: str, reason: str, wait: float, **o) -> None:
        base = {"actor": ACTOR, "reason": reason}
        try:
            if action == "convert":
                from configstore.conversion import convert

                result = convert(dict(n.split("=", 1) for n in o["node"]), self.stdout, wait)
                self.stdout.write(json.dumps(result))
                return
            done = retrying(lambda: self._change(action, base, o), wait)
        except exceptions.ConfigstoreError as error:
            raise CommandError(f"{error.code}: {error.detail}") from None
        out = {"subject": done.subject, "index": done.index, "new": done.new}
        if isinstance(done, access.TokenCreated):
            out["secret"] = done.secret
        self.stdout.write(json.dumps(out))

    def _change(self, action: str, base: dict, o: dict) -> access.AccessChanged:
        if action == "user":
            password = sys.stdin.readline().rstrip("\n") if o["password_stdin"] else None
            return access.put_user(
                username=o["username"],
                password=password,
                is_superuser=o["superuser"],
                is_staff=o["staff"],
                is_active=o["active"],
                groups=o["groups"],
                permissions=o["perms"],
                create_only=o["create_only"],
                **base,
            )
        if action == "delete-user":
            return access.delete_user(username=o["username"], **base)
        if action == "group":
            prefixes = [_prefix_right(p) for p in o["prefixes"]]
            return access.put_group(
                name=o["name"], permissions=o["perms"], prefixes=prefixes, **base
            )
        if action == "delete-group":
            return access.delete_group(name=o["name"], **base)
        if action == "token":
            expires = datetime.fromisoformat(o["expires"]) if o["expires"] else None
            secret = sys.stdin.readline().strip() if o["secret_stdin"] else None
            return access.create_token(
                username=o["username"],
                name=o["name"],
                scope=o["scope"],
                prefix=o["prefix"],
                expires_at=expires,
                secret=secret,
                **base,
            )
        return access.delete_token(token_id=o["token_id"], **base)
