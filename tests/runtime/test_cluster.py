"""The replicated node on real parts: three nodes as processes (Celery workers on a real
broker, each with its own PostgreSQL database), faults by SIGKILL and by the transport's
fault switch. Every test ends by checking that no write acknowledged as committed is
missing on any node, and that the nodes' states are identical."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest

from consensus.client import Committed, TimedOut
from consensus.envelope import seal
from consensus.paxos import Accept, Ballot, Command, Prepare, Value
from consensus.transport import CeleryTransport

pytestmark = pytest.mark.cluster


def put_payload(key: str, value) -> str:
    return json.dumps(
        {"op": "put", "key": key, "value": value, "at": datetime.now(UTC).isoformat()}
    )


def put(cluster, node: str, key: str, value, timeout: float = 5.0):
    return cluster.submitter(node).submit(put_payload(key, value), timeout=timeout)


def wait_converged(cluster, nodes=None, timeout: float = 20.0) -> int:
    """Wait until the given nodes have applied the same index; returns it."""
    nodes = nodes or cluster.ids
    deadline = time.monotonic() + timeout
    while True:
        indexes = {n: cluster.submitter(n).applied_index() for n in nodes}
        top = max(
            cluster.query(n, "SELECT coalesce(max(slot), 0) FROM consensus_chosen_slot")[0][0]
            for n in nodes
        )
        if len(set(indexes.values())) == 1 and indexes[nodes[0]] >= top:
            return indexes[nodes[0]]
        if time.monotonic() > deadline:
            raise AssertionError(f"nodes did not converge: applied {indexes}, chosen up to {top}")
        time.sleep(0.05)


def snapshot(cluster, node: str) -> dict:
    """A node's replicated state: entries, chosen log, applied outcomes, applied index."""
    return {
        "entries": cluster.query(
            node,
            "SELECT key, value::text, version, created_index, modified_index FROM configstore_entry ORDER BY key",
        ),
        "chosen": cluster.query(
            node, "SELECT slot, value::text FROM consensus_chosen_slot ORDER BY slot"
        ),
        "applied": cluster.query(
            node,
            "SELECT request_id, slot, outcome, result::text FROM consensus_applied_request ORDER BY request_id",
        ),
        "applied_index": cluster.query(node, "SELECT applied_index FROM consensus_applied_state"),
    }


def assert_identical(cluster, nodes=None, timeout: float = 20.0) -> dict:
    """The nodes' replicated states are equal, compared at one applied index: a command
    still in flight (e.g. an unconfirmed submission retried after a heal) can be applied
    between two nodes' snapshots, so snapshots taken across an apply are taken again."""
    nodes = nodes or cluster.ids
    deadline = time.monotonic() + timeout
    while True:
        index = wait_converged(cluster, nodes)
        states = {n: snapshot(cluster, n) for n in nodes}
        still = all(states[n]["applied_index"] == [(index,)] for n in nodes) and (
            wait_converged(cluster, nodes) == index
        )
        if still or time.monotonic() > deadline:
            break
    first = states[nodes[0]]
    for n in nodes[1:]:
        for part in first:
            assert states[n][part] == first[part], f"{part} differs between {nodes[0]} and {n}"
    return first


def assert_acknowledged_present(cluster, acked: list[Committed], nodes=None) -> None:
    """No write acknowledged as committed is missing from any node."""
    nodes = nodes or cluster.ids
    ids = [a.request_id for a in acked]
    for n in nodes:
        rows = dict(
            cluster.query(
                n,
                "SELECT request_id, slot FROM consensus_applied_request WHERE request_id = ANY(%s) "
                "AND outcome = 'committed'",
                [ids],
            )
        )
        missing = [a.request_id for a in acked if rows.get(a.request_id) != a.slot]
        assert not missing, f"{n} lacks acknowledged writes {missing[:5]} (of {len(acked)})"


