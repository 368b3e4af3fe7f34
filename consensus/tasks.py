"""Celery tasks: thin. Decode nothing here; hand the envelope to the node's runtime."""

import logging

from celery import shared_task
from celery.worker.request import Request

from consensus import runtime
from consensus.transport import DELIVER_TASK, SUBMIT_TASK

log = logging.getLogger(__name__)


class UnackedRequest(Request):
    """The node's inbox is consumed without acks (settings: CELERY_TASK_QUEUES, no_ack):
    the broker forgot the message when it handed it over, so acknowledging it would only
    cost a useless round trip to the broker for every message."""

    def acknowledge(self):
        self.acknowledged = True


def _runtime():
    node = runtime.current()
    if node is None:
        log.error("an envelope reached a worker without a Paxos node; dropped")
    return node


@shared_task(name=DELIVER_TASK, ignore_result=True, Request=UnackedRequest)
def deliver(envelope) -> None:
    node = _runtime()
    if node is not None:
        node.deliver(envelope)


@shared_task(name=SUBMIT_TASK, ignore_result=True, Request=UnackedRequest)
def submit(envelope) -> None:
    node = _runtime()
    if node is not None:
        node.submit(envelope)
