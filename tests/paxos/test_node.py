"""Transcript tests of the Multi-Paxos node, one behaviour each."""

import pytest

from consensus.paxos import (
    NOOP,
    Accept,
    Accepted,
    Ballot,
    Chosen,
    ChosenAck,
    Command,
    Config,
    DurableState,
    Forward,
    Heartbeat,
    HeartbeatAck,
    InstallSnapshot,
    Node,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    ReadIndexReply,
    Ready,
    Role,
    Value,
)

from .harness import Harness


def value_of(*rids):
    return Value(tuple(Command(r, f"payload of {r}") for r in rids))


def test_a_node_that_hears_no_leader_runs_phase_one_and_leads():
    h = Harness(3)
    h.advance(1.0)
    assert len(h.leaders()) == 1
    leader = h.node(h.leaders()[0])
    for i in h.ids:
        assert h.node(i).promised == leader.ballot
        if i != leader.id:
            assert h.node(i).leader_id == leader.id


def test_the_candidate_persists_its_own_promise_before_sending_prepare():
    h = Harness(3)
    h.now = 10.0
    asked = h.tick("n1")
    assert [type(m) for _, m in asked.messages] == [PreVote, PreVote] and not asked.must_persist
    reply = h.node("n2").on_message("n1", asked.messages[0][1], h.now).messages[0][1]
    assert reply == PreVoteReply(asked.messages[0][1].ballot, True)
    ready = h.receive("n1", "n2", reply)
    prepares = [m for _, m in ready.messages if isinstance(m, Prepare)]
    assert prepares and ready.promised == prepares[0].ballot


def test_a_command_is_chosen_and_applied_identically_everywhere():
    h = Harness(3)
    h.elect("n1")
    h.submit("n2", "r1")
    h.deliver()
    assert all(h.applied[i] == [(1, ("r1",))] for i in h.ids)


def test_a_follower_learns_a_slot_chosen_one_hop_after_the_leader_proposes_it():
    # In a 3-node cluster the leader's Accept is its vote; the follower's own is the second.
    h = Harness(3)
    h.elect("n1")
    h.submit("n1", "r1")
    accept_to_n2 = [(s, d, m) for s, d, m in h.in_flight if d == "n2" and isinstance(m, Accept)]
    h.in_flight = []
    ready = h.receive("n2", "n1", accept_to_n2[0][2])
    assert ready.committed == [(1, value_of("r1"))]


def test_many_commands_share_a_slot_when_submitted_together():
    h = Harness(3)
    h.elect("n1")
    h.submit("n1", *[f"r{k}" for k in range(50)])
    h.deliver()
    assert h.applied["n3"] == [(1, tuple(f"r{k}" for k in range(50)))]


def test_batches_are_capped_at_max_batch_commands_per_slot():
    h = Harness(3, max_batch=4)
    h.elect("n1")
    h.submit("n1", *[f"r{k}" for k in range(10)])
    h.deliver()
    assert [len(rids) for _, rids in h.applied["n1"]] == [4, 4, 2]


def test_no_more_than_window_slots_are_in_flight_and_the_rest_waits():
    h = Harness(3, window=2, max_batch=1)
    h.elect("n1")
    h.in_flight = []
    ready = h.submit("n1", "a", "b", "c", "d")
    accepts = [m for _, m in ready.messages if isinstance(m, Accept)]
    assert {slot for m in accepts for slot, _ in m.entries} == {1, 2}
    h.deliver()
    assert [rids for _, rids in h.applied["n2"]] == [("a",), ("b",), ("c",), ("d",)]


def test_a_new_leader_adopts_the_highest_accepted_value_of_each_open_slot():
    h = Harness(5)
    h.elect("n1")
    # n1 proposes r1 in slot 1; only n2 and n3 accept: with n1's vote, chosen, but nobody
    # learns it (we drop the Accepted). Then n1 crashes.
    h.submit("n1", "r1")
    h.deliver(drop=lambda s, d, m: d in ("n4", "n5") or isinstance(m, Accepted))
    h.crash("n1")
    # n4 becomes leader; any quorum of promises holds n2 or n3: it re-proposes r1 in slot 1.
    h.elect("n4")
    assert h.applied["n4"] == [(1, ("r1",))]


