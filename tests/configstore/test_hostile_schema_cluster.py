"""Catastrophic schema patterns on a real 3-node cluster (PostgreSQL, broker, Celery
workers, web servers): neither a schema nor a value can stall a node's applier or its web
threads. With Python's backtracking matcher, ^(a+)+$ against "a" * 40 + "!" takes days: the
workers froze (every write answered 503) and so did the web thread checking the value."""

from __future__ import annotations

import time

import pytest
import requests

from tests.conftest import start_cluster, stop_cluster

pytestmark = pytest.mark.cluster

NEAR_MISS = "a" * 40 + "!"
CATASTROPHIC = {"type": "string", "pattern": "^(a+)+$"}
TIMEOUT = 30  # seconds: a web thread that backtracks never answers in time


@pytest.fixture(scope="module")
def api(servers):
    cluster = start_cluster(servers, prefix="configstore-redos-", web=True)
    cluster.ensure_admin()
    session = requests.Session()
    session.headers["Authorization"] = f"Token {cluster.api_token}"

    def call(node: str, method: str, path: str, body=None):
        return session.request(method, cluster.web_url(node) + path, json=body, timeout=TIMEOUT)

    try:
        yield cluster, call
    finally:
        session.close()
        stop_cluster(cluster)


@pytest.fixture(autouse=True)
def quorum(api):
    """Each test starts once every node publishes that it reaches a quorum (a worker busy
    with the test before may publish late: its node then answers 503 no_quorum)."""
    cluster, _ = api
    deadline = time.monotonic() + 30
    while not all(n.get("quorum") for n in cluster.status()["nodes"]):
        assert time.monotonic() < deadline, cluster.status()
        time.sleep(0.2)


def assert_every_node_commits(cluster, call, key: str) -> None:
    for node in cluster.ids:
        written = call(node, "PUT", f"/api/v1/keys/{key}-{node}", {"value": 1})
        assert written.status_code == 201, written.text
        assert call(node, "GET", "/healthz").status_code == 200


def test_a_catastrophic_pattern_over_a_current_value_does_not_stall_the_appliers(api):
    cluster, call = api
    assert call("n1", "PUT", "/api/v1/keys/a/redos3", {"value": NEAR_MISS}).status_code == 201
    refused = call("n2", "PUT", "/api/v1/schemas/a/redos3", {"schema": CATASTROPHIC})
    assert (refused.status_code, refused.json()["error"]) == (422, "schema_violation"), refused.text
    assert "^(a+)+$" in refused.json()["detail"]
    assert_every_node_commits(cluster, call, "a/after-schema")
    assert call("n3", "GET", "/api/v1/schemas/a/redos3").status_code == 404
    assert call("n3", "GET", "/api/v1/keys/a/redos3").json()["value"] == NEAR_MISS


def test_a_near_miss_value_under_a_catastrophic_pattern_is_refused_at_once(api):
    cluster, call = api
    attached = call(
        "n1",
        "PUT",
        "/api/v1/schemas/b/",
        {
            "schema": {
                "additionalProperties": {"type": "string", "pattern": "^(a+)+$"},
                "patternProperties": {"^(a+)+$": {}},
            }
        },
    )
    assert attached.status_code == 201, attached.text
    for node in cluster.ids:
        refused = call(node, "PUT", "/api/v1/keys/b/k", {"value": {"x": NEAR_MISS}})
        assert (refused.status_code, refused.json()["error"]) == (422, "schema_violation")
        ok = call(node, "PUT", "/api/v1/keys/b/k", {"value": {NEAR_MISS: "aaaa", "x": "aaa"}})
        assert ok.status_code in (200, 201), ok.text
    assert_every_node_commits(cluster, call, "b/after-values")


def test_a_pattern_re2_cannot_match_is_refused_at_schema_put(api):
    cluster, call = api
    refused = call("n1", "PUT", "/api/v1/schemas/c/k", {"schema": {"pattern": "^(a)\\1$"}})
    assert refused.status_code == 400
    assert "not supported" in refused.json()["detail"] and "\\1" in refused.json()["detail"]
    assert call("n2", "GET", "/api/v1/schemas/c/k").status_code == 404
