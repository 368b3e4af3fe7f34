"""Linearizable reads share barriers: concurrent readers of one process ask for one read
index between them (one in flight, one pending), and a reader only ever waits on a
barrier asked for after it arrived. First with the read index replaced by a gate the test
opens, then on a real cluster, where a history of concurrent writes and shared-barrier
reads is checked for linearizability, and where reads leave nothing in the log."""

from __future__ import annotations

import threading
import time

import pytest

from consensus.client import Committed, Submitter, TimedOut
from consensus.storage import READ_INDEX_PAYLOAD
from tests.linearizability.checker import check
from tests.linearizability.history import OK, PUT, READ, UNKNOWN, Operation
from tests.runtime.test_cluster import put, wait_converged


class GatedSubmitter(Submitter):
    """A Submitter whose read index is a gate: each barrier asked for waits until the test
    releases it, and every request is recorded with its time."""

    def __init__(self) -> None:
        super().__init__(node_id="n1", dsn="", broker_url="redis://127.0.0.1:1/0", secret=b"s")
        self.submitted: list[tuple[str, float]] = []
        self.gates: list[threading.Event] = []
        self.changed = threading.Condition()

    def _confirm_read(self, request_id, *, timeout):
        gate = threading.Event()
        with self.changed:
            self.submitted.append((request_id, time.monotonic()))
            self.gates.append(gate)
            self.changed.notify_all()
        if not gate.wait(timeout):
            return TimedOut(request_id)
        return Committed(request_id, len(self.submitted))

    def wait_submitted(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.submitted) >= count, 5.0)