def test_the_highest_ballot_wins_when_promises_report_different_values():
    h = Harness(5)  # quorum of 3: the candidate, n1 and n2
    n3 = h.node("n3")
    h.campaign("n3")
    prepare = next(m for _, _, m in h.in_flight if isinstance(m, Prepare))
    h.in_flight = []
    low, high = Ballot(1, "n1"), Ballot(1, "n2")
    h.receive("n3", "n1", Promise(prepare.ballot, 1, ((1, low, value_of("a")),)))
    assert n3.role is Role.CANDIDATE
    ready = h.receive("n3", "n2", Promise(prepare.ballot, 1, ((1, high, value_of("b")),)))
    assert n3.role is Role.LEADER
    accepts = [m for _, m in ready.messages if isinstance(m, Accept)]
    assert accepts and all(m.entries == ((1, value_of("b")),) for m in accepts)


def test_a_new_leader_fills_gaps_with_no_ops():
    h = Harness(3)
    h.elect("n1")
    b = h.node("n1").ballot
    # n2 accepted slots 1 and 3 from n1, never slot 2.
    h.receive("n2", "n1", Accept(b, ((1, value_of("a")), (3, value_of("c"))), 0))
    h.crash("n1")
    h.in_flight = []
    # n2 knows slots 1 and 3 chosen (n1's Accept was n1's vote): it fills slot 2 and
    # streams n3 the rest.
    h.elect("n2")
    assert [rids for _, rids in h.applied["n3"]] == [("a",), (), ("c",)]
    assert h.durable["n3"].chosen[2] == NOOP


def test_a_retried_request_is_applied_once():
    h = Harness(3)
    h.elect("n1")
    h.submit("n2", "r1")
    h.deliver()
    h.submit("n3", "r1")  # the client retries elsewhere after the commit
    h.advance(1.0)
    # Even if the duplicate is chosen again in a later slot, the applier drops it.
    applied = [r for i in h.ids for _, rids in h.applied[i] for r in rids]
    assert applied.count("r1") == 3  # once per node


def test_the_applier_drops_a_request_id_chosen_twice():
    h = Harness(3)
    h.elect("n1")
    twice = value_of("r1", "r1")
    h.receive("n2", "n1", Chosen(1, (value_of("r1"), twice)))
    # Slot 2 chose r1 again (twice over): it is applied once, in slot 1, and never again.
    assert h.applied["n2"] == [(1, ("r1",)), (2, ())]


def test_a_follower_whose_leader_is_gone_forwards_after_the_next_election():
    h = Harness(3)
    h.elect("n1")
    h.crash("n1")
    h.submit("n2", "r1")  # forwarded to the dead n1 and lost
    h.advance(2.0)
    assert h.applied["n2"] == [(1, ("r1",))] or h.applied["n2"][-1][1] == ("r1",)
    assert h.applied["n2"] == h.applied["n3"]


def test_submits_forwarded_with_lost_messages_are_retried_until_chosen():
    h = Harness(3)
    h.elect("n1")
    h.submit("n3", "r1")
    h.deliver(drop=lambda s, d, m: isinstance(m, Forward))
    assert h.applied["n3"] == []
    h.advance(0.5)
    assert [rids for _, rids in h.applied["n3"]] == [("r1",)]


def test_a_lagging_follower_catches_up_from_the_leader():
    h = Harness(3, max_catchup=3)
    h.elect("n1")
    h.submit_each("n1", [f"r{k}" for k in range(10)], drop=lambda s, d, m: d == "n3")
    assert h.applied["n3"] == []
    h.advance(1.0)
    assert h.applied["n3"] == h.applied["n1"]
    assert len(h.applied["n3"]) == 10


def test_a_restarted_node_keeps_its_promise_and_accepted_values():
    h = Harness(5)  # n2's vote and n1's are not a quorum: slot 1 stays open at n2
    h.elect("n1")
    h.submit("n1", "r1")
    h.deliver(drop=lambda s, d, m: isinstance(m, Accepted))
    promised = h.node("n2").promised
    h.crash("n2")
    n2 = h.restart("n2")
    assert n2.promised == promised
    assert n2.acceptor.accepted[1] == (promised, value_of("r1"))
    stale = Prepare(Ballot(promised.round - 1, "n3"), 1)
    ready = n2.on_message("n3", stale, h.now)
    assert [type(m).__name__ for _, m in ready.messages] == ["Nack"]


def test_a_leader_cut_off_from_a_majority_steps_down():
    h = Harness(3)
    h.elect("n1")
    h.advance(2.0, drop=lambda s, d, m: "n1" in (s, d))
    assert h.node("n1").role is not Role.LEADER
    assert h.leaders() and "n1" not in h.leaders()


