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
    decode_task_message,
    queue_name,
    task_message,
)

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
    inbox = Inbox(node, url)

    drained = inbox.drain(2)
    assert [(d.task, d.envelope, d.eta, d.expired) for d in drained] == [
        (DELIVER_TASK, {"n": 1}, None, False),
        (SUBMIT_TASK, {"n": 2}, None, False),
    ]
    (delayed,) = inbox.drain(10)
    assert delayed.envelope == {"n": 3}
    assert delayed.eta == pytest.approx(time.time() + 30.0, abs=5.0)
    assert inbox.drain(10) == []


def test_an_expired_message_is_marked_and_garbage_is_not_a_message():
    stale = decode_task_message(task_message(DELIVER_TASK, [{"n": 1}], "q", expires=-1.0))
    assert stale.expired and stale.envelope == {"n": 1}
    fresh = decode_task_message(task_message(DELIVER_TASK, [{"n": 1}], "q"))
    assert not fresh.expired
    for garbage in (b"", b"[]", b"{}", b'{"headers": {}, "body": "!!"}', b"\xff"):
        assert decode_task_message(garbage) is None
