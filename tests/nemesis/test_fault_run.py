"""The short form of the fault run: about 60 s of faults on a real 3-node cluster (real
PostgreSQL, Celery workers, broker and web servers as processes), driven over the REST API;
the history must be linearizable and the nodes' databases must pass the audit. The long
form: ./dev python -m tests.nemesis.run --duration 600."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import start_cluster, stop_cluster
from tests.nemesis.run import CLUSTER_ENV, run_faults

pytestmark = pytest.mark.cluster

DURATION = float(os.environ.get("CONFIGSTORE_FAULT_RUN_SECONDS", "60"))
SEED = int(os.environ.get("CONFIGSTORE_FAULT_RUN_SEED", "20261127"))


def test_a_minute_of_faults_keeps_every_promise(servers):
    cluster = start_cluster(
        servers, prefix="configstore-faults-", web=True, extra_env=dict(CLUSTER_ENV)
    )
    try:
        cluster.ensure_admin()
        report = run_faults(
            cluster, duration=DURATION, seed=SEED, keep_dir=Path("fault-runs").resolve()
        )
    finally:
        stop_cluster(cluster)
    print("\n" + report.summary())
    assert report.ok, report.summary()
    # The run must have exercised what it claims to.
    assert sum(report.faults.values()) >= 8, report.faults
    assert report.acknowledged >= 200, report.summary()
