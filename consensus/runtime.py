"""The node runtime: the node's host (consensus.host) wired to PostgreSQL storage, the
Celery transport and the config store's applier, inside the node's Celery worker.

One runtime lives in the node's Celery worker (started by the bootstep in
consensus/worker.py). It opens and checks every envelope (signature, freshness, the
test-only fault switches), turns the good ones into the host's inputs, and gives them to
the host under one lock; the host runs the loop (persist before send, the applier's
ordering, rebuild after a failed persist: see consensus/host.py). It also publishes the
node's status on its broker.

A step may cover several inputs: after the task's own envelope, the runtime takes the
task messages still waiting in its inbox off the broker (consensus.transport.Inbox) and
gives them all to the host in one step, persisted once and sent with one envelope per
peer. Under load this replaces many Celery task executions, transactions and sends by one
each.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections import Counter
from importlib import import_module

import redis
from django.conf import settings

from consensus import conf, inbox, storage
from consensus.applier import Application, Applier
from consensus.envelope import BadEnvelope, Freshness, Opened, Sealer, open_envelope
from consensus.faults import Faults
from consensus.host import FromPeer, Input, MonotonicClock, NodeHost, ReadRequests, Submission
from consensus.paxos import Config
from consensus.transport import (
    DELIVER_TASK,
    SUBMIT_TASK,
    CeleryTransport,
    EnvelopeTransport,
    Inbox,
)

log = logging.getLogger(__name__)

STATUS_EVERY = 0.5  # seconds between status publications
STATUS_TTL = 3  # seconds a published status stays readable
DRAIN_BATCH = 64  # task messages taken off the inbox per step
DRAIN_ROUNDS = 8  # steps of drained messages per task execution, at most (ticks wait)


def status_key(node_id: str) -> str:
    return f"consensus:status:{node_id}"


#: Slots pruned by one compaction at most: a first compaction of a long log (state transfer
#: just configured) is spread over several status periods instead of one long transaction.
COMPACT_STEP = 10_000


def load_state_machine(path: str) -> Application:
    """The Application named by `path` (the setting CONFIGSTORE_STATE_MACHINE)."""
    module, _, name = path.rpartition(".")
    application = getattr(import_module(module), name)
    if not isinstance(application, Application):
        raise TypeError(f"{path} is not a consensus.api.Application")
    return application


class NodeRuntime:
    def __init__(
        self,
        *,
        node_id: str,
        peers: dict[str, str],
        secret: bytes,
        application: Application,
        transport: CeleryTransport,
        faults: Faults,
        core_options: dict | None = None,
        max_envelope_bytes: int = 16 * 1024 * 1024,
        state_transfer: bool = False,
        log_tail: int = 5000,
        trace: bool = False,
    ) -> None:
        self.node_id = node_id
        self.peers = peers
        self.nodes = tuple(sorted(peers))
        self.secret = secret
        self.application = application
        self.transport = transport
        self.faults = faults
        self.config = Config(node_id=node_id, nodes=self.nodes, **(core_options or {}))
        self.counters: Counter[str] = Counter()
        self.applier = Applier(
            application.apply_commands,
            node_id,
            # Installs need peers that serve snapshots; without them none is installed, so
            # (Applier.snapshot_index) the log is not compacted either.
            install_snapshot=application.install_snapshot if state_transfer else None,
            trace=trace,
        )
        self.last_contact: dict[str, float] = {}
        self._lock = threading.RLock()
        self._status_at = 0.0
        self._tick_failure_logged = float("-inf")
        self._redis = None
        #: Envelopes this worker seals (its incarnation) and the freshness of those it
        #: receives; queue items dropped before decoding count in consensus.inbox.drops().
        self.sealer = Sealer(secret, node_id)
        self.freshness = Freshness()
        self.refusals = inbox.Drops(prefix="refused_", what="an envelope")
        self.max_envelope_bytes = max_envelope_bytes
        self.inbox = Inbox(
            node_id, peers[node_id], max_bytes=max_envelope_bytes, refused=inbox.drops().drop
        )
        #: Drained messages that carry a delay (the test-only fault switch): (eta, task,
        #: envelope), handled by the tick once due.
        self._delayed: list[tuple[float, str, object]] = []
        self.host = NodeHost(
            self.config,
            storage=storage.PostgresStorage(),
            transport=EnvelopeTransport(
                self.sealer,
                transport,
                faults,
                max_bytes=max_envelope_bytes,
                counters=self.counters,
            ),
            state_machine=self.applier,
            clock=MonotonicClock(),
            rng=random.Random(int.from_bytes(os.urandom(8), "big")),
            log_tail=log_tail,
            #: Log every step's timings (CONFIGSTORE_TRACE_STEPS=1): for profiling only.
            trace=trace,
        )

    @classmethod
    def from_settings(cls) -> NodeRuntime:
        node = conf.node()
        return cls(
            node_id=node.node_id,
            peers=node.peers,
            secret=node.secret.encode(),
            application=load_state_machine(settings.CONFIGSTORE_STATE_MACHINE),
            transport=CeleryTransport(node.peers, max_bytes=node.max_envelope_bytes),
            faults=Faults(node.faults_file or None),
            core_options=node.core_options(),
            max_envelope_bytes=node.max_envelope_bytes,
            state_transfer=node.state_transfer,
            log_tail=node.log_tail,
            trace=node.trace_steps,
        )

    # ------------------------------------------------------------------ inputs

    def deliver(self, envelope) -> None:
        """An envelope from a peer (the `consensus.deliver` task)."""
        self.receive([(DELIVER_TASK, envelope)])

    def submit(self, envelope) -> None:
        """Commands from this node's web tier (the `consensus.submit` task)."""
        self.receive([(SUBMIT_TASK, envelope)])

    def receive(self, inputs: list[tuple[str, object]]) -> None:
        """Handle the inputs (task name, envelope) in one step; then, while the inbox
        holds more task messages, take them off it (at most DRAIN_BATCH at a time) and
        handle each batch in one step too: under load one Celery task execution, one
        persist and one envelope per peer serve many messages. Alone, a message is handled
        at once, without first asking the broker for more."""
        self._step(inputs)
        for _ in range(DRAIN_ROUNDS):
            drained = self.inbox.drain(DRAIN_BATCH)
            if not drained:
                return
            self.counters["drained"] += len(drained)
            now = time.time()
            due = []
            for message in drained:
                eta = message.eta_timestamp()
                if message.expired():
                    inbox.drops().drop("expired", f"{message.task} past its expiry")
                elif eta is not None and eta > now:
                    self.counters["drained_delayed"] += 1
                    self._delayed.append((eta, message.task, message.envelope))
                else:
                    due.append((message.task, message.envelope))
            self._step(due)

    def _step(self, inputs: list[tuple[str, object]]) -> None:
        """The checked envelopes of `inputs` in one step of the host (one persist, one
        envelope per peer)."""
        authenticated: list[Input] = []
        for task, envelope in inputs:
            opened = self._open(task, envelope)
            if opened is None:
                continue
            if opened.kind == "submit":
                reads, commands = _split_reads(opened.commands)
                if commands:
                    authenticated.append(Submission(commands))
                if reads:
                    self.counters["reads_in"] += len(reads)
                    authenticated.append(ReadRequests(reads))
            else:
                authenticated.append(FromPeer(opened.sender, opened.messages))
        if not authenticated:
            return
        with self._lock:
            self.host.step(authenticated)

    def _open(self, task: str, envelope) -> Opened | None:
        """The checked envelope of one input, or None (refused, dropped, counted)."""
        kind = "paxos" if task == DELIVER_TASK else "submit" if task == SUBMIT_TASK else None
        try:
            if kind is None:
                raise BadEnvelope("malformed", f"a message for an unknown task {task!r}")
            opened = open_envelope(self.secret, self.node_id, self.nodes, envelope)
            if opened.kind != kind:
                raise BadEnvelope("malformed", f"a {opened.kind} envelope sent as a {task}")
            self.freshness.admit(opened, time.time())
        except BadEnvelope as refused:
            self.refusals.drop(refused.reason, str(refused))
            return None
        if kind == "submit":
            self.counters["submissions_in"] += 1
            self.counters["commands_submitted"] += len(opened.commands)
            return opened
        if self.faults.dropped(opened.sender, self.node_id):
            self.counters["fault_dropped_in"] += 1
            return None
        self.counters["envelopes_in"] += 1
        self.last_contact[opened.sender] = time.time()
        return opened

    def tick(self) -> None:
        """Timers of the core, delayed messages now due, and the status publication."""
        if self._delayed:
            now = time.time()
            due = [(task, env) for eta, task, env in self._delayed if eta <= now]
            self._delayed = [d for d in self._delayed if d[0] > now]
            if due:
                self.counters["delayed_released"] += len(due)
                self._step(due)
        with self._lock:
            try:
                self.host.tick()
            except Exception:
                self.counters["tick_failures"] += 1
                if time.monotonic() - self._tick_failure_logged > 5.0:
                    self._tick_failure_logged = time.monotonic()
                    log.exception("tick failed (logged at most every 5 s)")
        now = time.monotonic()
        if now - self._status_at >= STATUS_EVERY:
            self._status_at = now
            self.compact()
            self.publish_status()

    def compact(self) -> None:
        """Prune the log as far as NodeHost.compact allows (only below the state machine's
        latest snapshot: nothing while it takes none). Best effort: a failure is retried at
        the next status publication."""
        with self._lock:
            try:
                self.host.compact(COMPACT_STEP)
            except Exception:  # noqa: BLE001 - the database may be down; retried
                self.counters["compact_failures"] += 1
                log.warning("compaction failed; retried later", exc_info=True)

    # ------------------------------------------------------------------ status

    def status(self) -> dict:
        with self._lock:
            core = self.host.status()
            node = self.host.node()
            quorum = node.has_quorum(time.monotonic()) or node.follows_live_leader(time.monotonic())
        now = time.time()
        return {
            **core,
            "quorum": quorum,
            "state_transfer": self.applier.install is not None,
            "snapshot_installed_index": self.applier.installed_index,
            "time": now,
            "peers": {
                p: (round(now - self.last_contact[p], 3) if p in self.last_contact else None)
                for p in self.nodes
                if p != self.node_id
            },
            "counters": {
                **self.counters,
                **self.refusals.snapshot(),
                **inbox.drops().snapshot(),
                "send_errors": self.transport.send_errors,
                "oversized_out": self.transport.oversized,
                "slots_applied": self.applier.applied_slots,
                "apply_failures": self.applier.failures,
                "storage_failures": self.host.storage_failures,
                "read_notify_failures": self.applier.read_notify_failures,
                "snapshot_installs": self.applier.installs,
                "snapshot_install_failures": self.applier.install_failures,
                **self.applier.outcomes,
            },
        }

    def publish_status(self) -> None:
        """Publish this node's status on its own broker, for clusterstatus and the admin."""
        try:
            if self._redis is None:
                self._redis = redis.Redis.from_url(
                    self.peers[self.node_id], socket_timeout=0.5, socket_connect_timeout=0.5
                )
            self._redis.set(status_key(self.node_id), json.dumps(self.status()), ex=STATUS_TTL)
        except Exception as error:  # noqa: BLE001 - status is best effort
            log.debug("cannot publish status: %s", error)


def _split_reads(commands) -> tuple[list[str], list]:
    """Submitted commands split into linearizable reads (their ids) and real commands."""
    reads = [c.request_id for c in commands if c.payload == storage.READ_INDEX_PAYLOAD]
    if not reads:
        return [], list(commands)
    return reads, [c for c in commands if c.payload != storage.READ_INDEX_PAYLOAD]


def current() -> NodeRuntime | None:
    """This process's node runtime while its worker runs (consensus.worker), else None."""
    return conf.process().runtime


def set_current(runtime: NodeRuntime | None) -> None:
    conf.process().runtime = runtime