def test_a_deposed_leader_follows_the_higher_ballot():
    h = Harness(3)
    h.elect("n1")
    h.elect("n2")
    h.advance(0.2)
    assert h.leaders() == ["n2"]
    assert h.node("n1").leader_id == "n2"


def test_heartbeats_carry_the_commit_index():
    h = Harness(3)
    h.elect("n1")
    h.submit("n1", "r1")
    h.deliver()
    h.sent = []
    h.advance(0.2)
    beats = [m for src, _, m in h.sent if src == "n1" and isinstance(m, Heartbeat)]
    assert len(beats) >= 4 and all(m.commit_index == 1 for m in beats)


def test_a_single_node_cluster_chooses_alone():
    h = Harness(1)
    h.advance(1.0)
    h.submit("n1", "r1")
    assert h.applied["n1"] == [(1, ("r1",))]


def test_five_nodes_learn_through_accepted_broadcast():
    h = Harness(5)
    h.elect("n1")
    h.submit("n4", "r1")
    h.deliver()
    assert all(h.applied[i] == [(1, ("r1",))] for i in h.ids)


def test_a_five_node_cluster_survives_two_crashes():
    h = Harness(5)
    h.elect("n1")
    h.crash("n1")
    h.crash("n2")
    h.submit("n3", "r1")
    h.advance(3.0)
    assert all(h.applied[i] == [(1, ("r1",))] for i in ("n3", "n4", "n5"))


def test_config_rejects_unknown_nodes_and_bugs():
    with pytest.raises(ValueError):
        Config("n9", ("n1", "n2"))
    with pytest.raises(ValueError):
        Config("n1", ("n1",), bugs=frozenset({"typo"}))


def test_durable_state_applies_a_ready_in_full():
    h = Harness(3)
    h.elect("n1")
    h.submit("n1", "r1")
    h.deliver()
    ballot = h.node("n1").ballot
    for node in ("n1", "n2", "n3"):  # the leader's own acceptor and both followers'
        state = h.durable[node]
        assert state.promised == ballot
        assert state.accepted == {1: (ballot, value_of("r1"))}
        assert state.chosen == {1: value_of("r1")}
    # A Ready's writes, applied to a fresh DurableState, are exactly what it says.
    fresh = DurableState()
    fresh.apply(Ready(promised=Ballot(3, "n2"), accepted=[(7, Ballot(3, "n2"), value_of("x"))]))
    assert (fresh.promised, fresh.accepted, fresh.chosen) == (
        Ballot(3, "n2"),
        {7: (Ballot(3, "n2"), value_of("x"))},
        {},
    )


# ---------------------------------------------------------------- a node that comes back


def test_a_follower_of_a_live_leader_refuses_pre_vote_and_ignores_prepare():
    h = Harness(3)
    h.elect("n1")
    n2 = h.node("n2")
    ready = n2.on_message("n3", PreVote(Ballot(9, "n3"), 99), h.now)
    assert [m for _, m in ready.messages] == [PreVoteReply(Ballot(9, "n3"), False)]
    ready = n2.on_message("n3", Prepare(Ballot(9, "n3"), 1), h.now)
    assert ready.messages == [] and not ready.must_persist and n2.promised == h.node("n1").ballot
    # The leader, holding its quorum, ignores it too.
    leader = h.node("n1")
    assert leader.on_message("n3", Prepare(Ballot(9, "n3"), 1), h.now).messages == []
    assert leader.role is Role.LEADER


def test_a_follower_cut_off_from_its_leader_stops_claiming_a_live_leader():
    """What /healthz reports: a follower whose pre-votes keep failing (no quorum) must not
    go on claiming a live leader because each failed campaign moved its election deadline."""
    h = Harness(3)
    h.elect("n1")
    n3 = h.node("n3")
    assert n3.follows_live_leader(h.now)
    h.advance(3.0, drop=lambda s, d, m: "n3" in (s, d))
    assert n3.leader_id == "n1"  # it remembers whom it followed...
    assert not n3.follows_live_leader(h.now)  # ...but no longer claims it is alive
    h.advance(0.5)  # healed: the leader's next heartbeat makes it live again
    assert n3.follows_live_leader(h.now)


