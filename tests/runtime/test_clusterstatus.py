"""`manage.py clusterstatus`'s exit codes, on real processes: 0 with a quorum and an agreed
leader (a real 3-node cluster), 5 when the named nodes publish no status (no quorum), 2
when CONFIGSTORE_PEERS is not set (it names no default cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.cluster


def clusterstatus(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "clusterstatus", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_clusterstatus_exit_codes(make_cluster):
    cluster = make_cluster()
    cluster.wait_for_leader()
    env = {**os.environ, **cluster.env("n1")}
    done = clusterstatus(env, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["agreed_leader"] is True

    nowhere = ",".join(f"n{i}=redis://127.0.0.1:1/{i}" for i in (1, 2, 3))  # nothing listens
    done = clusterstatus({**env, "CONFIGSTORE_PEERS": nowhere})
    assert done.returncode == 5, (done.stdout, done.stderr)
    assert "0/3 nodes reachable" in done.stdout and "no quorum" in done.stderr

    unset = {k: v for k, v in env.items() if k != "CONFIGSTORE_PEERS"}
    done = clusterstatus(unset)
    assert done.returncode == 2 and "set CONFIGSTORE_PEERS" in done.stderr
