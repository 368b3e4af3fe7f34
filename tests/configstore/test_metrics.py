"""The node's metrics without a cluster: a published status turned into metric families
(bounded labels whatever the status holds) and who may scrape `/metrics`."""

from __future__ import annotations

from django.test import RequestFactory
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from configstore.metrics import allowed
from consensus.metrics import MAX_REASONS, status_families

STATUS = {
    "time": 0.0,
    "role": "leader",
    "leader": "n1",
    "quorum": True,
    "ballot": "3.n1",
    "commit_index": 12,
    "applied_index": 11,
    "pending": 0,
    "elections": 1,
    "counters": {
        "envelopes_in": 5,
        "submissions_in": 2,
        "envelopes_out": 7,
        "applied_committed": 9,
        "applied_rejected_version_conflict": 2,
        "dropped_oversized": 1,
        "refused_stale": 4,
    },
}


def exposed(families) -> dict:
    registry = CollectorRegistry()

    class Fixed:
        def collect(self):
            return families

    registry.register(Fixed())
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_a_status_becomes_gauges_and_counters_by_reason():
    samples = exposed(status_families(STATUS, lag=1))
    assert samples[("configstore_leader", ())] == 1
    assert samples[("configstore_ballot_round", ())] == 3
    assert samples[("configstore_lag", ())] == 1
    assert samples[("configstore_worker_tasks_in_total", (("task", "deliver"),))] == 5
    applied = "configstore_commands_applied_total"
    assert samples[(applied, (("outcome", "committed"), ("reason", "")))] == 9
    assert samples[(applied, (("outcome", "rejected"), ("reason", "version_conflict")))] == 2
    dropped = "configstore_envelopes_dropped_total"
    assert samples[(dropped, (("reason", "oversized"), ("stage", "inbox")))] == 1
    assert samples[(dropped, (("reason", "stale"), ("stage", "envelope")))] == 4


def test_a_missing_status_says_only_that_the_worker_is_down():
    assert exposed(status_families(None, lag=None)) == {("configstore_worker_up", ()): 0}


def test_reasons_from_the_broker_are_bounded_and_well_formed():
    flood = {f"refused_r{i}": 1 for i in range(500)}
    flood.update({'refused_Bad"Label': 1, "refused_": 1, "envelopes_in": -3, "reads_in": "x"})
    samples = exposed(status_families({**STATUS, "counters": flood}, lag=None))
    reasons = {
        dict(labels)["reason"]
        for (name, labels) in samples
        if name == "configstore_envelopes_dropped_total"
    }
    assert len(reasons) == MAX_REASONS and "other" in reasons
    assert (
        sum(v for (name, _), v in samples.items() if name == "configstore_envelopes_dropped_total")
        == 502
    )
    assert ("configstore_worker_tasks_in_total", (("task", "deliver"),)) not in samples


def test_metrics_are_for_loopback_clients_unless_a_token_is_set(configure):
    factory = RequestFactory()
    local = factory.get("/metrics", REMOTE_ADDR="127.0.0.1")
    remote = factory.get("/metrics", REMOTE_ADDR="10.1.2.3")
    configure(metrics_token="")
    assert allowed(local) == (True, 403)
    assert allowed(remote) == (False, 403)
    configure(metrics_token="s3cret")
    assert allowed(local) == (False, 401)
    bearer = factory.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer s3cret")
    assert allowed(bearer) == (True, 401)
    wrong = factory.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cre")
    assert allowed(wrong) == (False, 401)
