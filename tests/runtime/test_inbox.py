"""A node's inbox cannot be poisoned (issue 9, items 1, 6 and 7), on real processes: a
3-node cluster of Celery workers on a real Redis and PostgreSQL, and items pushed onto a
node's queue `consensus.<id>` the way anyone who reaches its Redis could. After each
attack the worker is alive, the drops are counted by reason, nothing changed in the log,
and the cluster commits again through the attacked node."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time

import psutil
import pytest
import redis

from consensus.client import Committed
from consensus.transport import SUBMIT_TASK, queue_name, task_message
from tests.runtime.test_cluster import assert_identical, put, snapshot, wait_converged

pytestmark = pytest.mark.cluster


def _counters(cluster, node: str) -> dict:
    status = next(n for n in cluster.status()["nodes"] if n["node_id"] == node)
    return status.get("counters", {})


def _wait_for(predicate, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _queue(cluster, node: str) -> redis.Redis:
    return redis.Redis.from_url(cluster.broker_url(node))


def _worker_alive(cluster, node: str) -> bool:
    process = cluster.processes[node].worker
    return process is not None and process.poll() is None


def _consumed(cluster, node: str) -> None:
    """Wait until the node's worker has taken everything off its queue (or died)."""
    client = _queue(cluster, node)
    _wait_for(
        lambda: client.llen(queue_name(node)) == 0 or not _worker_alive(cluster, node),
        f"{node}'s queue to empty",
    )
    time.sleep(0.5)  # what was popped last is handled


