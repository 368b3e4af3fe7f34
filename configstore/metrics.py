"""`/metrics`: the node's metrics in the Prometheus text format (see consensus.metrics for
where each number comes from).

Access: with CONFIGSTORE_METRICS_TOKEN set, a scrape must carry `Authorization: Bearer
<token>`; unset, only clients on a loopback address may scrape (a Prometheus on the same
host). Behind a reverse proxy on the same host every client looks local: set a token there.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from pathlib import Path

import psutil
from django.core.signals import request_finished
from django.db import connections
from django.http import HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from configstore import conf
from consensus import api as consensus

log = logging.getLogger(__name__)

#: Set by runcluster (one folder per node, emptied when its web server starts).
MULTIPROCESS = bool(conf.store().prometheus_multiproc_dir)


def forget_dead_processes(folder: str) -> None:
    """Remove the live-gauge files of this server's processes that are gone (a restarted
    worker process leaves its own; counters and histograms stay, so totals never drop)."""
    for path in Path(folder).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            multiprocess.mark_process_dead(int(pid), folder)


if MULTIPROCESS:
    forget_dead_processes(conf.store().prometheus_multiproc_dir)

REQUEST_SECONDS = Histogram(
    "configstore_http_request_seconds",
    "Web requests by route (the URL pattern's name, never the path), method and status; "
    "the time in Django (a parked long-poll's wait is not in it: its runs are, with status "
    "`parked`)",
    ["route", "method", "status"],
    buckets=consensus.LATENCY_BUCKETS,
    registry=consensus.REGISTRY,
)
POOL_CONNECTIONS = Gauge(
    "configstore_db_pool_connections",
    "Connections of the web server's database pool, by state (in_use, idle) and the clients "
    "waiting for one (waiting); summed over the server's live processes",
    ["state"],
    multiprocess_mode="livesum",
    registry=consensus.REGISTRY,
)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetricsMiddleware:
    """Times every request (outermost middleware) by route name, method and status."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = (match.view_name or match.route or "unnamed") if match else "unmatched"
        status = "parked" if response.has_header("X-Configstore-Park") else response.status_code
        method = request.method if request.method in METHODS else "other"
        REQUEST_SECONDS.labels(route, method, str(status)).observe(time.perf_counter() - started)
        return response


def record_pool() -> None:
    """This process's Django pool (psycopg_pool's stats) into POOL_CONNECTIONS."""
    try:
        pool = connections["default"].pool
    except Exception:  # noqa: BLE001 - a metric, never a failed request
        return
    if pool is None:
        return
    stats = pool.get_stats()
    size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
    POOL_CONNECTIONS.labels("in_use").set(max(size - idle, 0))
    POOL_CONNECTIONS.labels("idle").set(idle)
    POOL_CONNECTIONS.labels("waiting").set(stats.get("requests_waiting", 0))


def _pool_after_request(**_) -> None:
    record_pool()


# After Django's own receiver (which gives the request's connection back to the pool).
request_finished.connect(_pool_after_request, dispatch_uid="configstore-metrics-pool")


class WorkerCollector:
    """The node's worker, from the status it published on its broker."""

    def collect(self):
        node_id = consensus.node_id()
        view = consensus.cluster_status()
        mine = next((n for n in view["nodes"] if n["node_id"] == node_id), None)
        status = mine if mine and mine["reachable"] else None
        yield from consensus.status_families(status, lag=mine and mine.get("lag"))


class _Own:
    """This process's instruments (no multiprocess mode)."""

    def collect(self):
        return consensus.REGISTRY.collect()


def scrape() -> bytes:
    record_pool()
    registry = CollectorRegistry(auto_describe=False)
    if MULTIPROCESS:
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Own())
    registry.register(WorkerCollector())
    return generate_latest(registry)


def allowed(request) -> tuple[bool, int]:
    """Whether `request` may scrape, and the status to answer when not."""
    token = conf.store().metrics_token
    if token:
        given = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(given, f"Bearer {token}".encode()), 401
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback, 403
    except ValueError:
        return False, 403


def metrics_view(request):
    ok, status = allowed(request)
    if not ok:
        response = HttpResponse(
            "metrics need a bearer token (CONFIGSTORE_METRICS_TOKEN)\n"
            if status == 401
            else "metrics are served to loopback clients only (or set CONFIGSTORE_METRICS_TOKEN)\n",
            status=status,
            content_type="text/plain",
        )
        if status == 401:
            response["WWW-Authenticate"] = "Bearer"
        return response
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
    return HttpResponse(scrape(), content_type=CONTENT_TYPE_LATEST)
