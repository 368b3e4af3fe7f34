"""The transport's own Redis path: the task message it pushes is the one Celery's
`send_task` sends, and the inbox drains task messages as the worker would receive them."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
import redis

from consensus.transport import (
    DELIVER_TASK,
    SUBMIT_TASK,
    CeleryTransport,
    Inbox,
    Undeliverable,
    queue_name,
    read_task_message,
    task_message,
)

MAX_BYTES = 1 << 20

#: Fields that differ from one message to the next (ids, times, the sending process).
VARYING_HEADERS = {"id", "root_id", "expires", "origin"}
VARYING_PROPERTIES = {"correlation_id", "delivery_tag", "reply_to"}


@pytest.fixture
def broker(servers):
    """A Redis broker URL and a node id whose queue nothing else uses; cleaned after."""
    url = servers[1].format(index=0)
    node = f"probe-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    yield url, node
    for key in client.scan_iter(f"*{queue_name(node)}*"):
        client.delete(key)
    client.close()


def _pushed(url: str, node: str) -> list[dict]:
    client = redis.Redis.from_url(url)
    try:
        return [json.loads(m) for m in reversed(client.lrange(queue_name(node), 0, -1))]
    finally:
        client.close()


def test_the_pushed_task_message_is_the_one_send_task_sends(broker):
    url, node = broker
    envelope = {"body": '{"v":1}', "mac": "ab" * 32}
    CeleryTransport({node: url}, direct=False).send(node, envelope)
    CeleryTransport({node: url}, direct=True).send(node, envelope)
    by_celery, ours = _pushed(url, node)

    assert set(ours) == set(by_celery)
    for part, varying in (("headers", VARYING_HEADERS), ("properties", VARYING_PROPERTIES)):
        assert set(ours[part]) == set(by_celery[part])
        for name, value in by_celery[part].items():
            if name not in varying:
                assert ours[part][name] == value, f"{part}.{name}"
    for message in (by_celery, ours):
        assert message["headers"]["task"] == DELIVER_TASK
        assert message["headers"]["root_id"] == message["headers"]["id"]
        assert message["properties"]["delivery_info"]["routing_key"] == queue_name(node)
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(
        base64.b64decode(by_celery["body"])
    )
    assert ours["headers"]["expires"] > by_celery["headers"]["expires"]  # sent later, same TTL


def test_the_inbox_drains_messages_oldest_first_with_their_task_and_delay(broker):
    url, node = broker
    transport = CeleryTransport({node: url})
    transport.send(node, {"n": 1})
    transport.send(node, {"n": 2}, task=SUBMIT_TASK)
    transport.send(node, {"n": 3}, delay=30.0)  # the fault switch's delay: through send_task
    refused = []
    inbox = Inbox(node, url, max_bytes=MAX_BYTES, refused=lambda *r: refused.append(r))

    drained = inbox.drain(2)
    assert [(d.task, d.envelope, d.eta, d.expired()) for d in drained] == [
        (DELIVER_TASK, {"n": 1}, None, False),
        (SUBMIT_TASK, {"n": 2}, None, False),
    ]
    (delayed,) = inbox.drain(10)
    assert delayed.envelope == {"n": 3}
    assert delayed.eta_timestamp() == pytest.approx(time.time() + 30.0, abs=5.0)
    assert inbox.drain(10) == []
    assert refused == []


def test_the_inbox_drops_oversized_items_inside_redis_and_garbage_by_reason(broker):
    url, node = broker
    client = redis.Redis.from_url(url)
    client.lpush(queue_name(node), b"x" * 5000)
    client.lpush(queue_name(node), b"\x00\xffgarbage")
    client.lpush(queue_name(node), b'"just a string"')
    CeleryTransport({node: url}).send(node, {"n": 1})
    refused = []
    inbox = Inbox(node, url, max_bytes=4000, refused=lambda *r: refused.append(r[0]))

    assert [d.envelope for d in inbox.drain(10)] == [{"n": 1}]
    assert refused == ["oversized", "undecodable", "not_a_task"]
    assert client.llen(queue_name(node)) == 0


def test_an_expired_message_is_marked_and_garbage_is_not_a_message():
    stale = read_task_message(
        task_message(DELIVER_TASK, [{"n": 1}], "q", expires=-1.0).encode(), MAX_BYTES
    )
    assert stale.expired() and stale.envelope == {"n": 1}
    fresh = read_task_message(task_message(DELIVER_TASK, [{"n": 1}], "q").encode(), MAX_BYTES)
    assert not fresh.expired()
    for garbage, reason in (
        (b"", "undecodable"),
        (b"\x00\xffgarbage", "undecodable"),
        (b"[" * 100_000, "undecodable"),
        (b"[]", "not_a_task"),
        (b'"just a string"', "not_a_task"),
        (b"{}", "not_a_task"),
        (b'{"headers": {}, "properties": {}, "body": "!!"}', "unknown_task"),
        (b"\xff", "undecodable"),
        (b"x" * (MAX_BYTES + 1), "oversized"),
    ):
        with pytest.raises(Undeliverable) as refused:
            read_task_message(garbage, MAX_BYTES)
        assert refused.value.reason == reason, garbage[:40]


def _tampered(change) -> bytes:
    message = json.loads(task_message(DELIVER_TASK, [{"n": 1}], "q"))
    change(message)
    return json.dumps(message).encode()


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["headers"].update(task="celery.backend_cleanup"),
        lambda m: m["headers"].update(id=7),
        lambda m: m["headers"].update(expires="tomorrow"),
        lambda m: m["headers"].update(eta=12),
        lambda m: m.update(
            body=base64.b64encode(b'[[1], {}, {"chain": [{"task": "x"}]}]').decode()
        ),
        lambda m: m.update(body=base64.b64encode(b"[[1, 2], {}, {}]").decode()),
        lambda m: m.update(body=base64.b64encode(b'[[1], {"a": 1}, {}]').decode()),
        lambda m: m.update(body="not base64!"),
        lambda m: m.update({"content-type": "application/x-python-serialize"}),
        lambda m: m["properties"].update(body_encoding="plain"),
    ],
)
def test_a_task_message_of_the_wrong_shape_is_refused(change):
    with pytest.raises(Undeliverable):
        read_task_message(_tampered(change), MAX_BYTES)


def test_what_celery_is_given_is_rebuilt_from_the_fields_read():
    message = json.loads(task_message(DELIVER_TASK, [{"n": 1}], "q"))
    message["headers"]["timelimit"] = "not a pair"
    message["properties"]["delivery_tag"] = {"nested": True}
    message["extra"] = "ignored"
    read = read_task_message(json.dumps(message).encode(), MAX_BYTES)
    rebuilt = json.loads(read.canonical("q"))
    assert rebuilt["headers"]["timelimit"] == [None, None]
    assert isinstance(rebuilt["properties"]["delivery_tag"], str)
    assert "extra" not in rebuilt
    assert rebuilt["headers"]["id"] == message["headers"]["id"]
    assert rebuilt["headers"]["expires"] == message["headers"]["expires"]
    assert read_task_message(read.canonical("q").encode(), MAX_BYTES) == read


@pytest.mark.parametrize("protocol", [2, 3])
def test_the_capped_parser_throws_an_oversized_item_away_and_keeps_the_connection(broker, protocol):
    from consensus.inbox import Oversized, capped_parser

    url, node = broker
    queue = queue_name(node)
    client = redis.Redis.from_url(url)
    for item in (b"first", b"x" * 3_000_000, b"second", b"y" * 1001):
        client.lpush(queue, item)
    pool = redis.ConnectionPool.from_url(url, protocol=protocol)
    pool.connection_kwargs["parser_class"] = capped_parser(1000, protocol)
    pool.connection_kwargs.pop("maint_notifications_config", None)
    capped = redis.Redis(connection_pool=pool)
    popped = [capped.brpop([queue], 1)[1] for _ in range(4)]
    assert popped[0] == b"first" and popped[2] == b"second"
    assert popped[1] == Oversized(3_000_000) and isinstance(popped[1], Oversized)
    assert popped[3] == Oversized(1001)
    assert capped.ping() and capped.llen(queue) == 0
    capped.close()
    pool.disconnect()


def test_a_peer_whose_broker_cannot_be_reached_is_skipped_for_a_second(broker):
    """The README's claim: after a failed publish the peer is not tried again for BACKOFF
    (1 s), so a dead broker costs one connection attempt per second, not one per message,
    and the other peers are served meanwhile."""
    url, live = broker
    transport = CeleryTransport({"dead": "redis://127.0.0.1:1/0", live: url})
    assert transport.send("dead", {"n": 1}) is False
    assert transport.send_errors == 1
    started = time.monotonic()
    for k in range(50):
        assert transport.send("dead", {"n": k}) is False
        assert transport.send(live, {"n": k}) is True
    assert time.monotonic() - started < 1.0
    assert transport.send_errors == 1  # skipped, not tried
    assert len(_pushed(url, live)) == 50
    time.sleep(max(0.0, started + 1.05 - time.monotonic()))
    assert transport.send("dead", {"n": 51}) is False
    assert transport.send_errors == 2  # tried again after the second
