"""Exactly-once writes by Idempotency-Key on a real 3-node cluster (PostgreSQL, broker,
Celery workers, web servers): racing requests with one key, retries through another node,
and two users with one key. The outcome of a key is decided in the replicated state machine,
so every node holds the same answer.

Each test user is written straight into every node's database with the same username and
token but a different database id (as a cluster converted from per-node users may hold
them: ids are node-local), which is what used to namespace the keys."""

from __future__ import annotations

import secrets
import threading

import pytest
import requests

from configstore.api.auth import hash_secret
from devcluster.localcluster import LocalCluster
from tests.conftest import start_cluster, stop_cluster

pytestmark = pytest.mark.cluster

#: username -> its database id on n1, n2, n3: dave on n1 has erin's id on n2, and back.
USERS = {
    "dave": (1001, 1002, 1003),
    "erin": (1002, 1001, 1004),
    "carol": (1003, 1004, 1001),
}


class Cluster:
    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.tokens = {name: secrets.token_hex(20) for name in USERS}
        for index, node in enumerate(cluster.ids):
            for name, ids in USERS.items():
                cluster.query(
                    node,
                    "INSERT INTO auth_user (id, password, is_superuser, username, first_name, "
                    "last_name, email, is_staff, is_active, date_joined) VALUES "
                    "(%s, '!', true, %s, '', '', '', false, true, now()) RETURNING id",
                    [ids[index], name],
                )
                cluster.query(
                    node,
                    "INSERT INTO configstore_api_token (token_id, user_id, name, key_hash, scope, "
                    "created_at, created_index) VALUES (%s, %s, 'test', %s, 'write', now(), 0) "
                    "RETURNING token_id",
                    [f"t-{name}", ids[index], hash_secret(self.tokens[name])],
                )

    def put(self, node: str, user: str, key: str, value, idempotency_key: str, **body):
        return requests.put(
            f"{self.cluster.web_url(node)}/api/v1/keys/{key}",
            json={"value": value, **body},
            headers={
                "Authorization": f"Token {self.tokens[user]}",
                "Idempotency-Key": idempotency_key,
            },
            timeout=60,
        )

    def entries(self, *keys: str) -> dict[str, list]:
        """Each node's (key, value, version) rows for `keys`, once every node has applied
        everything the cluster chose so far (a linearizable read on each)."""
        found = {}
        for node in self.cluster.ids:
            read = requests.get(
                f"{self.cluster.web_url(node)}/api/v1/keys/?prefix=idem/",
                headers={"Authorization": f"Token {self.tokens['carol']}"},
                timeout=60,
            )
            assert read.status_code == 200, read.text
            found[node] = self.cluster.query(
                node,
                "SELECT key, value, version FROM configstore_entry WHERE key = ANY(%s) "
                "ORDER BY key",
                [list(keys)],
            )
        return found

    def history(self, *keys: str) -> dict[str, list]:
        return {
            node: self.cluster.query(
                node,
                "SELECT index, key, new_value, new_version, outcome, error, idempotency_key "
                "FROM configstore_history WHERE key = ANY(%s) ORDER BY index, id",
                [list(keys)],
            )
            for node in self.cluster.ids
        }


@pytest.fixture(scope="module")
def nodes(servers):
    cluster = start_cluster(servers, prefix="configstore-idem-", web=True)
    try:
        yield Cluster(cluster)
    finally:
        stop_cluster(cluster)


def race(*calls):
    """Run the calls at the same moment, each in its own thread; their responses in order."""
    barrier = threading.Barrier(len(calls))
    responses = [None] * len(calls)

    def run(i, call):
        barrier.wait()
        responses[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    return responses


@pytest.mark.parametrize("second_node", ["n1", "n2"])
def test_racing_requests_with_one_key_and_different_bodies_one_201_one_409(nodes, second_node):
    for round_ in range(4):
        tag = secrets.token_hex(4)
        k1, k2 = f"idem/race{tag}-1", f"idem/race{tag}-2"
        idem = f"race-{tag}"
        first, second = race(
            lambda k1=k1, idem=idem: nodes.put("n1", "carol", k1, {"body": 1}, idem),
            lambda k2=k2, idem=idem: nodes.put(second_node, "carol", k2, {"body": 2}, idem),
        )
        statuses = sorted([first.status_code, second.status_code])
        assert statuses == [201, 409], (round_, first.text, second.text)
        won, lost = (first, second) if first.status_code == 201 else (second, first)
        assert lost.json()["error"] == "idempotency_key_reused"
        # The 201 names the write that is in the log, on every node; the other is nowhere.
        body = won.json()
        entries = nodes.entries(k1, k2)
        assert all(rows == [(body["key"], body["value"], 1)] for rows in entries.values()), entries
        history = nodes.history(k1, k2)
        committed = [row for row in history["n1"] if row[4] == "committed"]
        assert [(row[0], row[1]) for row in committed] == [(body["modified_index"], body["key"])]
        assert history["n1"] == history["n2"] == history["n3"]


def test_a_retry_through_another_node_is_applied_once_and_answered_the_same(nodes):
    key, idem = f"idem/retry{secrets.token_hex(4)}", f"retry-{secrets.token_hex(4)}"
    first = nodes.put("n1", "carol", key, {"n": 1}, idem, reason="first try")
    assert first.status_code == 201, first.text
    for node in ("n2", "n3", "n1"):
        retry = nodes.put(node, "carol", key, {"n": 1}, idem, reason="first try")
        assert retry.status_code == 201, retry.text
        assert retry.json() == first.json()
        for header in ("ETag", "X-Configstore-Index", "X-Configstore-Request-Id"):
            assert retry.headers[header] == first.headers[header]
    entries = nodes.entries(key)
    assert all(rows == [(key, {"n": 1}, 1)] for rows in entries.values()), entries
    history = nodes.history(key)
    assert [row[3] for row in history["n2"]] == [1]
    assert history["n1"] == history["n2"] == history["n3"]
    # The same key with another body, through any node: 409, nothing written.
    other = nodes.put("n3", "carol", key, {"n": 2}, idem, reason="first try")
    assert (other.status_code, other.json()["error"]) == (409, "idempotency_key_reused")
    assert nodes.entries(key) == entries


def test_two_users_with_one_key_do_not_collide(nodes):
    """dave's database id on n1 is erin's on n2: keys namespaced by that id collided."""
    idem, tag = f"shared-{secrets.token_hex(4)}", secrets.token_hex(4)
    dave = nodes.put("n1", "dave", f"idem/dave{tag}", "d", idem)
    erin = nodes.put("n2", "erin", f"idem/erin{tag}", "e", idem)
    assert (dave.status_code, erin.status_code) == (201, 201), (dave.text, erin.text)
    entries = nodes.entries(f"idem/dave{tag}", f"idem/erin{tag}")
    assert all(
        rows == [(f"idem/dave{tag}", "d", 1), (f"idem/erin{tag}", "e", 1)]
        for rows in entries.values()
    ), entries
