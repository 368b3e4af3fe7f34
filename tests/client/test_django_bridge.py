"""The Django settings bridge (configstore_client.django) in a consuming service -- a Django
project of its own (tests/client/service), run as a process -- against a real 3-node
cluster: `config[key]`, attribute access and DEFAULTS; the template context processor;
`config_changed` once per change, in log order; a value failing the service's own schema is
not served (the last valid one is) and the system check says so; the cluster's schemas are
followed; an unreachable cluster (W001), a refused token (E002) and a misconfiguration
(E001) are reported by the system check; with the cluster away the service starts from
its cache file, or from its DEFAULTS."""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from configstore_client import Client

from devcluster.localcluster import free_ports
from tests.conftest import admin_web_cluster

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def cluster(servers):
    with admin_web_cluster(servers, "configstore-bridge-") as cluster:
        yield cluster


@pytest.fixture
def prefix() -> str:
    return f"svc-{secrets.token_hex(3)}/"


def urls(cluster) -> list[str]:
    return [cluster.web_url(n) for n in cluster.ids]


class Service:
    """The consuming service's process (tests/client/service/driver.py)."""

    def __init__(self, options: dict) -> None:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.client.service.settings",
            "SERVICE_CONFIGSTORE_CLIENT": json.dumps(options),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.client.service.driver"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def __call__(self, op: str, timeout: float = 30.0, **args):
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, f"the service did not answer {op} within {timeout}s"
        line = self.process.stdout.readline()
        assert line, f"the service exited: {self.process.stderr.read()[-2000:]}"
        result = json.loads(line)
        assert "exception" not in result, result["exception"]
        return result

    def stderr(self) -> str:
        return self.process.stderr.read() if self.process.poll() is not None else ""

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.fixture
def service():
    started: list[Service] = []

    def start(**options) -> Service:
        started.append(Service(options))
        return started[-1]

    yield start
    for one in started:
        one.close()


def ids(messages: list[dict]) -> list[str]:
    return [m["id"] for m in messages]


def test_reads_attributes_defaults_templates_and_a_clean_check(cluster, prefix, service, tmp_path):
    client = Client(urls(cluster), cluster.api_token)
    client.put(prefix + "timeout_ms", 250)
    client.put(prefix + "name", "payments")
    client.put("elsewhere/" + prefix + "k", 1)  # outside the prefix: not served
    app = service(
        URLS=urls(cluster),
        TOKEN=cluster.api_token,
        PREFIX=prefix,
        CACHE_PATH=str(tmp_path / "view.json"),
        DEFAULTS={prefix + "retries": 3, prefix + "name": "default name"},
    )
    assert app("get", key=prefix + "timeout_ms") == {"value": 250}
    assert app("attr", name="name") == {"value": "payments"}  # the cluster's over the default
    assert app("attr", name="retries") == {"value": 3}  # absent: the default
    assert app("get", key="elsewhere/" + prefix + "k") == {"missing": True}
    assert "missing" in app("attr", name="no_such_key")
    rendered = app(
        "render", template="{{ config.timeout_ms }} {{ config.name }} {{ config.stale }}"
    )
    assert rendered == {"text": "250 payments False"}
    state = app("state")
    assert state["items"] == {
        prefix + "timeout_ms": 250,
        prefix + "name": "payments",
        prefix + "retries": 3,
    }
    assert state["loaded"] and not state["from_cache"] and state["invalid"] == {}
    assert app("check")["messages"] == []


def test_each_change_is_signalled_once_in_log_order(cluster, prefix, service):
    client = Client(urls(cluster), cluster.api_token)
    client.put(prefix + "a", 1)
    app = service(URLS=urls(cluster), TOKEN=cluster.api_token, PREFIX=prefix)
    assert app("get", key=prefix + "a") == {"value": 1}  # starts the view: no signal for it
    client.put(prefix + "a", 2)
    client.put(prefix + "b", {"nested": [1, 2]})
    client.txn(
        [{"op": "put", "key": prefix + "a", "value": 3}, {"op": "delete", "key": prefix + "b"}]
    )
    last = client.put(prefix + "a", 3)  # the same value again: served unchanged, no signal
    assert app("wait", index=last.index)["reached"]
    assert app("signals")["signals"] == [
        [prefix + "a", 1, 2],
        [prefix + "b", None, {"nested": [1, 2]}],
        [prefix + "a", 2, 3],
        [prefix + "b", {"nested": [1, 2]}, None],
    ]
    assert app("get", key=prefix + "b") == {"missing": True}


