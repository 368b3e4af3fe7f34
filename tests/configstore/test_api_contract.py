"""The error contract over DRF's test client (no cluster): hostile parameters and bodies,
CSV injection, unknown paths under CSRF, dependency outages raised anywhere in a request,
and the secrets check. Each test reproduces a reported attack (issue 9: items 8, 12, 13)
and fails on the code before the fix; each checks that nothing changed."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.checks import Error, Warning
from django.db import OperationalError
from rest_framework.test import APIClient

from configstore.api import errors
from configstore.checks import check_secrets
from consensus.cluster import leader_contact_age, parse_status
from tests.configstore.conftest import payload, replicated_state
from tests.configstore.test_api import KEYS, error_of

ROOT = Path(__file__).resolve().parent.parent.parent
STRONG = "k3J9x-Qw7vR2mZ8pL5tY1nB6cD4fG0hS"  # 32 characters, not a known default


@pytest.fixture
def seeded(log, users):
    """payments/timeout = 100 (v2)."""
    log.apply(payload("put", key="payments/timeout", value=50, actor="admin"))
    log.apply(payload("put", key="payments/timeout", value=100, actor="admin"))
    return log


# --------------------------------------------------------------- hostile parameters


@pytest.mark.parametrize(
    "path",
    [
        KEYS + "payments/timeout?wait_index=\u00b2",
        KEYS + "payments/timeout?wait_index=\u0663",  # ARABIC-INDIC DIGIT THREE
        "/api/v1/history/?since_index=\u00b2",
        "/api/v1/watch/?since_index=\u00b2&timeout=0",
        "/api/v1/history/?since_index=99999999999999999999",
        "/api/v1/keys/?page=\u00b9",
        "/api/v1/keys/?cursor=\u00b9",
        "/api/v1/history/?cursor=WyJhIl0%00",
        "/api/v1/keys/?page_size=0",
        "/api/v1/history/?actor=a%00b",
        "/api/v1/history/?request_id=%00",
        "/api/v1/watch/?timeout=1s",
    ],
)
def test_a_non_ascii_or_out_of_range_number_or_a_nul_in_a_query_is_a_400(seeded, clients, path):
    before = replicated_state()
    response = clients["reader"].get(path)
    assert response.status_code == 400, response.content[:300]
    assert error_of(response) == "invalid"
    assert replicated_state() == before


def test_json_nested_100000_deep_is_a_400_not_a_recursion_error(seeded, clients):
    before = replicated_state()
    body = "[" * 100_000 + "]" * 100_000
    response = clients["admin"].put(
        KEYS + "payments/deep", data='{"value": ' + body + "}", content_type="application/json"
    )
    assert response.status_code == 400, response.content[:300]
    assert error_of(response) == "parse_error"
    assert replicated_state() == before


@pytest.mark.parametrize("method", ["put", "delete"])
def test_a_chunked_body_is_refused_with_411_not_ignored(seeded, clients, method):
    before = replicated_state()
    response = getattr(clients["admin"], method)(
        KEYS + "payments/timeout",
        data='{"value": 1, "reason": "why"}' if method == "put" else '{"reason": "why"}',
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
    )
    assert response.status_code == 411, response.content[:300]
    assert error_of(response) == "length_required"
    assert replicated_state() == before


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_an_unsafe_method_on_an_unknown_api_path_is_a_json_404_not_a_csrf_page(db, method):
    client = APIClient(enforce_csrf_checks=True)
    response = getattr(client, method)(
        "/api/v1/nothing/here", data="{}", content_type="application/json"
    )
    assert response.status_code == 404, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    assert error_of(response) == "not_found"


# ---------------------------------------------------------------- outages, anywhere


def test_a_database_outage_outside_the_views_is_a_json_503_with_retry_after(rf):
    request = rf.get("/api/v1/keys/x")
    try:
        raise OperationalError("FATAL: sorry, too many clients already")
    except OperationalError:
        response = errors.server_error(request)
    assert (response.status_code, response["Retry-After"]) == (503, "1")
    assert b'"error": "database_unavailable"' in response.content


def test_a_database_outage_inside_a_view_is_a_json_503_with_retry_after(
    seeded, clients, monkeypatch
):
    from configstore import selectors

    def down(*args, **kwargs):
        raise OperationalError("connection to server at 127.0.0.1, port 1 failed")

    monkeypatch.setattr(selectors, "entry_with_index", down)
    response = clients["reader"].get(KEYS + "payments/timeout?consistency=stale")
    assert (response.status_code, response["Retry-After"]) == (503, "1")
    assert error_of(response) == "database_unavailable"


# --------------------------------------------------------------- the node's status


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\xffgarbage",
        b"[]",
        b'"just a string"',
        b"{}",
        b'{"time": "soon", "role": "leader", "leader": "n1", "quorum": true, '
        b'"commit_index": 1, "applied_index": 1}',
        b'{"time": 1e999, "role": "leader", "leader": "n1", "quorum": true, '
        b'"commit_index": 1, "applied_index": 1}',
        b'{"time": 1, "role": "leader", "leader": "n1", "quorum": true, '
        b'"commit_index": true, "applied_index": 1}',
        b"[" * 100_000,
    ],
)
def test_a_malformed_status_is_an_unknown_status(raw):
    assert parse_status(raw) is None


def test_a_well_formed_status_is_read_and_says_how_long_since_the_leader_was_heard():
    status = parse_status(
        b'{"time": 100.0, "role": "follower", "leader": "n2", "quorum": true, '
        b'"commit_index": 7, "applied_index": 5, "peers": {"n2": 0.25, "n3": null}}'
    )
    assert status is not None and status["commit_index"] == 7
    assert leader_contact_age(status, now=101.0) == pytest.approx(1.25)
    assert leader_contact_age({**status, "role": "leader"}, now=100.5) == pytest.approx(0.5)
    assert leader_contact_age({**status, "leader": None}, now=101.0) is None
    assert leader_contact_age({**status, "peers": {"n2": None}}, now=101.0) is None


# ----------------------------------------------------------------------- CSV export


def test_the_csv_export_neutralises_formulas(seeded, clients):
    formulas = ["=cmd|'/C calc'!A0", "+1+1", "-2+3+cmd|' /C calc'!A0", "@SUM(1)", "\tx", "\rx"]
    for i, reason in enumerate(formulas):
        seeded.apply(payload("put", key=f"csv/k{i}", value=f"={i}", actor="@evil", reason=reason))
    seeded.apply(payload("put", key="csv/negative", value=-5, actor="admin", reason="plain"))
    response = clients["reader"].get("/api/v1/history/?consistency=stale&format=csv&prefix=csv/")
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    by_key = {row["key"]: row for row in rows}
    for i, reason in enumerate(formulas):
        row = by_key[f"csv/k{i}"]
        assert row["reason"] == "'" + reason
        assert row["actor"] == "'@evil"
        assert row["new_value"] == f'"={i}"'  # JSON text: starts with a quote, not a formula
    assert (by_key["csv/negative"]["new_value"], by_key["csv/negative"]["reason"]) == (
        "-5",
        "plain",
    )
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "@", "\t", "\r")), row


# ------------------------------------------------------------------- the secrets


def test_the_development_secrets_fail_the_check_with_debug_off(settings, configure):
    settings.DEBUG = False
    settings.SECRET_KEY = "dev-insecure-secret-key-change-me"
    configure(secret="dev-cluster-secret-change-me")
    found = check_secrets()
    assert [(type(m), m.id) for m in found] == [
        (Error, "configstore.E001"),
        (Error, "configstore.E002"),
    ]


@pytest.mark.parametrize(
    "weak", ["short-but-random-9Xq", "x" * 40, "django-insecure-" + "a1b2c3" * 6]
)
def test_a_short_or_placeholder_secret_fails_the_check(settings, weak, configure):
    settings.DEBUG = False
    settings.SECRET_KEY = STRONG
    configure(secret=weak)
    assert [m.id for m in check_secrets() if m.is_serious()] == ["configstore.E001"]


def test_with_debug_on_a_weak_secret_is_a_warning_and_strong_ones_pass(settings, configure):
    settings.DEBUG = True
    settings.SECRET_KEY = STRONG
    configure(secret="dev-cluster-secret-change-me")
    assert [type(m) for m in check_secrets()] == [Warning]
    configure(secret=STRONG[::-1])
    assert check_secrets() == []


def _run(args: list[str], **env) -> subprocess.CompletedProcess:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("CONFIGSTORE_SECRET", "DJANGO_SECRET_KEY")
    }
    environment.update(DJANGO_DEBUG="0", **env)
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_manage_py_check_deploy_fails_and_a_web_server_refuses_to_start_with_default_secrets():
    checked = _run(["manage.py", "check", "--deploy"])
    assert checked.returncode != 0
    assert "configstore.E001" in checked.stderr and "configstore.E002" in checked.stderr
    started = _run(["-c", "import configstore.wsgi"])
    assert started.returncode != 0 and "refusing to start" in started.stderr
    strong = _run(
        ["-c", "import configstore.wsgi"], CONFIGSTORE_SECRET=STRONG, DJANGO_SECRET_KEY=STRONG[::-1]
    )
    assert strong.returncode == 0, strong.stderr


def test_a_worker_refuses_to_start_with_default_secrets():
    dead = "redis://127.0.0.1:1/0"  # it exits before it would connect
    worker = _run(
        ["-m", "celery", "-A", "configstore", "worker", "-P", "solo", "-Q", "consensus.zz",
         "-n", "zz@check", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        CELERY_BROKER_URL=dead, CONFIGSTORE_PEERS=f"n1={dead}",
    )  # fmt: skip
    assert worker.returncode != 0
    assert "refusing to start: configstore.E001" in worker.stderr
