"""The node runtime: the pure core wrapped in PostgreSQL storage and the Celery transport.

One runtime lives in the node's Celery worker (started by the bootstep in
consensus/worker.py). Every input (an envelope from a peer, a submission from the web
tier, a timer tick) goes to the core under one lock; the resulting Ready is handled in
the order the core demands:

  1. persist the acceptor state (promise, accepted values) in one PostgreSQL transaction
     (consensus.storage.persist);
  2. only after it commits, send the messages, one envelope per peer;
  3. hand the newly chosen entries to the applier thread (consensus.applier), which
     records them and applies them in slot order, off the protocol's path.

A step may cover several inputs: after the task's own envelope, the runtime takes the
task messages still waiting in its inbox off the broker (consensus.transport.Inbox) and
gives them all to the core before persisting once and sending one envelope per peer. Under
load this replaces many Celery task executions, transactions and sends by one each; the
rule above holds for the merged step as for any (the core's Readys merge, Ready.extend).

If the transaction fails, the core's memory is ahead of the database: the runtime drops
the core and rebuilds it from the database before the next input.
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
from django.db import close_old_connections, connection

from consensus import inbox, storage
from consensus.applier import Applier
from consensus.envelope import BadEnvelope, Freshness, Opened, Sealer, open_envelope
from consensus.faults import Faults
from consensus.paxos import Config, Node, Ready
from consensus.transport import (
    DELIVER_TASK,
    SUBMIT_TASK,
    CeleryTransport,
    Inbox,
    parse_peers,
)

log = logging.getLogger(__name__)

STATUS_EVERY = 0.5  # seconds between status publications
STATUS_TTL = 3  # seconds a published status stays readable
DRAIN_BATCH = 64  # task messages taken off the inbox per step
DRAIN_ROUNDS = 8  # steps of drained messages per task execution, at most (ticks wait)


def status_key(node_id: str) -> str:
    return f"configstore:status:{node_id}"


def load_state_machine(path: str):
    module, _, name = path.rpartition(".")
    return getattr(import_module(module), name)


class NodeRuntime:
    def __init__(
        self,
        *,
        node_id: str,
        peers: dict[str, str],
        secret: bytes,
        state_machine,
        transport: CeleryTransport,
        faults: Faults,
        core_options: dict | None = None,
        max_envelope_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.node_id = node_id
        self.peers = peers
        self.nodes = tuple(sorted(peers))
        self.secret = secret
        self.state_machine = state_machine
        self.transport = transport
        self.faults = faults
        self.config = Config(node_id=node_id, nodes=self.nodes, **(core_options or {}))
        self.counters: Counter[str] = Counter()
        self.applier = Applier(state_machine, node_id)
        self.last_contact: dict[str, float] = {}
        self._lock = threading.RLock()
        self._node: Node | None = None
        self._rng = random.Random(int.from_bytes(os.urandom(8), "big"))
        self._status_at = 0.0
        #: Log every step's timings (CONFIGSTORE_TRACE_STEPS=1): for profiling, not production.
        self.trace_steps = os.environ.get("CONFIGSTORE_TRACE_STEPS") == "1"
        self._tick_failure_logged = float("-inf")
        self._redis = None
        #: Envelopes this worker seals (its incarnation) and the freshness of those it
        #: receives; queue items dropped before decoding count in consensus.inbox.drops.
        self.sealer = Sealer(secret, node_id)
        self.freshness = Freshness()
        self.refusals = inbox.Drops(prefix="refused_", what="an envelope")
        self.max_envelope_bytes = max_envelope_bytes
        self.inbox = Inbox(
            node_id, peers[node_id], max_bytes=max_envelope_bytes, refused=inbox.drops.drop
        )
        #: Drained messages that carry a delay (the test-only fault switch): (eta, task,
        #: envelope), handled by the tick once due.
        self._delayed: list[tuple[float, str, object]] = []

    @classmethod
    def from_settings(cls) -> NodeRuntime:
        peers = parse_peers(settings.CONFIGSTORE_PEERS)
        if settings.CONFIGSTORE_NODE_ID not in peers:
            raise ValueError(
                f"CONFIGSTORE_NODE_ID {settings.CONFIGSTORE_NODE_ID!r} is not in CONFIGSTORE_PEERS"
            )
        return cls(
            node_id=settings.CONFIGSTORE_NODE_ID,
            peers=peers,
            secret=settings.CONFIGSTORE_SECRET.encode(),
            state_machine=load_state_machine(settings.CONFIGSTORE_STATE_MACHINE),
            transport=CeleryTransport(peers, max_bytes=settings.CONFIGSTORE_MAX_ENVELOPE_BYTES),
            faults=Faults(settings.CONFIGSTORE_FAULTS_FILE or None),
            core_options=settings.CONFIGSTORE_PAXOS,
            max_envelope_bytes=settings.CONFIGSTORE_MAX_ENVELOPE_BYTES,
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
                    inbox.drops.drop("expired", f"{message.task} past its expiry")
                elif eta is not None and eta > now:
                    self.counters["drained_delayed"] += 1
                    self._delayed.append((eta, message.task, message.envelope))
                else:
                    due.append((message.task, message.envelope))
            self._step(due)

    def _step(self, inputs: list[tuple[str, object]]) -> None:
        """One step of the core over several inputs: one Ready, persisted once, then sent
        with one envelope per peer (persist-before-send holds for all of it)."""
        accepted = []
        for task, envelope in inputs:
            opened = self._open(task, envelope)
            if opened is not None:
                accepted.append(opened)
        if not accepted:
            return
        with self._lock:
            node = self._core()
            self._report_applied(node)
            now = time.monotonic()
            ready = Ready()
            for opened in accepted:
                if opened.kind == "submit":
                    reads, commands = _split_reads(opened.commands)
                    if commands:
                        ready.extend(node.submit(commands, now))
                    if reads:
                        self.counters["reads_in"] += len(reads)
                        ready.extend(node.read_index(reads, now))
                else:
                    for message in opened.messages:
                        ready.extend(node.on_message(opened.sender, message, now))
            what = accepted[0].sender if len(accepted) == 1 else f"{len(accepted)} inputs"
            self._handle(ready, f"from {what}")

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
                node = self._core()
                self._report_applied(node)
                self._handle(node.on_tick(time.monotonic()))
            except Exception:
                self.counters["tick_failures"] += 1
                if time.monotonic() - self._tick_failure_logged > 5.0:
                    self._tick_failure_logged = time.monotonic()
                    log.exception("tick failed (logged at most every 5 s)")
        now = time.monotonic()
        if now - self._status_at >= STATUS_EVERY:
            self._status_at = now
            self.publish_status()

    # ------------------------------------------------------------------ plumbing

    def _core(self) -> Node:
        if self._node is None:
            close_old_connections()
            state, applied = storage.load()
            self._node = Node(
                self.config,
                state,
                applied_index=applied,
                now=time.monotonic(),
                rng=self._rng,
                log=storage.ChosenLog(),
            )
            # What the database holds applied; the applier reports its progress from here.
            self._node.on_applied(applied)
            log.info(
                "node %s started: promised %s, %d accepted, %d chosen, applied %d",
                self.node_id,
                state.promised,
                len(state.accepted),
                len(state.chosen),
                applied,
            )
        return self._node

    def _report_applied(self, node: Node) -> None:
        """Tell the core how far the applier got (its acks to a leader streaming catch-up
        carry it, and the leader paces the stream by it)."""
        applied = self.applier.applied_index
        if applied is not None:
            node.on_applied(applied)

    def _handle(self, ready: Ready, what: str = "tick") -> None:
        """Persist, then send, then let the applier apply (consensus.storage)."""
        started = time.perf_counter()
        try:
            storage.persist(ready)
        except Exception:
            self._rebuild("persisting a step failed")
            return
        persisted = time.perf_counter()
        self._send(ready.messages)
        sent = time.perf_counter()
        if ready.chosen:
            self.applier.learned(ready.chosen)
        if ready.reads:
            # Read indexes go to the waiting readers of this node (consensus.client).
            try:
                storage.notify_reads(ready.reads)
            except Exception:  # noqa: BLE001 - the readers time out and ask again
                self.counters["read_notify_failures"] += 1
                log.exception("cannot notify %d read indexes", len(ready.reads))
                connection.close()
        if self.trace_steps and (ready.must_persist or ready.messages or ready.chosen):
            log.warning(
                "%s: persisted %d accepted in %.2f ms; sent %s in %.2f ms; "
                "%d chosen to the applier",
                what,
                len(ready.accepted),
                (persisted - started) * 1000,
                [type(m).__name__ for _, m in ready.messages],
                (sent - persisted) * 1000,
                len(ready.chosen),
            )

    def _rebuild(self, what: str) -> None:
        """The core's memory is ahead of the database: drop it and reload from there."""
        log.exception("%s; rebuilding the node from its database", what)
        self._node = None
        self.counters["storage_failures"] += 1
        connection.close()

    def _send(self, messages) -> None:
        by_peer: dict[str, list] = {}
        for to, message in messages:
            by_peer.setdefault(to, []).append(message)
        for peer, batch in by_peer.items():
            if self.faults.dropped(self.node_id, peer):
                self.counters["fault_dropped_out"] += 1
                continue
            for envelope, sealed in self._envelopes(peer, batch):
                self.counters["envelopes_out"] += 1
                self.counters["messages_out"] += sealed
                self.transport.send(peer, envelope, delay=self.faults.delay(self.node_id, peer))

    def _envelopes(self, peer: str, batch: list):
        """(envelope, number of messages) for `batch`: one envelope, or several when its
        body would pass a third of the queue's size cap (a task message carries the body
        escaped and in base64); one message alone goes as it is (the transport refuses it
        if its task message passes the cap)."""
        envelope = self.sealer.seal(peer, batch)
        if len(batch) == 1 or len(envelope["body"]) <= self.max_envelope_bytes // 3:
            yield envelope, len(batch)
            return
        half = len(batch) // 2
        yield from self._envelopes(peer, batch[:half])
        yield from self._envelopes(peer, batch[half:])

    def status(self) -> dict:
        with self._lock:
            node = self._core()
            core = node.status()
            quorum = node.has_quorum(time.monotonic()) or node.follows_live_leader(time.monotonic())
        now = time.time()
        return {
            **core,
            "quorum": quorum,
            "time": now,
            "peers": {
                p: (round(now - self.last_contact[p], 3) if p in self.last_contact else None)
                for p in self.nodes
                if p != self.node_id
            },
            "counters": {
                **self.counters,
                **self.refusals.snapshot(),
                **inbox.drops.snapshot(),
                "send_errors": self.transport.send_errors,
                "oversized_out": self.transport.oversized,
                "slots_applied": self.applier.applied_slots,
                "apply_failures": self.applier.failures,
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


_current: NodeRuntime | None = None


def current() -> NodeRuntime | None:
    return _current


def set_current(runtime: NodeRuntime | None) -> None:
    global _current
    _current = runtime
