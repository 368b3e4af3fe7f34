"""The OpenAPI schema is the contract, exactly: Schemathesis (an OpenAPI-driven fuzzer, run
through its CLI) sends schema-valid and schema-violating requests to every operation of a
real 3-node cluster and checks every answer (`-c all`): no 5xx but 503, every status and
header documented, every response body as described, every schema-valid request accepted
(or refused only for the state it met: 404, 409, 412, 422) and every schema-violating one
refused. Bounded: a fixed seed, a few examples per operation, --max-time.

Its writes land on a cluster of its own (make_cluster: fresh databases), so they cannot
disturb any other test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.cluster

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SEED = 20261202
MAX_EXAMPLES = 12
MAX_SECONDS = 75


def test_schemathesis_finds_no_failure_against_a_real_cluster(make_cluster, tmp_path):
    cluster = make_cluster(web=True)
    cluster.ensure_admin()
    base = cluster.web_url("n1")
    schema = requests.get(f"{base}/api/schema/?format=json", timeout=30)
    assert schema.status_code == 200, schema.text[:300]
    schema_file = tmp_path / "openapi.json"
    schema_file.write_text(json.dumps(schema.json()))
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        str(schema_file),
        "--url",
        base,
        "--header",
        f"Authorization: Token {cluster.api_token}",
        "--checks",
        "all",
        # Hypothesis's "too many generated examples filtered out" is about how efficiently
        # it generates keys matching their (strict) pattern, not about the API: without this
        # the run could end without testing an operation at all.
        "--suppress-health-check",
        "filter_too_much",
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--max-time",
        str(MAX_SECONDS),
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--no-color",
        # No example database: with the fixed seed every run (and CI's clean clone) tests
        # the same requests, and nothing is written into the working tree.
        "--generation-database",
        "none",
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.configstore.schemathesis_hooks",
        "PYTHONPATH": str(ROOT),
    }
    run = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=MAX_SECONDS + 120
    )
    print(run.stdout[-20000:])
    print(run.stderr[-5000:])
    assert f"Seed: {SEED}" in run.stdout
    assert run.returncode == 0, "Schemathesis found failures (see the output above)"
    for node in cluster.ids:  # the run killed nothing
        processes = cluster.processes[node]
        assert processes.worker.poll() is None and processes.web.poll() is None, node
