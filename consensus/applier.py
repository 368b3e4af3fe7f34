"""The applier: one thread per node that applies chosen slots to the state machine; the
config store's StateMachine for the node's host (consensus.host).

It runs beside the worker's consensus loop, with its own database connection, so recording
chosen entries and applying them (the state machine's SQL) never delays the protocol's
messages. The runtime hands it the entries the core learned as chosen; it writes them to
the chosen log and applies, strictly in slot order, in one transaction
(consensus.storage.apply_learned). It also looks every second. Being the only writer of the
chosen log and the applied index, it keeps the index in memory and reads the chosen log only
when it may hold slots it was not handed (at start, after a gap or a failure).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque

from django.db import connection

from consensus import storage

log = logging.getLogger(__name__)


class Applier:
    def __init__(self, apply_commands, node_id: str, *, trace: bool = False) -> None:
        self.apply_commands = apply_commands
        self.node_id = node_id
        self.applied_slots = 0
        self.failures = 0
        self.read_notify_failures = 0
        #: Commands applied, by `applied_committed` / `applied_rejected_<code>` (metrics).
        self.outcomes: Counter[str] = Counter()
        self._learned: deque = deque()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        #: Log every apply's timings (CONFIGSTORE_TRACE_STEPS=1, as the runtime's steps).
        self.trace = trace
        self._learned_at = 0.0
        self._applied_index: int | None = None  # as this thread left it; None: read it
        self._behind = True  # the chosen log may hold slots to apply that we were not handed
        self._thread = threading.Thread(target=self._run, name=f"applier-{node_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def applied_index(self) -> int | None:
        """The applied index as this thread last committed it (None: not read yet)."""
        return self._applied_index

    def learned(self, chosen) -> None:
        """Newly chosen (slot, value) entries, from the consensus loop."""
        if self.trace and not self._learned:
            self._learned_at = time.perf_counter()
        self._learned.extend(chosen)
        self._wake.set()

    def read_indexes(self, reads: list[tuple[str, int]]) -> None:
        """Read indexes for this node's waiting readers (consensus.client), NOTIFYed on the
        calling thread's connection (the host's, not this thread's)."""
        try:
            storage.notify_reads(reads)
        except Exception:  # noqa: BLE001 - the readers time out and ask again
            self.read_notify_failures += 1
            log.exception("cannot notify %d read indexes", len(reads))
            connection.close()

    @property
    def snapshot_index(self) -> int:
        """0: this runtime takes no snapshot of the config store yet, so its host never
        compacts the log (NodeHost.compact prunes only below the latest snapshot)."""
        return 0

    def install_snapshot(self, peer: str, index: int) -> None:
        """A peer's log is compacted through `index`. State transfer (fetching the peer's
        snapshot and installing it) is not part of this runtime yet: the ask is logged and
        dropped. Only a peer that compacts sends it, and no node of this runtime does."""
        log.warning(
            "node %s: %s asks it to install a snapshot of at least slot %d; this runtime "
            "cannot install snapshots yet",
            self.node_id,
            peer,
            index,
        )

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
        batch: list = []
        while not self._stopped.is_set():
            while self._learned:
                batch.append(self._learned.popleft())
            # The applier alone writes the chosen log and the applied index: once it has
            # read them, the entries it is handed are all it needs, unless a gap (or a
            # restart) left chosen slots in the log that it has not applied.
            from_memory = bool(batch) and self._applied_index is not None and not self._behind
            started, learned_at = time.perf_counter(), self._learned_at
            try:
                result = storage.apply_learned(
                    self.apply_commands,
                    self.node_id,
                    batch,
                    applied_index=self._applied_index,
                    read_log=not from_memory,
                )
                batch = []
            except Exception:
                self.failures += 1
                self._applied_index, self._behind = None, True
                log.exception("applying chosen slots failed; retrying")
                connection.close()
                self._stopped.wait(0.5)
                continue
            self._applied_index, self._behind = result.applied_index, result.more
            self.applied_slots += result.applied
            for outcome, code in result.outcomes:
                self.outcomes[f"applied_{outcome}_{code}" if code else f"applied_{outcome}"] += 1
            if self.trace and result.applied:
                now = time.perf_counter()
                log.warning(
                    "applied %d slots in %.2f ms, %.2f ms after they were learned",
                    result.applied,
                    (now - started) * 1000,
                    (now - learned_at) * 1000,
                )
            if not self._learned and not (result.applied and result.more):
                return
