"""Snapshots in one process, on the test database (configstore.snapshot): what save writes,
that restore brings back exactly what was saved, and that a bad file changes nothing. The
same on real clusters, between two of them: test_snapshot_cluster.py."""

from __future__ import annotations

import gzip
import io
import json

import pytest
from django.db import connection

from configstore import snapshot
from configstore.statemachine import apply_commands
from consensus import storage
from consensus.paxos import Command, Value
from tests.configstore.conftest import payload, replicated_state
from tests.configstore.test_identity import HASH, PASSWORD_HASH, access

# save() opens its own repeatable-read transaction: not inside a test's transaction.
pytestmark = pytest.mark.django_db(transaction=True)

IDENTITIES = {
    "users": "SELECT username, password, is_superuser, is_staff, is_active, email, "
    "date_joined, last_login FROM auth_user ORDER BY username",
    "groups": "SELECT g.name, u.username FROM auth_user_groups ug JOIN auth_user u ON "
    "u.id = ug.user_id JOIN auth_group g ON g.id = ug.group_id ORDER BY 1, 2",
    "permissions": "SELECT g.name, p.codename FROM auth_group_permissions gp JOIN auth_group g "
    "ON g.id = gp.group_id JOIN auth_permission p ON p.id = gp.permission_id ORDER BY 1, 2",
    "prefixes": "SELECT g.name, pp.prefix, pp.can_view, pp.can_change, pp.can_delete FROM "
    "configstore_prefix_permission pp JOIN auth_group g ON g.id = pp.group_id ORDER BY 1, 2",
    "tokens": "SELECT t.token_id, u.username, t.key_hash, t.scope, t.prefix, t.expires_at, "
    "t.created_at, t.created_index FROM configstore_api_token t JOIN auth_user u ON "
    "u.id = t.user_id ORDER BY 1",
    "access_history": "SELECT index, request_id, command, subject, old::text, new::text, actor, "
    "outcome, at FROM configstore_access_history ORDER BY index, id",
}


def state() -> dict:
    """The replicated state, the chosen log left out (a restore leaves it as it is)."""
    found = {k: v for k, v in replicated_state().items() if k != "chosen"}
    with connection.cursor() as cursor:
        for name, sql in IDENTITIES.items():
            cursor.execute(sql)
            found[name] = cursor.fetchall()
    return found


@pytest.fixture
def saved(log) -> tuple[bytes, dict]:
    """A state with a row of every kind (a JSON null value beside SQL NULLs in the
    history, a txn, a rejected write, an idempotency record, identities), saved."""
    log.apply(
        access(
            "put_group",
            name="team",
            permissions=["configstore.view_entry"],
            prefixes=[{"prefix": "a/", "view": True, "change": True, "delete": False}],
        )
    )
    log.apply(access("put_user", username="alice", groups=["team"], password=PASSWORD_HASH))
    log.apply(access("put_token", token_id="tok1", username="alice", name="ci", key_hash=HASH))
    log.apply(payload("put", key="a/null", value=None))
    log.apply(payload("put", key="a/doc", value={"x": [1, 2.5, "é", None]}))
    log.apply(payload("put", key="a/doc", value=2, expected_version=7))  # rejected
    log.apply(
        payload(
            "txn", ops=[{"op": "put", "key": "b/1", "value": 1}, {"op": "delete", "key": "a/doc"}]
        )
    )
    log.apply(payload("put", key="a/keyed", value=1, idempotency_key="alice:k1"))
    out = io.BytesIO()
    info = snapshot.save(out)
    assert info.applied_index == 8
    return out.getvalue(), state()


def restore(data: bytes, **kwargs) -> snapshot.Info:
    return snapshot.restore(io.BytesIO(data), **kwargs)


def sections(data: bytes) -> tuple[dict, list[bytes]]:
    lines = gzip.decompress(data).splitlines(keepends=True)
    return json.loads(lines[0]), lines[1:]


def test_the_header_describes_every_section(saved):
    data, _ = saved
    header, rows = sections(data)
    counts = {s["name"]: s["rows"] for s in header["sections"]}
    assert (header["format"], header["version"], header["applied_index"]) == (
        "configstore-snapshot",
        1,
        8,
    )
    assert counts["configstore_entry"] == 3  # a/null, b/1, a/keyed
    assert counts["configstore_history"] == 6  # 2 puts, 1 rejected, 2 txn ops, 1 keyed put
    assert counts["auth_user"] == counts["configstore_api_token"] == 1
    assert counts["auth_group_permissions"] == counts["configstore_prefix_permission"] == 1
    assert counts["applied_requests"] == 8
    assert sum(counts.values()) == len(rows)


def test_a_restore_brings_back_exactly_what_was_saved(saved, log):
    data, before = saved
    log.apply(payload("put", key="a/later", value=1))
    log.apply(access("delete_user", username="alice"))
    assert state() != before
    done = restore(data, replace=True)
    assert done.applied_index == 8
    assert state() == before
    # The chosen log is kept: the node applies its slots above the index again (9 and 10,
    # the same values every node applies there), then the next; the sequences continue.
    after = Value((Command("after", payload("put", key="a/after", value=1)),))
    assert storage.apply_chosen(apply_commands, "n1", [(11, after)]) == 3
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE key = 'a/later') "
            "FROM configstore_history"
        )
        assert cursor.fetchone() == (8, 8, 1)
        cursor.execute("SELECT count(*) FROM auth_user")
        assert cursor.fetchone() == (0,)


def test_a_restore_without_replace_into_a_database_that_applied_slots_is_refused(saved):
    data, before = saved
    with pytest.raises(snapshot.SnapshotError, match="has applied up to index 8"):
        restore(data)
    assert state() == before


def _damaged(data: bytes) -> bytes:
    header, rows = sections(data)
    at = next(i for i, r in enumerate(rows) if b'"a/null"' in r)
    rows[at] = rows[at].replace(b"[null]", b"[0]")  # still JSON: only the sha256 sees it
    return gzip.compress(b"".join([json.dumps(header).encode() + b"\n", *rows]))


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (_damaged, "configstore_entry: checksum mismatch"),
        (lambda d: d[: len(d) // 2], "cut short"),
        (lambda d: d[:-6] + bytes(b ^ 0xFF for b in d[-6:]), "damaged or cut short"),
        (lambda d: b"not a snapshot at all", "damaged or cut short"),
        (lambda d: gzip.compress(b'{"format": "other"}\n'), "not a configstore snapshot"),
        (
            lambda d: gzip.compress(
                gzip.decompress(d).replace(b'"version": 1', b'"version": 2', 1)
            ),
            "format version 2",
        ),
        (
            lambda d: gzip.compress(gzip.decompress(d) + b'{"extra": 1}\n'),
            "more than its header describes",
        ),
    ],
)
def test_a_bad_file_is_refused_and_changes_nothing(saved, log, bad, error):
    data, _ = saved
    log.apply(payload("put", key="a/later", value=1))
    before = state()
    with pytest.raises(snapshot.SnapshotError, match=error):
        restore(bad(data), replace=True)
    assert state() == before


def test_two_saves_at_one_index_have_identical_sections(saved):
    data, _ = saved
    again = io.BytesIO()
    snapshot.save(again)
    assert sections(again.getvalue())[1] == sections(data)[1]
    assert sections(again.getvalue())[0]["sections"] == sections(data)[0]["sections"]
