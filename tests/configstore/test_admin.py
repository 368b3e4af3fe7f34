"""The admin over HTTP against a real 3-node cluster (PostgreSQL, broker, Celery workers,
granian), signed in as a browser would be (session cookie, CSRF token): every save, delete
and revert commits through consensus and names its log index; a stale form, a lost race, a
missing quorum and a timeout each come back with the user's input and a clear error, and
every refusal leaves the state and the history unchanged on every node.

One cluster serves the module (clusters of one session share database names). The last two
tests pause, then kill, workers and restore them."""

from __future__ import annotations

import re
import secrets
import threading
import time

import pytest
import requests
from django.contrib.admin.utils import quote

from devcluster.localcluster import LocalCluster
from tests.configstore.admin_html import Page
from tests.conftest import start_cluster, stop_cluster

pytestmark = pytest.mark.cluster

ENTRIES = "/admin/configstore/entry/"
WRITE_TIMEOUT_MS = 2000  # how long a save waits for its commit (the not-confirmed test)
COMMITTED = re.compile(r"committed at log index (\d+)")


@pytest.fixture(scope="module")
def cluster(servers):
    cluster = start_cluster(
        servers,
        prefix="configstore-admin-",
        web=True,
        extra_env={"CONFIGSTORE_WRITE_TIMEOUT_MS": str(WRITE_TIMEOUT_MS)},
    )
    try:
        cluster.password = cluster.ensure_admin()
        yield cluster
    finally:
        stop_cluster(cluster)


class Browser:
    """A signed-in admin session on one node."""

    def __init__(self, cluster: LocalCluster, node: str, username="admin", password=None):
        self.cluster, self.node = cluster, node
        self.session = requests.Session()
        login = self.get("/admin/login/?next=/admin/")
        response = self.session.post(
            self.url("/admin/login/?next=/admin/"),
            data=login.form_data(username=username, password=password or cluster.password),
            timeout=60,
        )
        assert response.url.endswith("/admin/"), f"login as {username} on {node} failed"

    def url(self, path: str) -> str:
        return self.cluster.web_url(self.node) + path

    def get(self, path: str) -> Page:
        response = self.session.get(self.url(path), timeout=60)
        assert response.status_code == 200, (path, response.status_code)
        return Page(response.text)

    def post(self, path: str, data: dict) -> Page:
        """Submit a form; follows the redirect of a success (`redirected` tells)."""
        response = self.session.post(self.url(path), data=data, timeout=60)
        assert response.status_code == 200, (path, response.status_code)
        page = Page(response.text)
        page.redirected = bool(response.history)
        return page

    def status(self, method: str, path: str, data=None) -> int:
        token = self.session.cookies.get("csrftoken")
        response = self.session.request(
            method,
            self.url(path),
            data={"csrfmiddlewaretoken": token, **(data or {})},
            allow_redirects=False,
            timeout=60,
        )
        return response.status_code

    def create(self, key: str, value: str, reason: str = "created") -> int:
        """Add an entry through the admin; returns the log index it committed at."""
        form = self.get(ENTRIES + "add/")
        done = self.post(ENTRIES + "add/", form.form_data(key=key, value=value, reason=reason))
        return committed_index(done)


def committed_index(page: Page) -> int:
    (message,) = page.message_texts("success")
    return int(COMMITTED.search(message).group(1))


def change(key: str) -> str:
    return f"{ENTRIES}{quote(key)}/change/"


def unique(prefix: str) -> str:
    return f"{prefix}/{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def admins(cluster) -> dict[str, Browser]:
    return {node: Browser(cluster, node) for node in cluster.ids}


# --------------------------------------------------------------------------- the state


def applied_index(cluster, node: str) -> int:
    return cluster.query(node, "SELECT applied_index FROM consensus_applied_state")[0][0]


def wait_applied(cluster, index: int, nodes=None, timeout: float = 15.0) -> None:
    """Until every node (of `nodes`) has applied the log up to `index`."""
    deadline = time.monotonic() + timeout
    for node in nodes or cluster.ids:
        while applied_index(cluster, node) < index:
            assert time.monotonic() < deadline, f"{node} did not apply index {index}"
            time.sleep(0.02)


