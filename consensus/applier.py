"""The applier: one thread per node that applies chosen slots to the state machine.

It runs beside the worker's consensus loop, with its own database connection, so applying
(the state machine's SQL) never delays the protocol's messages. It applies from the
durable chosen log (consensus.storage.apply_chosen), strictly in slot order; the runtime
wakes it when the core reports newly committed slots, and it also looks every second.
"""

from __future__ import annotations

import logging
import threading

from django.db import connection

from consensus import storage

log = logging.getLogger(__name__)


class Applier:
    def __init__(self, state_machine, node_id: str) -> None:
        self.state_machine = state_machine
        self.node_id = node_id
        self.applied_slots = 0
        self.failures = 0
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"applier-{node_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                self._wake.wait(1.0)
                self._wake.clear()
                self._drain()
        finally:
            connection.close()

    def _drain(self) -> None:
        while not self._stopped.is_set():
            try:
                applied = storage.apply_chosen(self.state_machine, self.node_id)
            except Exception:
                self.failures += 1
                log.exception("applying chosen slots failed; retrying")
                connection.close()
                self._stopped.wait(0.5)
                continue
            if not applied:
                return
            self.applied_slots += applied
