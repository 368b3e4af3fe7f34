"""The node's metrics, in Prometheus terms (prometheus_client).

A node is two kinds of process, and its numbers reach `/metrics` (served by its web server,
configstore.metrics) two ways:

- the worker (the Paxos core, the applier, the inbox) already publishes its status with its
  counters on its own broker every half second (consensus.runtime.NodeRuntime.status); the
  web server reads it when scraped and `status_families` turns it into metric families.
  The worker keeps no metrics of its own: nothing is counted twice, and a web server and
  worker in separate containers (docker-compose.yml) share nothing but the broker and the
  database anyway;
- the web server's own instruments (this module's, and configstore.metrics's) are counted
  where things happen. Under several server processes they are kept in prometheus_client's
  multiprocess files (PROMETHEUS_MULTIPROC_DIR, one folder per node, emptied when the
  server starts) and summed at scrape time.

Labels are bounded: reasons come from the code's own lists, and whatever the published
status (which anyone with access to the broker could write) holds beyond MAX_REASONS
distinct, well-formed reasons per family is counted as `other`.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

#: The registry of this process's instruments (without multiprocess mode, what is scraped).
REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

COMMIT_SECONDS = Histogram(
    "configstore_commit_seconds",
    "A write's commit latency as its web server sees it: submitted to the node's worker "
    "until this node applied it (or gave up), by outcome",
    ["outcome"],  # committed | rejected | not_confirmed
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
BARRIERS = Counter(
    "configstore_read_barriers",
    "Read barriers (ReadIndex) this node's web server asked for, by outcome",
    ["outcome"],  # committed | not_confirmed
    registry=REGISTRY,
)
BARRIER_READS = Counter(
    "configstore_linearizable_reads",
    "Linearizable reads that waited on a read barrier (many share one barrier)",
    registry=REGISTRY,
)


# Every outcome is said from the first scrape on (a series that appears late loses its
# first increase in rate()).
for _outcome in ("committed", "rejected", "not_confirmed"):
    COMMIT_SECONDS.labels(_outcome)
for _outcome in ("committed", "not_confirmed"):
    BARRIERS.labels(_outcome)


#: The published `outcome` label of each consensus.client outcome: a TimedOut is the
#: API's 503 `not_confirmed` (submitted, not applied here in time: it may still commit).
_OUTCOME_LABELS = {"Committed": "committed", "Rejected": "rejected", "TimedOut": "not_confirmed"}


def outcome_name(outcome) -> str:
    """`committed`, `rejected` or `not_confirmed` for a consensus.client outcome."""
    return _OUTCOME_LABELS[type(outcome).__name__]


MAX_REASONS = 32
_REASON = re.compile(r"[a-z][a-z0-9_]{0,39}")

#: Status counters (consensus.runtime.NodeRuntime.status) by metric: name, help, and for
#: each counter of the status the metric's labels. Prefixed counters carry a reason.
_COUNTERS: tuple[tuple[str, str, dict[str, dict[str, str]]], ...] = (
    (
        "configstore_worker_tasks_in",
        "Task messages the worker authenticated (signed, fresh), by task",
        {"envelopes_in": {"task": "deliver"}, "submissions_in": {"task": "submit"}},
    ),
    (
        "configstore_worker_tasks_out",
        "Envelopes the worker sent to its peers' queues",
        {"envelopes_out": {}},
    ),
    (
        "configstore_worker_send_errors",
        "Envelopes the worker could not send (the peer's broker unreachable)",
        {"send_errors": {}},
    ),
    (
        "configstore_worker_drained",
        "Task messages the worker took off its queue itself, to merge them into one step",
        {"drained": {}},
    ),
    (
        "configstore_worker_read_index_requests",
        "Read index requests (one per read barrier) the worker received",
        {"reads_in": {}},
    ),
    (
        "configstore_slots_applied",
        "Log slots the node's applier applied",
        {"slots_applied": {}},
    ),
    (
        "configstore_worker_failures",
        "Failures the worker survived, by kind",
        {
            "tick_failures": {"kind": "tick"},
            "storage_failures": {"kind": "persist"},
            "apply_failures": {"kind": "apply"},
            "read_notify_failures": {"kind": "read_notify"},
        },
    ),
)
#: Reason-carrying counters: prefix in the status -> (metric, fixed labels).
_REASONED: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("applied_rejected_", "configstore_commands_applied", {"outcome": "rejected"}),
    ("dropped_", "configstore_envelopes_dropped", {"stage": "inbox"}),
    ("refused_", "configstore_envelopes_dropped", {"stage": "envelope"}),
)
_REASONED_HELP = {
    "configstore_commands_applied": "Commands this node applied, by outcome and rejection "
    "reason (every node applies every command: each node's count moves alike)",
    "configstore_envelopes_dropped": "Queue items dropped before decoding (stage inbox) and "
    "envelopes refused (stage envelope: bad signature, stale, replayed...), by reason",
}


def _count(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


def status_families(status: dict | None, *, lag: int | None) -> list:
    """The metric families of a node's worker, from the status it published (None: missing
    or stale, and only `configstore_worker_up 0` is said). Decides only: no I/O."""
    up = GaugeMetricFamily(
        "configstore_worker_up", "1 when the node's worker published a fresh status"
    )
    up.add_metric([], 1 if status else 0)
    if not status:
        return [up]
    families = [up]

    def gauge(name: str, doc: str, value) -> None:
        value = int(value) if isinstance(value, bool) else value
        if _count(value) is not None:
            families.append(GaugeMetricFamily(name, doc, value=value))

    gauge("configstore_leader", "1 when this node is the leader", status["role"] == "leader")
    gauge(
        "configstore_quorum",
        "1 when this node leads a quorum or follows a live leader",
        status["quorum"],
    )
    ballot = str(status.get("ballot", ""))
    round_ = ballot.split(".", 1)[0]
    gauge(
        "configstore_ballot_round",
        "The round of the ballot this node leads or follows",
        int(round_) if round_.isdigit() else None,
    )
    gauge(
        "configstore_chosen_index",
        "The highest log index this node knows chosen",
        status["commit_index"],
    )
    gauge(
        "configstore_applied_index",
        "The highest log index this node applied",
        status["applied_index"],
    )
    gauge(
        "configstore_lag",
        "Slots this node's applied index is behind the highest chosen index of any reachable node",
        lag,
    )
    gauge(
        "configstore_pending_commands",
        "Commands this node submitted and not yet chosen",
        status.get("pending"),
    )
    counters = status.get("counters")
    counters = counters if isinstance(counters, dict) else {}
    elections = CounterMetricFamily(
        "configstore_elections", "Elections this node started (phase 1 runs)"
    )
    if _count(status.get("elections")) is not None:
        elections.add_metric([], status["elections"])
        families.append(elections)
    for name, doc, sources in _COUNTERS:
        labels = sorted({key for fixed in sources.values() for key in fixed})
        family = CounterMetricFamily(name, doc, labels=labels)
        for key, fixed in sources.items():
            value = _count(counters.get(key, 0))
            if value is not None:
                family.add_metric([fixed[label] for label in labels], value)
        families.append(family)
    families.extend(_reasoned(counters))
    return families


def _reasoned(counters: dict) -> list:
    """commands applied by outcome and reason, envelopes dropped by stage and reason."""
    totals: dict[str, dict[tuple[str, str], float]] = {name: {} for name in _REASONED_HELP}
    committed = _count(counters.get("applied_committed", 0))
    totals["configstore_commands_applied"][("committed", "")] = committed or 0.0
    for prefix, name, fixed in _REASONED:
        kind = next(iter(fixed.values()))
        seen = {reason for (_, reason) in totals[name] if reason}
        for key in sorted(counters):
            value = _count(counters[key]) if isinstance(key, str) else None
            if value is None or not key.startswith(prefix):
                continue
            reason = key[len(prefix) :]
            if not _REASON.fullmatch(reason) or (reason not in seen and len(seen) >= MAX_REASONS):
                reason = "other"
            seen.add(reason)
            series = totals[name]
            series[(kind, reason)] = series.get((kind, reason), 0.0) + value
    families = []
    for name, series in totals.items():
        first = "outcome" if name == "configstore_commands_applied" else "stage"
        family = CounterMetricFamily(name, _REASONED_HELP[name], labels=[first, "reason"])
        for (kind, reason), value in sorted(series.items()):
            family.add_metric([kind, reason], value)
        families.append(family)
    return families
