"""State transfer on a real cluster: a node stopped while the others write and compact their
logs past it comes back, is told by its peers to install a snapshot, fetches one from a
peer's web server (peer-authenticated, in chunks) and installs it as the app role, then
replays the tail: it ends with the same state byte for byte, its promise kept, and every
node's consensus tables bounded by the tail. The endpoints refuse anyone but a peer."""

from __future__ import annotations

import json
import os
import random
import re
import time

import pytest
import redis
import requests

from configstore.transfer import HEADER, peer_header
from tests.configstore.test_admin import Browser
from tests.configstore.test_snapshot_cluster import digests
from tests.runtime.test_cluster import _promise, _wait, put, wait_converged

pytestmark = pytest.mark.cluster

TAIL = 20
SEED = int(os.environ.get("FUZZ_SEED", "20261208"))  # FUZZ_SEED=<n> replays a run
FUZZ = 300  # requests of the seeded fuzz


def _compacted(cluster, node: str) -> int:
    return cluster.query(node, "SELECT compacted_through FROM consensus_applied_state")[0][0]


def _status(cluster, node: str) -> dict:
    return next(n for n in cluster.status()["nodes"] if n["node_id"] == node)


def _installed(cluster, node: str) -> int:
    return _status(cluster, node)["snapshot_installed_index"]


def _compacted_status(cluster, node: str) -> int:
    return _status(cluster, node)["compacted_through"]