class Writer(threading.Thread):
    """A client writing continuously through the given nodes, remembering what was acked
    with when it was submitted and when acknowledged."""

    def __init__(self, cluster, nodes, *, timeout: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.cluster, self.nodes, self.timeout = cluster, list(nodes), timeout
        self.acked: list[tuple[float, float, Committed]] = []  # (submitted, acked, outcome)
        self.unconfirmed: list[TimedOut] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        k = 0
        while not self.stopped.is_set():
            node = self.nodes[k % len(self.nodes)]
            k += 1
            submitted = time.monotonic()
            outcome = put(self.cluster, node, f"stream/{k % 7}", k, timeout=self.timeout)
            if isinstance(outcome, Committed):
                self.acked.append((submitted, time.monotonic(), outcome))
            else:
                self.unconfirmed.append(outcome)

    def stop(self) -> list[Committed]:
        self.stopped.set()
        self.join(30)
        return [a for _, _, a in self.acked]


def test_a_write_commits_and_is_applied_identically_on_all_three_databases(make_cluster):
    cluster = make_cluster()
    acked = []
    for k in range(30):
        outcome = put(cluster, cluster.ids[k % 3], f"app/key{k % 4}", {"n": k})
        assert isinstance(outcome, Committed), outcome
        acked.append(outcome)
    state = assert_identical(cluster)
    assert len(state["entries"]) == 4
    assert {row[2] for row in state["entries"]} == {7, 8}  # 30 puts over 4 keys
    assert_acknowledged_present(cluster, acked)


def test_the_leader_is_killed_and_writes_resume_within_three_seconds(make_cluster):
    cluster = make_cluster()
    leader = cluster.wait_for_leader()
    followers = [n for n in cluster.ids if n != leader]
    writer = Writer(cluster, followers, timeout=1.0)
    writer.start()
    time.sleep(1.0)
    killed_at = time.monotonic()
    cluster.kill_worker(leader, signal.SIGKILL)
    deadline = killed_at + 15

    def resumed() -> list[float]:
        """Acknowledgements of writes submitted after the kill (a write the dead leader had
        proposed before it, acknowledged later, is no sign of recovery)."""
        return [acked for submitted, acked, _ in writer.acked if submitted > killed_at]

    while not resumed() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    acked = writer.stop()
    assert resumed(), "no write submitted after the leader was killed committed"
    takeover = resumed()[0] - killed_at
    new_leader = cluster.wait_for_leader(among=followers)
    print(
        f"\nleader {leader} SIGKILLed; {new_leader} took over; writes resumed after {takeover:.2f} s"
    )
    assert takeover < 3.0, f"writes resumed only after {takeover:.2f} s"
    cluster.start_worker(leader)
    assert_identical(cluster)
    assert_acknowledged_present(cluster, acked)


def test_a_killed_follower_restarts_and_catches_up(make_cluster):
    cluster = make_cluster()
    leader = cluster.wait_for_leader()
    follower = next(n for n in cluster.ids if n != leader)
    others = [n for n in cluster.ids if n != follower]
    writer = Writer(cluster, others)
    writer.start()
    time.sleep(1.0)
    cluster.kill_worker(follower, signal.SIGKILL)
    time.sleep(2.0)
    behind = cluster.submitter(follower).applied_index()
    cluster.start_worker(follower)
    time.sleep(1.5)
    acked = writer.stop()
    assert len(acked) > 20
    state = assert_identical(cluster)
    assert state["applied_index"][0][0] > behind
    assert_acknowledged_present(cluster, acked)


@pytest.mark.parametrize("who", ["leader", "follower"])
def test_an_isolated_node_cannot_commit_and_converges_after_healing(make_cluster, who):
    cluster = make_cluster()
    leader = cluster.wait_for_leader()
    isolated = leader if who == "leader" else next(n for n in cluster.ids if n != leader)
    majority = [n for n in cluster.ids if n != isolated]
    cluster.partition(isolated)
    cluster.wait_for_leader(among=majority, timeout=10)
    acked = []
    for k in range(10):
        outcome = put(cluster, majority[k % 2], "majority/key", k)
        assert isinstance(outcome, Committed), outcome
        acked.append(outcome)
    lonely = [put(cluster, isolated, "isolated/key", k, timeout=1.0) for k in range(3)]
    assert all(isinstance(o, TimedOut) for o in lonely), lonely
    assert cluster.submitter(isolated).lookup(lonely[0].request_id) is None
    cluster.heal()
    after = put(cluster, isolated, "isolated/after-heal", 1, timeout=10)
    assert isinstance(after, Committed), after
    acked.append(after)
    assert_identical(cluster)
    assert_acknowledged_present(cluster, acked)


def _send_forged(cluster, to: str, sender: str, messages) -> None:
    envelope = seal(cluster.secret.encode(), sender, to, messages)
    CeleryTransport({to: cluster.broker_url(to)}).send(to, envelope)


def _promise(cluster, node: str) -> Ballot:
    rows = cluster.query(node, "SELECT promised_round, promised_node FROM consensus_acceptor_state")
    return Ballot(*rows[0]) if rows else Ballot.ZERO


def _wait(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_restarted_acceptor_never_votes_below_the_promise_it_made_before_the_crash(make_cluster):
    cluster = make_cluster()
    # Quiet the other nodes so only our forged messages reach n3.
    cluster.kill_worker("n1")
    cluster.kill_worker("n2")
    high = Ballot(1000, "n1")
    # Leader stickiness: n3 ignores a Prepare while it heard from its leader within an
    # election timeout, so the forged Prepare is sent again until n3 takes it.
    sent_at = [0.0]

    def promised_high() -> bool:
        if time.monotonic() - sent_at[0] >= 0.5:
            _send_forged(cluster, "n3", "n1", [Prepare(high, 1)])
            sent_at[0] = time.monotonic()
        return _promise(cluster, "n3") >= high

    _wait(promised_high, what="n3 to promise 1000.n1")
    cluster.kill_worker("n3", signal.SIGKILL)
    cluster.start_worker("n3")
    _wait(lambda: cluster.status()["nodes"][2]["reachable"], what="n3 to restart")
    assert _promise(cluster, "n3") >= high  # the promise survived the crash
    below = Ballot(999, "n2")
    value = Value((Command("forged-below", put_payload("x", 1)),))
    _send_forged(cluster, "n3", "n2", [Accept(below, ((500, value),), 0)])
    # A positive control, sent after: an Accept at a ballot above every promise is taken.
    above = Ballot(5000, "n2")
    control = Value((Command("forged-above", put_payload("y", 1)),))
    _send_forged(cluster, "n3", "n2", [Accept(above, ((501, control),), 0)])
    _wait(
        lambda: cluster.query("n3", "SELECT 1 FROM consensus_accepted_slot WHERE slot = 501"),
        what="the control Accept",
    )
    assert cluster.query(
        "n3", "SELECT ballot_round FROM consensus_accepted_slot WHERE slot = 501"
    ) == [(5000,)]
    assert cluster.query("n3", "SELECT 1 FROM consensus_accepted_slot WHERE slot = 500") == []


def test_forged_envelopes_change_nothing_and_are_counted(make_cluster):
    cluster = make_cluster()
    assert isinstance(put(cluster, "n1", "before/forgery", 1), Committed)
    wait_converged(cluster)
    before = snapshot(cluster, "n2")
    transport = CeleryTransport({"n2": cluster.broker_url("n2")})
    steal = Value((Command("forged", put_payload("evil", 1)),))
    forged = seal(
        b"not-the-cluster-secret", "n1", "n2", [Accept(Ballot(10_000, "n1"), ((99, steal),), 99)]
    )
    transport.send("n2", forged)  # bad MAC
    transport.send(
        "n2", seal(cluster.secret.encode(), "n9", "n2", [Prepare(Ballot(10_000, "n9"), 1)])
    )
    garbage = {"body": "{not json", "mac": ""}
    import hashlib
    import hmac

    garbage["mac"] = hmac.new(
        cluster.secret.encode(), garbage["body"].encode(), hashlib.sha256
    ).hexdigest()
    transport.send("n2", garbage)  # valid MAC over a body that is not JSON
    transport.send("n2", ["not", "an", "envelope"])
    transport.send(
        "n2", seal(cluster.secret.encode(), "n1", "n3", [Prepare(Ballot(10_000, "n1"), 1)])
    )

    def counters():
        node = next(n for n in cluster.status()["nodes"] if n["node_id"] == "n2")
        return node.get("counters", {})

    _wait(
        lambda: (
            counters().get("refused_bad_mac", 0) >= 1
            and counters().get("refused_unknown_sender", 0) >= 1
            and counters().get("refused_malformed", 0) >= 2
            and counters().get("refused_misaddressed", 0) >= 1
        ),
        what="the refusals to be counted",
    )
    assert snapshot(cluster, "n2") == before
    assert _promise(cluster, "n2") < Ballot(10_000, "")
    assert cluster.query(
        "n2", "SELECT count(*) FROM consensus_applied_request WHERE request_id = 'forged'"
    ) == [(0,)]


def test_a_retried_request_id_is_applied_once(make_cluster):
    cluster = make_cluster()
    rid = f"retry-{uuid.uuid4().hex}"
    payload = put_payload("retried/key", 1)
    first = cluster.submitter("n1").submit(payload, request_id=rid)
    again = cluster.submitter("n2").submit(payload, request_id=rid)
    assert isinstance(first, Committed) and isinstance(again, Committed)
    assert first.slot == again.slot
    state = assert_identical(cluster)
    assert [row for row in state["entries"] if row[0] == "retried/key"][0][2] == 1
