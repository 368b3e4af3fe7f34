"""Draw the Grafana dashboard's panels (docs/grafana-dashboard.json) from a real run.

No Grafana server runs here, so this script is its stand-in for the README's picture: it
starts a fresh 3-node cluster with web servers (on the servers named by
CONFIGSTORE_CLUSTER_DATABASE_URL / _BROKER_URL, or embedded ones), drives a small load
through the REST API (writes with a few version conflicts, linearizable reads, spread over
the nodes), scrapes every node's `/metrics` every second, and draws each panel of the
dashboard with matplotlib into docs/metrics.png. Each panel's query is evaluated here by a
small Python counterpart of its PromQL (`PANELS`), over the scrapes.

    ./dev python -m benchmarks.metrics_snapshot [--seconds 40] [--out docs/metrics.png]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"


@dataclass
class Scrape:
    """One scrape of a node's /metrics: every sample by name and labels."""

    at: float
    samples: dict[tuple[str, frozenset], float] = field(default_factory=dict)

    def value(self, name: str, **labels) -> float:
        """The sum of the samples named `name` whose labels include `labels` (0 if none)."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def delta(self, before: Scrape, name: str, **labels) -> float:
        return self.value(name, **labels) - before.value(name, **labels)

    def labels(self, name: str, label: str) -> set[str]:
        return {dict(ls)[label] for (n, ls) in self.samples if n == name and label in dict(ls)}


def parse(text: str, at: float | None = None) -> Scrape:
    result = Scrape(time.time() if at is None else at)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return result


def scrape(base_url: str, *, token: str | None = None) -> Scrape:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.get(base_url + "/metrics", headers=headers, timeout=10)
    response.raise_for_status()
    return parse(response.text)


# ---------------------------------------------------------------------- the dashboard


@dataclass(frozen=True)
class Target:
    """One query of a panel: its PromQL (what Grafana runs) and how this script evaluates
    the same over its scrapes. kind: `gauge` (the value), `rate` (per second over
    RATE_WINDOW), `quantile` (histogram_quantile of `q` over the rates of `_bucket`).
    `by` names the labels a series is kept apart by; `instance` is the scraped node."""

    expr: str
    legend: str
    kind: str
    metric: str
    by: tuple[str, ...] = ("instance",)
    match: tuple[tuple[str, str], ...] = ()
    q: float = 0.99


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    targets: tuple[Target, ...]


RATE = "$__rate_interval"
PANELS: tuple[Panel, ...] = (
    Panel(
        "Leader (1 = this node leads)",
        "none",
        (Target("configstore_leader", "{{instance}}", "gauge", "configstore_leader"),),
    ),
    Panel(
        "Ballot round",
        "none",
        (Target("configstore_ballot_round", "{{instance}}", "gauge", "configstore_ballot_round"),),
    ),
    Panel(
        "Chosen and applied index",
        "none",
        (
            Target(
                "configstore_chosen_index",
                "chosen {{instance}}",
                "gauge",
                "configstore_chosen_index",
            ),
            Target(
                "configstore_applied_index",
                "applied {{instance}}",
                "gauge",
                "configstore_applied_index",
            ),
        ),
    ),
    Panel(
        "Lag (slots behind the highest chosen index)",
        "none",
        (Target("configstore_lag", "{{instance}}", "gauge", "configstore_lag"),),
    ),
    Panel(
        "Commands applied /s by outcome and reason (each node)",
        "ops",
        (
            Target(
                f"sum by (instance, outcome, reason) (rate(configstore_commands_applied_total[{RATE}]))",
                "{{instance}} {{outcome}} {{reason}}",
                "rate",
                "configstore_commands_applied_total",
                ("instance", "outcome", "reason"),
            ),
        ),
    ),
    Panel(
        "Commit latency (web tier: submitted → applied here)",
        "s",
        (
            Target(
                "histogram_quantile(0.5, sum by (instance, le) "
                f'(rate(configstore_commit_seconds_bucket{{outcome="committed"}}[{RATE}])))',
                "p50 {{instance}}",
                "quantile",
                "configstore_commit_seconds_bucket",
                match=(("outcome", "committed"),),
                q=0.5,
            ),
            Target(
                "histogram_quantile(0.99, sum by (instance, le) "
                f'(rate(configstore_commit_seconds_bucket{{outcome="committed"}}[{RATE}])))',
                "p99 {{instance}}",
                "quantile",
                "configstore_commit_seconds_bucket",
                match=(("outcome", "committed"),),
                q=0.99,
            ),
        ),
    ),
    Panel(
        "Envelopes dropped /s by stage and reason",
        "ops",
        (
            Target(
                f"sum by (instance, stage, reason) (rate(configstore_envelopes_dropped_total[{RATE}]))",
                "{{instance}} {{stage}} {{reason}}",
                "rate",
                "configstore_envelopes_dropped_total",
                ("instance", "stage", "reason"),
            ),
        ),
    ),
    Panel(
        "Celery task messages /s in (by task) and out",
        "ops",
        (
            Target(
                f"sum by (instance, task) (rate(configstore_worker_tasks_in_total[{RATE}]))",
                "in {{instance}} {{task}}",
                "rate",
                "configstore_worker_tasks_in_total",
                ("instance", "task"),
            ),
            Target(
                f"sum by (instance) (rate(configstore_worker_tasks_out_total[{RATE}]))",
                "out {{instance}}",
                "rate",
                "configstore_worker_tasks_out_total",
            ),
        ),
    ),
    Panel(
        "Linearizable reads and read barriers /s",
        "ops",
        (
            Target(
                f"sum by (instance) (rate(configstore_linearizable_reads_total[{RATE}]))",
                "reads {{instance}}",
                "rate",
                "configstore_linearizable_reads_total",
            ),
            Target(
                f"sum by (instance) (rate(configstore_read_barriers_total[{RATE}]))",
                "barriers {{instance}}",
                "rate",
                "configstore_read_barriers_total",
            ),
        ),
    ),
    Panel(
        "Web requests /s by route and status (all nodes)",
        "reqps",
        (
            Target(
                "sum by (route, method, status) "
                f'(rate(configstore_http_request_seconds_count{{route!="metrics"}}[{RATE}]))',
                "{{method}} {{route}} {{status}}",
                "rate",
                "configstore_http_request_seconds_count",
                ("route", "method", "status"),
            ),
        ),
    ),
    Panel(
        "Web request latency p99 by route (all nodes)",
        "s",
        (
            Target(
                "histogram_quantile(0.99, sum by (route, le) "
                f'(rate(configstore_http_request_seconds_bucket{{route!="metrics"}}[{RATE}])))',
                "p99 {{route}}",
                "quantile",
                "configstore_http_request_seconds_bucket",
                ("route",),
            ),
        ),
    ),
    Panel(
        "Database pool connections in use (web server)",
        "none",
        (
            Target(
                'configstore_db_pool_connections{state="in_use"}',
                "{{instance}}",
                "gauge",
                "configstore_db_pool_connections",
                match=(("state", "in_use"),),
            ),
        ),
    ),
)


def dashboard() -> dict:
    """The Grafana dashboard (docs/grafana-dashboard.json) of PANELS: a Prometheus data
    source chosen on import, two panels a row."""
    panels = []
    for n, panel in enumerate(PANELS):
        panels.append(
            {
                "id": n + 1,
                "type": "timeseries",
                "title": panel.title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 * (n // 2)},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {"refId": chr(ord("A") + k), "expr": t.expr, "legendFormat": t.legend}
                    for k, t in enumerate(panel.targets)
                ],
            }
        )
    return {
        "title": "configstore",
        "uid": "configstore-nodes",
        "schemaVersion": 39,
        "tags": ["configstore"],
        "time": {"from": "now-15m", "to": "now"},
        "refresh": "10s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "panels": panels,
    }


# ---------------------------------------------------------------------- evaluation

RATE_WINDOW = 5.0  # seconds: the picture's stand-in for $__rate_interval


def _series(scrape: Scrape, node: str, target: Target) -> dict[tuple, float]:
    """The target's samples of one scrape summed by its `by` labels (+ `le` for buckets)."""
    wanted = set(target.match)
    keep = target.by + (("le",) if target.kind == "quantile" else ())
    out: dict[tuple, float] = {}
    for (name, labels), value in scrape.samples.items():
        if name != target.metric or not wanted <= labels:
            continue
        if dict(labels).get("route") == "metrics":
            continue  # the scrapes themselves
        named = {**dict(labels), "instance": node}
        key = tuple(named.get(label, "") for label in keep)
        out[key] = out.get(key, 0.0) + value
    return out


