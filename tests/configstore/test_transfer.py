"""State transfer in one process, on the test database: a live install of a peer's snapshot
(configstore.snapshot.install) as the app role brings a node that is behind to exactly the
snapshot's state, keeps the ids of the users it keeps, and refuses a bad file or a history
that diverged without changing anything; the peer-authenticated endpoints that serve
snapshots in chunks (configstore.transfer). On real clusters: test_transfer_cluster.py."""

from __future__ import annotations

import gzip
import hashlib
import io
import time

import psycopg
import pytest
from django.db import connection
from django.test import Client

from configstore import snapshot, transfer
from configstore.statemachine import apply_commands
from consensus import storage
from consensus.dbroles import APP_ROLE, grant_app_role
from consensus.paxos import Command, Value
from tests.configstore.conftest import payload
from tests.configstore.test_identity import HASH, PASSWORD_HASH, access
from tests.configstore.test_snapshot import state

# save() and install() open their own transactions: not inside a test's transaction.
pytestmark = pytest.mark.django_db(transaction=True)


def save() -> bytes:
    out = io.BytesIO()
    snapshot.save(out)
    return out.getvalue()


def user_id(username: str) -> int | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM auth_user WHERE username = %s", [username])
        row = cursor.fetchone()
    return row[0] if row else None


@pytest.fixture
def as_app_role():
    """Run the test's statements as the app role (row access only, the history append-only),
    as a node's worker does."""
    settings = connection.settings_dict
    with psycopg.connect(
        dbname=settings["NAME"],
        user=settings["USER"],
        host=settings["HOST"],
        port=settings["PORT"],
        autocommit=True,
    ) as conn:
        grant_app_role(conn, APP_ROLE)
    with connection.cursor() as cursor:
        cursor.execute(f"SET ROLE {APP_ROLE}")
    yield
    with connection.cursor() as cursor:
        cursor.execute("RESET ROLE")


@pytest.fixture
def behind(log):
    """(old, new): this database at index 9 (old), and the snapshot of where it went on to
    (new, at 14): a user deleted with her token, one changed, one created, entries and a
    group changed. The database is back at `old` (restored as the owner)."""
    prefixes = [{"prefix": "a/", "view": True, "change": True, "delete": False}]
    log.apply(access("put_group", name="team", prefixes=prefixes))
    log.apply(access("put_user", username="alice", groups=["team"], password=PASSWORD_HASH))
    log.apply(access("put_token", token_id="tok1", username="alice", name="ci", key_hash=HASH))
    log.apply(access("put_user", username="dave", groups=[], password=PASSWORD_HASH))
    log.apply(payload("put", key="a/one", value=1))
    log.apply(payload("put", key="a/two", value={"x": [1, 2.5, "é", None]}))
    log.apply(payload("put", key="a/two", value=3, expected_version=7))  # rejected
    log.apply(payload("put", key="a/keyed", value=1, idempotency_key="alice:k1"))
    log.apply(payload("put", key="b/gone", value=1))
    old = save()
    log.apply(access("delete_user", username="alice"))
    log.apply(access("put_user", username="dave", groups=["team"], password=PASSWORD_HASH))
    log.apply(access("put_user", username="erin", groups=["team"], password=PASSWORD_HASH))
    log.apply(access("put_token", token_id="tok2", username="erin", name="ci", key_hash=HASH))
    ops = [{"op": "put", "key": "c/1", "value": 1}, {"op": "delete", "key": "b/gone"}]
    log.apply(payload("txn", ops=ops))
    new, expected = save(), state()
    snapshot.restore(io.BytesIO(old), replace=True)
    assert state() != expected
    return old, new, expected


@pytest.fixture
def empty(db) -> bytes:
    """The snapshot of the empty database (taken before `behind` applies anything)."""
    return save()


@pytest.fixture
def replaced(empty, behind):
    """`behind`, with the database emptied: a replaced node's, migrated, nothing applied."""
    snapshot.restore(io.BytesIO(empty), replace=True)
    return behind


