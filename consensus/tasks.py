"""Celery tasks: thin. Decode nothing here; hand the envelope to the node's runtime."""

import logging

from celery import shared_task

from consensus import runtime
from consensus.transport import DELIVER_TASK, SUBMIT_TASK

log = logging.getLogger(__name__)


def _runtime():
    node = runtime.current()
    if node is None:
        log.error("an envelope reached a worker without a Paxos node; dropped")
    return node


@shared_task(name=DELIVER_TASK, ignore_result=True)
def deliver(envelope) -> None:
    node = _runtime()
    if node is not None:
        node.deliver(envelope)


@shared_task(name=SUBMIT_TASK, ignore_result=True)
def submit(envelope) -> None:
    node = _runtime()
    if node is not None:
        node.submit(envelope)
