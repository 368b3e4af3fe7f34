"""NodeHost, the one loop around the core, with in-memory adapters: pure and fast (no
PostgreSQL, no broker). Each test names a rule of consensus/host.py and watches it through
adapters that keep a journal of what the host asked of them, in order."""

from __future__ import annotations

import random

import pytest

from consensus.host import (
    HOST_BUGS,
    FromPeer,
    ManualClock,
    MemorySnapshot,
    MemoryStateMachine,
    MemoryStorage,
    NodeHost,
    ReadRequests,
    Submission,
)
from consensus.paxos import (
    Accept,
    Accepted,
    Ballot,
    Chosen,
    Command,
    Config,
    DurableState,
    Forward,
    Heartbeat,
    InstallSnapshot,
    Prepare,
    PreVote,
    PreVoteReply,
    Ready,
    Role,
    Value,
)

NODES = ("n1", "n2", "n3")
LEADER = Ballot(1, "n1")


def value_of(*rids: str) -> Value:
    return Value(tuple(Command(r, f"payload of {r}") for r in rids))


class JournalStorage(MemoryStorage):
    """In-memory storage that notes every load and persist, and fails the next
    `failures` persists (writing nothing)."""

    def __init__(self, durable, state_machine, journal: list, failures: int = 0) -> None:
        super().__init__(durable, state_machine)
        self.journal = journal
        self.failures = failures

    def load(self):
        self.journal.append(("load",))
        return super().load()

    def persist(self, ready: Ready) -> None:
        if self.failures:
            self.failures -= 1
            self.journal.append(("persist failed",))
            raise OSError("disk full")
        self.journal.append(("persist", ready.promised, [s for s, _, _ in ready.accepted]))
        super().persist(ready)


class JournalTransport:
    """Notes every send with what was durable at that moment."""

    def __init__(self, durable: DurableState, journal: list) -> None:
        self.durable = durable
        self.journal = journal
        self.sent: list[tuple[str, list]] = []

    def send(self, peer: str, messages: list) -> None:
        self.sent.append((peer, list(messages)))
        self.journal.append(
            ("send", peer, [type(m).__name__ for m in messages], self.durable.promised)
        )


class Node:
    """One host and its adapters."""

    def __init__(
        self,
        node_id: str = "n2",
        *,
        rate: int = 0,
        failures: int = 0,
        bugs=frozenset(),
        log_tail: int = 1024,
    ) -> None:
        self.journal: list = []
        self.durable = DurableState()
        #: Snapshot installs the host asked for.
        self.asked: list[tuple[str, int]] = []
        self.machine = MemoryStateMachine(
            self.durable, rate=rate, bugs=bugs, on_install=lambda *ask: self.asked.append(ask)
        )
        self.storage = JournalStorage(self.durable, self.machine, self.journal, failures)
        self.transport = JournalTransport(self.durable, self.journal)
        self.clock = ManualClock()
        self.host = NodeHost(
            Config(node_id, NODES),
            storage=self.storage,
            transport=self.transport,
            state_machine=self.machine,
            clock=self.clock,
            rng=random.Random(1),
            bugs=bugs,
            log_tail=log_tail,
        )
        self.host.node()  # started at time 0
        self.journal.clear()

    def kinds(self) -> list[str]:
        return [entry[0] for entry in self.journal]


def _campaign(node: Node) -> Ballot:
    """n1 times out, wins its pre-vote from n2: the step that promises and sends Prepare.
    Returns the ballot of the Prepares."""
    node.clock.time = 10.0
    ready = node.host.tick()
    prevote = next(m for _, m in ready.messages if isinstance(m, PreVote))
    node.journal.clear()
    ready = node.host.on_message("n2", PreVoteReply(prevote.ballot, True))
    return next(m for _, m in ready.messages if isinstance(m, Prepare)).ballot