def test_a_replaced_node_with_an_empty_database_installs_the_whole_state(replaced, as_app_role):
    _, new, expected = replaced
    assert snapshot.install(io.BytesIO(new)).applied_index == 14
    assert state() == expected
    assert gzip.decompress(save()).split(b"\n", 1)[1] == gzip.decompress(new).split(b"\n", 1)[1]


def test_an_install_brings_a_node_that_is_behind_to_the_snapshot_as_the_app_role(
    behind, log, as_app_role
):
    old, new, expected = behind
    dave = user_id("dave")
    info = snapshot.install(io.BytesIO(new))
    assert info is not None and info.applied_index == 14
    assert state() == expected
    # byte for byte: a save now writes the snapshot's sections
    assert gzip.decompress(save()).split(b"\n", 1)[1] == gzip.decompress(new).split(b"\n", 1)[1]
    assert user_id("dave") == dave  # kept users keep their ids (sessions, the admin log)
    assert user_id("alice") is None and user_id("erin") is not None
    with connection.cursor() as cursor:
        cursor.execute("SELECT compacted_through FROM consensus_applied_state")
        assert cursor.fetchone() == (14,)  # the log is compacted through the index
    # and the node goes on from there: slot 15 applies
    after = Value((Command("after", payload("put", key="a/after", value=1)),))
    assert storage.apply_chosen(apply_commands, "n1", [(15, after)]) == 1


def test_an_install_deletes_what_the_node_keeps_of_a_deleted_user(behind, log):
    old, new, expected = behind
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO django_admin_log (action_time, user_id, object_repr, action_flag, "
            "change_message) VALUES (now(), %s, 'x', 1, '')",
            [user_id("alice")],
        )
        cursor.execute("INSERT INTO configstore_token_use VALUES ('tok1', now())")
    assert snapshot.install(io.BytesIO(new)).applied_index == 14
    assert state() == expected
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM django_admin_log")
        assert cursor.fetchone() == (0,)
        cursor.execute("SELECT token_id FROM configstore_token_use")
        assert cursor.fetchall() == []


def test_a_snapshot_not_above_the_applied_index_is_not_installed(behind):
    old, new, _ = behind
    before = state()
    assert snapshot.install(io.BytesIO(old)) is None
    assert state() == before
    snapshot.install(io.BytesIO(new))
    after = state()
    assert snapshot.install(io.BytesIO(new)) is None
    assert state() == after


def _damaged(data: bytes) -> bytes:
    lines = gzip.decompress(data).splitlines(keepends=True)
    at = next(i for i, r in enumerate(lines) if b'"c/1"' in r and b'"operation"' in r)
    lines[at] = lines[at].replace(b'"c/1"', b'"c/2"')
    return gzip.compress(b"".join(lines))


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (_damaged, "configstore_history: checksum mismatch"),
        (lambda d: d[: len(d) * 2 // 3], "cut short"),
        (lambda d: b"not a snapshot", "damaged or cut short"),
    ],
)
def test_a_bad_snapshot_is_refused_and_changes_nothing(behind, bad, error, as_app_role):
    _, new, _ = behind
    before = state()
    with pytest.raises(snapshot.SnapshotError, match=error):
        snapshot.install(io.BytesIO(bad(new)))
    assert state() == before


def test_a_node_whose_history_diverged_refuses_the_install(behind):
    _, new, _ = behind
    with connection.cursor() as cursor:  # past the append-only trigger: as a superuser
        cursor.execute("SET session_replication_role = replica")
        cursor.execute("UPDATE configstore_history SET actor = 'mallory' WHERE index = 5")
        cursor.execute("SET session_replication_role = DEFAULT")
    before = state()
    with pytest.raises(snapshot.SnapshotError, match="differ from the snapshot's"):
        snapshot.install(io.BytesIO(new))
    assert state() == before


# ----------------------------------------------------------------------- the endpoints


def signed(path: str, *, node: str = "n1", now: float | None = None, **headers) -> dict:
    return {transfer.HEADER: transfer.peer_header(node, "GET", path, now=now), **headers}


@pytest.fixture
def served(log, tmp_path, configure):
    configure(snapshot_dir=str(tmp_path))
    log.apply(payload("put", key="a/one", value="x" * 1000))
    return Client()