def state(cluster, node: str) -> dict:
    """What the replicated state machine holds on `node`: entries, history, applied index."""
    return {
        "entries": cluster.query(
            node,
            "SELECT key, value::text, version, created_index, modified_index, updated_by "
            "FROM configstore_entry ORDER BY key",
        ),
        "history": cluster.query(
            node,
            "SELECT index, request_id, operation, key, new_value::text, new_version, actor, "
            "reason, outcome FROM configstore_history ORDER BY index, id",
        ),
        "applied_index": applied_index(cluster, node),
    }


def settled_state(cluster) -> dict:
    """Every node's state, once every node has applied everything committed so far."""
    top = max(applied_index(cluster, node) for node in cluster.ids)
    wait_applied(cluster, top)
    states = {node: state(cluster, node) for node in cluster.ids}
    assert states["n1"] == states["n2"] == states["n3"]
    return states


def wait_healthy(cluster, timeout: float = 30.0) -> None:
    """Until every node says it reaches a quorum (after a fault)."""
    deadline = time.monotonic() + timeout
    for node in cluster.ids:
        while requests.get(cluster.web_url(node) + "/healthz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, f"{node} has no quorum"
            time.sleep(0.1)


def entry(cluster, node: str, key: str):
    rows = cluster.query(
        node,
        "SELECT value, version, modified_index, updated_by FROM configstore_entry WHERE key = %s",
        [key],
    )
    return rows[0] if rows else None


def history(cluster, node: str, key: str) -> list[tuple]:
    return cluster.query(
        node,
        "SELECT index, operation, new_value, new_version, actor, reason, node, outcome "
        "FROM configstore_history WHERE key = %s ORDER BY index, id",
        [key],
    )


# ----------------------------------------------------------------------------- saving


def test_a_save_commits_through_consensus_and_its_message_names_the_log_index(cluster, admins):
    key = unique("pay")
    form = admins["n1"].get(ENTRIES + "add/")
    done = admins["n1"].post(
        ENTRIES + "add/", form.form_data(key=key, value='{"ms": 100}', reason="launch")
    )
    assert done.redirected
    (message,) = done.message_texts("success")
    assert message.startswith(f"“{key}” created: version 1, committed at log index ")
    created = committed_index(done)
    wait_applied(cluster, created)
    for node in cluster.ids:
        assert entry(cluster, node, key) == ({"ms": 100}, 1, created, "admin")
        assert history(cluster, node, key) == [
            (created, "put", {"ms": 100}, 1, "admin", "launch", "n1", "committed")
        ]

    form = admins["n2"].get(change(key))
    assert form.fields["expected_version"] == "1"
    done = admins["n2"].post(
        change(key), form.form_data(value='{"ms": 250}', reason="slower upstream")
    )
    (message,) = done.message_texts("success")
    assert message.startswith(f"“{key}” saved: version 2, committed at log index ")
    saved = committed_index(done)
    assert saved > created
    wait_applied(cluster, saved)
    for node in cluster.ids:
        assert entry(cluster, node, key) == ({"ms": 250}, 2, saved, "admin")
        assert history(cluster, node, key)[-1] == (
            saved,
            "put",
            {"ms": 250},
            2,
            "admin",
            "slower upstream",
            "n2",
            "committed",
        )


def test_a_save_from_a_stale_form_is_refused_as_a_conflict_and_changes_nothing(cluster, admins):
    key = unique("stale")
    admins["n1"].create(key, '{"ms": 100, "retry": true}')
    first = admins["n1"].get(change(key))
    second = admins["n2"].get(change(key))  # another operator, another node, same version

    done = admins["n1"].post(
        change(key), first.form_data(value='{"ms": 200, "retry": true}', reason="peak hours")
    )
    first_index = committed_index(done)
    wait_applied(cluster, first_index)
    before = settled_state(cluster)

    mine = '{\n  "ms": 300,\n  "retry": false\n}'
    refused = admins["n2"].post(change(key), second.form_data(value=mine, reason="mine"))
    assert not refused.redirected
    conflict = refused.by_id("conflict")
    assert "changed after you loaded it. Nothing was committed." in conflict
    assert "You loaded version 1; it is now version 2." in conflict
    detail = " ".join(refused.by_class("cs-conflict-detail"))
    assert "peak hours" in detail and "admin" in detail and str(first_index) in detail
    meanwhile, yours = refused.by_class("cs-diff")
    assert '- "ms": 100,' in meanwhile and '+ "ms": 200,' in meanwhile
    assert '- "ms": 200,' in yours and '+ "ms": 300,' in yours and '+ "retry": false' in yours
    assert refused.textareas["value"] == mine
    assert settled_state(cluster) == before  # nothing went through the log

    # Saving again, having seen the conflict, replaces the version it showed.
    assert refused.fields["expected_version"] == "2"
    done = admins["n2"].post(change(key), refused.form_data())
    assert "saved: version 3" in done.message_texts("success")[0]
    wait_applied(cluster, committed_index(done))
    assert entry(cluster, "n3", key)[:2] == ({"ms": 300, "retry": False}, 3)


def test_two_saves_racing_from_two_nodes_one_commits_the_other_is_a_conflict(cluster, admins):
    key = unique("race")
    admins["n1"].create(key, "0")
    forms = {node: admins[node].get(change(key)) for node in ("n1", "n3")}
    results: dict[str, Page] = {}

    def save(node: str) -> None:
        results[node] = admins[node].post(
            change(key), forms[node].form_data(value=f'"{node}"', reason=f"race {node}")
        )

    threads = [threading.Thread(target=save, args=(node,)) for node in forms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = [node for node, page in results.items() if page.redirected]
    losers = [node for node, page in results.items() if page.by_id("conflict")]
    assert len(winners) == 1 and len(losers) == 1, {n: p.errors for n, p in results.items()}
    (winner,), (loser,) = winners, losers
    assert f"race {winner}" in " ".join(results[loser].by_class("cs-conflict-detail"))
    settled_state(cluster)
    for node in cluster.ids:
        assert entry(cluster, node, key)[:2] == (winner, 2)
        committed = [row for row in history(cluster, node, key) if row[-1] == "committed"]
        assert [row[2] for row in committed] == [0, winner]  # no lost update, no second write


# ----------------------------------------------------------------------------- delete


def test_delete_commits_through_consensus_with_its_reason(cluster, admins):
    key = unique("del")
    admins["n1"].create(key, '"bye"')
    url = f"{ENTRIES}{quote(key)}/delete/"
    confirm = admins["n2"].get(url)
    before = settled_state(cluster)
    missing = admins["n2"].post(url, confirm.form_data(reason=""))
    assert any("This field is required" in e for e in missing.by_class("errorlist"))
    assert settled_state(cluster) == before

    # Changed after the delete page was loaded: refused, nothing deleted.
    form = admins["n1"].get(change(key))
    changed = committed_index(
        admins["n1"].post(change(key), form.form_data(value='"still here"', reason="keep"))
    )
    wait_applied(cluster, changed)
    before = settled_state(cluster)
    refused = admins["n2"].post(url, confirm.form_data(reason="unused"))
    assert "Deleting again deletes version 2." in refused.by_id("conflict")
    assert settled_state(cluster) == before

    done = admins["n2"].post(url, refused.form_data())
    (message,) = done.message_texts("success")
    assert message.startswith(f"“{key}” deleted (it was version 2): committed at log index ")
    index = committed_index(done)
    wait_applied(cluster, index)
    for node in cluster.ids:
        assert entry(cluster, node, key) is None
        assert history(cluster, node, key)[-1] == (
            index,
            "delete",
            None,
            None,
            "admin",
            "unused",
            "n2",
            "committed",
        )


# ---------------------------------------------------------------------------- revert


def test_history_shows_the_diffs_and_revert_puts_an_old_value_back(cluster, admins):
    key = unique("rev")
    first = admins["n1"].create(key, '{"a": 1, "b": true}', reason="initial")
    form = admins["n1"].get(change(key))
    second = committed_index(
        admins["n1"].post(change(key), form.form_data(value='{"a": 2, "b": true}', reason="bump"))
    )
    wait_applied(cluster, second)

    page = admins["n3"].get(f"{ENTRIES}{quote(key)}/history/")
    items = page.by_class("cs-history-item")
    assert items[0].startswith(f"Log index {second}: changed, version 2")
    assert "bump" in items[0] and f"Log index {first}: created, version 1" in items[1]
    newest = page.by_class("cs-diff")[0]
    assert '- "a": 1,' in newest and '+ "a": 2,' in newest
    revert_url = page.href("Revert to this value")

    revert = admins["n3"].get(revert_url)
    assert '- "a": 2,' in revert.by_class("cs-diff")[0]
    before = settled_state(cluster)
    missing = admins["n3"].post(revert_url, revert.form_data(reason=""))
    assert any("This field is required" in e for e in missing.by_class("errorlist"))
    assert settled_state(cluster) == before

    done = admins["n3"].post(revert_url, revert.form_data(reason="undo the bump"))
    (message,) = done.message_texts("success")
    assert message.startswith(f"“{key}” reverted to the value of log index {first}: version 3")
    index = committed_index(done)
    wait_applied(cluster, index)
    for node in cluster.ids:
        assert entry(cluster, node, key)[:2] == ({"a": 1, "b": True}, 3)
        assert history(cluster, node, key)[-1][4:] == ("admin", "undo the bump", "n3", "committed")

    # The same revert page again is stale now: refused, nothing changes.
    before = settled_state(cluster)
    stale = admins["n3"].post(revert_url, revert.form_data(reason="once more"))
    assert "it is now version 3" in stale.by_id("conflict")
    assert settled_state(cluster) == before


# ------------------------------------------------------------------------ permissions


def _prefix_user(cluster, node: str, username: str, password: str) -> None:
    """A staff user whose group may change and delete under payments/ and view shared/,
    made through consensus (identities are replicated) and applied on every node."""
    team = f"{username}-team"
    cluster.manage(
        node,
        "access",
        "group",
        team,
        "--prefix",
        "payments/=view,change,delete",
        "--prefix",
        "shared/=view",
    )
    cluster.manage(
        node,
        "access",
        "user",
        username,
        "--password-stdin",
        "--staff",
        "--group",
        team,
        stdin=password + "\n",
    )
    cluster.wait_everywhere(
        "SELECT 1 FROM auth_user u JOIN auth_user_groups ug ON ug.user_id = u.id "
        "WHERE u.username = %s",
        [username],
    )


def test_a_prefix_limited_user_edits_its_prefix_and_only_reads_the_rest(cluster, admins):
    tag = secrets.token_hex(3)
    mine, shared, other = f"payments/{tag}", f"shared/{tag}", f"other/{tag}"
    for key in (mine, shared, other):
        admins["n1"].create(key, "1")
    _prefix_user(cluster, "n1", f"pay{tag}", "pw-" + tag)
    pay = Browser(cluster, "n1", f"pay{tag}", "pw-" + tag)

    listing = {text for _, text in pay.get(ENTRIES + f"?q={tag}").links}
    assert {mine, shared} <= listing and other not in listing

    view = pay.get(change(shared))
    assert "value" not in view.textareas and "_save" not in view.buttons
    assert not [href for href, _ in view.links if href.endswith("/delete/")]
    before = settled_state(cluster)
    data = {"value": "2", "reason": "r", "expected_version": "1", "loaded_index": "1"}
    assert pay.status("POST", change(shared), data) == 403
    assert pay.status("POST", f"{ENTRIES}{quote(shared)}/delete/", data) == 403
    assert pay.status("GET", change(other)) == 403
    assert settled_state(cluster) == before

    form = pay.get(change(mine))
    done = pay.post(change(mine), form.form_data(value="2", reason="my prefix"))
    index = committed_index(done)
    wait_applied(cluster, index)
    for node in cluster.ids:
        assert entry(cluster, node, mine) == (2, 2, index, f"pay{tag}")


# ---------------------------------------------------------------------------- schemas


def test_a_schema_commits_through_consensus_and_a_violation_names_its_path(cluster, admins):
    namespace = unique("limits") + "/"
    schema = '{"type": "object", "properties": {"retries": {"type": "integer", "minimum": 0}}}'
    form = admins["n1"].get("/admin/configstore/schema/add/")
    done = admins["n1"].post(
        "/admin/configstore/schema/add/",
        form.form_data(key=namespace, schema=schema, reason="guard the retries"),
    )
    (message,) = done.message_texts("success")
    assert message.startswith(f"“{namespace}” created: version 1, committed at log index ")
    wait_applied(cluster, committed_index(done))
    for node in cluster.ids:
        assert cluster.query(
            node, "SELECT version, updated_by FROM configstore_schema WHERE key = %s", [namespace]
        ) == [(1, "admin")]

    key = namespace + "api"
    admins["n2"].create(key, '{"retries": 2}')
    form = admins["n2"].get(change(key))
    assert namespace in form.by_id("schemas")
    before = settled_state(cluster)
    refused = admins["n2"].post(change(key), form.form_data(value='{"retries": -1}', reason="r"))
    (error,) = refused.by_class("errorlist")
    assert f"fails the schema of '{namespace}' at $.retries" in error
    assert refused.textareas["value"] == '{"retries": -1}'
    assert settled_state(cluster) == before


# ------------------------------------------------------------------ the cluster fails


def test_not_confirmed_in_time_says_it_may_still_commit_and_saving_again_applies_once(
    cluster, admins
):
    """Runs second to last: pauses node 1's worker, so a save through node 1 is submitted
    but cannot be confirmed in time; once resumed, it commits, once."""
    key = unique("slow")
    admins["n1"].create(key, '"before"')
    form = admins["n1"].get(change(key))
    before = settled_state(cluster)
    data = form.form_data(value='"after"', reason="through a paused node")
    cluster.pause_worker("n1")
    try:
        refused = admins["n1"].post(change(key), data)
        for node in cluster.ids:  # not committed when the page answered
            assert state(cluster, node) == before[node]
    finally:
        cluster.resume_worker("n1")
    failure = refused.by_id("failure")
    assert "Not confirmed in time: your change may still commit." in failure
    (request_id,) = refused.by_class("cs-request-id")
    assert f"submitted as request {request_id}" in failure
    assert refused.textareas["value"] == '"after"'

    deadline = time.monotonic() + 20  # it may still commit: it does, once resumed
    while not cluster.query(
        "n1", "SELECT 1 FROM consensus_applied_request WHERE request_id = %s", [request_id]
    ):
        assert time.monotonic() < deadline, "the request never committed"
        time.sleep(0.05)
    (row,) = [r for r in history(cluster, "n1", key) if r[5] == "through a paused node"]
    committed_at = row[0]

    again = admins["n1"].post(change(key), refused.form_data())  # the same form, unchanged
    (message,) = again.message_texts("success")
    assert message == f"“{key}” saved: version 2, committed at log index {committed_at}."
    settled_state(cluster)
    for node in cluster.ids:
        assert [r[2] for r in history(cluster, node, key)] == ["before", "after"]  # once
    wait_healthy(cluster)


def test_without_a_quorum_nothing_commits_and_the_input_is_kept(cluster, admins):
    """Runs last: it takes two workers down, then brings them back."""
    key = unique("quorum")
    admins["n1"].create(key, '{"on": true}')
    first = committed_index(
        admins["n1"].post(
            change(key),
            admins["n1"].get(change(key)).form_data(value='{"on": false}', reason="off"),
        )
    )
    wait_applied(cluster, first)
    browser = admins["n1"]
    form = browser.get(change(key))
    delete = browser.get(f"{ENTRIES}{quote(key)}/delete/")
    revert_url = browser.get(f"{ENTRIES}{quote(key)}/history/").href("Revert to this value")
    revert = browser.get(revert_url)
    add = browser.get(ENTRIES + "add/")
    before = settled_state(cluster)

    cluster.kill_worker("n2")
    cluster.kill_worker("n3")
    try:
        deadline = time.monotonic() + 20
        while requests.get(cluster.web_url("n1") + "/healthz", timeout=10).status_code != 503:
            assert time.monotonic() < deadline, "n1 still claims a quorum"
            time.sleep(0.2)
        value = '{\n  "on": "maybe"\n}'
        attempts = [
            (change(key), form.form_data(value=value, reason="flip")),
            (f"{ENTRIES}{quote(key)}/delete/", delete.form_data(reason="gone")),
            (revert_url, revert.form_data(reason="back")),
            (ENTRIES + "add/", add.form_data(key=key + "x", value="1", reason="new")),
        ]
        for path, data in attempts:
            refused = browser.post(path, data)
            assert not refused.redirected
            failure = refused.by_id("failure")
            assert "Nothing was committed: the cluster has no quorum." in failure, path
            assert "Node n1 cannot reach a majority of the cluster" in failure
            assert refused.fields["reason"] == data["reason"]
        assert refused.fields["key"] == key + "x"
        refused = browser.post(change(key), form.form_data(value=value, reason="flip"))
        assert refused.textareas["value"] == value
        assert state(cluster, "n1") == before["n1"]
        cluster_page = browser.get("/admin/cluster/")
        assert "cannot reach a quorum" in cluster_page.by_id("quorum")
    finally:
        cluster.start_worker("n2")
        cluster.start_worker("n3")
        cluster.wait_until_ready()
    assert settled_state(cluster) == before  # nothing was committed meanwhile