class Reader(threading.Thread):
    def __init__(self, submitter: Submitter, timeout: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.submitter, self.timeout = submitter, timeout
        self.started_at = self.outcome = None

    def run(self) -> None:
        self.started_at = time.monotonic()
        self.outcome = self.submitter.barrier(timeout=self.timeout)


def _start(readers):
    for r in readers:
        r.start()
        while r.started_at is None:
            time.sleep(0.001)
    return readers


def test_a_command_cannot_pass_for_a_read_index_request():
    """The runtime tells a read's request from a command by its payload alone: no state
    machine's command may be submitted with it."""
    submitter = Submitter(node_id="n1", dsn="", broker_url="redis://127.0.0.1:1/0", secret=b"s")
    with pytest.raises(ValueError, match="reserved"):
        submitter.submit(READ_INDEX_PAYLOAD, timeout=0.1)
    assert submitter._outbox == [] and submitter._listener is None


def test_readers_arriving_while_a_barrier_is_in_flight_share_the_next_one():
    submitter = GatedSubmitter()
    (first,) = _start([Reader(submitter)])
    submitter.wait_submitted(1)
    later = _start([Reader(submitter) for _ in range(20)])
    time.sleep(0.05)
    assert len(submitter.submitted) == 1  # they wait: the barrier in flight predates them

    submitter.gates[0].set()
    submitter.wait_submitted(2)
    submitter.gates[1].set()
    for r in [first, *later]:
        r.join(5)

    assert len(submitter.submitted) == 2 == submitter.barriers_submitted
    assert submitter.barrier_reads == 21
    (first_id, first_at), (shared_id, shared_at) = submitter.submitted
    assert first.outcome == Committed(first_id, 1)
    assert all(r.outcome == Committed(shared_id, 2) for r in later)
    # Linearizability: every reader's barrier was submitted after the reader arrived.
    assert first_at >= first.started_at
    assert all(shared_at >= r.started_at for r in later)


def test_a_reader_never_waits_on_a_barrier_submitted_before_it_arrived():
    submitter = GatedSubmitter()
    readers = []
    for round_ in range(5):
        readers += _start([Reader(submitter) for _ in range(3)])
        submitter.wait_submitted(round_ + 1)
        submitter.gates[round_].set()
    deadline = time.monotonic() + 5
    while any(r.is_alive() for r in readers) and time.monotonic() < deadline:
        for gate in list(submitter.gates):
            gate.set()
        time.sleep(0.01)
    times = {rid: at for rid, at in submitter.submitted}
    for r in readers:
        assert isinstance(r.outcome, Committed)
        assert times[r.outcome.request_id] >= r.started_at
    assert submitter.barriers_submitted < len(readers)


def test_a_reader_whose_time_runs_out_while_waiting_is_not_confirmed_and_nothing_sticks():
    submitter = GatedSubmitter()
    (stuck,) = _start([Reader(submitter, timeout=2.0)])
    submitter.wait_submitted(1)
    (impatient,) = _start([Reader(submitter, timeout=0.1)])
    impatient.join(2)
    assert isinstance(impatient.outcome, TimedOut)
    assert submitter.barriers_submitted == 1

    submitter.gates[0].set()
    stuck.join(2)
    # The abandoned pending barrier is taken up by the next reader, who submits it.
    (next_reader,) = _start([Reader(submitter)])
    submitter.wait_submitted(2)
    submitter.gates[1].set()
    next_reader.join(2)
    assert isinstance(next_reader.outcome, Committed)
    assert submitter.barriers_submitted == 2


@pytest.mark.cluster
def test_concurrent_linearizable_reads_share_barriers_and_stay_linearizable(make_cluster):
    """Writers and readers on every node; a read is a shared barrier, then the node's own
    state. The history must be linearizable, and readers must have shared barriers."""
    cluster = make_cluster()
    cluster.wait_for_leader()
    assert isinstance(put(cluster, cluster.ids[0], "k", "v0"), Committed)
    wait_converged(cluster)
    clock = time.monotonic
    history: list[Operation] = []
    lock = threading.Lock()
    stop = threading.Event()

    def record(op: Operation) -> None:
        with lock:
            history.append(op)

    def writer(client: int, node: str) -> None:
        k = 0
        while not stop.is_set():
            k += 1
            value = f"w{client}-{k}"
            call = clock()
            outcome = put(cluster, node, "k", value, timeout=10)
            if isinstance(outcome, Committed):
                record(
                    Operation(client, "k", PUT, call, clock(), OK, value, outcome.result["version"])
                )
            else:
                record(Operation(client, "k", PUT, call, None, UNKNOWN, value))

    def reader(client: int, node: str) -> None:
        submitter = cluster.submitter(node)
        while not stop.is_set():
            call = clock()
            outcome = submitter.barrier(timeout=10)
            if not isinstance(outcome, Committed):
                continue  # an unconfirmed read constrains nothing
            value, version = submitter._query(
                "SELECT value #>> '{}', version FROM configstore_entry WHERE key = 'k'", []
            )
            record(Operation(client, "k", READ, call, clock(), OK, value, version))

    history.append(Operation("setup", "k", PUT, 0.0, 0.0, OK, "v0", 1))
    threads = [
        threading.Thread(target=writer, args=(f"w{i}", node), daemon=True)
        for i, node in enumerate(cluster.ids)
    ] + [
        threading.Thread(target=reader, args=(f"r{i}", cluster.ids[i % 3]), daemon=True)
        for i in range(24)
    ]
    for t in threads:
        t.start()
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join(20)

    reads = [op for op in history if op.kind == READ]
    writes = [op for op in history if op.kind == PUT and op.outcome == OK]
    assert len(reads) > 100 and len(writes) > 10
    result = check(history)
    assert result.ok, result.describe()
    submitted = sum(cluster.submitter(n).barriers_submitted for n in cluster.ids)
    read_calls = sum(cluster.submitter(n).barrier_reads for n in cluster.ids)
    print(f"{read_calls} reads shared {submitted} barriers; {len(writes)} writes")
    assert submitted < read_calls / 2


@pytest.mark.cluster
def test_linearizable_reads_add_no_log_slot_and_no_applied_request(make_cluster):
    """ReadIndex: 1,002 linearizable reads (334 barriers on every node, the leader and the
    followers) leave the applied index, the chosen log and the applied requests exactly
    as they were."""
    cluster = make_cluster()
    cluster.wait_for_leader()
    assert isinstance(put(cluster, cluster.ids[0], "k", "v0"), Committed)
    wait_converged(cluster)

    def counts(node):
        return cluster.submitter(node)._query(
            "SELECT (SELECT applied_index FROM consensus_applied_state), "
            "(SELECT count(*) FROM consensus_chosen_slot), "
            "(SELECT count(*) FROM consensus_applied_request)",
            [],
        )

    before = {n: counts(n) for n in cluster.ids}
    for node in cluster.ids:
        submitter = cluster.submitter(node)
        outcomes = [submitter.barrier(timeout=10) for _ in range(334)]
        assert all(isinstance(o, Committed) for o in outcomes), outcomes[:3]
        # The read index is the log's current end: the slot of the write above or later.
        assert all(o.slot >= before[node][0] for o in outcomes)
    assert {n: counts(n) for n in cluster.ids} == before
