"""The error contract on real processes (issue 9, items 8 and 14): a web server whose
PostgreSQL is unreachable or refuses it ("too many connections"), whose broker is down, or
whose node status in Redis is malformed answers JSON 503 with Retry-After (or serves what
it can), never a 500; chunked bodies are refused, not ignored; an unsafe method on an
unknown /api/ path is a JSON 404, not Django's CSRF page; stale reads say how stale they
are. Every case leaves every node's entries, history and log unchanged.

One cluster serves the module; the extra web servers that meet an outage are started
beside it with the node's settings and one setting broken."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import requests

from consensus.runtime import status_key
from devcluster.localcluster import free_ports, stop_groups, web_server_args
from tests.conftest import admin_web_cluster

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def cluster(servers):
    with admin_web_cluster(servers, "configstore-outages-") as cluster:
        yield cluster


def state(cluster) -> dict:
    """Every node's entries, schemas, history and applied index."""
    return {
        node: (
            cluster.query(
                node, "SELECT key, value::text, version FROM configstore_entry ORDER BY key"
            ),
            cluster.query(
                node, "SELECT key, schema::text, version FROM configstore_schema ORDER BY key"
            ),
            cluster.query(
                node,
                "SELECT index, request_id, key, outcome FROM configstore_history ORDER BY index, id",
            ),
            cluster.query(node, "SELECT applied_index FROM consensus_applied_state"),
        )
        for node in cluster.ids
    }


def settled_state(cluster) -> dict:
    """The state once every node has applied everything (it stops changing)."""
    previous = state(cluster)
    for _ in range(50):
        time.sleep(0.2)
        current = state(cluster)
        if current == previous:
            return current
        previous = current
    raise AssertionError("the cluster's state does not settle")


def auth(cluster) -> dict:
    return {"Authorization": f"Token {cluster.api_token}"}


@contextmanager
def web_server(cluster, node: str, **broken):
    """A web server of `node` with some of its settings replaced (e.g. DATABASE_URL)."""
    (port,) = free_ports(1)
    # A request waits at most the pool's timeout for a connection before its 503: shortened
    # here so the dozens of requests of an outage test do not take 5 s each.
    broken = {"CONFIGSTORE_DB_POOL_TIMEOUT_MS": "1000", **broken}
    log = open(cluster.data_dir / "logs" / f"web-{node}-broken-{port}.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", *web_server_args("127.0.0.1", port)],
        cwd=ROOT, env={**os.environ, **cluster.env(node), **broken}, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"the web server exited: see {log.name}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the web server did not start"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
        assert process.poll() is None, "the web server died"
    finally:
        stop_groups([process])


def every_endpoint(key: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", f"/api/v1/keys/{key}", None),
        ("GET", f"/api/v1/keys/{key}?consistency=stale", None),
        ("GET", "/api/v1/keys/?consistency=stale", None),
        ("PUT", f"/api/v1/keys/{key}", {"value": 1}),
        ("DELETE", f"/api/v1/keys/{key}", None),
        ("POST", "/api/v1/txn", {"ops": [{"op": "put", "key": key, "value": 2}]}),
        ("GET", "/api/v1/history/?consistency=stale", None),
        ("GET", "/api/v1/watch/?timeout=0", None),
        ("GET", "/api/v1/schemas/?consistency=stale", None),
        ("GET", f"/api/v1/schemas/{key}?consistency=stale", None),
        ("PUT", f"/api/v1/schemas/{key}/", {"schema": {}}),
        ("GET", "/api/v1/cluster/", None),
        ("GET", "/api/v1/requests/some-request", None),
    ]


def assert_unavailable(answer: requests.Response, code: str) -> None:
    assert answer.status_code == 503, (answer.request.method, answer.url, answer.text[:300])
    assert answer.headers["Retry-After"] == "1"
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert body["error"] == code and body["detail"], body