def test_a_node_cut_off_for_long_comes_back_without_an_election_or_a_higher_ballot():
    h = Harness(3)
    h.elect("n1")
    ballot = h.node("n1").ballot
    h.advance(3.0, drop=lambda s, d, m: "n3" in (s, d))
    assert h.node("n3").promised == ballot  # pre-votes failed: no ballot climbed
    h.submit("n1", "r1")
    h.sent = []
    h.advance(1.0)
    assert h.leaders() == ["n1"] and h.node("n1").ballot == ballot
    assert not [m for _, _, m in h.sent if isinstance(m, Prepare)]
    assert h.applied["n3"] == h.applied["n1"]


def test_a_node_behind_the_others_does_not_win_a_pre_vote():
    h = Harness(3)
    h.elect("n1")
    h.submit("n1", "r1")
    h.deliver(drop=lambda s, d, m: d == "n3")
    h.crash("n1")
    h.now += 10
    ready = h.node("n2").on_message("n3", PreVote(Ballot(5, "n3"), 1), h.now)
    assert [m.granted for _, m in ready.messages] == [False]  # n2 knows slot 1, n3 does not
    ready = h.node("n3").on_message("n2", PreVote(Ballot(5, "n2"), 2), h.now)
    assert [m.granted for _, m in ready.messages] == [True]


def _leader_with_n3_behind(h: Harness, writes: int) -> Node:
    """n1 leads and commits `writes` one-command slots that n3 never hears of; nothing is
    left in flight. Returns the leader."""
    h.elect("n1")
    for k in range(writes):
        h.submit("n1", f"r{k}")
        h.deliver(drop=lambda s, d, m: d == "n3")
    h.in_flight = []
    return h.node("n1")


def test_catch_up_streams_bounded_chunks_with_at_most_the_in_flight_bound_unacknowledged():
    h = Harness(3, max_catchup=1000, max_chunk_bytes=100, catchup_in_flight=2)
    leader = _leader_with_n3_behind(h, 30)
    # One chunk per acknowledgement or tick (a step reads one chunk from the log at most);
    # the ticks fill the window up to the in-flight bound, and no further.
    ready = leader.on_message("n3", HeartbeatAck(leader.ballot, 1, 1), h.now)
    chunks = [m for _, m in ready.messages if isinstance(m, Chosen)]
    assert len(chunks) == 1
    for _ in range(3):
        h.now += 0.001
        ready = leader.on_tick(h.now)
        chunks += [m for _, m in ready.messages if isinstance(m, Chosen)]
    assert len(chunks) == 2 and chunks[0].first_slot == 1
    assert chunks[1].first_slot == 1 + len(chunks[0].values)
    assert all(sum(v.size for v in c.values) <= 100 for c in chunks)
    # One acknowledgement, one more chunk; then everything arrives, with no election.
    ready = leader.on_message("n3", ChosenAck(chunks[1].first_slot), h.now)
    assert [type(m) for _, m in ready.messages] == [Chosen]
    h.sent = []
    h.advance(1.0)
    assert h.applied["n3"] == h.applied["n1"] and len(h.applied["n3"]) == 30
    assert not [m for _, _, m in h.sent if isinstance(m, (PreVote, Prepare, Accept))]


def test_catch_up_goes_at_the_pace_of_the_peers_applier():
    """A peer whose applier runs behind what it learned reports its applied index in its
    acks: the leader streams at most catchup_ahead slots beyond it, and goes on when the
    index moves."""
    h = Harness(3, max_catchup=4, catchup_in_flight=8, catchup_ahead=8)
    leader = _leader_with_n3_behind(h, 40)

    def streamed(ready) -> list[int]:
        return [
            c.first_slot + i
            for _, c in ready.messages
            if isinstance(c, Chosen)
            for i in range(len(c.values))
        ]

    # n3 applied nothing yet: slots 1..8 (two chunks of 4), not the 8 chunks in flight.
    ready = leader.on_message("n3", HeartbeatAck(leader.ballot, 1, 1, applied=0), h.now)
    assert streamed(ready) == list(range(1, 5))
    ready = leader.on_message("n3", HeartbeatAck(leader.ballot, 1, 1, applied=0), h.now)
    assert streamed(ready) == list(range(5, 9))
    ready = leader.on_tick(h.now + 0.001)
    assert streamed(ready) == []
    # It learned them but applied only 2: nothing more (9 > 2 + 8 is not allowed)...
    ready = leader.on_message("n3", ChosenAck(9, applied=2), h.now)
    assert streamed(ready) == list(range(9, 11))
    ready = leader.on_message("n3", HeartbeatAck(leader.ballot, 2, 11, applied=2), h.now)
    assert streamed(ready) == []
    # ...until its applier moves on.
    ready = leader.on_message("n3", HeartbeatAck(leader.ballot, 3, 11, applied=10), h.now)
    assert streamed(ready) == list(range(11, 15))
    ready = leader.on_tick(h.now + 0.002)
    assert streamed(ready) == list(range(15, 19))
    # A node reports what its host applied, not what it handed out.
    n3 = h.node("n3")
    assert n3.applied == n3.applied_index == 0
    n3.on_applied(0)
    ready = n3.on_message("n1", Chosen(1, tuple(leader.chosen[s] for s in range(1, 5))), h.now)
    assert n3.applied_index == 4 and n3.applied == 0
    assert [m for _, m in ready.messages] == [ChosenAck(5, 0)]
    n3.on_applied(3)
    assert n3.applied == 3 and n3.status()["applied_index"] == 3


