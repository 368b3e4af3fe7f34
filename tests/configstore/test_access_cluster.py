"""Replicated identities on a real 3-node cluster (PostgreSQL, broker, Celery workers, web
servers): users, groups, tokens and prefix permissions changed on one node hold on every
node; a revocation holds everywhere as soon as a node applied it, and no write by the
revoked credential commits at a log index after it; the access history is the same on
every node."""

from __future__ import annotations

import secrets
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from devcluster.localcluster import LocalCluster
from tests.conftest import start_cluster, stop_cluster

pytestmark = pytest.mark.cluster


class Api:
    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        cluster.ensure_admin()
        self.admin = cluster.api_token

    def call(self, node, method, path, body=None, *, token=None, **params):
        return requests.request(
            method,
            self.cluster.web_url(node) + path,
            json=body,
            params=params or None,
            headers={"Authorization": f"Token {token or self.admin}"},
            timeout=60,
        )

    def applied(self, node: str) -> int:
        return self.cluster.query(node, "SELECT applied_index FROM consensus_applied_state")[0][0]

    def wait_applied(self, node: str, index: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.applied(node) < index:
            assert time.monotonic() < deadline, f"{node} did not apply {index}"
            time.sleep(0.02)

    def user(self, node: str, username: str, **fields) -> dict:
        answer = self.call(node, "POST", "/api/v1/access/users/", {"username": username, **fields})
        assert answer.status_code == 201, answer.text
        return answer.json()

    def token(self, node: str, username: str, **fields) -> tuple[str, str, int]:
        """(token id, secret, index)."""
        answer = self.call(
            node, "POST", "/api/v1/access/tokens/", {"username": username, "name": "t", **fields}
        )
        assert answer.status_code == 201, answer.text
        body = answer.json()
        return body["subject"].split(":", 1)[1], body["secret"], body["index"]


@pytest.fixture(scope="module")
def api(servers):
    # The race test sends hundreds of requests with a revoked token from this address on
    # purpose: the brute-force guard (tested in test_brute_force_cluster.py) would lock the
    # address out and answer every later test 429.
    cluster = start_cluster(
        servers,
        prefix="configstore-access-",
        web=True,
        extra_env={"CONFIGSTORE_TOKEN_FAILURE_LIMIT": "0"},
    )
    try:
        yield Api(cluster)
    finally:
        stop_cluster(cluster)


def name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def test_a_user_and_token_made_on_n1_work_on_n3(api):
    user = name("ann")
    api.user("n1", user, permissions=["configstore.change_entry"])
    _, secret, index = api.token("n1", user)
    api.wait_applied("n3", index)
    put = api.call("n3", "PUT", "/api/v1/keys/ann/k", {"value": 1}, token=secret)
    assert put.status_code == 201, put.text
    assert api.call("n2", "GET", "/api/v1/keys/ann/k", token=secret).json()["value"] == 1
    rows = api.cluster.query(
        "n1", "SELECT actor FROM configstore_history WHERE key = 'ann/k' AND outcome = 'committed'"
    )
    assert rows == [(user,)]


def test_a_prefix_permission_granted_on_n2_holds_on_n1(api):
    user, group = name("pat"), name("team")
    api.user("n2", user)
    _, secret, index = api.token("n2", user)
    api.wait_applied("n1", index)  # else n1 may not know the token yet: 401, not 403
    refused = api.call("n1", "PUT", "/api/v1/keys/team/a", {"value": 1}, token=secret)
    assert refused.status_code == 403
    prefixes = [{"prefix": "team/", "view": True, "change": True, "delete": False}]
    assert api.call("n2", "PUT", f"/api/v1/access/groups/{group}", {"prefixes": prefixes}).ok
    done = api.call("n2", "PATCH", f"/api/v1/access/users/{user}", {"groups": [group]})
    assert done.status_code == 200, done.text
    api.wait_applied("n1", done.json()["index"])
    assert (
        api.call("n1", "PUT", "/api/v1/keys/team/a", {"value": 2}, token=secret).status_code == 201
    )
    outside = api.call("n1", "PUT", "/api/v1/keys/other/a", {"value": 2}, token=secret)
    assert outside.status_code == 403
    assert api.call("n1", "DELETE", "/api/v1/keys/team/a", token=secret).status_code == 403


@pytest.mark.parametrize("how", ["delete_token", "deactivate"])
def test_a_revocation_on_n1_holds_on_n2_and_n3_once_they_applied_it(api, how):
    user = name("rev")
    api.user("n1", user, permissions=["configstore.change_entry"])
    token_id, secret, index = api.token("n1", user)
    for node in ("n2", "n3"):
        api.wait_applied(node, index)
        assert api.call(node, "GET", "/api/v1/keys/", token=secret).status_code == 200
    if how == "delete_token":
        revoked = api.call("n1", "DELETE", f"/api/v1/access/tokens/{token_id}", reason="left")
        assert revoked.status_code == 204, revoked.text
    else:
        revoked = api.call("n1", "PATCH", f"/api/v1/access/users/{user}", {"is_active": False})
        assert revoked.status_code == 200, revoked.text
    at = int(revoked.headers["X-Configstore-Index"])
    for node in ("n2", "n3"):
        api.wait_applied(node, at)
        for method, path, body in [
            ("GET", "/api/v1/keys/", None),
            ("PUT", f"/api/v1/keys/{user}/x", {"value": 1}),
        ]:
            answer = api.call(node, method, path, body, token=secret)
            assert answer.status_code == 401, (node, method, answer.text)


def test_no_write_by_a_revoked_token_commits_after_its_revocation(api):
    """Writers hammer n2 and n3 with a token while n1 revokes it: each write either commits
    at an index before the revocation's, or is refused (401 by a node that applied it, or
    rejected `forbidden` by the applier for one that was in flight)."""
    user = name("race")
    api.user("n1", user, permissions=["configstore.change_entry"])
    token_id, secret, index = api.token("n1", user)
    for node in api.cluster.ids:
        api.wait_applied(node, index)
    stop = threading.Event()
    answers: list[int] = []

    def write(node: str) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                answer = api.call(
                    node, "PUT", f"/api/v1/keys/{user}/{node}", {"value": n}, token=secret
                )
                answers.append(answer.status_code)
            except requests.RequestException:
                pass

    threads = [threading.Thread(target=write, args=(n,)) for n in ("n2", "n3") for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    revoked = api.call("n1", "DELETE", f"/api/v1/access/tokens/{token_id}")
    assert revoked.status_code == 204
    at = int(revoked.headers["X-Configstore-Index"])
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    for node in api.cluster.ids:
        api.wait_applied(node, at)
    for node in api.cluster.ids:
        committed_after = api.cluster.query(
            node,
            "SELECT count(*) FROM configstore_history WHERE actor = %s AND outcome = 'committed' "
            "AND index > %s",
            [user, at],
        )[0][0]
        assert committed_after == 0, node
    committed_before = api.cluster.query(
        "n1",
        "SELECT count(*) FROM configstore_history WHERE actor = %s AND outcome = 'committed'",
        [user],
    )[0][0]
    forbidden = api.cluster.query(
        "n1",
        "SELECT count(*) FROM configstore_history WHERE actor = %s AND error = 'forbidden'",
        [user],
    )[0][0]
    print(
        f"writes: {answers.count(200) + answers.count(201)} committed before the revocation at "
        f"{at} ({committed_before} history rows), {answers.count(401)} refused 401, "
        f"{forbidden} rejected forbidden at apply, {answers.count(403)} answered 403"
    )
    assert committed_before > 0 and answers.count(401) > 0
    assert set(answers) <= {200, 201, 401, 403}


def test_passwords_and_token_limits_hold_on_every_node(api):
    user = name("pw")
    api.user(
        "n1",
        user,
        password="first-password-1",
        is_staff=True,
        permissions=["configstore.change_entry"],
    )
    _, read_only, _ = api.token("n1", user, scope="read")
    _, narrow, _ = api.token("n1", user, prefix="narrow/")
    soon = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    _, brief, index = api.token("n1", user, expires_at=soon)
    api.wait_applied("n3", index)
    login = requests.Session()
    page = login.get(api.cluster.web_url("n3") + "/admin/login/", timeout=30)
    assert page.status_code == 200
    answer = login.post(
        api.cluster.web_url("n3") + "/admin/login/",
        data={
            "username": user,
            "password": "first-password-1",
            "csrfmiddlewaretoken": login.cookies["csrftoken"],
            "next": "/admin/",
        },
        headers={"Referer": api.cluster.web_url("n3") + "/admin/login/"},
        timeout=30,
        allow_redirects=False,
    )
    assert answer.status_code == 302, answer.text[:500]
    assert (
        api.call("n2", "PUT", "/api/v1/keys/pw/a", {"value": 1}, token=read_only).status_code == 403
    )
    assert api.call("n2", "GET", "/api/v1/keys/", token=read_only).status_code == 200
    assert api.call("n3", "PUT", "/api/v1/keys/pw/a", {"value": 1}, token=narrow).status_code == 403
    assert api.call("n3", "PUT", "/api/v1/keys/narrow/a", {"value": 1}, token=narrow).ok
    assert api.call("n2", "GET", "/api/v1/keys/", token=brief).status_code == 200
    time.sleep(3.2)
    assert api.call("n2", "GET", "/api/v1/keys/", token=brief).status_code == 401
    # A password changed on n1 holds on n3: the old one no longer logs in.
    changed = api.call("n1", "PATCH", f"/api/v1/access/users/{user}", {"password": "second-pw-22"})
    api.wait_applied("n3", changed.json()["index"])
    assert api.cluster.query("n3", "SELECT count(*) FROM auth_user WHERE username = %s", [user])
    for password, ok in (("first-password-1", False), ("second-pw-22", True)):
        s = requests.Session()
        s.get(api.cluster.web_url("n3") + "/admin/login/", timeout=30)
        done = s.post(
            api.cluster.web_url("n3") + "/admin/login/",
            data={
                "username": user,
                "password": password,
                "next": "/admin/",
                "csrfmiddlewaretoken": s.cookies["csrftoken"],
            },
            headers={"Referer": api.cluster.web_url("n3") + "/admin/login/"},
            timeout=30,
            allow_redirects=False,
        )
        assert (done.status_code == 302) is ok, (password, done.status_code)


def test_a_manager_cannot_make_a_superuser_and_others_cannot_manage(api):
    manager = name("mgr")
    api.user("n1", manager, permissions=["configstore.manage_access"])
    _, secret, index = api.token("n1", manager)
    api.wait_applied("n2", index)
    made = api.call("n2", "POST", "/api/v1/access/users/", {"username": name("x")}, token=secret)
    assert made.status_code == 201, made.text
    escalate = api.call(
        "n2", "PATCH", f"/api/v1/access/users/{manager}", {"is_superuser": True}, token=secret
    )
    assert escalate.status_code == 403, escalate.text
    assert escalate.json()["error"] == "forbidden"
    plain = name("plain")
    api.user("n1", plain, permissions=["configstore.change_entry"])
    _, plain_secret, index = api.token("n1", plain)
    api.wait_applied("n3", index)
    for method, path in (("GET", "/api/v1/access/users/"), ("GET", "/api/v1/access/history/")):
        assert api.call("n3", method, path, token=plain_secret).status_code == 403


def test_bad_access_input_is_refused_and_changes_nothing(api):
    before = api.cluster.query("n1", "SELECT count(*) FROM configstore_access_history")
    for method, path, body in [
        ("POST", "/api/v1/access/users/", {"username": "bad name!"}),
        ("POST", "/api/v1/access/users/", {"username": "x", "permissions": ["auth.add_user"]}),
        ("POST", "/api/v1/access/users/", {"username": "x", "unknown": 1}),
        ("PUT", "/api/v1/access/groups/g", {"prefixes": [{"prefix": "/bad"}]}),
        ("POST", "/api/v1/access/tokens/", {"username": "admin", "name": "t", "scope": "all"}),
    ]:
        answer = api.call("n1", method, path, body)
        assert answer.status_code == 400, (path, body, answer.text)
        assert answer.json()["error"]
    missing = api.call("n1", "PATCH", "/api/v1/access/users/nobody-at-all", {"is_active": False})
    assert missing.status_code == 404, missing.text
    after = api.cluster.query("n1", "SELECT count(*) FROM configstore_access_history")
    assert after[0][0] == before[0][0] + 1  # the 404 was applied: one rejected row


def test_the_access_history_is_the_same_on_every_node(api):
    index = max(api.applied(n) for n in api.cluster.ids)
    api.call("n1", "PUT", "/api/v1/access/groups/last-one", {})
    for node in api.cluster.ids:
        api.wait_applied(node, index + 1)
    query = (
        "SELECT index, request_id, command, subject, old::text, new::text, actor, reason, node, "
        "outcome, error, detail, at FROM configstore_access_history ORDER BY index, id"
    )
    histories = [api.cluster.query(n, query) for n in api.cluster.ids]
    assert histories[0] == histories[1] == histories[2]
    assert len(histories[0]) > 10
    assert not any("pbkdf2" in (row[4] or "") + (row[5] or "") for row in histories[0])
    identities = (
        "SELECT u.username, u.password, u.is_active, u.is_superuser, "
        "array(SELECT g.name FROM auth_group g JOIN auth_user_groups ug ON ug.group_id = g.id "
        "WHERE ug.user_id = u.id ORDER BY 1) FROM auth_user u ORDER BY 1"
    )
    users = [api.cluster.query(n, identities) for n in api.cluster.ids]
    assert users[0] == users[1] == users[2]


def test_the_node_processes_role_cannot_write_identities_outside_the_applier(api):
    """Connected as the node's processes are (the app role), a user, a membership or a token
    cannot be written on one node: only the applier may (migration 0005's guard)."""
    import psycopg

    user = name("guard")
    api.user("n1", user)
    token_id, _, index = api.token("n1", user)
    api.wait_applied("n2", index)
    before = api.cluster.query("n2", "SELECT username, is_superuser FROM auth_user ORDER BY 1")
    with psycopg.connect(api.cluster.app_database_url("n2"), autocommit=True) as conn:
        for sql in (
            "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, "
            "email, is_staff, is_active, date_joined) VALUES ('!', true, 'intruder', '', '', "
            "'', true, true, now())",
            f"UPDATE auth_user SET is_superuser = true WHERE username = '{user}'",
            f"DELETE FROM configstore_api_token WHERE token_id = '{token_id}'",
            "DELETE FROM auth_user_groups",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
    assert (
        api.cluster.query("n2", "SELECT username, is_superuser FROM auth_user ORDER BY 1") == before
    )
    assert api.cluster.query(
        "n2", "SELECT count(*) FROM configstore_api_token WHERE token_id = %s", [token_id]
    ) == [(1,)]