def _get(client: Client, path: str, headers: dict):
    return client.get(path, headers=headers)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {transfer.HEADER: "n1 1 00"},
        {transfer.HEADER: "garbage"},
        "stale",
        "other path",
        "not a peer",
        "bad mac",
    ],
)
def test_the_endpoints_refuse_anyone_but_a_peer(served, headers, tmp_path):
    path = "/cluster/snapshot?at_least=1"
    if headers == "stale":
        headers = signed(path, now=time.time() - transfer.CLOCK_SKEW - 5)
    elif headers == "other path":
        headers = signed("/cluster/snapshot?at_least=0")
    elif headers == "not a peer":
        headers = signed(path, node="n9")
    elif headers == "bad mac":
        node, at, mac = signed(path)[transfer.HEADER].split(" ")
        headers = {transfer.HEADER: f"{node} {at} {mac[:-1]}{'0' if mac[-1] != '0' else '1'}"}
    answer = _get(served, path, headers)
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthenticated"
    assert list(tmp_path.iterdir()) == []  # no snapshot taken
    chunk = _get(served, "/cluster/snapshot/" + "snapshot-1-" + "0" * 64 + ".gz", {})
    assert chunk.status_code == 401


def test_a_peer_is_offered_a_snapshot_and_fetches_it_in_ranges(served, tmp_path):
    path = "/cluster/snapshot?at_least=1"
    offer = _get(served, path, signed(path)).json()
    assert offer["applied_index"] == 1
    file = tmp_path / offer["name"]
    data = file.read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (offer["bytes"], offer["sha256"])
    # a second ask is answered with the same file; one for more than is applied is refused
    assert _get(served, path, signed(path)).json() == offer
    ahead = "/cluster/snapshot?at_least=2"
    assert _get(served, ahead, signed(ahead)).status_code == 409
    nonsense = "/cluster/snapshot?at_least=x"
    assert _get(served, nonsense, signed(nonsense)).status_code == 400
    chunk = f"/cluster/snapshot/{offer['name']}"
    whole = _get(served, chunk, signed(chunk))
    assert (whole.status_code, whole.content) == (200, data)
    part = served.get(chunk, headers=signed(chunk, Range="bytes=10-"))
    assert part.status_code == 206
    assert part["Content-Range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
    assert part.content == data[10:]
    past = served.get(chunk, headers=signed(chunk, Range=f"bytes={len(data)}-"))
    assert past.status_code == 416
    bad = served.get(chunk, headers=signed(chunk, Range="lines=1-"))
    assert bad.status_code == 400
    for name in ("snapshot-1-" + "0" * 64 + ".gz", "..%2F..%2Fetc%2Fpasswd", ".lock"):
        missing = f"/cluster/snapshot/{name}"
        assert served.get(missing, headers=signed(missing)).status_code == 404


def test_a_download_resumes_from_its_partial_file_and_checks_the_sha256(
    served, tmp_path, monkeypatch
):
    path = "/cluster/snapshot?at_least=1"
    offer = transfer.Kept(**_get(served, path, signed(path)).json())
    data = (tmp_path / offer.name).read_bytes()
    into = tmp_path / "incoming"
    into.write_bytes(data[:100])
    chunks = []

    def fake_get(url, asked, headers=None):
        chunks.append(headers["Range"])
        answer = served.get(asked, headers=signed(asked, **headers))
        return _Answer(answer)

    monkeypatch.setattr(transfer, "_get", fake_get)  # the test client in place of urllib
    transfer.download("http://peer", offer, into)
    assert into.read_bytes() == data
    assert chunks == ["bytes=100-"]
    into.write_bytes(b"x" * offer.bytes)  # the right size, the wrong bytes
    with pytest.raises(transfer.TransferError, match="sha256 differs"):
        transfer.download("http://peer", offer, into)
    assert not into.exists()


class _Answer:
    """A Django test response as urllib's response (status, headers, read)."""

    def __init__(self, response) -> None:
        self.status = response.status_code
        self.headers = {k: v for k, v in response.items()}
        self._body = io.BytesIO(response.content)

    def read(self, size: int = -1) -> bytes:
        return self._body.read(size)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None