def test_catch_up_streams_at_most_its_byte_rate():
    """catchup_bytes_per_second: a burst of one chunk, then chunks as the budget refills."""
    h = Harness(3, max_catchup=1000, max_chunk_bytes=100, catchup_bytes_per_second=200.0)
    leader = _leader_with_n3_behind(h, 60)
    sent: list[tuple[float, int]] = []

    def record(ready) -> None:
        """Note each chunk, and acknowledge it at once as applied: only the byte rate
        holds the stream back."""
        for _, m in ready.messages:
            if isinstance(m, Chosen):
                sent.append((h.now, sum(v.size for v in m.values)))
                end = m.first_slot + len(m.values)
                record(leader.on_message("n3", ChosenAck(end, applied=end - 1), h.now))

    start = h.now
    record(leader.on_message("n3", HeartbeatAck(leader.ballot, 1, 1, applied=0), h.now))
    while h.now < start + 3.0:
        h.now += 0.01
        record(leader.on_tick(h.now))
    total = sum(size for _, size in sent)
    assert sent and sent[0][0] == start
    # The log holds ~1,600 bytes: three seconds at 200 bytes/s send 600 of them, plus a
    # burst of one chunk (100 bytes), give or take the chunk that may overdraw the budget.
    assert 600 <= total <= 600 + 2 * 100, total
    later = sent[2:]  # past the burst (and the chunk that may overdraw it)
    for (t0, _), (t1, _) in zip(later, later[1:], strict=False):
        assert t1 - t0 >= 0.2  # ~one 100-byte chunk per half second at 200 bytes/s


def test_a_promise_leaves_out_chosen_slots_and_the_candidate_learns_them_before_leading():
    h = Harness(3)
    h.elect("n1")
    for k in range(5):
        h.submit("n1", f"r{k}")
        h.deliver(drop=lambda s, d, m: d == "n3")
    h.crash("n1")
    n2 = h.node("n2")
    # n3 asks n2 for promises from slot 1: n2's Promise names its commit index, no values.
    h.now += 10
    ready = n2.on_message("n3", Prepare(Ballot(7, "n3"), 1), h.now)
    promise = next(m for _, m in ready.messages if isinstance(m, Promise))
    assert promise.commit_index == 5 and promise.accepted == () and promise.complete
    chunk = next(m for _, m in ready.messages if isinstance(m, Chosen))
    assert chunk.first_slot == 1


def test_a_read_is_answered_after_a_heartbeat_round_a_majority_acknowledged():
    h = Harness(3)
    h.elect("n1")
    h.submit("n2", "r1")
    h.deliver()
    h.in_flight = []
    ready = h.read("n2", "q1")
    assert ready.reads == []
    h.deliver(drop=lambda s, d, m: isinstance(m, ReadIndexReply))
    leader = h.node("n1")
    assert leader._reads == []  # confirmed by n2's or n3's ack
    answer = h.node("n1").read_index(["q2"], h.now)
    assert answer.reads == [] and any(isinstance(m, Heartbeat) for _, m in answer.messages)
    h.in_flight = [("n1", to, m) for to, m in answer.messages]
    h.deliver()
    got = [r for _, _, m in h.sent if isinstance(m, ReadIndexReply) for r in m.read_ids]
    assert got == ["q1"]


