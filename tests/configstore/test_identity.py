"""The replicated identities in the real applier (configstore.identity through
configstore.statemachine), on the test database: access commands and the check of a
command's credential at apply. Deterministic, one slot at a time, as every node applies
them."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import pytest
from django.contrib.auth.models import User
from django.db import connection

from configstore import commands
from configstore.models import AccessHistory, ApiToken, History, PrefixPermission
from tests.configstore.conftest import AT, payload

PASSWORD_HASH = "pbkdf2_sha256$1000000$salt$not-a-real-hash"
HASH = hashlib.sha256(b"secret-of-the-token-0123456789abcdef").hexdigest()


def access(op: str, **fields) -> str:
    return payload(op, actor="root", reason="test", **fields)


def as_token(op: str, token: str = "tok1", actor: str = "alice", **fields) -> str:
    return payload(op, actor=actor, auth=f"token:{token}", **fields)


@pytest.fixture
def alice(log):
    """alice: may change every key under a/ (through group team), with token tok1."""
    prefixes = [{"prefix": "a/", "view": True, "change": True, "delete": False}]
    log.apply(access("put_group", name="team", prefixes=prefixes))
    log.apply(access("put_user", username="alice", groups=["team"], password=PASSWORD_HASH))
    log.apply(access("put_token", token_id="tok1", username="alice", name="ci", key_hash=HASH))
    return log


def test_access_commands_change_users_groups_and_tokens_with_a_history_row_each(alice):
    user = User.objects.get(username="alice")
    assert [g.name for g in user.groups.all()] == ["team"]
    assert user.is_active and not user.is_staff and user.password == PASSWORD_HASH
    assert list(PrefixPermission.objects.values_list("prefix", "can_change")) == [("a/", True)]
    token = ApiToken.objects.get(token_id="tok1")
    assert (token.user, token.key_hash, token.scope) == (user, HASH, "write")
    rows = list(AccessHistory.objects.values_list("index", "command", "subject", "outcome"))
    assert rows == [
        (1, "put_group", "group:team", "committed"),
        (2, "put_user", "user:alice", "committed"),
        (3, "put_token", "token:tok1", "committed"),
    ]
    # Never a password hash or a token's hash in the access history.
    for row in AccessHistory.objects.all():
        shown = json.dumps([row.old, row.new])
        assert PASSWORD_HASH not in shown and HASH not in shown


def test_a_write_with_a_valid_credential_commits_and_a_revoked_one_is_forbidden(alice):
    alice.apply(as_token("put", key="a/k", value=1))
    assert alice.last()[0] == "committed"
    alice.apply(as_token("put", key="b/k", value=1))  # outside the user's rights
    outcome, result = alice.last()
    assert (outcome, result["error"]) == ("rejected", "forbidden")
    alice.apply(access("delete_token", token_id="tok1"))
    alice.apply(as_token("put", key="a/k", value=2))
    outcome, result = alice.last()
    assert (outcome, result["error"]) == ("rejected", "forbidden")
    assert "revoked" in result["detail"]
    rows = list(History.objects.filter(key="a/k").values_list("outcome", "error", "new_value"))
    assert rows == [("committed", "", 1), ("rejected", "forbidden", 2)]


def test_a_revocation_and_a_write_in_one_slot_apply_in_order(alice):
    """A slot is applied in its order: the write after the deactivation in the same slot is
    refused, the one before it commits."""
    slot = alice.apply(
        as_token("put", key="a/before", value=1),
        access("put_user", username="alice", is_active=False),
        as_token("put", key="a/after", value=1),
    )
    rows = list(
        History.objects.filter(index=slot).order_by("id").values_list("key", "outcome", "error")
    )
    assert rows == [("a/before", "committed", ""), ("a/after", "rejected", "forbidden")]


def test_token_limits_hold_at_apply(log):
    log.apply(access("put_user", username="bob", permissions=["configstore.change_entry"]))
    log.apply(
        access("put_token", token_id="ro", username="bob", name="r", key_hash=HASH, scope="read")
    )
    log.apply(
        access(
            "put_token",
            token_id="narrow",
            username="bob",
            name="n",
            key_hash=hashlib.sha256(b"other").hexdigest(),
            prefix="n/",
            expires_at="2026-11-27T12:00:01+00:00",
        )
    )
    cases = [
        (as_token("put", "ro", "bob", key="k", value=1), "forbidden"),
        (as_token("put", "narrow", "bob", key="k", value=1), "forbidden"),
        (as_token("put", "narrow", "bob", key="n/k", value=1), ""),
        (as_token("put", "narrow", "carol", key="n/k", value=1), "forbidden"),  # not hers
        (payload("put", actor="bob", auth="session", key="n/k", value=2), ""),
    ]
    for command, error in cases:
        log.apply(command)
        assert log.last()[1].get("error", "") == error, command
    # Expired: the command's own time (origin.at) is past the expiry.
    log.apply(
        payload(
            "put",
            actor="bob",
            auth="token:narrow",
            key="n/k",
            value=3,
            at="2026-11-27T12:00:02+00:00",
        )
    )
    assert "expired" in log.last()[1]["detail"]


def test_only_a_superuser_escalates(log):
    log.apply(access("put_user", username="mgr", permissions=["configstore.manage_access"]))
    log.apply(access("put_user", username="root", is_superuser=True))
    manager = {"actor": "mgr", "auth": "session"}
    log.apply(payload("put_user", username="new", **manager))
    assert log.last()[0] == "committed"
    for op, fields in [
        ("put_user", {"username": "mgr", "is_superuser": True}),
        ("put_user", {"username": "new", "permissions": ["configstore.manage_access"]}),
        ("put_user", {"username": "root", "is_active": False}),
        ("delete_user", {"username": "root"}),
    ]:
        log.apply(payload(op, **manager, **fields))
        assert log.last()[1]["error"] == "forbidden", (op, fields)
    assert User.objects.get(username="root").is_active
    log.apply(payload("put_user", username="mgr", actor="root", auth="session"))
    assert log.last()[0] == "committed"


def test_bad_access_commands_are_rejected_and_change_nothing(alice):
    before = (User.objects.count(), ApiToken.objects.count(), AccessHistory.objects.count())
    for bad in [
        access("put_user", username="bad name"),
        access("put_user", username="x", permissions=["auth.add_user"]),
        access("put_group", name="g", prefixes=[{"prefix": "a/"}, {"prefix": "a/"}]),
        access("put_token", token_id="t", username="alice", name="n", key_hash="nothex"),
        access("put_user", username="x", create_only=True, must_exist=True),
        payload("put", actor="alice", auth="token:", key="a/k", value=1),
    ]:
        alice.apply(bad)
        assert alice.last()[1]["error"] == "malformed", bad
    for refused, error in [
        (access("put_user", username="alice", create_only=True), "conflict"),
        (access("put_user", username="ghost", must_exist=True), "not_found"),
        (access("put_user", username="y", groups=["no-such-group"]), "not_found"),
        (
            access("put_token", token_id="tok1", username="alice", name="n", key_hash=HASH),
            "conflict",
        ),
        (access("delete_token", token_id="nope"), "not_found"),
    ]:
        alice.apply(refused)
        assert alice.last()[1]["error"] == error, refused
    assert (User.objects.count(), ApiToken.objects.count()) == before[:2]
    assert AccessHistory.objects.count() == before[2] + 5  # one rejected row each


def test_access_commands_round_trip_through_their_json_form():
    origin = commands.Origin(at=datetime.fromisoformat(AT), actor="r", auth="token:t1")
    command = commands.AccessOperation(
        "put_group",
        "ops",
        origin,
        {
            "permissions": ["configstore.view_entry"],
            "prefixes": [{"prefix": "o/", "view": True, "change": False, "delete": False}],
            "create_only": False,
        },
    )
    assert commands.decode(commands.encode(command)) == command


def test_migration_0004_hashes_legacy_tokens_and_they_keep_working(db):
    """A token of rest_framework.authtoken (its key stored in the clear) becomes a hashed
    token named "legacy" that authenticates with the same key; the clear keys are gone."""
    import importlib
    from types import SimpleNamespace

    from rest_framework.test import APIClient

    migration = importlib.import_module("configstore.migrations.0004_access")
    user = User.objects.create_user("legacy-user", is_superuser=True)
    key = "0123456789abcdef0123456789abcdef01234567"
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, created timestamptz, "
            "user_id integer)"
        )
        cursor.execute("INSERT INTO authtoken_token VALUES (%s, now(), %s)", [key, user.pk])
    migration.hash_legacy_tokens(None, SimpleNamespace(connection=connection))
    token = ApiToken.objects.get(user=user)
    assert (token.name, token.key_hash) == ("legacy", hashlib.sha256(key.encode()).hexdigest())
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM authtoken_token")
        assert cursor.fetchone() == (0,)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/keys/?consistency=stale").status_code == 200
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    answer = client.get("/api/v1/keys/?consistency=stale")
    assert answer.status_code == 200, answer.content
    client.credentials(HTTP_AUTHORIZATION=f"Token {key[:-1]}0")
    assert client.get("/api/v1/keys/?consistency=stale").status_code == 401


def test_identities_cannot_be_written_outside_consensus(db, settings):
    """An ORM write of a user, a group, a membership or a token on one node is refused (it
    would make the nodes decide commands differently); so is Django's createsuperuser."""
    from django.contrib.auth.models import Group
    from django.core.management import call_command
    from django.db import transaction

    from configstore.identity_guard import LocalIdentityWrite

    user = User.objects.create_user("local")
    group = Group.objects.create(name="local")
    settings.CONFIGSTORE_ALLOW_LOCAL_IDENTITY_WRITES = False
    before = (User.objects.count(), Group.objects.count())
    for write in (
        lambda: User.objects.create_user("another"),
        lambda: user.save(),
        lambda: user.delete(),
        lambda: user.groups.add(group),
        lambda: group.delete(),
        lambda: call_command("createsuperuser", "--noinput", username="x", email="x@example.com"),
    ):
        with pytest.raises(LocalIdentityWrite), transaction.atomic():
            write()
    assert (User.objects.count(), Group.objects.count()) == before
    assert not user.groups.exists()
