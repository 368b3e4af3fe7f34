"""Brute-force protection on a real 3-node cluster (granian, configstore.asgi, PostgreSQL,
Celery): a password guesser on the admin login and a token guesser on the API are locked out
of the node they guess on, for the cool-off or the window, even with the right secret; the
other nodes are not (lockouts are per node: see the README, "Brute-force protection"), and
nothing reaches the replicated state.

Short cool-off and window here (the cluster's environment), so each test takes seconds."""

from __future__ import annotations

import secrets
import time

import pytest
import requests

from tests.configstore.admin_html import Page
from tests.configstore.test_fuzz_api import replicated
from tests.conftest import start_cluster, stop_cluster

pytestmark = pytest.mark.cluster

LOGIN_LIMIT = 5
COOLOFF_S = 3
TOKEN_LIMIT = 10
TOKEN_WINDOW_S = 4
KEYS = "/api/v1/keys/?consistency=stale"


@pytest.fixture(scope="module")
def cluster(servers):
    cluster = start_cluster(
        servers,
        prefix="configstore-brute-",
        web=True,
        extra_env={
            "CONFIGSTORE_LOGIN_FAILURE_LIMIT": str(LOGIN_LIMIT),
            "CONFIGSTORE_LOGIN_COOLOFF_MINUTES": str(COOLOFF_S / 60),
            "CONFIGSTORE_TOKEN_FAILURE_LIMIT": str(TOKEN_LIMIT),
            "CONFIGSTORE_TOKEN_FAILURE_WINDOW_S": str(TOKEN_WINDOW_S),
        },
    )
    try:
        cluster.password = cluster.ensure_admin()
        yield cluster
    finally:
        stop_cluster(cluster)


def sign_in(cluster, node: str, password: str) -> requests.Response:
    """One attempt at the admin login form of `node`, as a browser makes it."""
    session = requests.Session()
    url = cluster.web_url(node) + "/admin/login/?next=/admin/"
    form = Page(session.get(url, timeout=30).text)
    return session.post(
        url,
        data=form.form_data(username="admin", password=password),
        allow_redirects=False,
        timeout=30,
    )


def signed_in(response: requests.Response) -> bool:
    return response.status_code == 302 and response.headers["Location"] == "/admin/"


def test_five_wrong_passwords_lock_the_admin_out_of_that_node_until_the_cool_off(cluster):
    for _ in range(LOGIN_LIMIT - 1):
        assert sign_in(cluster, "n1", "wrong").status_code == 200  # the form, with its error
    locked = sign_in(cluster, "n1", "wrong")
    assert locked.status_code == 429, locked.text[:300]
    assert "Too many failed sign-ins" in locked.text
    assert locked.headers["Retry-After"] == str(COOLOFF_S)
    refused = sign_in(cluster, "n1", cluster.password)  # the right password: refused too
    assert refused.status_code == 429
    assert signed_in(sign_in(cluster, "n2", cluster.password))  # per node
    time.sleep(COOLOFF_S + 0.5)  # the cool-off counts from the last refused attempt
    assert signed_in(sign_in(cluster, "n1", cluster.password))


def test_bad_tokens_lock_the_address_out_of_that_nodes_api_until_the_window_ends(cluster):
    before = replicated(cluster)
    n1 = cluster.web_url("n1") + KEYS

    def get(url: str, token: str) -> requests.Response:
        return requests.get(url, headers={"Authorization": f"Token {token}"}, timeout=30)

    for _ in range(TOKEN_LIMIT):
        assert get(n1, secrets.token_hex(20)).status_code == 401
    guess = get(n1, secrets.token_hex(20))
    valid = get(n1, cluster.api_token)
    for answer in (guess, valid):
        assert answer.status_code == 429, answer.text[:300]
        assert answer.headers["Content-Type"].startswith("application/json")
        assert answer.json()["error"] == "too_many_failures" and answer.json()["detail"]
        assert 1 <= int(answer.headers["Retry-After"]) <= TOKEN_WINDOW_S
    assert get(cluster.web_url("n2") + KEYS, cluster.api_token).status_code == 200  # per node
    time.sleep(int(valid.headers["Retry-After"]))
    assert get(n1, cluster.api_token).status_code == 200
    assert cluster.processes["n1"].web.poll() is None
    assert replicated(cluster) == before
