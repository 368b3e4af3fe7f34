"""configstorectl end to end: the installed command, as a subprocess, against a real 3-node
cluster -- get, put (argument, file, stdin), del, txn, history, export/import (with a diff,
--dry-run that changes nothing, and an import refused as a whole that changes nothing), status
-- and its documented exit codes."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

CTL = shutil.which("configstorectl") or str(Path(sys.executable).parent / "configstorectl")


@pytest.fixture(scope="module")
def ctl(servers):
    from tests.conftest import start_cluster, stop_cluster

    cluster = start_cluster(servers, prefix="configstore-ctl-", web=True)
    try:
        cluster.ensure_admin()
        env = {
            **os.environ,
            "CONFIGSTORE_URLS": ",".join(cluster.web_url(n) for n in cluster.ids),
            "CONFIGSTORE_TOKEN": cluster.api_token,
        }

        def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
            return subprocess.run(
                [CTL, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
            )

        run.cluster = cluster
        yield run
    finally:
        stop_cluster(cluster)


def state(cluster) -> tuple:
    return (
        cluster.query("n1", "SELECT key, value::text, version FROM configstore_entry ORDER BY key"),
        cluster.query("n1", "SELECT count(*) FROM configstore_history"),
    )


def test_get_put_del_txn_history_and_exit_codes(ctl, tmp_path):
    key = f"ctl-{secrets.token_hex(3)}/timeout"
    assert ctl("put", key, "250", "--reason", "first").returncode == 0
    assert json.loads(ctl("get", key).stdout) == 250
    (tmp_path / "v.json").write_text('{"ms": 300}')
    assert ctl("put", key, "--file", str(tmp_path / "v.json"), "--if-version", "1").returncode == 0
    assert ctl("put", key, "-", stdin='{"ms": 350}').returncode == 0
    conflict = ctl("put", key, "1", "--if-version", "1")
    assert conflict.returncode == 4 and "version_conflict" in conflict.stderr
    assert ctl("put", key, "not json").returncode == 2
    assert ctl("get", key + "-missing").returncode == 3
    (tmp_path / "t.json").write_text(
        json.dumps({"ops": [{"op": "put", "key": key + "2", "value": True}], "checks": []})
    )
    assert json.loads(ctl("txn", "--file", str(tmp_path / "t.json")).stdout)["results"]
    history = ctl("history", "--key", key, "--format", "csv")
    # the header, three committed puts and the refused compare-and-set
    assert history.returncode == 0 and len(history.stdout.strip().splitlines()) == 5
    assert ctl("del", key).returncode == 0
    assert ctl("get", key).returncode == 3
    assert ctl("--token", "wrong-token", "get", key).returncode == 6
    status = ctl("--output", "json", "status")
    assert status.returncode == 0 and json.loads(status.stdout)["agreed_leader"] is True
    assert ctl("--urls", "http://127.0.0.1:1", "status").returncode == 5


def test_export_then_import_with_a_diff_a_dry_run_and_a_refusal(ctl, tmp_path):
    prefix = f"imp-{secrets.token_hex(3)}/"
    for name, value in (("a", 1), ("b", 2), ("c", 3)):
        assert ctl("put", prefix + name, str(value)).returncode == 0
    exported = ctl("export", prefix)
    assert json.loads(exported.stdout) == {prefix + "a": 1, prefix + "b": 2, prefix + "c": 3}
    wanted = {prefix + "a": 1, prefix + "b": 20, prefix + "d": {"new": True}}
    (tmp_path / "want.yaml").write_text(
        "\n".join(f"{k}: {json.dumps(v)}" for k, v in wanted.items()) + "\n"
    )
    before = state(ctl.cluster)
    dry = ctl("import", str(tmp_path / "want.yaml"), "--prefix", prefix, "--dry-run")
    assert dry.returncode == 0 and json.loads(dry.stdout) == {"changes": 3, "applied": False}
    assert f"~ {prefix}b: 2 -> 20" in dry.stderr and f"- {prefix}c: 3" in dry.stderr
    assert f"+ {prefix}d" in dry.stderr
    assert state(ctl.cluster) == before  # a dry run changes nothing

    # A refused import (a value too deep to store) changes nothing either: one txn.
    deep: object = 0
    for _ in range(150):
        deep = [deep]
    (tmp_path / "bad.json").write_text(json.dumps({prefix + "a": 5, prefix + "z": deep}))
    refused = ctl("import", str(tmp_path / "bad.json"), "--prefix", prefix)
    assert refused.returncode != 0
    assert state(ctl.cluster) == before

    done = ctl("import", str(tmp_path / "want.yaml"), "--prefix", prefix)
    assert done.returncode == 0 and json.loads(done.stdout)["applied"] is True
    assert json.loads(ctl("export", prefix).stdout) == wanted
    rows = ctl.cluster.query(
        "n1",
        "SELECT DISTINCT index FROM configstore_history WHERE key LIKE %s AND command = 'txn'",
        [prefix + "%"],
    )
    assert len(rows) == 1  # the whole import in one log index
