"""Backup and disaster recovery on real clusters: `manage.py snapshot save` from a running
node of one cluster, `manage.py snapshot restore` into every empty database of a brand-new
cluster before it starts; the new cluster serves the same entries, holds the same history
byte for byte, authenticates the same tokens and goes on from the snapshot's index. A
damaged or cut file is refused and changes nothing.

One module fixture: the source cluster runs, is saved and stops (clusters of a session
share database names), then the restored cluster starts and serves every test."""

from __future__ import annotations

import gzip
import hashlib
import json

import psycopg
import pytest
import requests

from tests.conftest import start_cluster, stop_cluster
from tests.runtime.test_cluster import wait_converged

pytestmark = pytest.mark.cluster

#: Every replicated table of the product as (table, order, columns left out: each node's
#: own serial ids): equal digests, equal rows.
STATE = {
    "configstore_entry": ('key COLLATE "C"', ()),
    "configstore_schema": ('key COLLATE "C"', ()),
    "configstore_idempotency": ('key COLLATE "C"', ()),
    "configstore_history": ("index, id", ("id",)),
    "configstore_access_history": ("index, id", ("id",)),
    "auth_user": ('username COLLATE "C"', ("id",)),
    "configstore_api_token": ('token_id COLLATE "C"', ("user_id",)),
}


def digests(cluster, node: str) -> dict[str, str]:
    """sha256 over each STATE table's rows in order, each as PostgreSQL's text of a ROW of
    its columns (a SQL NULL and a JSON null differ there), timestamps in UTC."""
    found = {}
    with psycopg.connect(cluster.database_url(node), autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        for table, (order, without) in STATE.items():
            columns = [
                c
                for (c,) in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                    "ORDER BY ordinal_position",
                    [table],
                )
                if c not in without
            ]
            row = ", ".join(f't."{c}"' for c in columns)
            rows = conn.execute(f"SELECT ROW({row})::text FROM {table} t ORDER BY {order}")
            text = "".join(r + "\n" for (r,) in rows)
            found[table] = hashlib.sha256(text.encode()).hexdigest()
    return found


def applied_index(cluster, node: str) -> int:
    return cluster.query(node, "SELECT applied_index FROM consensus_applied_state")[0][0]


def call(cluster, node, token, method, path, body=None, **headers):
    return requests.request(
        method,
        cluster.web_url(node) + path,
        json=body,
        headers={"Authorization": f"Token {token}", **headers},
        timeout=60,
    )


def _write_state(cluster, token: str) -> int:
    """Entries, a schema, a txn, a delete, a rejected write, an idempotent write, a group
    with a prefix permission, a user in it with a token: every kind of replicated row."""
    assert (
        call(
            cluster, "n1", token, "PUT", "/api/v1/schemas/app/", {"schema": {"type": "integer"}}
        ).status_code
        == 201
    )
    for i in range(20):
        node = cluster.ids[i % 3]
        answer = call(cluster, node, token, "PUT", f"/api/v1/keys/app/k{i}", {"value": i})
        assert answer.status_code == 201, answer.text
    assert (
        call(cluster, "n2", token, "PUT", "/api/v1/keys/app/k0", {"value": "x"}).status_code == 422
    )
    txn = {
        "ops": [
            {"op": "put", "key": "cfg/a", "value": {"x": [1, 2.5, "é"]}},
            {"op": "put", "key": "cfg/b", "value": None},
            {"op": "delete", "key": "app/k19"},
        ]
    }
    assert call(cluster, "n3", token, "POST", "/api/v1/txn", txn).status_code == 200
    keyed = call(
        cluster,
        "n1",
        token,
        "PUT",
        "/api/v1/keys/cfg/c",
        {"value": 3},
        **{"Idempotency-Key": "snap-1"},
    )
    assert keyed.status_code == 201, keyed.text
    cluster.manage(
        "n1",
        "access",
        "group",
        "readers",
        "--prefix",
        "cfg/=view,change",
    )
    return keyed.json()["modified_index"]