def test_a_step_persists_its_promise_before_it_sends_anything():
    node = Node("n1")
    ballot = _campaign(node)
    assert node.kinds() == ["persist", "send", "send"]
    assert node.journal[0] == ("persist", ballot, [])
    # Every Prepare left with the promise it asks for already durable.
    assert all(entry[2] == ["Prepare"] and entry[3] == ballot for entry in node.journal[1:])


def test_an_accepted_vote_leaves_only_once_the_value_is_durable():
    node = Node("n2")
    node.host.on_message("n1", Accept(LEADER, ((1, value_of("a")),), 0))
    assert node.kinds() == ["persist", "send"]
    assert node.journal[0] == ("persist", LEADER, [1])
    peer, messages = node.transport.sent[0]
    assert peer == "n1" and isinstance(messages[0], Accepted) and messages[0].slots == (1,)
    assert node.durable.accepted[1] == (LEADER, value_of("a"))


def test_the_send_before_persist_canary_really_sends_first():
    node = Node("n1", bugs=frozenset({"send_before_persist"}))
    ballot = _campaign(node)
    assert node.kinds() == ["send", "send", "persist"]
    assert all(entry[3] < ballot for entry in node.journal[:2])


def test_several_inputs_make_one_step_one_persist_and_one_send_per_peer():
    node = Node("n2")
    node.host.on_message("n1", Accept(LEADER, ((1, value_of("a")),), 0))  # n2 follows n1
    node.journal.clear()
    node.transport.sent.clear()
    ready = node.host.step(
        [
            FromPeer("n1", [Accept(LEADER, ((2, value_of("b")),), 1)]),
            FromPeer("n1", [Accept(LEADER, ((3, value_of("c")),), 1)]),
            Submission([Command("r9", "payload of r9")]),
            ReadRequests(["q1"]),
        ]
    )
    assert node.kinds() == ["persist", "send"]
    assert node.journal[0] == ("persist", None, [2, 3])
    (peer, messages), *more = node.transport.sent
    assert peer == "n1" and not more
    # Both votes, the forwarded command and the read's question, in one call to n1.
    assert [type(m).__name__ for m in messages].count("Accepted") == 2
    assert any(isinstance(m, Forward) for m in messages)
    assert len(ready.messages) == len(messages)


def test_a_failed_persist_sends_nothing_and_the_core_is_rebuilt_from_storage():
    node = Node("n1", failures=1)
    node.clock.time = 10.0
    prevote = next(m for _, m in node.host.tick().messages if isinstance(m, PreVote))
    node.journal.clear()
    node.host.on_message("n2", PreVoteReply(prevote.ballot, True))
    # The promise never became durable: no Prepare left, and the core that made it is gone.
    assert node.kinds() == ["persist failed"]
    assert node.host.core is None and node.host.storage_failures == 1
    assert node.durable.promised == Ballot.ZERO
    # The next input rebuilds the core from storage, which knows no promise.
    node.host.tick()
    assert node.kinds()[:2] == ["persist failed", "load"]
    assert node.host.node().promised == Ballot.ZERO
    assert node.host.node().role is not Role.LEADER


def test_a_failed_persist_hands_nothing_to_the_state_machine():
    node = Node("n2", failures=1)
    node.host.on_message("n1", Accept(LEADER, ((1, value_of("a")),), 0))
    # Slot 1 is chosen (n1's Accept is its vote, n2's the second) but was not persisted.
    assert node.machine.applied_index == 0 and node.durable.chosen == {}
    node.host.on_message("n1", Accept(LEADER, ((1, value_of("a")),), 0))
    assert node.machine.applied_log == [(1, ("a",))]


