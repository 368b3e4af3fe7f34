"""The Python client (clients/python) against a real 3-node cluster with web servers:
every call, the API's errors as its exceptions, writes applied once under retries, calls
and watches that move on to another node when one's web server is killed, missing nothing.
"""

from __future__ import annotations

import secrets
import threading
import time

import pytest
from configstore_client import (
    Client,
    Conflict,
    InvalidRequest,
    NotConfirmed,
    NotFound,
    Unauthorized,
    Unavailable,
    VersionConflict,
)

from tests.conftest import start_cluster, stop_cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(servers):
    cluster = start_cluster(servers, prefix="configstore-client-", web=True)
    try:
        cluster.ensure_admin()
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture
def client(cluster):
    with Client([cluster.web_url(n) for n in cluster.ids], cluster.api_token, retries=6) as c:
        yield c


def unique(prefix: str) -> str:
    return f"{prefix}/{secrets.token_hex(4)}"


def test_every_call_and_the_errors_a_caller_acts_on(client, cluster):
    key = unique("svc") + "/timeout_ms"
    created = client.create(key, 250, reason="first", description="ms")
    assert (created.value, created.version, created.description) == (250, 1, "ms")
    assert created.index > 0
    assert client.get(key).value == 250
    assert client.get(key, consistency="stale").version == 1
    moved = client.cas(key, 300, expected_version=1)
    with pytest.raises(VersionConflict) as conflict:
        client.cas(key, 400, expected_version=1)
    assert conflict.value.current_version == 2 and conflict.value.status == 412
    with pytest.raises(VersionConflict):
        client.create(key, 1)
    prefix = key.rsplit("/", 1)[0] + "/"
    client.put(prefix + "retries", 3)
    listing = client.list(prefix)
    assert {e.key: e.value for e in listing.entries} == {key: 300, prefix + "retries": 3}
    done = client.txn(
        [
            {"op": "put", "key": prefix + "a", "value": 1},
            {"op": "delete", "key": prefix + "retries"},
        ],
        checks=[{"key": key, "version": moved.version}],
    )
    assert [r["op"] for r in done["results"]] == ["put", "delete"]
    with pytest.raises(Conflict) as failed:
        client.txn(
            [{"op": "put", "key": prefix + "b", "value": 1}], checks=[{"key": key, "version": 9}]
        )
    assert failed.value.code == "txn_failed"
    index = client.delete(prefix + "a", reason="gone")
    assert index > moved.index
    with pytest.raises(NotFound):
        client.get(prefix + "a")
    with pytest.raises(InvalidRequest):
        client.put("/not a key", 1)
    rows = client.history(key=key)
    assert [r["new_version"] for r in rows if r["outcome"] == "committed"] == [1, 2]
    assert client.cluster()["agreed_leader"] is True
    stranger = Client([cluster.web_url("n2")], "not-a-token", retries=0)
    with stranger, pytest.raises(Unauthorized):
        stranger.get(key)


def test_lists_and_history_page_through_every_row_once_while_writes_happen(client):
    prefix = unique("paged") + "/"
    keys = [f"{prefix}k{i:04}" for i in range(1200)]
    client.txn([{"op": "put", "key": key, "value": i} for i, key in enumerate(keys)])
    listed = []
    for n, entry in enumerate(client.iter_entries(prefix, page_size=500)):
        listed.append(entry.key)
        if n % 500 == 499:  # between two pages: a key behind the cursor, one ahead
            client.put(f"{prefix}a{n}", n)
            client.put(f"{prefix}z{n}", n)
    assert listed == keys + [f"{prefix}z499", f"{prefix}z999"]

    # The txn's 1,200 rows share one log index: pages cut inside it, on (index, id).
    rows = []
    for n, row in enumerate(client.iter_history(prefix=prefix, page_size=500)):
        rows.append((row["index"], row["key"]))
        if n % 500 == 499:  # between two pages: a write, at the history's end
            client.put(f"{prefix}h{n}", n)
    puts = ["a499", "z499", "a999", "z999", "h499", "h999"]
    assert [key for _, key in rows] == keys + [prefix + name for name in puts]
    assert len({index for index, _ in rows[:1200]}) == 1
    assert [index for index, _ in rows] == sorted(index for index, _ in rows)


def test_a_retried_write_is_applied_once(client, cluster):
    key = unique("once")
    first = client.put(key, {"n": 1}, idempotency_key="deploy-42")
    again = client.put(key, {"n": 1}, idempotency_key="deploy-42")
    assert (again.version, again.index) == (first.version, first.index)
    rows = cluster.query("n1", "SELECT count(*) FROM configstore_history WHERE key = %s", [key])
    assert rows == [(1,)]


def test_a_write_not_confirmed_in_time_is_looked_up_then_retried_once(client, cluster):
    """n1 takes a write while the other two workers are stopped: 503 not_confirmed naming
    the request. Once they run again the write commits; `request_outcome` finds it, and the
    write retried with its Idempotency-Key is answered as that commit, with no second row."""
    key = unique("unconfirmed")
    lone = Client([cluster.web_url("n1")], cluster.api_token, retries=0, timeout=30)
    for node in ("n2", "n3"):
        cluster.pause_worker(node)
    try:
        with lone, pytest.raises(NotConfirmed) as unconfirmed:
            lone.put(key, 7, idempotency_key="deploy-43")
    finally:
        for node in ("n2", "n3"):
            cluster.resume_worker(node)
    request_id = unconfirmed.value.request_id
    assert request_id, unconfirmed.value.body
    deadline = time.monotonic() + 30
    while (outcome := client.request_outcome(request_id)) is None:
        assert time.monotonic() < deadline, f"{request_id} never applied"
        time.sleep(0.1)
    assert outcome["outcome"] == "committed", outcome
    again = client.put(key, 7, idempotency_key="deploy-43")
    assert (again.version, again.index) == (1, outcome["index"])
    rows = cluster.query("n1", "SELECT count(*) FROM configstore_history WHERE key = %s", [key])
    assert rows == [(1,)]


def test_calls_and_a_watch_move_on_when_a_node_dies_and_miss_nothing(client, cluster):
    """A watch follows a prefix while 200 writes go on and n1's web server (the first the
    client asks) is killed and restarted: the changes it yields are exactly the history's,
    in log order."""
    prefix = unique("watched") + "/"
    start = client.put(prefix + "start", 0).index
    seen: list[dict] = []
    done = threading.Event()

    def follow() -> None:
        with Client([cluster.web_url(n) for n in cluster.ids], cluster.api_token, retries=20) as w:
            for event in w.watch(prefix, since_index=start):
                seen.append(event)
                if len(seen) == 200:
                    done.set()
                    return

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    for n in range(200):
        if n == 60:
            cluster.kill_web("n1")
        if n == 140:
            cluster.start_web("n1")
        client.put(prefix + f"k{n % 7}", n)
    assert done.wait(60), f"the watch saw {len(seen)} of 200 changes"
    history = [
        (r["index"], r["key"], r["new_value"])
        for r in client.history(prefix=prefix, since_index=start)
        if r["outcome"] == "committed"
    ]
    assert [(e["index"], e["key"], e["new_value"]) for e in seen] == history


def test_no_node_reachable_is_unavailable(cluster):
    nowhere = Client(["http://127.0.0.1:1", "http://127.0.0.1:2"], "t", retries=2, backoff=0.01)
    with nowhere, pytest.raises(Unavailable):
        nowhere.get("any/key")