def _quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative bucket counts (linear within a bucket)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank, lower, below = q * buckets[bounds[-1]], 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(buckets[bound] - below, 1e-9)
        lower, below = bound, buckets[bound]
    return None


def evaluate(target: Target, runs: dict[str, list[Scrape]], start: float):
    """{legend: (times, values)} of one target over every node's scrapes."""
    lines: dict[str, tuple[list, list]] = {}

    def add(key_labels: dict, t: float, v: float) -> None:
        legend = target.legend
        for label, value in key_labels.items():
            legend = legend.replace("{{" + label + "}}", value)
        legend = " ".join(legend.split())
        times, values = lines.setdefault(legend, ([], []))
        times.append(t - start)
        values.append(v)

    per_key: dict[tuple, dict[float, list]] = {}
    for node, scrapes in runs.items():
        for k, now in enumerate(scrapes):
            if target.kind == "gauge":
                for key, v in _series(now, node, target).items():
                    add(dict(zip(target.by, key, strict=True)), now.at, v)
                continue
            then = next((s for s in reversed(scrapes[:k]) if now.at - s.at >= RATE_WINDOW), None)
            if then is None:
                continue
            old = _series(then, node, target)
            for key, v in _series(now, node, target).items():
                rate = max(v - old.get(key, 0.0), 0.0) / (now.at - then.at)
                per_key.setdefault(key, {}).setdefault(round(now.at), []).append(rate)
    if target.kind == "rate":
        for key, by_time in per_key.items():
            labels = dict(zip(target.by, key, strict=True))
            for t, rates in sorted(by_time.items()):
                add(labels, t, sum(rates))
    elif target.kind == "quantile":
        grouped: dict[tuple, dict[float, dict[float, float]]] = {}
        for key, by_time in per_key.items():
            *group, le = key
            for t, rates in by_time.items():
                grouped.setdefault(tuple(group), {}).setdefault(t, {})[float(le)] = sum(rates)
        for group, by_time in grouped.items():
            labels = dict(zip(target.by, group, strict=True))
            for t, buckets in sorted(by_time.items()):
                value = _quantile(target.q, buckets)
                if value is not None:
                    add(labels, t, value)
    # Rates that stayed 0 (a reason never seen here) would only crowd the legend.
    return {
        legend: line
        for legend, line in sorted(lines.items())
        if target.kind == "gauge" or any(line[1])
    }


