"""The applier: one thread per node that applies chosen slots to the state machine; the
config store's StateMachine for the node's host (consensus.host).

State transfer. When the application can install snapshots (`Application.install_snapshot`)
and the node's peers serve them (CONFIGSTORE_PEER_URLS), a peer's ask to install a snapshot
(its log is compacted past what this node lacks) is carried out on this same thread, between
two applies: the fetch and the install take as long as they take while the consensus loop
goes on, and nothing else writes the applied state meanwhile. Then the applied index is read
again and applying resumes from the log's tail. The same setting makes `snapshot_index` the
applied index, so the host compacts the log: a snapshot a peer fetches is taken when it asks,
at the serving node's applied index, which is never below its compaction point.

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
from collections.abc import Callable
from dataclasses import dataclass

from django.db import connection

from consensus import storage

log = logging.getLogger(__name__)

#: Seconds between two attempts at state transfer after one failed (the peers ask again
#: each time this node asks them for slots they no longer hold).
INSTALL_RETRY = 2.0


@dataclass(frozen=True)
class Application:
    """What a node replicates, as the product gives it to the runtime (the setting
    CONFIGSTORE_STATE_MACHINE names one)."""

    #: Apply a slot's commands in the apply transaction (consensus.storage.ApplyCommands).
    apply_commands: storage.ApplyCommands
    #: install_snapshot(peer, at_least): fetch a snapshot of `peer`'s state at an applied
    #: index >= `at_least` and install it atomically if it is above this node's applied
    #: index; the index installed, or None when there was nothing newer. Raises when it
    #: cannot (nothing changed). None: the application cannot install snapshots.
    install_snapshot: Callable[[str, int], int | None] | None = None


class Applier:
    def __init__(
        self,
        apply_commands,
        node_id: str,
        *,
        install_snapshot: Callable[[str, int], int | None] | None = None,
        trace: bool = False,
    ) -> None:
        self.apply_commands = apply_commands
        self.node_id = node_id
        #: Fetch and install a peer's snapshot (Application.install_snapshot); None: the
        #: node neither installs snapshots nor, so, compacts its log.
        self.install = install_snapshot
        #: The ask being carried out or waiting: (peer, at least this index); None: none.
        self._install_ask: tuple[str, int] | None = None
        self._install_failed_at = float("-inf")
        self.installs = 0
        self.install_failures = 0
        #: The index of the last snapshot installed here (0: none since the start).
        self.installed_index = 0
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
        """With state transfer, the applied index: a peer's fetch takes a snapshot at the
        serving node's applied index then, never below what the host compacted (the host
        compacts only through this). Without it 0: the log is never compacted."""
        if self.install is None:
            return 0
        return self._applied_index or 0

    def install_snapshot(self, peer: str, index: int) -> None:
        """`peer`'s log is compacted through `index`, and this node lacks a slot there: fetch
        and install its snapshot on this thread (see the module's docstring). Called by the
        host's step: returns at once. An ask while one is waiting or running, or within
        INSTALL_RETRY of a failed one, is dropped (the peer asks again)."""
        if self.install is None:
            log.warning(
                "node %s: %s asks it to install a snapshot of at least slot %d, and this "
                "node cannot (no CONFIGSTORE_PEER_URLS)",
                self.node_id,
                peer,
                index,
            )
            return
        if self._applied_index is not None and index <= self._applied_index:
            return  # applied there already: the slots above come by replay
        if (
            self._install_ask is not None
            or time.monotonic() - self._install_failed_at < INSTALL_RETRY
        ):
            return
        self._install_ask = (peer, index)
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
                if self._install_ask is not None:
                    self._install(*self._install_ask)
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

    def _install(self, peer: str, index: int) -> None:
        """Carry out an ask to install `peer`'s snapshot (this thread: no apply runs)."""
        started = time.monotonic()
        log.warning(
            "node %s: fetching %s's snapshot (at least slot %d) to install it",
            self.node_id,
            peer,
            index,
        )
        try:
            installed = self.install(peer, index)
        except Exception:  # noqa: BLE001 - nothing changed; the peer asks again
            self.install_failures += 1
            self._install_failed_at = time.monotonic()
            log.exception(
                "node %s: installing %s's snapshot (at least slot %d) failed",
                self.node_id,
                peer,
                index,
            )
        else:
            if installed is not None:
                self.installs += 1
                self.installed_index = installed
                log.warning(
                    "node %s: installed %s's snapshot at slot %d in %.1f s",
                    self.node_id,
                    peer,
                    installed,
                    time.monotonic() - started,
                )
        finally:
            # Read the applied index and the chosen log again: the install moved them.
            self._applied_index, self._behind = None, True
            self._install_ask = None
            connection.close()