def test_a_leader_cut_off_from_the_others_answers_no_read():
    h = Harness(3)
    h.elect("n1")
    h.submit("n1", "r1")
    h.deliver()
    cut = lambda s, d, m: "n1" in (s, d)  # noqa: E731
    ready = h.read("n1", "q1")
    h.deliver(drop=cut)
    answered = list(ready.reads)
    for _ in range(20):
        h.now += 0.01
        answered += h.tick("n1").reads
        h.deliver(drop=cut)
    assert answered == []


# ---------------------------------------------------------------------- compaction


def test_a_node_behind_the_compaction_point_catches_up_by_installing_a_snapshot():
    h = Harness(3, log_tail=2)
    h.elect("n1")
    h.crash("n3")
    h.submit_each("n1", [f"r{k}" for k in range(20)])
    assert [h.snapshot_and_compact(i) for i in ("n1", "n2")] == [18, 18]
    assert min(h.durable["n1"].chosen) == min(h.durable["n1"].accepted) == 19
    promised = h.durable["n3"].promised
    h.restart("n3")
    h.sent.clear()
    h.advance(0.5)
    to_n3 = [m for src, dst, m in h.sent if dst == "n3"]
    # Slots it lacks are pruned at the leader: it is told to install a snapshot, never
    # sent a value the leader no longer has (the simulator's storage would see the read).
    assert InstallSnapshot(18) in to_n3
    assert not any(isinstance(m, Chosen) for m in to_n3)
    assert h.install_asks["n3"][0] == ("n1", 18)
    assert h.machines["n3"].applied_index == 0
    assert h.transfer("n3", "n1")
    h.advance(0.5)
    # The snapshot's index is applied, its history identical; the acceptor state as it was.
    assert h.machines["n3"].applied_index == 20 == h.node("n3").commit_index
    assert h.applied["n3"] == h.applied["n1"] == h.applied["n2"]
    assert h.node("n3").compacted_through == 20 and h.durable["n3"].compacted_through == 20
    assert h.durable["n3"].promised == promised == h.node("n3").promised
    # And it keeps up by replay afterwards.
    h.submit("n1", "after")
    h.deliver()
    assert h.applied["n3"] == h.applied["n1"] and h.applied["n3"][-1] == (21, ("after",))


def test_a_candidate_behind_a_compacted_acceptor_is_promised_and_told_to_install():
    h = Harness(3, log_tail=0)
    h.elect("n1")
    h.submit_each("n1", [f"r{k}" for k in range(5)])
    assert h.snapshot_and_compact("n2") == 5
    h.now += 10.0  # n2's leader is silent for longer than its lease
    prepare = Prepare(Ballot(9, "n3"), 1)
    ready = h.receive("n2", "n3", prepare)
    sent = [m for _, m in ready.messages]
    # Phase 1 needs no pruned slot: the promise reports none at or below the commit index.
    assert Promise(prepare.ballot, 1, (), 5, True) in sent
    assert InstallSnapshot(5) in sent
    assert not any(isinstance(m, Chosen) for m in sent)


def test_a_node_that_knows_the_slots_answers_install_snapshot_with_where_it_is():
    h = Harness(3)
    h.elect("n1")
    h.submit("n1", "a")
    h.deliver()
    ready = h.receive("n2", "n1", InstallSnapshot(1))
    assert ready.snapshots == [] and h.install_asks["n2"] == []
    # So that a stream waiting on the install (the promiser's, to a candidate) goes on.
    assert ready.messages == [("n1", ChosenAck(2, 1))]
    ready = h.receive("n2", "n1", InstallSnapshot(2))
    assert ready.snapshots == [("n1", 2)] and h.install_asks["n2"] == [("n1", 2)]


def test_an_install_leaves_the_acceptor_promise_and_its_votes_above_the_snapshot():
    h = Harness(3, log_tail=0)
    h.elect("n1")
    h.submit_each("n1", ["r0", "r1", "r2"], drop=lambda src, dst, message: dst == "n3")
    h.snapshot_and_compact("n1")
    # n3 promised a higher ballot and voted in slot 9, then installs n1's snapshot at 3.
    ballot = Ballot(7, "n2")
    h.receive("n3", "n2", Accept(ballot, ((9, value_of("x")),), 0))
    assert h.transfer("n3", "n1")
    h.tick("n3")
    node = h.node("n3")
    assert node.commit_index == 3 and node.promised == ballot
    assert h.durable["n3"].promised == ballot
    assert h.durable["n3"].accepted[9] == (ballot, value_of("x"))
    assert node.acceptor.accepted[9] == (ballot, value_of("x"))