def test_the_applied_index_the_state_machine_reports_goes_back_to_the_core():
    node = Node("n2", rate=1)  # an applier that lags: one slot per run
    node.host.on_message("n1", Chosen(1, (value_of("a"), value_of("b"), value_of("c"))))
    core = node.host.node()
    # The core handed out three slots; the state machine applied none yet.
    assert core.applied_index == 3 and node.machine.applied_index == 0
    assert node.host.status()["applied_index"] == 0
    node.machine.run()
    node.machine.run()
    assert node.machine.applied_index == 2
    # Published at once, and the core hears it before its next step, whose vote carries it.
    assert node.host.status()["applied_index"] == 2
    ready = node.host.on_message("n1", Accept(LEADER, ((4, value_of("d")),), 3))
    accepted = next(m for _, m in ready.messages if isinstance(m, Accepted))
    assert core.applied == 2 and accepted.applied == 2
    assert node.host.status()["handed_out_index"] == 4


def test_the_state_machine_applies_in_slot_order_whatever_order_it_learns_in():
    machine = MemoryStateMachine(DurableState())
    machine.learned([(2, value_of("b")), (4, value_of("d"))])
    assert machine.applied_index == 0
    machine.learned([(1, value_of("a"))])
    assert machine.applied_log == [(1, ("a",)), (2, ("b",))]
    machine.learned([(3, value_of("c"))])
    assert [slot for slot, _ in machine.applied_log] == [1, 2, 3, 4]


def test_a_restarted_state_machine_keeps_its_applied_index_and_applies_what_it_recorded():
    durable = DurableState()
    machine = MemoryStateMachine(durable, rate=1)
    machine.learned([(1, value_of("a")), (2, value_of("b"))])
    machine.run()  # records both, applies slot 1
    machine.learned([(3, value_of("c"))])  # not recorded yet: lost in the crash
    machine.restart()
    assert machine.applied_index == 1 and sorted(durable.chosen) == [1, 2]
    machine.run()
    assert machine.applied_log == [(1, ("a",)), (2, ("b",))]
    assert MemoryStorage(durable, machine).load() == (durable, 2)


def test_reads_answered_go_to_the_state_machine():
    answered = []
    durable = DurableState()
    machine = MemoryStateMachine(durable, on_reads=answered.extend)
    host = NodeHost(
        Config("n1", ("n1",)),
        storage=MemoryStorage(durable, machine),
        transport=JournalTransport(durable, []),
        state_machine=machine,
        clock=ManualClock(),
        rng=random.Random(1),
    )
    host.node()
    host.clock.time = 10.0
    host.tick()  # a cluster of one elects itself once its election timeout passed
    assert host.node().role is Role.LEADER
    host.submit([Command("r1", "x")])
    host.read_index(["q1"])
    assert answered == [("q1", 1)] and machine.applied_index == 1


def test_an_unknown_host_bug_is_refused():
    assert "send_before_persist" in HOST_BUGS
    with pytest.raises(ValueError):
        Node(bugs=frozenset({"typo"}))


# ---------------------------------------------------------------------- compaction


def _applied_through(node: Node, last: int) -> None:
    """Slots 1..last accepted from the leader and learned chosen by its heartbeat."""
    entries = tuple((slot, value_of(f"r{slot}")) for slot in range(1, last + 1))
    node.host.on_message("n1", Accept(LEADER, entries, 0))
    node.host.on_message("n1", Heartbeat(LEADER, last, 1))
    assert node.machine.applied_index == last


def test_compaction_prunes_only_below_the_latest_snapshot_and_keeps_the_tail():
    node = Node("n2", log_tail=3)
    _applied_through(node, 10)
    assert node.host.compact() == 0  # no snapshot yet: nothing may go
    assert sorted(node.durable.chosen) == sorted(node.durable.accepted) == list(range(1, 11))
    node.machine.keep_snapshot(node.machine.take_snapshot())  # at 10
    assert node.host.compact() == 7  # the tail: 3 slots below the applied index
    assert sorted(node.durable.chosen) == sorted(node.durable.accepted) == [8, 9, 10]
    assert node.durable.compacted_through == 7 == node.host.status()["compacted_through"]
    # With the tail at 0, only as far as the snapshot: slot 11 applied after it stays.
    node.host.log_tail = 0
    node.host.on_message("n1", Accept(LEADER, ((11, value_of("r11")),), 11))
    assert node.machine.applied_index == 11 and node.host.compact() == 10
    assert sorted(node.durable.chosen) == [11]
    # A restart loads the compaction point.
    restarted = NodeHost(
        Config("n2", NODES),
        storage=MemoryStorage(node.durable, node.machine),
        transport=JournalTransport(node.durable, []),
        state_machine=node.machine,
        clock=ManualClock(),
        rng=random.Random(2),
    )
    assert restarted.node().compacted_through == 10


