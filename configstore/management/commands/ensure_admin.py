"""python manage.py ensure_admin --username admin --password PW [--token SECRET]

Bootstraps the cluster's first superuser, through consensus (users are replicated: run it
on ONE node; every node gets the user). Creates the user or resets its password and flags;
with --token, gives it an API token with that secret (at least 32 characters), named
"ensure_admin" (an earlier ensure_admin token of the user with another secret is revoked).
Needs a quorum: it waits up to --wait seconds for one."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from configstore import access, exceptions
from configstore.api.auth import hash_secret
from configstore.models import ApiToken

ACTOR = "manage.py"
TOKEN_NAME = "ensure_admin"


def retrying(call, wait: float):
    """`call()`, retried while the cluster has no quorum (a leader being elected: nothing
    was submitted). Not after not_confirmed: that one may still commit."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return call()
        except exceptions.NoQuorum as error:
            if time.monotonic() > deadline:
                raise CommandError(f"no quorum: {error.detail}") from None
            time.sleep(0.5)


class Command(BaseCommand):
    help = "Create (or reset) a superuser of the cluster, through consensus."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", required=True)
        parser.add_argument("--token", help="the secret of the user's API token")
        parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for quorum")

    def handle(self, *args, username: str, password: str, token: str | None, wait: float, **_):
        done = retrying(
            lambda: access.put_user(
                username=username,
                password=password,
                is_active=True,
                is_staff=True,
                is_superuser=True,
                actor=ACTOR,
                reason="ensure_admin",
            ),
            wait,
        )
        verb = "created" if done.old is None else "updated"
        self.stdout.write(f"{verb} superuser {username} at log index {done.index}")
        if not token:
            return
        mine = ApiToken.objects.filter(user__username=username, name=TOKEN_NAME)
        if mine.filter(key_hash=hash_secret(token)).exists():
            return
        for old in mine:
            retrying(
                lambda old=old: access.delete_token(
                    token_id=old.token_id, actor=ACTOR, reason="ensure_admin: new token"
                ),
                wait,
            )
        created = retrying(
            lambda: access.create_token(
                username=username, name=TOKEN_NAME, secret=token, actor=ACTOR, reason="ensure_admin"
            ),
            wait,
        )
        self.stdout.write(f"token {created.subject} at log index {created.index}")
