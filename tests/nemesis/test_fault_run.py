"""The short form of the fault run: about 60 s of faults and hostile clients on a real
3-node cluster (real PostgreSQL, Celery workers, broker and web servers as processes),
driven over the REST API, while a user's permission is revoked and restored; the history
must be linearizable, the nodes' databases must pass the audit (identities and access
history included), no write by the user may commit while the log has it revoked, no answer
may be a 5xx other than 503 and no process may die unkilled. The long
form: ./dev python -m tests.nemesis.run --duration 600. CONFIGSTORE_FAULT_RUN_HOSTILE=0
runs the short form without the hostile clients."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import start_cluster, stop_cluster
from tests.linearizability.checker import Verdict, check
from tests.linearizability.history import History
from tests.nemesis import workload
from tests.nemesis.hostile import DEFAULT_INTENSITY
from tests.nemesis.run import CLUSTER_ENV, run_faults

pytestmark = pytest.mark.cluster

DURATION = float(os.environ.get("CONFIGSTORE_FAULT_RUN_SECONDS", "60"))
SEED = int(os.environ.get("CONFIGSTORE_FAULT_RUN_SEED", "20261127"))
HOSTILE = os.environ.get("CONFIGSTORE_FAULT_RUN_HOSTILE", "1") != "0"


def test_a_minute_of_faults_keeps_every_promise(servers):
    cluster = start_cluster(
        servers, prefix="configstore-faults-", web=True, extra_env=dict(CLUSTER_ENV)
    )
    try:
        cluster.ensure_admin()
        report = run_faults(
            cluster,
            duration=DURATION,
            seed=SEED,
            keep_dir=Path("fault-runs").resolve(),
            hostile=DEFAULT_INTENSITY if HOSTILE else None,
        )
    finally:
        stop_cluster(cluster)
    print("\n" + report.summary())
    assert report.ok, report.summary()
    # The run must have exercised what it claims to.
    assert sum(report.faults.values()) >= 8, report.faults
    # Nodes fell behind the compacted logs and installed snapshots, one install was cut.
    assert report.installs >= 1 and report.installs_cut >= 1, report.summary()
    assert report.acknowledged >= 200, report.summary()
    # The user's permission was revoked and granted again, and it wrote while granted.
    churn = report.revocation
    assert churn.counts["revoke 200"] >= 1 and churn.counts["grant 200"] >= 1, churn.counts
    assert churn.committed > 0 and churn.counts["write 403"] > 0, churn.summary_line()
    if HOSTILE:  # every attack was made, and answered
        counts = report.hostile.counts
        for done in (
            "queue garbage pushed",
            "queue not-an-object pushed",
            "queue oversized pushed",
            "queue replay pushed (as captured)",
            "queue replay pushed (expiry pushed forward)",
            "slow-header opened",
            "slow-body opened",
            "long-poll opened",
            "watch opened",
            "redos schema put",
        ):
            assert any(what.startswith(done) for what in counts), (done, counts)


def test_the_checks_catch_a_stale_read_on_a_real_cluster(servers):
    """The harness has teeth: with n3 cut off, a write acknowledged by n1 and then a
    `?consistency=stale` read of n3 (which returns the old value) make a history the
    checker rejects; the default, linearizable read of n3 refuses to answer instead."""
    cluster = start_cluster(
        servers, prefix="configstore-stale-", web=True, extra_env=dict(CLUSTER_ENV)
    )
    try:
        cluster.ensure_admin()
        recorder, stop = workload.Recorder(), threading.Event()
        urls = {node: cluster.web_url(node) for node in cluster.ids}
        client = workload.Client(
            "c",
            [urls["n1"]],
            cluster.api_token,
            workload.KeySpace(),
            recorder,
            stop,
            seed=1,
            run_id="stale",
        )
        assert client.put("probe")
        wait_for(lambda: cluster.query("n3", "SELECT count(*) FROM configstore_entry")[0][0] == 1)
        cluster.partition("n3")
        time.sleep(0.5)  # every node has read the fault file
        # n3 may have been the leader: the write goes through n1 once n1 and n2 agree on one.
        cluster.wait_for_leader(among=("n1", "n2"))
        assert client.put("probe")
        assert recorder.operations[-1].outcome == "ok" and recorder.operations[-1].version == 2
        reader = workload.Client(
            "r",
            [urls["n3"]],
            cluster.api_token,
            workload.KeySpace(),
            recorder,
            stop,
            seed=2,
            run_id="stale",
        )
        assert reader.read("probe", f"{urls['n3']}/api/v1/keys/probe") is None  # 503
        stale = reader.read("probe", f"{urls['n3']}/api/v1/keys/probe?consistency=stale")
        assert stale is not None and stale.version == 1
    finally:
        stop_cluster(cluster)
    result = check(History(tuple(recorder.operations)))
    print(result.describe())
    assert result.verdict is Verdict.VIOLATION
    assert result.failures[0].blocking == stale


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
