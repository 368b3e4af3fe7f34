"""The worker bootstep that hosts the node: it builds the runtime when the worker starts
consuming the node's queue, and ticks the core from the worker's own timer (same thread
as the tasks under `-P solo`, so steps never interleave)."""

from __future__ import annotations

import logging
import time

import psutil
from celery import bootsteps

from consensus import conf, runtime
from consensus.transport import queue_name

log = logging.getLogger(__name__)


class PaxosNode(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs) -> None:
        super().__init__(worker, **kwargs)
        self.tref = None

    def start(self, worker) -> None:
        queue = queue_name(conf.node().node_id)
        consuming = set(worker.app.amqp.queues.consume_from or {})
        if queue not in consuming:
            log.info("this worker does not consume %s: no Paxos node here", queue)
            return
        node = runtime.NodeRuntime.from_settings()
        node.applier.start()
        runtime.set_current(node)
        interval = conf.node().tick
        self.tref = worker.timer.call_repeatedly(interval, node.tick, priority=10)
        log.warning(
            "Paxos node %s ticking every %.0f ms, %.2f s after its process started",
            node.node_id,
            interval * 1000,
            time.time() - psutil.Process().create_time(),
        )

    def stop(self, worker) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        node = runtime.current()
        if node is not None:
            node.applier.stop()
        runtime.set_current(None)