def draw(runs: dict[str, list[Scrape]], events: list[tuple[float, str]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min(s[0].at for s in runs.values())
    rows = (len(PANELS) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(15, 3.1 * rows), sharex=True)
    for ax, panel in zip(axes.flat, PANELS, strict=False):
        for target in panel.targets:
            for legend, (times, values) in evaluate(target, runs, start).items():
                ax.plot(times, values, label=legend, linewidth=1.2)
        for at, _ in events:
            ax.axvline(at - start, color="grey", linestyle=":", linewidth=1)
        ax.set_title(panel.title, fontsize=10)
        if panel.unit == "s":
            ax.set_ylabel("seconds", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=6, ncol=2, loc="upper left")
    for ax in axes.flat[len(PANELS) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds into the run", fontsize=8)
    notes = "; ".join(f"{at - start:.0f} s: {what}" for at, what in events)
    fig.suptitle(
        "configstore dashboard panels (docs/grafana-dashboard.json), drawn by "
        "benchmarks/metrics_snapshot.py from a real 3-node run's scrapes, not a Grafana "
        f"screenshot\n{notes}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


# ---------------------------------------------------------------------- the run


def load(cluster, stop: threading.Event, seed: int) -> None:
    """One client: writes (one in ten with a stale If-Match: a version conflict) and
    linearizable reads, on random nodes, until `stop`."""
    rng = random.Random(seed)
    session = requests.Session()
    session.headers["Authorization"] = f"Token {cluster.api_token}"
    keys = [f"snapshot/{seed}/{k}" for k in range(20)]
    while not stop.is_set():
        node, key = rng.choice(cluster.ids), rng.choice(keys)
        url = f"{cluster.web_url(node)}/api/v1/keys/{key}"
        try:
            if rng.random() < 0.5:
                headers = {"If-Match": '"999999"'} if rng.random() < 0.1 else {}
                session.put(url, json={"value": rng.random()}, headers=headers, timeout=10)
            else:
                session.get(url, timeout=10)
        except requests.RequestException:
            time.sleep(0.2)


def run(seconds: float, clients: int, kill_at: float | None) -> tuple[dict, list]:
    from devcluster.localcluster import LocalCluster, free_ports

    data = Path(tempfile.mkdtemp(prefix="configstore-metrics-"))
    cluster = LocalCluster.from_environment(
        data, web=True, fresh=True, base_port=free_ports(3, consecutive=True)[0]
    )
    cluster.start()
    runs: dict[str, list[Scrape]] = {i: [] for i in cluster.ids}
    events: list[tuple[float, str]] = []
    stop = threading.Event()
    try:
        cluster.ensure_admin()
        workers = [
            threading.Thread(target=load, args=(cluster, stop, seed), daemon=True)
            for seed in range(clients)
        ]
        for worker in workers:
            worker.start()
        started = time.time()
        killed = False
        while time.time() - started < seconds:
            tick = time.monotonic()
            for i in cluster.ids:
                with contextlib.suppress(requests.RequestException):
                    runs[i].append(scrape(cluster.web_url(i)))
            if kill_at is not None and not killed and time.time() - started >= kill_at:
                leader = next(
                    (
                        i
                        for i in cluster.ids
                        if runs[i] and runs[i][-1].value("configstore_leader") == 1
                    ),
                    None,
                )
                if leader is not None:
                    cluster.kill_worker(leader)
                    events.append((time.time(), f"{leader}'s worker killed (leader)"))
                    cluster.start_worker(leader)
                    events.append((time.time(), f"{leader}'s worker restarted"))
                    killed = True
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    finally:
        stop.set()
        cluster.stop()
    return runs, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--kill-leader-at",
        type=float,
        default=20,
        help="seconds into the run; a negative value kills nothing",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "metrics.png")
    parser.add_argument(
        "--dashboard-only", action="store_true", help="only write docs/grafana-dashboard.json"
    )
    args = parser.parse_args()
    DASHBOARD.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {DASHBOARD}")
    if args.dashboard_only:
        return
    kill_at = args.kill_leader_at if args.kill_leader_at >= 0 else None
    runs, events = run(args.seconds, args.clients, kill_at)
    draw(runs, events, args.out)
    print(f"wrote {args.out} from {sum(map(len, runs.values()))} scrapes ({len(runs)} nodes)")


if __name__ == "__main__":
    main()
