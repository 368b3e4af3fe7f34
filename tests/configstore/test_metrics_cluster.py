"""`/metrics` on a real 3-node cluster with web servers: every node's scrape parses with the
Prometheus parser, says what the node is, and its counters move as a small load says."""

from __future__ import annotations

import secrets
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.metrics_snapshot import Scrape, scrape

pytestmark = pytest.mark.cluster

FAMILIES = {
    "configstore_worker_up": "gauge",
    "configstore_leader": "gauge",
    "configstore_quorum": "gauge",
    "configstore_ballot_round": "gauge",
    "configstore_chosen_index": "gauge",
    "configstore_applied_index": "gauge",
    "configstore_lag": "gauge",
    "configstore_commands_applied": "counter",
    "configstore_envelopes_dropped": "counter",
    "configstore_worker_tasks_in": "counter",
    "configstore_worker_tasks_out": "counter",
    "configstore_worker_read_index_requests": "counter",
    "configstore_slots_applied": "counter",
    "configstore_commit_seconds": "histogram",
    "configstore_read_barriers": "counter",
    "configstore_linearizable_reads": "counter",
    "configstore_http_request_seconds": "histogram",
    "configstore_db_pool_connections": "gauge",
}


def settled(cluster, *, timeout: float = 15.0) -> dict[str, Scrape]:
    """Every node's scrape once each worker publishes and exactly one node leads."""
    deadline = time.monotonic() + timeout
    while True:
        scrapes = {i: scrape(cluster.web_url(i)) for i in cluster.ids}
        up = all(s.value("configstore_worker_up") == 1 for s in scrapes.values())
        leaders = [i for i, s in scrapes.items() if s.value("configstore_leader") == 1]
        if up and len(leaders) == 1:
            return scrapes
        assert time.monotonic() < deadline, f"up={up}, leaders={leaders}"
        time.sleep(0.3)


def quiet(cluster, *, timeout: float = 15.0) -> dict[str, Scrape]:
    """`settled` scrapes once every node has applied all there is and said so in a status
    published since (statuses come every 0.5 s): the baseline of the load."""
    deadline = time.monotonic() + timeout
    first = settled(cluster)
    while True:
        time.sleep(0.6)
        then = settled(cluster)
        applied = {s.value("configstore_applied_index") for s in then.values()}
        if len(applied) == 1 and all(
            then[i].value("configstore_applied_index")
            == first[i].value("configstore_applied_index")
            and then[i].value("configstore_commands_applied_total")
            == first[i].value("configstore_commands_applied_total")
            for i in cluster.ids
        ):
            return then
        assert time.monotonic() < deadline, "the cluster did not quieten"
        first = then


def test_every_node_serves_metrics_whose_counters_follow_a_small_load(make_cluster):
    cluster = make_cluster(web=True)
    cluster.ensure_admin()
    auth = {"Authorization": f"Token {cluster.api_token}"}

    before = quiet(cluster)
    for s in before.values():
        # Routes are URL pattern names, never paths: no label holds a key.
        assert all(
            "/" not in r for r in s.labels("configstore_http_request_seconds_count", "route")
        )

    prefix = f"metrics/{secrets.token_hex(4)}"
    for i in range(20):
        put = requests.put(
            f"{cluster.web_url('n1')}/api/v1/keys/{prefix}/{i}",
            json={"value": i},
            headers=auth,
            timeout=30,
        )
        assert put.status_code == 201, put.text
    conflict = requests.put(
        f"{cluster.web_url('n1')}/api/v1/keys/{prefix}/0",
        json={"value": "late"},
        headers={**auth, "If-Match": '"7"'},
        timeout=30,
    )
    assert conflict.status_code == 412, conflict.text
    for i in range(20):
        read = requests.get(
            f"{cluster.web_url('n2')}/api/v1/keys/{prefix}/{i}", headers=auth, timeout=30
        )
        assert read.status_code == 200, read.text

    committed = {"outcome": "committed", "reason": ""}
    conflicted = {"outcome": "rejected", "reason": "version_conflict"}
    deadline = time.monotonic() + 15
    while True:
        after = settled(cluster)
        # The workers' numbers are as of their last published status (every 0.5 s).
        if (
            time.monotonic() > deadline
            or all(
                after[i].delta(before[i], "configstore_commands_applied_total", **committed) >= 20
                and after[i].delta(before[i], "configstore_commands_applied_total", **conflicted)
                for i in cluster.ids
            )
            and after["n2"].delta(before["n2"], "configstore_worker_read_index_requests_total")
        ):
            break
        time.sleep(0.5)

    for i in cluster.ids:  # every node applies every command, and counts it
        a, b = after[i], before[i]
        assert a.delta(b, "configstore_commands_applied_total", **committed) == 20, i
        assert a.delta(b, "configstore_commands_applied_total", **conflicted) == 1, i
        assert a.delta(b, "configstore_applied_index") >= 21, i
        assert a.value("configstore_lag") >= 0
        assert a.delta(b, "configstore_worker_tasks_in_total", task="deliver") > 0, i
        assert a.delta(b, "configstore_worker_tasks_out_total") > 0, i
    n1, n2 = (after[i] for i in ("n1", "n2"))
    b1, b2 = before["n1"], before["n2"]
    # The writer's node: 21 writes timed, by outcome; its requests by route and status.
    assert n1.delta(b1, "configstore_commit_seconds_count", outcome="committed") == 20
    assert n1.delta(b1, "configstore_commit_seconds_count", outcome="rejected") == 1
    assert n1.delta(b1, "configstore_commit_seconds_bucket", outcome="committed", le="+Inf") == 20
    put = {"route": "api:key", "method": "PUT"}
    assert n1.delta(b1, "configstore_http_request_seconds_count", **put, status="201") == 20
    assert n1.delta(b1, "configstore_http_request_seconds_count", **put, status="412") == 1
    # The reader's node: 20 linearizable reads, sharing at most 20 barriers.
    get = {"route": "api:key", "method": "GET", "status": "200"}
    assert n2.delta(b2, "configstore_http_request_seconds_count", **get) == 20
    assert n2.delta(b2, "configstore_linearizable_reads_total") == 20
    assert 1 <= n2.delta(b2, "configstore_read_barriers_total", outcome="committed") <= 20
    assert n2.delta(b2, "configstore_worker_read_index_requests_total") >= 1
    assert n1.value("configstore_db_pool_connections", state="in_use") >= 0
    assert sum(s.value("configstore_leader") for s in after.values()) == 1

    for i in cluster.ids:
        raw = requests.get(cluster.web_url(i) + "/metrics", timeout=10)
        assert raw.status_code == 200
        assert raw.headers["Content-Type"].startswith("text/plain; version=")
        parsed = {f.name: f.type for f in text_string_to_metric_families(raw.text)}
        for name, kind in FAMILIES.items():
            assert parsed.get(name) == kind, (i, name, parsed.get(name))