@pytest.fixture(scope="module")
def restored(servers, tmp_path_factory):
    folder = tmp_path_factory.mktemp("snapshot")
    source = start_cluster(servers, prefix="configstore-snap-source-", web=True)
    try:
        source.ensure_admin()
        admin_token = source.api_token
        keyed_index = _write_state(source, admin_token)
        alice_token = source.add_user("alice", "--group", "readers")
        index = wait_converged(source)
        files = {n: folder / f"{n}.snapshot" for n in ("n1", "n2")}
        for node, path in files.items():
            out = source.manage(node, "snapshot", "save", str(path))
            assert f"at applied index {index}" in out, out
        assert wait_converged(source) == index  # nothing applied meanwhile: same index
        expected = {n: digests(source, n) for n in source.ids}
        entries = call(source, "n1", admin_token, "GET", "/api/v1/keys/?prefix=").json()
    finally:
        stop_cluster(source)

    good = files["n1"].read_bytes()
    damaged = folder / "damaged.snapshot"
    data = bytearray(gzip.decompress(good))
    at = data.rindex(b'"app/k1"')  # a byte inside the entries' rows: only the sha256 sees it
    data[at + 2] = ord("2") if data[at + 2] != ord("2") else ord("3")
    damaged.write_bytes(gzip.compress(bytes(data)))
    cut = folder / "cut.snapshot"
    cut.write_bytes(good[: len(good) * 2 // 3])
    refusals = {}

    def restore(cluster) -> None:
        for node in cluster.ids:
            cluster.manage(node, "snapshot", "restore", str(files["n1"]), as_owner=True)
        before = digests(cluster, "n1"), applied_index(cluster, "n1")
        for bad in (damaged, cut):
            try:
                cluster.manage("n1", "snapshot", "restore", "--replace", str(bad), as_owner=True)
            except RuntimeError as error:
                refusals[bad.name] = str(error)
        refusals["unchanged"] = (digests(cluster, "n1"), applied_index(cluster, "n1")) == before
        try:  # without --replace, a database that has applied slots is refused
            cluster.manage("n2", "snapshot", "restore", str(files["n1"]), as_owner=True)
        except RuntimeError as error:
            refusals["not empty"] = str(error)

    target = start_cluster(
        servers, prefix="configstore-snap-target-", web=True, before_start=restore
    )
    try:
        yield {
            "cluster": target,
            "index": index,
            "files": files,
            "expected": expected,
            "entries": entries,
            "admin": admin_token,
            "alice": alice_token,
            "refusals": refusals,
            "keyed_index": keyed_index,
        }
    finally:
        stop_cluster(target)


def test_two_nodes_at_one_index_write_identical_sections(restored):
    headers = {}
    for node, path in restored["files"].items():
        with gzip.open(path) as f:
            headers[node] = json.loads(f.readline())
    n1, n2 = headers["n1"], headers["n2"]
    assert (n1["node"], n2["node"]) == ("n1", "n2")
    assert n1["applied_index"] == n2["applied_index"] == restored["index"]
    assert n1["sections"] == n2["sections"]
    rows = {s["name"]: s["rows"] for s in n1["sections"]}
    assert rows["configstore_entry"] == 22 and rows["configstore_api_token"] == 2
    # 20 puts, 3 ops of a txn, an idempotent put, a schema (a value it refuses is refused
    # before it is submitted); 28 commands with the access ones
    assert rows["configstore_history"] == 25 and rows["applied_requests"] == 28


def test_the_restored_cluster_holds_the_same_state_byte_for_byte(restored):
    target, expected = restored["cluster"], restored["expected"]
    assert expected["n1"] == expected["n2"] == expected["n3"]  # the source agreed with itself
    for node in target.ids:
        assert digests(target, node) == expected["n1"], node


def test_the_restored_cluster_serves_the_same_entries_and_tokens(restored):
    target = restored["cluster"]
    for node in target.ids:
        listed = call(target, node, restored["admin"], "GET", "/api/v1/keys/?prefix=")
        assert listed.status_code == 200, listed.text
        assert listed.json()["results"] == restored["entries"]["results"]
        assert len(listed.json()["results"]) == 22
    # alice's group may read cfg/ only: her restored token and rights hold
    assert call(target, "n2", restored["alice"], "GET", "/api/v1/keys/cfg/a").json()["value"] == {
        "x": [1, 2.5, "é"]
    }
    assert call(target, "n2", restored["alice"], "GET", "/api/v1/keys/app/k1").status_code == 403


def test_the_restored_cluster_goes_on_from_the_snapshots_index(restored):
    target, index = restored["cluster"], restored["index"]
    written = call(
        target, "n3", restored["admin"], "PUT", "/api/v1/keys/after/restore", {"value": 1}
    )
    assert written.status_code == 201, written.text
    assert written.json()["modified_index"] > index
    # the idempotency record came along: the same key and body is a replay, not a new write
    replay = call(
        target,
        "n2",
        restored["admin"],
        "PUT",
        "/api/v1/keys/cfg/c",
        {"value": 3},
        **{"Idempotency-Key": "snap-1"},
    )
    assert replay.status_code == 201, replay.text
    assert (replay.json()["version"], replay.json()["modified_index"]) == (
        1,
        restored["keyed_index"],
    )
    top = wait_converged(target)
    for node in target.ids:
        assert target.query(
            node,
            "SELECT count(*) FILTER (WHERE key = 'after/restore'), "
            "count(*) FILTER (WHERE key = 'cfg/c') FROM configstore_history",
        ) == [(1, 1)]
        assert target.query(node, "SELECT min(slot) FROM consensus_chosen_slot") == [(index + 1,)]
        assert applied_index(target, node) == top


def test_a_damaged_or_cut_file_is_refused_and_changes_nothing(restored):
    refusals = restored["refusals"]
    assert "checksum mismatch" in refusals["damaged.snapshot"]
    assert "cut short" in refusals["cut.snapshot"]
    assert refusals["unchanged"] is True
    assert f"has applied up to index {restored['index']}" in refusals["not empty"]


def _history_count(cluster) -> int:
    return cluster.query("n1", "SELECT count(*) FROM configstore_history")[0][0]


def test_export_and_import_a_prefix_as_one_txn_with_a_dry_run_diff(restored, tmp_path):
    target = restored["cluster"]
    exported = json.loads(target.manage("n2", "export", "cfg/"))
    assert exported == {"cfg/a": {"x": [1, 2.5, "é"]}, "cfg/b": None, "cfg/c": 3}
    wanted = tmp_path / "wanted.json"
    wanted.write_text(json.dumps({"cfg/a": 1, "cfg/c": 3, "cfg/d": [4]}))
    before = _history_count(target)
    dry = target.manage("n3", "import", str(wanted), "--prefix", "cfg/", "--dry-run")
    assert dry.splitlines() == [
        '~ cfg/a: {"x": [1, 2.5, "é"]} -> 1',
        "- cfg/b: null",
        "+ cfg/d: [4]",
        "dry run: 3 changes, nothing applied",
    ]
    assert _history_count(target) == before
    # a value the schema of app/ refuses: the whole import is refused, nothing applied
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"app/k1": "not an integer", "app/k2": 2}))
    with pytest.raises(RuntimeError, match="nothing applied"):
        target.manage("n3", "import", str(bad), "--prefix", "app/k")
    assert _history_count(target) == before
    assert json.loads(target.manage("n3", "export", "app/k"))["app/k1"] == 1
    done = target.manage("n3", "import", str(wanted), "--prefix", "cfg/", "--reason", "r")
    index = int(done.split("at log index ")[1])
    assert json.loads(target.manage("n1", "export", "cfg/")) == json.loads(wanted.read_text())
    rows = target.query(
        "n1",
        "SELECT count(*), min(index), max(index), min(reason) FROM configstore_history "
        "WHERE command = 'txn' AND index = %s",
        [index],
    )
    assert rows == [(3, index, index, "r")]