def test_the_compact_beyond_snapshot_canary_prunes_above_the_snapshot():
    node = Node("n2", log_tail=0, bugs=frozenset({"compact_beyond_snapshot"}))
    _applied_through(node, 6)
    assert node.host.compact() == 6 and node.machine.snapshot_index == 0


def test_an_install_the_core_asks_for_goes_to_the_state_machine():
    node = Node("n2")
    node.host.on_message("n1", InstallSnapshot(40))
    assert node.asked == [("n1", 40)]


def _snapshot_at(last: int):
    source = MemoryStateMachine(DurableState())
    source.learned([(slot, value_of(f"r{slot}")) for slot in range(1, last + 1)])
    return source, source.take_snapshot()


def test_an_installed_snapshot_replaces_the_state_and_the_core_jumps_past_it():
    node = Node("n3")
    node.host.on_message("n1", Accept(LEADER, ((45, value_of("later")),), 0))
    source, snapshot = _snapshot_at(40)
    assert node.machine.install(snapshot)
    assert node.machine.applied_log == source.applied_log
    assert node.machine.applied_ids == source.applied_ids
    assert node.durable.compacted_through == 40 and node.machine.snapshot_index == 40
    node.host.tick()
    core = node.host.node()
    assert core.commit_index == 40 and core.compacted_through == 40
    assert node.host.status()["applied_index"] == 40
    # The vote above the snapshot and the promise stay binding.
    assert node.durable.promised == LEADER == core.promised
    assert node.durable.accepted[45] == (LEADER, value_of("later"))


def test_a_damaged_or_older_snapshot_is_refused_and_changes_nothing():
    node = Node("n3")
    _, snapshot = _snapshot_at(8)
    damaged = MemorySnapshot(
        snapshot.index, snapshot.applied_ids, snapshot.applied_log[1:], snapshot.checksum
    )
    assert not damaged.intact() and not node.machine.install(damaged)
    assert node.machine.applied_index == 0 and node.machine.applied_log == []
    assert node.durable.compacted_through == 0 and node.machine.snapshot is None
    assert node.machine.install(snapshot)
    _, older = _snapshot_at(5)
    assert not node.machine.install(older)
    assert node.machine.applied_index == 8 and len(node.machine.applied_log) == 8


def test_slots_a_rebuilt_core_never_saw_applied_are_skipped_not_taken_for_a_snapshot():
    # The soak's seed 8832: a lagging applier still holds learned entries when a failed
    # persist makes the host rebuild its core from storage, which lacks them.
    node = Node("n2", rate=8, failures=1)
    node.host.on_message("n1", Chosen(1, (value_of("a"), value_of("b"), value_of("c"))))
    node.host.on_message("n1", Accept(LEADER, ((4, value_of("d")),), 0))  # persist fails
    rebuilt = node.host.node()
    assert rebuilt.commit_index == 0 and node.durable.chosen == {}
    node.machine.run()  # records and applies slots 1-3, which the new core never saw
    node.host.tick()
    assert rebuilt.commit_index == 3 and node.host.status()["applied_index"] == 3
    # Nothing was pruned: the log still serves those slots, no snapshot is announced.
    assert rebuilt.compacted_through == 0 == node.durable.compacted_through
    assert sorted(node.durable.chosen) == [1, 2, 3]