def test_a_value_failing_the_services_schema_is_not_served(cluster, prefix, service):
    client = Client(urls(cluster), cluster.api_token)
    key = prefix + "timeout_ms"
    client.put(key, 250)
    app = service(
        URLS=urls(cluster),
        TOKEN=cluster.api_token,
        PREFIX=prefix,
        SCHEMAS={key: {"type": "integer", "maximum": 1000}},
    )
    assert app("get", key=key) == {"value": 250}
    bad = client.put(key, 5000, reason="a typo the cluster's schemas allow")
    assert app("wait", index=bad.index)["reached"]
    assert app("get", key=key) == {"value": 250}  # the last valid value
    (why,) = app("state")["invalid"].values()
    assert "5000 is greater than the maximum of 1000" in why
    (message,) = app("check")["messages"]
    assert message["id"] == "configstore_client.W003" and key in message["msg"]
    assert app("signals")["signals"] == []
    good = client.put(key, 500)
    assert app("wait", index=good.index)["reached"]
    assert app("get", key=key) == {"value": 500}
    assert app("state")["invalid"] == {} and app("check")["messages"] == []
    assert app("signals")["signals"] == [[key, 250, 500]]

    # The cluster's schemas are followed: one put on a namespace under the prefix after the
    # service started is known to it once the view passes it.
    schema = {"type": "object", "required": ["currency"]}
    put = requests.put(
        cluster.web_url("n2") + f"/api/v1/schemas/{prefix}limits/",
        json={"schema": schema},
        headers={"Authorization": f"Token {cluster.api_token}"},
        timeout=30,
    )
    assert put.status_code in (200, 201), put.text[:300]
    deadline = time.monotonic() + 20
    while schema not in app("schemas", key=prefix + "limits/eu")["schemas"]:
        assert time.monotonic() < deadline, "the service did not learn the cluster's schema"
        time.sleep(0.1)
    assert app("schemas", key=key)["schemas"] == [{"type": "integer", "maximum": 1000}]


def test_the_check_reports_a_refused_token_and_a_misconfiguration(cluster, prefix, service):
    refused = service(URLS=urls(cluster), TOKEN="cs_not_a_token", PREFIX=prefix)
    assert ids(refused("check")["messages"]) == ["configstore_client.E002"]
    wrong = service(URLS="http://127.0.0.1:1", TOKEN="x")  # a string, not a list
    (message,) = wrong("check")["messages"]
    assert message["id"] == "configstore_client.E001" and "URLS" in message["msg"]


def test_with_the_cluster_away_the_service_starts_from_its_cache_or_defaults(
    cluster, prefix, service, tmp_path
):
    client = Client(urls(cluster), cluster.api_token)
    client.put(prefix + "timeout_ms", 250)
    cache = str(tmp_path / "view.json")
    first = service(URLS=urls(cluster), TOKEN=cluster.api_token, PREFIX=prefix, CACHE_PATH=cache)
    assert first("get", key=prefix + "timeout_ms") == {"value": 250}
    first.close()  # writes its cache

    dead = [f"http://127.0.0.1:{port}" for port in free_ports(3)]
    away = service(URLS=dead, TOKEN=cluster.api_token, PREFIX=prefix, CACHE_PATH=cache)
    (message,) = away("check")["messages"]
    assert message["id"] == "configstore_client.W001" and cache in message["msg"]
    assert away("get", key=prefix + "timeout_ms") == {"value": 250}
    state = away("state")
    assert state["from_cache"] and state["stale"] and state["age"] is not None
    assert away("render", template="{{ config.stale }}") == {"text": "True"}

    bare = service(
        URLS=dead, TOKEN=cluster.api_token, PREFIX=prefix, DEFAULTS={prefix + "timeout_ms": 100}
    )
    assert bare("get", key=prefix + "timeout_ms") == {"value": 100}
    state = bare("state")
    assert not state["loaded"] and state["stale"] and state["age"] is None
