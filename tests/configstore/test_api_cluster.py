"""The REST API over HTTP against a real 3-node cluster (PostgreSQL, broker, Celery workers,
granian): every write commits through consensus, every read is served by a real node.

One cluster serves the module (clusters of one session share database names, so two cannot
run at once); the test that takes the quorum away runs last and restores it."""

from __future__ import annotations

import secrets
import threading
import time

import pytest
import requests

from devcluster.localcluster import LocalCluster
from tests.conftest import start_cluster, stop_cluster

pytestmark = pytest.mark.cluster


class Api:
    """One client per node, each with the admin's token (identities are replicated: the
    same token works on every node)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        cluster.ensure_admin()
        self.tokens = dict.fromkeys(cluster.ids, cluster.api_token)

    def url(self, node: str, path: str) -> str:
        return self.cluster.web_url(node) + path

    def call(self, node: str, method: str, path: str, body=None, **headers):
        headers = {"Authorization": f"Token {self.tokens[node]}", **headers}
        return requests.request(
            method, self.url(node, path), json=body, headers=headers, timeout=60
        )

    def get(self, node, path, **headers):
        return self.call(node, "GET", path, **headers)

    def put(self, node, key, value, **headers):
        return self.call(node, "PUT", f"/api/v1/keys/{key}", {"value": value}, **headers)


@pytest.fixture(scope="module")
def api(servers):
    cluster = start_cluster(servers, prefix="configstore-api-", web=True)
    try:
        yield Api(cluster)
    finally:
        stop_cluster(cluster)


def unique(prefix: str) -> str:
    return f"{prefix}/{secrets.token_hex(4)}"


def test_a_write_on_one_node_is_readable_linearizably_on_the_others_at_once(api):
    key = unique("lin")
    for i, writer in enumerate(api.cluster.ids * 2):
        created = api.put(writer, key, {"round": i})
        assert created.status_code == (201 if i == 0 else 200), created.text
        for reader in api.cluster.ids:
            read = api.get(reader, f"/api/v1/keys/{key}")
            assert read.status_code == 200, read.text
            assert read.json()["value"] == {"round": i}
            assert read.json()["version"] == i + 1
            assert int(read.headers["X-Configstore-Index"]) >= created.json()["modified_index"]


def test_put_returns_the_committed_entry_with_its_etag_and_index(api):
    key = unique("put")
    created = api.call(
        "n1", "PUT", f"/api/v1/keys/{key}", {"value": [1], "reason": "r", "description": "d"}
    )
    assert created.status_code == 201
    body = created.json()
    assert (body["value"], body["version"], body["description"], body["updated_by"]) == (
        [1],
        1,
        "d",
        "admin",
    )
    assert created.headers["ETag"] == '"1"'
    assert (
        int(created.headers["X-Configstore-Index"])
        == body["modified_index"]
        == body["created_index"]
    )
    replaced = api.put("n2", key, [2])
    assert replaced.status_code == 200
    assert (replaced.json()["version"], replaced.json()["description"]) == (2, "d")


def test_if_match_is_compare_and_set(api):
    key = unique("cas")
    api.put("n1", key, 1)
    stale = api.put("n2", key, 2, **{"If-Match": '"7"'})
    assert stale.status_code == 412
    assert (stale.json()["error"], stale.json()["current_version"]) == ("version_conflict", 1)
    assert api.get("n3", f"/api/v1/keys/{key}").json()["value"] == 1
    ok = api.put("n3", key, 3, **{"If-Match": '"1"'})
    assert (ok.status_code, ok.json()["version"]) == (200, 2)


def test_if_none_match_star_creates_only(api):
    key = unique("create")
    assert api.put("n1", key, 1, **{"If-None-Match": "*"}).status_code == 201
    again = api.put("n2", key, 2, **{"If-None-Match": "*"})
    assert (again.status_code, again.json()["current_version"]) == (412, 1)


def test_delete_commits_on_every_node(api):
    key = unique("del")
    api.put("n1", key, 1)
    assert api.call("n2", "DELETE", f"/api/v1/keys/{key}", **{"If-Match": '"5"'}).status_code == 412
    deleted = api.call("n2", "DELETE", f"/api/v1/keys/{key}")
    assert deleted.status_code == 204 and int(deleted.headers["X-Configstore-Index"]) > 0
    for node in api.cluster.ids:
        assert api.get(node, f"/api/v1/keys/{key}").status_code == 404
    assert api.call("n3", "DELETE", f"/api/v1/keys/{key}").status_code == 404


def test_a_txn_is_all_or_nothing(api):
    a, b, c = unique("txn"), unique("txn"), unique("txn")
    api.put("n1", a, 1)
    api.put("n1", b, 1)
    done = api.call(
        "n2",
        "POST",
        "/api/v1/txn",
        {
            "checks": [{"key": a, "version": 1}, {"key": c, "version": 0}],
            "ops": [
                {"op": "put", "key": a, "value": 2},
                {"op": "delete", "key": b},
                {"op": "put", "key": c, "value": 3},
            ],
            "reason": "bulk",
        },
    )
    assert done.status_code == 200, done.text
    assert done.json()["results"] == [
        {"op": "put", "key": a, "version": 2},
        {"op": "delete", "key": b, "version": 1},
        {"op": "put", "key": c, "version": 1},
    ]
    failed = api.call(
        "n3",
        "POST",
        "/api/v1/txn",
        {"checks": [{"key": a, "version": 1}], "ops": [{"op": "put", "key": c, "value": 99}]},
    )
    assert failed.status_code == 409
    assert failed.json()["failed"] == [{"key": a, "expected_version": 1, "current_version": 2}]
    assert api.get("n1", f"/api/v1/keys/{c}").json()["value"] == 3


def test_a_retried_request_with_the_same_idempotency_key_is_applied_once(api):
    key = unique("idem")
    idem = {"Idempotency-Key": secrets.token_hex(8)}
    first = api.put("n1", key, {"n": 1}, **idem)
    retry = api.put("n1", key, {"n": 1}, **idem)
    assert (first.status_code, retry.status_code) == (201, 201)
    assert first.json() == retry.json()
    history = api.get("n2", f"/api/v1/history/?key={key}").json()
    assert [row["new_version"] for row in history["results"]] == [1]
    reused = api.put("n1", key, {"n": 2}, **idem)
    assert (reused.status_code, reused.json()["error"]) == (409, "idempotency_key_reused")


def test_a_long_poll_on_node_3_returns_within_100_ms_of_a_commit_on_node_1(api):
    key = unique("watch")
    index = api.put("n1", key, 0).json()["modified_index"]
    for i in range(1, 4):
        result = {}

        def poll(result=result, index=index):
            response = api.get("n3", f"/api/v1/keys/{key}?wait_index={index}&timeout=30")
            result["at"], result["response"] = time.monotonic(), response

        thread = threading.Thread(target=poll)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive()
        write_started = time.monotonic()
        written = api.put("n1", key, i)
        write_answered = time.monotonic()
        thread.join(30)
        assert result["response"].json()["value"] == i
        # Woken by this write: not before it was sent, and within 100 ms of its answer (the
        # commit lies between the two; the poll may well answer before the writer hears).
        assert write_started < result["at"] < write_answered + 0.1, (
            result["at"] - write_started,
            write_answered - write_started,
        )
        index = written.json()["modified_index"]


def test_a_watch_on_one_node_sees_commits_made_on_another(api):
    prefix = unique("w") + "/"
    since = int(api.get("n2", "/api/v1/keys/?consistency=stale").headers["X-Configstore-Index"])
    result = {}

    def watch():
        result["response"] = api.get(
            "n2", f"/api/v1/watch/?prefix={prefix}&since_index={since}&timeout=30"
        )

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.3)
    api.put("n1", prefix + "x", 1)
    thread.join(30)
    body = result["response"].json()
    assert [(e["key"], e["new_value"], e["outcome"]) for e in body["events"]] == [
        (prefix + "x", 1, "committed")
    ]


def test_every_node_holds_the_same_history(api):
    key = unique("hist")
    api.put("n1", key, 1)
    api.put("n2", key, 2, **{"If-Match": '"9"'})  # rejected: recorded too
    api.call("n3", "DELETE", f"/api/v1/keys/{key}")
    histories = [
        api.get(node, f"/api/v1/history/?key={key}").json()["results"] for node in api.cluster.ids
    ]
    assert histories[0] == histories[1] == histories[2]
    assert [(r["operation"], r["outcome"], r["node"]) for r in histories[0]] == [
        ("put", "committed", "n1"),
        ("put", "rejected", "n2"),
        ("delete", "committed", "n3"),
    ]
    csv = requests.get(
        api.url("n2", f"/api/v1/history/?key={key}&format=csv"),
        headers={"Authorization": f"Token {api.tokens['n2']}"},
        timeout=30,
    )
    assert csv.headers["Content-Type"].startswith("text/csv") and len(csv.text.splitlines()) == 4


def test_schemas_commit_through_the_log_and_hold_on_every_node(api):
    ns = unique("schema") + "/"
    attached = api.call(
        "n1", "PUT", f"/api/v1/schemas/{ns}", {"schema": {"type": "integer", "minimum": 0}}
    )
    assert attached.status_code == 201, attached.text
    refused = api.put("n3", ns + "x", -1)
    assert (refused.status_code, refused.json()["error"], refused.json()["path"]) == (
        422,
        "schema_violation",
        "$",
    )
    assert api.put("n2", ns + "x", 5).status_code == 201


def test_health_and_cluster_state(api):
    for node in api.cluster.ids:
        health = requests.get(api.url(node, "/healthz"), timeout=10)
        assert health.status_code == 200 and health.json()["quorum"] is True
    state = api.get("n2", "/api/v1/cluster/").json()
    assert state["leader"] in api.cluster.ids
    assert [n["node_id"] for n in state["nodes"]] == list(api.cluster.ids)
    assert all(n["reachable"] for n in state["nodes"])


def _replicated_state(cluster, node: str) -> tuple:
    return (
        cluster.query(node, "SELECT key, value::text, version FROM configstore_entry ORDER BY key"),
        cluster.query(node, "SELECT count(*) FROM configstore_history"),
        cluster.query(node, "SELECT coalesce(max(slot), 0) FROM consensus_chosen_slot"),
    )


def _user_without_rights(cluster) -> str:
    """A user with a token and no permission at all, on every node."""
    return cluster.add_user(unique("nobody").replace("/", "-"))


def _settled(api, key: str) -> None:
    """A linearizable read of `key` on every node: each has then applied every slot chosen
    before the read (ReadIndex), so what follows compares settled states, not a race."""
    for node in api.cluster.ids:
        response = api.get(node, f"/api/v1/keys/{key}?consistency=linearizable")
        assert response.status_code == 200, response.text[:200]


def test_bad_requests_over_http_are_refused_and_change_nothing_on_any_node(api):
    cluster = api.cluster
    ns = unique("bad") + "/"
    assert (
        api.call("n1", "PUT", f"/api/v1/schemas/{ns}", {"schema": {"type": "integer"}}).status_code
        == 201
    )
    assert api.put("n2", ns + "k", 1).status_code == 201
    nobody = _user_without_rights(cluster)
    _settled(api, ns + "k")  # every node has applied the setup
    before = {n: _replicated_state(cluster, n) for n in cluster.ids}
    url = f"/api/v1/keys/{ns}k"
    big = "x" * (1024 * 1024 + 10)
    cases = [
        ("n1", "PUT", "/api/v1/keys/bad//key", {"json": {"value": 1}}, {}, 400),
        ("n2", "PUT", url, {"data": "{not json"}, {"Content-Type": "application/json"}, 400),
        ("n3", "PUT", url, {"json": {"reason": "no value"}}, {}, 400),
        ("n1", "PUT", url, {"json": {"value": "not an integer"}}, {}, 422),
        ("n2", "PUT", url, {"json": {"value": 1}}, {"If-Match": "garbage"}, 400),
        ("n3", "PUT", url, {"json": {"value": big}}, {}, 413),
        ("n1", "POST", "/api/v1/txn", {"json": {"ops": "not a list"}}, {}, 400),
    ]
    for node, method, path, body, headers, status in cases:
        answer = requests.request(
            method,
            api.url(node, path),
            headers={"Authorization": f"Token {api.tokens[node]}", **headers},
            timeout=60,
            **body,
        )
        assert answer.status_code == status, (path, headers, answer.text[:200])
        assert set(answer.json()) >= {"error", "detail"}, answer.text[:200]
        if status == 422:
            assert answer.json()["error"] == "schema_violation" and "path" in answer.json()
    unauthenticated = requests.put(api.url("n2", url), json={"value": 2}, timeout=60)
    assert unauthenticated.status_code == 401 and unauthenticated.json()["error"]
    forbidden = requests.put(
        api.url("n3", url),
        json={"value": 2},
        headers={"Authorization": f"Token {nobody}"},
        timeout=60,
    )
    assert forbidden.status_code == 403 and forbidden.json()["error"]
    _settled(api, ns + "k")  # anything those requests had got chosen is applied everywhere
    assert {n: _replicated_state(cluster, n) for n in cluster.ids} == before


def test_without_a_quorum_writes_are_503_and_nothing_commits(api):
    """Runs last: it takes two workers down, then brings them back."""
    cluster = api.cluster
    key = unique("q")
    assert api.put("n1", key, 1).status_code == 201
    cluster.kill_worker("n2")
    cluster.kill_worker("n3")
    try:
        deadline = time.monotonic() + 20
        while requests.get(api.url("n1", "/healthz"), timeout=10).status_code != 503:
            assert time.monotonic() < deadline, "n1 still claims a quorum"
            time.sleep(0.2)
        refused = api.put("n1", key, 2)
        assert (refused.status_code, refused.json()["error"]) == (503, "no_quorum")
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["request_id"] == refused.headers["X-Configstore-Request-Id"]
        read = api.get("n1", f"/api/v1/keys/{key}")  # linearizable: cannot be confirmed
        assert (read.status_code, read.headers["Retry-After"]) == (503, "1")
        stale = api.get("n1", f"/api/v1/keys/{key}?consistency=stale")
        assert (stale.json()["value"], stale.json()["version"]) == (1, 1)
    finally:
        cluster.start_worker("n2")
        cluster.start_worker("n3")
        cluster.wait_until_ready()
    assert api.get("n2", f"/api/v1/keys/{key}").json()["value"] == 1  # nothing else committed