def test_a_node_behind_the_compacted_logs_catches_up_by_state_transfer(make_cluster):
    cluster = make_cluster(web=True, extra_env={"CONFIGSTORE_LOG_TAIL": str(TAIL)})
    cluster.password = cluster.ensure_admin()
    leader = cluster.wait_for_leader()
    away = next(n for n in cluster.ids if n != leader)
    others = [n for n in cluster.ids if n != away]
    for i in range(10):
        put(cluster, others[i % 2], f"before/k{i}", i)
    wait_converged(cluster)
    cluster.kill_worker(away)
    stopped_at = cluster.submitter(away).applied_index()
    promise = _promise(cluster, away)

    # While it is away: writes, a user and a token created, the admin's token kept.
    for i in range(120):
        outcome = put(cluster, others[i % 2], f"away/k{i}", {"i": i, "s": "x" * 200})
        assert type(outcome).__name__ == "Committed", outcome
    cluster.manage(others[0], "access", "user", "alice", "--perm", "configstore.view_entry")
    token = json.loads(
        cluster.manage(others[0], "access", "token", "alice", "--name", "t")
        .strip()
        .splitlines()[-1]
    )["secret"]
    for i in range(40):  # and more, so that the user's slots are compacted too
        put(cluster, others[i % 2], f"after/k{i}", i)
    _wait(
        lambda: all(_compacted(cluster, n) > stopped_at + TAIL for n in others),
        30,
        "the others to compact their logs past the stopped node",
    )
    assert _compacted(cluster, away) < stopped_at + 1

    # Its queue's envelopes from the last seconds (they expire after 10 s) are lost: it must
    # learn every slot it missed from its peers, whose logs no longer hold them.
    redis.Redis.from_url(cluster.broker_url(away)).delete(f"consensus.{away}")
    cluster.start_worker(away)
    index = wait_converged(cluster, timeout=60)
    assert index > stopped_at + 160
    log = (cluster.data_dir / "logs" / f"worker-{away}.log").read_text()
    assert "snapshot at slot" in log and "installed" in log, log[-3000:]
    assert _compacted(cluster, away) > stopped_at + TAIL  # installed: compacted through it
    assert _promise(cluster, away) >= promise  # the install left its promise alone

    # The same state, byte for byte, on every node; the installed node serves it.
    expected = digests(cluster, others[0])
    for node in cluster.ids:
        assert digests(cluster, node) == expected, node
    answer = requests.get(
        cluster.web_url(away) + "/api/v1/keys/away/k7",
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["value"] == {"i": 7, "s": "x" * 200}

    # The admin's cluster page shows each node's compaction point and the install; the
    # serving node's page, the snapshot it keeps.
    page = Browser(cluster, away).get("/admin/cluster/")
    row = page.by_id(f"node-{away}")
    assert f"at {_installed(cluster, away)}" in row, row
    assert str(_compacted_status(cluster, others[0])) in page.by_id(f"node-{others[0]}")
    served = [Browser(cluster, n).get("/admin/cluster/").by_id("snapshots") for n in others]
    assert any("Snapshots this node keeps for its peers: index" in s for s in served), served

    # Bounded: each node keeps about the tail of its log (and what is not applied yet).
    wait_converged(cluster)
    time.sleep(1.5)  # a compaction runs at each status publication (0.5 s)
    for node in cluster.ids:
        (chosen,) = cluster.query(node, "SELECT count(*) FROM consensus_chosen_slot")[0]
        (accepted,) = cluster.query(node, "SELECT count(*) FROM consensus_accepted_slot")[0]
        assert chosen <= TAIL + 5 and accepted <= TAIL + 5, (node, chosen, accepted)


def _fuzzed(rng: random.Random, cluster) -> tuple[str, dict, bool]:
    """A request a hostile client or a broken peer might send: a path (the offer or a chunk,
    or neither), and headers, signed right or wrong, with a Range or not; and whether it is
    a peer's (rightly signed, fresh, for the path the server sees)."""
    name = rng.choice(
        [
            "snapshot-1-" + "0" * 64 + ".gz",
            "../../etc/passwd",
            "%2e%2e%2fsecret",
            ".lock",
            "snapshot-99999999999999999999-" + "a" * 64 + ".gz",
            "".join(rng.choice("abc-._/%\u00e9") for _ in range(rng.randrange(1, 40))),
        ]
    )
    path = rng.choice(
        [
            f"/cluster/snapshot?at_least={rng.choice(['0', '1', '-1', 'x', '9' * 30, ''])}",
            f"/cluster/snapshot/{name}",
            "/cluster/snapshot?at_least=0&at_least=5",
        ]
    )
    secret = rng.choice([cluster.secret] * 3 + [cluster.secret + "x", ""])
    node = rng.choice(["n1", "n2"] * 2 + ["n9", "-", "n2 n3"])
    at = time.time() + rng.choice([0] * 4 + [-3600, 3600, 1e12])
    headers, cut = {}, False
    if rng.random() < 0.8:
        header = peer_header(node, "GET", path, now=at, secret=secret)
        if rng.random() < 0.2:
            header, cut = header[: rng.randrange(len(header))], True
        headers[HEADER] = header
    if rng.random() < 0.5:
        headers["Range"] = rng.choice(
            [
                "bytes=0-",
                "bytes=5-2",
                "bytes=-5",
                "bytes=0-0",
                "lines=1-",
                "bytes=" + "9" * 25 + "-",
            ]
        )
    peer = (
        HEADER in headers
        and not cut
        and node in ("n1", "n2")
        and secret == cluster.secret
        and abs(at - time.time()) < 60
        and all(c.isascii() and c.isalnum() or c in "/?=&-._" for c in path)
    )
    return path, headers, peer


def test_the_snapshot_endpoints_refuse_anyone_but_a_peer(make_cluster):
    cluster = make_cluster(web=True)
    cluster.wait_until_serving()
    url = cluster.web_url("n1")
    rng = random.Random(SEED)
    peers = 0
    for _ in range(FUZZ):  # seeded: a failure replays with the same SEED
        path, headers, peer = _fuzzed(rng, cluster)
        peers += peer
        answer = requests.get(url + path, headers=headers, timeout=30)
        assert answer.status_code < 500, (SEED, path, headers, answer.text)
        routed = path.startswith("/cluster/snapshot?") or re.fullmatch(
            r"/cluster/snapshot/[^/?%\\]+", path
        )
        if routed:  # one of the two endpoints: only a peer gets past 401
            assert (answer.status_code != 401) == peer, (SEED, path, headers, answer.text)
    assert peers >= 10, peers  # the fuzz also went past the authentication
    for headers in (
        {},
        {HEADER: "n2 " + str(int(time.time())) + " " + "0" * 64},
        {HEADER: "nobody 1 2"},
        {"Authorization": "Token whatever"},
    ):
        for path in ("/cluster/snapshot?at_least=0", "/cluster/snapshot/x.gz"):
            answer = requests.get(url + path, headers=headers, timeout=30)
            assert answer.status_code == 401, (path, headers, answer.text)
            assert answer.json()["error"] == "unauthenticated"
    assert requests.get(url + "/healthz", timeout=30).status_code == 200
    # Only a correctly signed offer may have taken a snapshot: nothing half written is left.
    assert not list((cluster.data_dir / "snapshots" / "n1").glob(".taking-*"))
    assert cluster.processes["n1"].web.poll() is None
