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