def test_postgresql_unreachable_is_a_json_503_with_retry_after_on_every_endpoint(cluster):
    (dead,) = free_ports(1)
    before = settled_state(cluster)
    with web_server(cluster, "n1", DATABASE_URL=f"postgresql://postgres@127.0.0.1:{dead}/x") as url:
        for method, path, body in every_endpoint("outage/db"):
            answer = requests.request(
                method, url + path, json=body, headers=auth(cluster), timeout=30
            )
            assert_unavailable(answer, "database_unavailable")
        health = requests.get(url + "/healthz", timeout=30)
        assert (health.status_code, health.json()["database"]) == (503, False)
    assert settled_state(cluster) == before


def test_postgresql_refusing_connections_is_a_json_503_not_a_500(cluster):
    """ "Too many connections" (here: for a role limited to none, the same refusal at
    connect as a server out of connections)."""
    role = f"cs_limited_{secrets.token_hex(3)}"
    with psycopg.connect(cluster.database_url("n1"), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    url = cluster.database_url("n1").replace("postgres@", f"{role}@", 1)
    assert f"{role}@" in url
    before = settled_state(cluster)
    with web_server(cluster, "n1", DATABASE_URL=url) as web:
        for method, path, body in every_endpoint("outage/limit"):
            answer = requests.request(
                method, web + path, json=body, headers=auth(cluster), timeout=30
            )
            assert_unavailable(answer, "database_unavailable")
            # The bounded pool (configstore.settings) connects in the background: a request
            # learns that it got no connection within the pool's timeout, not why.
            assert "cannot use its database" in answer.json()["detail"]
    assert settled_state(cluster) == before


def test_the_broker_unreachable_is_a_json_503_with_retry_after(cluster):
    (dead,) = free_ports(1)
    broker = f"redis://127.0.0.1:{dead}/0"
    peers = cluster.peers().replace(cluster.broker_url("n1"), broker)
    before = settled_state(cluster)
    with web_server(cluster, "n1", CELERY_BROKER_URL=broker, CONFIGSTORE_PEERS=peers) as url:
        for method, path in [("PUT", "/api/v1/keys/outage/broker"), ("GET", "/api/v1/keys/x")]:
            answer = requests.request(
                method, url + path, json={"value": 1}, headers=auth(cluster), timeout=30
            )
            assert answer.status_code == 503, answer.text[:300]
            assert answer.headers["Retry-After"] == "1" and answer.json()["error"]
    assert settled_state(cluster) == before


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\xffgarbage", b"[]", b'"just a string"', b'{"time": "now"}', b"[" * 100_000],
)
def test_a_malformed_node_status_is_an_unknown_status_not_a_500(cluster, garbage):
    import redis

    assert requests.put(
        cluster.web_url("n2") + "/api/v1/keys/status/k",
        json={"value": 0},
        headers=auth(cluster),
        timeout=30,
    ).status_code in (200, 201)
    before = settled_state(cluster)
    broker = redis.Redis.from_url(cluster.broker_url("n1"))
    cluster.pause_worker("n1")  # so that it does not publish a good status over ours
    try:
        broker.set(status_key("n1"), garbage, ex=30)
        n1 = cluster.web_url("n1")
        health = requests.get(n1 + "/healthz", timeout=30)
        assert (health.status_code, health.json()["quorum"]) == (503, False)
        write = requests.put(
            n1 + "/api/v1/keys/status/k", json={"value": 1}, headers=auth(cluster), timeout=30
        )
        assert (write.status_code, write.json()["error"]) == (503, "no_quorum")
        read = requests.get(n1 + "/api/v1/keys/status/k", headers=auth(cluster), timeout=30)
        assert read.status_code == 503 and read.json()["error"]
        stale = requests.get(
            n1 + "/api/v1/keys/status/k?consistency=stale", headers=auth(cluster), timeout=30
        )
        assert (stale.status_code, stale.json()["value"]) == (200, 0)
        assert "X-Configstore-Leader-Contact-Age-Ms" not in stale.headers  # unknown
        for node in cluster.ids:  # every node reads n1's status for the cluster view
            view = requests.get(
                cluster.web_url(node) + "/api/v1/cluster/", headers=auth(cluster), timeout=30
            )
            assert view.status_code == 200, view.text[:300]
            assert {n["node_id"]: n["reachable"] for n in view.json()["nodes"]}["n1"] is False
    finally:
        broker.delete(status_key("n1"))
        cluster.resume_worker("n1")
    cluster.wait_until_ready()
    cluster.wait_until_serving()
    assert settled_state(cluster) == before


def test_a_chunked_body_is_read_whole_never_ignored(cluster):
    """The web server reads a chunked body whole before Django runs (configstore.asgi): a
    chunked PUT writes the value it carries, and a chunked DELETE keeps its reason. (Under a
    server that hands Django a chunked body it cannot read, the API refuses it with 411:
    tests/configstore/test_api_contract.py.)"""
    key_url = cluster.web_url("n1") + "/api/v1/keys/chunked/k"
    assert requests.put(key_url, json={"value": "kept"}, headers=auth(cluster), timeout=30).ok
    headers = {**auth(cluster), "Content-Type": "application/json"}
    put = requests.put(
        key_url, data=iter([b'{"value": ', b'"new", "reason": "chunked"}']), headers=headers,
        timeout=30,
    )  # fmt: skip
    assert put.status_code == 200, put.text[:300]
    assert requests.get(key_url, headers=auth(cluster), timeout=30).json()["value"] == "new"
    delete = requests.delete(
        key_url, data=iter([b'{"reason": ', b'"not lost"}']), headers=headers, timeout=30
    )
    assert delete.status_code == 204, delete.text[:300]
    history = requests.get(
        cluster.web_url("n1") + "/api/v1/history/",
        params={"key": "chunked/k"},
        headers=auth(cluster),
        timeout=30,
    ).json()
    rows = history["results"] if isinstance(history, dict) else history
    reasons = {(row["operation"], row["reason"]) for row in rows}
    assert {("put", "chunked"), ("delete", "not lost")} <= reasons, rows


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_an_unsafe_method_on_an_unknown_api_path_is_a_json_404(cluster, method):
    answer = requests.request(
        method, cluster.web_url("n3") + "/api/v1/no/such/thing", data=b"x", timeout=30
    )
    assert answer.status_code == 404, answer.text[:300]
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json()["error"] == "not_found"


def test_a_stale_read_says_how_far_behind_the_node_may_be(cluster):
    key = "stale/k"
    write = requests.put(
        cluster.web_url("n1") + f"/api/v1/keys/{key}",
        json={"value": 1},
        headers=auth(cluster),
        timeout=30,
    )
    assert write.ok, write.text[:300]
    time.sleep(1)  # every worker has published a status since
    for node in cluster.ids:
        for path in (f"/api/v1/keys/{key}", "/api/v1/keys/", "/api/v1/history/"):
            stale = requests.get(
                cluster.web_url(node) + path + "?consistency=stale",
                headers=auth(cluster),
                timeout=30,
            )
            assert stale.status_code == 200, stale.text[:300]
            applied = int(stale.headers["X-Configstore-Index"])
            committed = int(stale.headers["X-Configstore-Commit-Index"])
            age = int(stale.headers["X-Configstore-Leader-Contact-Age-Ms"])
            assert committed >= int(write.headers["X-Configstore-Index"]), (node, path)
            assert applied >= 1 and committed >= 1
            assert 0 <= age < 3000, (node, age)
        linearizable = requests.get(
            cluster.web_url(node) + f"/api/v1/keys/{key}", headers=auth(cluster), timeout=30
        )
        assert "X-Configstore-Leader-Contact-Age-Ms" not in linearizable.headers