def _celery_like(body: bytes, *, task: str = "consensus.deliver", **headers) -> bytes:
    """A JSON item that looks like a Celery task message but is not one of ours."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"task": task, "id": "x", **headers},
            "properties": {"body_encoding": "base64", "delivery_tag": "t"},
        }
    ).encode()


GARBAGE = {
    "undecodable": [b"\x00\xffgarbage", b"{not json", b"[" * 100_000],
    "not_a_task": [
        b"[]",
        b'"just a string"',
        b"42",
        b"{}",
        b'{"headers": "h", "properties": []}',
        _celery_like(b"[[], {}, {}]"),  # no argument
        _celery_like(b'[[{"body": "x", "mac": "y"}], {}, {"chain": [{"task": "x"}]}]'),
        _celery_like(b"[[1], {}, {}]", timelimit="not a pair", expires="tomorrow"),
        json.dumps({"body": "!!", "headers": {"task": "consensus.deliver", "id": "x"}}).encode(),
    ],
    "unknown_task": [
        _celery_like(b"[[], {}, {}]", task="celery.backend_cleanup"),
        _celery_like(b"[[1], {}, {}]", task=None),
    ],
}


def _attacked(make_cluster):
    """A fresh cluster with one write committed: (cluster, its leader, the leader's state)."""
    cluster = make_cluster()
    leader = cluster.wait_for_leader()
    assert isinstance(put(cluster, leader, "before/attack", 1), Committed)
    wait_converged(cluster)
    return cluster, leader, snapshot(cluster, leader)


def test_garbage_on_a_queue_neither_stops_the_worker_nor_changes_anything(make_cluster):
    cluster, leader, before = _attacked(make_cluster)
    client = _queue(cluster, leader)
    items = [item for reason in GARBAGE.values() for item in reason]
    for item in items:
        client.lpush(queue_name(leader), item)
    _consumed(cluster, leader)

    assert _worker_alive(cluster, leader), "the worker exited on a queue item"
    expected = {f"dropped_{reason}": len(items) for reason, items in GARBAGE.items()}
    _wait_for(
        lambda: all(_counters(cluster, leader).get(k, 0) >= n for k, n in expected.items()),
        f"the drops to be counted: {expected}",
    )
    assert snapshot(cluster, leader) == before
    after = put(cluster, leader, "after/garbage", 2)
    assert isinstance(after, Committed), after
    assert_identical(cluster)


def test_an_oversized_item_is_dropped_before_it_is_decoded(make_cluster):
    cluster, leader, before = _attacked(make_cluster)
    worker = psutil.Process(cluster.processes[leader].worker.pid)
    rss_before = worker.memory_info().rss
    # 50 MB: a real task message whose envelope has a bad MAC (what was reported).
    envelope = {"body": json.dumps({"v": 2, "pad": "x" * 50_000_000}), "mac": "0" * 64}
    item = task_message("consensus.deliver", [envelope], queue_name(leader))
    peak = [rss_before]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            try:
                peak[0] = max(peak[0], worker.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _queue(cluster, leader).lpush(queue_name(leader), item)
    del item, envelope
    _consumed(cluster, leader)
    sampling.set()
    sampler.join()

    assert _worker_alive(cluster, leader), "the worker exited on a queue item"
    _wait_for(
        lambda: _counters(cluster, leader).get("dropped_oversized", 0) >= 1,
        "the oversized item to be counted as dropped_oversized",
    )
    # Popped by the worker's blocking read or its drain, the item is thrown away as it is
    # read off the socket (or inside Redis): it never sits in the worker's memory.
    rss_after = worker.memory_info().rss
    print(
        f"worker RSS {rss_before / 1e6:.0f} MB, peak {peak[0] / 1e6:.0f} MB, "
        f"after {rss_after / 1e6:.0f} MB"
    )
    assert peak[0] - rss_before < 20e6, "the dropped item went through the worker's memory"
    assert snapshot(cluster, leader) == before
    assert isinstance(put(cluster, leader, "after/oversized", 2), Committed)
    assert_identical(cluster)


def test_replayed_envelopes_are_refused_and_change_nothing(make_cluster):
    cluster = make_cluster()
    leader = cluster.wait_for_leader()
    follower = next(n for n in cluster.ids if n != leader)
    assert isinstance(put(cluster, follower, "before/replay", 1), Committed)
    wait_converged(cluster)
    # Capture what reaches the follower while its worker is paused: the leader's
    # envelopes and the follower's own web tier's submission of a write.
    client = _queue(cluster, follower)
    cluster.pause_worker(follower)
    # The paused worker's pending blocking pop takes the first item pushed after the pause:
    # let a heartbeat be that one.
    time.sleep(0.3)
    outcome = []
    writer = threading.Thread(
        target=lambda: outcome.append(put(cluster, follower, "replayed/key", 7, timeout=15))
    )
    writer.start()
    try:
        _wait_for(
            lambda: any(
                json.loads(m)["headers"]["task"] == SUBMIT_TASK
                for m in client.lrange(queue_name(follower), 0, -1)
            ),
            "the submission to reach the paused worker's queue",
        )
        time.sleep(0.2)
        captured = client.lrange(queue_name(follower), 0, -1)
    finally:
        cluster.resume_worker(follower)
    writer.join()
    assert isinstance(outcome[0], Committed), outcome
    wait_converged(cluster)
    _consumed(cluster, follower)
    before = {n: snapshot(cluster, n) for n in cluster.ids}
    refused_before = _refused(cluster, follower)

    for item in reversed(captured):  # in the order they were first sent
        client.lpush(queue_name(follower), item)
    _consumed(cluster, follower)
    time.sleep(1.0)  # a replayed submission would be forwarded, proposed and applied by now

    assert _worker_alive(cluster, follower)
    assert {n: snapshot(cluster, n) for n in cluster.ids} == before, "a replay changed the log"
    _wait_for(
        lambda: _refused(cluster, follower) - refused_before >= len(captured),
        f"the {len(captured)} replays to be counted as refused",
    )
    assert _counters(cluster, follower).get("refused_replayed", 0) >= 1
    assert isinstance(put(cluster, follower, "after/replay", 2), Committed)
    assert_identical(cluster)


def _refused(cluster, node: str) -> int:
    counters = _counters(cluster, node)
    reasons = ("refused_replayed", "refused_stale", "dropped_expired")
    return sum(counters.get(reason, 0) for reason in reasons)


def test_a_restarted_worker_is_heard_and_its_old_incarnation_refused(make_cluster):
    cluster = make_cluster()
    leader = cluster.wait_for_leader()
    follower = next(n for n in cluster.ids if n != leader)
    # The leader's envelopes to the follower, sealed by the incarnation about to die.
    client = _queue(cluster, follower)
    cluster.pause_worker(follower)
    try:
        _wait_for(lambda: client.llen(queue_name(follower)) >= 3, "the leader's heartbeats")
        captured = client.lrange(queue_name(follower), 0, -1)
    finally:
        cluster.resume_worker(follower)
    cluster.kill_worker(leader, signal.SIGKILL)
    cluster.start_worker(leader)
    # The restarted worker is heard (a newer incarnation): writes commit through it. Each
    # try is a new submission: on a busy machine the worker may start after one expires.
    deadline = time.monotonic() + 60
    while not isinstance(put(cluster, leader, "after/restart", 1, timeout=2), Committed):
        assert time.monotonic() < deadline, "no write committed through the restarted worker"
    _consumed(cluster, follower)
    before = _counters(cluster, follower)
    for item in reversed(captured):
        client.lpush(queue_name(follower), item)
    _consumed(cluster, follower)
    # Refused as superseded (or, if the restart took long, stale or past the task's expiry).
    reasons = ("refused_superseded", "refused_replayed", "refused_stale", "dropped_expired")
    _wait_for(
        lambda: (
            sum(_counters(cluster, follower).get(r, 0) - before.get(r, 0) for r in reasons)
            >= len(captured)
        ),
        "the old incarnation's envelopes to be refused",
    )
    assert isinstance(put(cluster, follower, "after/replay", 2), Committed)
    assert_identical(cluster)
