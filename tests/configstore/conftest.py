"""Fixtures of the config store's tests: the real applier on the test database, a view of
the whole replicated state (to prove that bad input changes nothing), and users.

No cluster runs here. Every test points CONFIGSTORE_PEERS at a broker that does not exist,
so this node has no quorum: a write that passes validation is answered "no quorum" and is
never submitted (and cannot reach some other cluster running on this machine).
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.db import connection
from rest_framework.test import APIClient

from configstore.access import new_secret
from configstore.models import ApiToken, PrefixPermission
from configstore.statemachine import apply_commands
from consensus import conf, storage
from consensus.conf import parse_peers
from consensus.paxos import Command, Value

AT = "2026-11-27T12:00:00+00:00"
UNREACHABLE_PEERS = "n1=redis://127.0.0.1:1/0"


@pytest.fixture(scope="session", autouse=True)
def _side_connections_closed(django_db_setup, django_db_blocker):
    """The submitter (its listener, which the watcher subscribes to) holds its own
    connections to the test database: close them before pytest-django drops it."""
    yield
    conf.reset_process()
    if not connection.settings_dict["NAME"].startswith("test_"):
        return  # no test of this session used the database
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def _no_cluster(settings, configure):
    configure(peers=parse_peers(UNREACHABLE_PEERS), node_id="n1")
    # Set-up writes users, groups and tokens straight into this one test database
    # (configstore.identity_guard refuses that outside tests).
    settings.CONFIGSTORE_ALLOW_LOCAL_IDENTITY_WRITES = True


def payload(op: str, **fields) -> str:
    """A command payload as the services build it (actor, reason, node and time included)."""
    if op != "noop":
        fields = {"actor": "alice", "reason": "test", "node": "n2", "at": AT, **fields}
    return json.dumps({"op": op, **fields})


class Log:
    """Feeds commands to the real applier, one slot each, as a node does: the applier records
    the chosen slot and applies it (consensus.storage.apply_chosen with the config store's
    state machine)."""

    def __init__(self) -> None:
        self.slots = itertools.count(1)
        self.ids = itertools.count(1)

    def apply(self, *payloads: str, request_id: str | None = None, node: str = "n1") -> int:
        """Apply the payloads in one slot; returns the slot."""
        slot = next(self.slots)
        commands = tuple(Command(request_id or f"req-{next(self.ids)}", p) for p in payloads)
        assert storage.apply_chosen(apply_commands, node, [(slot, Value(commands))]) == 1
        return slot

    def outcome(self, request_id: str) -> tuple[str, dict]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT outcome, result FROM consensus_applied_request WHERE request_id = %s",
                [request_id],
            )
            outcome, result = cursor.fetchone()
        return outcome, json.loads(result) if isinstance(result, str) else result

    def last(self) -> tuple[str, dict]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT request_id FROM consensus_applied_request ORDER BY slot DESC LIMIT 1"
            )
            (request_id,) = cursor.fetchone()
        return self.outcome(request_id)


@pytest.fixture
def log(db) -> Log:
    return Log()


def replicated_state() -> dict:
    """Everything the replicated state machine and the log hold, row ids excluded."""
    queries = {
        "entries": "SELECT key, value::text, description, version, created_index, "
        "modified_index, updated_by, updated_at FROM configstore_entry ORDER BY key",
        "schemas": "SELECT key, schema::text, description, version, created_index, "
        "modified_index, updated_by, updated_at FROM configstore_schema ORDER BY key",
        "history": "SELECT index, request_id, command, operation, key, old_value::text, "
        "new_value::text, old_version, new_version, actor, reason, node, idempotency_key, "
        "outcome, error, detail, at FROM configstore_history ORDER BY index, id",
        "idempotency": "SELECT key, fingerprint, request_id, index, outcome, result::text "
        "FROM configstore_idempotency ORDER BY key",
        "applied": "SELECT request_id, slot, outcome, result::text "
        "FROM consensus_applied_request ORDER BY slot, request_id",
        "applied_index": "SELECT applied_index FROM consensus_applied_state",
        "chosen": "SELECT slot FROM consensus_chosen_slot ORDER BY slot",
    }
    with connection.cursor() as cursor:
        state = {}
        for name, sql in queries.items():
            cursor.execute(sql)
            state[name] = cursor.fetchall()
    return state


def make_user(username: str, *perms: str, groups=(), superuser: bool = False) -> User:
    user = User.objects.create_user(username, is_superuser=superuser)  # no password: no hashing
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app, codename=codename)
        )
    for group in groups:
        user.groups.add(group)
    return User.objects.get(pk=user.pk)  # fresh: no permission cache


def make_token(user: User, **fields) -> str:
    """A token for `user` written straight into this test database (set-up, as make_user);
    returns its secret."""
    token_id, secret, key_hash = new_secret()
    ApiToken.objects.create(
        token_id=token_id,
        user=user,
        name=fields.pop("name", "test"),
        key_hash=key_hash,
        created_at=now(),
        created_index=0,
        **fields,
    )
    return secret


def client_for(user: User | None, **token_fields) -> APIClient:
    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {make_token(user, **token_fields)}")
    return client


@pytest.fixture
def users(db) -> dict[str, User]:
    """admin (superuser); reader (view every key); payments (view every key, change and
    delete under payments/); nobody (signed in, no rights)."""
    payments = Group.objects.create(name="payments-team")
    payments.permissions.add(
        Permission.objects.get(content_type__app_label="configstore", codename="view_entry")
    )
    PrefixPermission.objects.create(
        group=payments, prefix="payments/", can_change=True, can_delete=True
    )
    return {
        "admin": make_user("admin", superuser=True),
        "reader": make_user("reader", "configstore.view_entry"),
        "payments": make_user("pay", groups=[payments]),
        "nobody": make_user("nobody"),
    }


@pytest.fixture
def clients(users) -> dict[str, APIClient]:
    return {name: client_for(user) for name, user in users.items()} | {"anonymous": APIClient()}


def now() -> datetime:
    return datetime.now(UTC)
