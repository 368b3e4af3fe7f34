"""Shared fixtures: the servers the real-cluster tests run on, and fresh clusters.

Servers: where CONFIGSTORE_CLUSTER_DATABASE_URL / CONFIGSTORE_CLUSTER_BROKER_URL name
templates (see devcluster/localcluster.py), the tests use those servers; otherwise one
embedded PostgreSQL and one embedded Redis are started for the whole session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from devcluster.localcluster import BROKER_URL_ENV, DATABASE_URL_ENV, LocalCluster, free_ports


def _scratch(prefix: str) -> Path:
    # Not pytest's tmp_path: its root is private to root, and the embedded PostgreSQL runs
    # as an unprivileged user when the tests run as root.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


#: pytest-xdist's worker ("gw0", "gw1", ...), or "" when the tests run in one process.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
#: Redis database numbers each worker's clusters use on a shared Redis (16 in all): gw0
#: 1-7, gw1 9-15 (a cluster of at most 7 nodes).
BROKER_INDEXES_PER_WORKER = 8


#: Added to this worker's broker database numbers.
BROKER_INDEX_OFFSET = (
    int(WORKER[2:]) if WORKER.startswith("gw") else 0
) * BROKER_INDEXES_PER_WORKER


@pytest.fixture
def configure(settings):
    """`configure(max_value_bytes=100, ...)`: change fields of the typed settings
    (consensus.conf.NodeSettings, configstore.conf.StoreSettings) for one test."""
    import dataclasses

    from consensus.conf import NodeSettings

    node_fields = {f.name for f in dataclasses.fields(NodeSettings)}

    def change(**fields) -> None:
        node = {k: v for k, v in fields.items() if k in node_fields}
        store = {k: v for k, v in fields.items() if k not in node_fields}
        if node:
            settings.CONFIGSTORE_NODE = dataclasses.replace(settings.CONFIGSTORE_NODE, **node)
        if store:
            settings.CONFIGSTORE = dataclasses.replace(settings.CONFIGSTORE, **store)

    return change


@pytest.fixture(scope="session")
def servers():
    """(database URL template, broker URL template) for every cluster of the session. Under
    pytest-xdist, each worker's databases carry its name and its brokers other numbers."""
    db, broker = os.environ.get(DATABASE_URL_ENV), os.environ.get(BROKER_URL_ENV)
    if WORKER and db:
        db = db.replace("{node}", "{node}_" + WORKER)
    if BROKER_INDEX_OFFSET + BROKER_INDEXES_PER_WORKER > 16:
        pytest.exit(f"at most {16 // BROKER_INDEXES_PER_WORKER} workers on one Redis")
    started = []
    root = _scratch("configstore-servers-")
    try:
        if not db or not broker:
            from devcluster import embedded

            if not db:
                pg = embedded.start_postgres(root / "postgres")
                started.append(pg)
                db = pg.url("cs_test_NODE").replace("NODE", "{node}")
            if not broker:
                rd = embedded.start_redis(root / "redis")
                started.append(rd)
                broker = f"redis://127.0.0.1:{rd.port}/{{index}}"
        yield db, broker
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def free_base_port(count: int = 3) -> int:
    """The first of `count` consecutive free ports (a cluster's web servers), so that test
    clusters never collide with a cluster running on the default ports 8001-8003."""
    return free_ports(count, consecutive=True)[0]


def start_cluster(servers, *, prefix: str = "configstore-cluster-", **kwargs) -> LocalCluster:
    """Start a fresh cluster (new databases, empty queues) on the session's servers."""
    db, broker = servers
    if kwargs.get("web"):
        kwargs.setdefault("base_port", free_base_port(kwargs.get("nodes", 3)))
    cluster = LocalCluster(
        _scratch(prefix),
        database_url_template=db,
        broker_url_template=broker,
        broker_index_offset=BROKER_INDEX_OFFSET,
        fresh=True,
        **kwargs,
    )
    cluster.start()
    return cluster


def stop_cluster(cluster: LocalCluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.data_dir, ignore_errors=True)


@contextlib.contextmanager
def admin_web_cluster(servers, prefix: str):
    """A fresh cluster with web servers and an admin user (its API token on the cluster),
    stopped and removed afterwards: what module-scoped API fixtures share."""
    cluster = start_cluster(servers, prefix=prefix, web=True)
    try:
        cluster.ensure_admin()
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _print_logs(cluster: LocalCluster) -> None:
    for log in sorted((cluster.data_dir / "logs").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-40:]
        print(f"\n----- {log.name} (last {len(lines)} lines)\n" + "\n".join(lines))


@pytest.fixture
def make_cluster(servers, request):
    """Start fresh clusters (new databases, empty queues); all are stopped after the test.
    When the test fails, the tail of every process's log is printed."""
    clusters: list[LocalCluster] = []

    def make(nodes: int = 3, *, web: bool = False, **kwargs) -> LocalCluster:
        cluster = start_cluster(servers, nodes=nodes, web=web, **kwargs)
        clusters.append(cluster)
        return cluster

    yield make
    failed = (
        getattr(request.node, "report_call", None) is not None and request.node.report_call.failed
    )
    for cluster in clusters:
        cluster.stop()
        if failed:
            _print_logs(cluster)
        shutil.rmtree(cluster.data_dir, ignore_errors=True)
