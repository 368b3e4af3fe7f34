"""One test per rule of the acceptor (phase 1b and 2b)."""

from consensus.paxos import NOOP, Acceptor, Ballot, Command, Ready, Value

b1, b2, b3 = Ballot(1, "n1"), Ballot(2, "n2"), Ballot(3, "n1")
x = Value((Command("x", "x"),))


def test_promises_a_higher_ballot_and_records_it_for_persisting():
    acceptor, ready = Acceptor(b1, {}), Ready()
    assert acceptor.promise(b2, ready)
    assert acceptor.promised == b2 and ready.promised == b2


def test_refuses_to_promise_below_its_promise():
    acceptor, ready = Acceptor(b2, {}), Ready()
    assert not acceptor.promise(b1, ready)
    assert acceptor.promised == b2 and not ready.must_persist


def test_repeated_prepare_of_the_same_ballot_is_answered_without_a_new_write():
    acceptor, ready = Acceptor(b2, {}), Ready()
    assert acceptor.promise(b2, ready)
    assert not ready.must_persist


def test_reports_accepted_values_from_the_requested_slot_on():
    acceptor = Acceptor(b1, {1: (b1, x), 2: (b1, NOOP), 5: (b1, x)})
    assert acceptor.accepted_from(2, 1 << 20) == (((2, b1, NOOP), (5, b1, x)), True)


def test_reports_in_chunks_bounded_in_bytes_and_says_when_more_follow():
    big = Value((Command("big", "y" * 1000),))
    acceptor = Acceptor(b1, {s: (b1, big) for s in range(1, 11)})
    first, complete = acceptor.accepted_from(1, 2500)
    assert [s for s, _, _ in first] == [1, 2] and not complete
    rest, complete = acceptor.accepted_from(3, 1 << 20)
    assert [s for s, _, _ in rest] == list(range(3, 11)) and complete
    # A value larger than the bound still goes, alone.
    alone, complete = acceptor.accepted_from(4, 10)
    assert [s for s, _, _ in alone] == [4] and not complete


def test_accepts_at_its_promise_and_above_raising_the_promise():
    acceptor, ready = Acceptor(b1, {}), Ready()
    assert acceptor.accept(b2, ((1, x), (2, NOOP)), ready) == (1, 2)
    assert acceptor.promised == b2 and ready.promised == b2
    assert ready.accepted == [(1, b2, x), (2, b2, NOOP)]


def test_accepts_out_of_order_and_reports_in_slot_order():
    acceptor = Acceptor(b1, {})
    acceptor.accept(b1, ((9, x), (3, x), (6, NOOP)), Ready())
    assert [s for s, _, _ in acceptor.accepted_from(1, 1 << 20)[0]] == [3, 6, 9]


def test_never_accepts_below_its_promise():
    acceptor, ready = Acceptor(b3, {1: (b1, x)}), Ready()
    assert acceptor.accept(b2, ((1, NOOP),), ready) is None
    assert acceptor.accepted == {1: (b1, x)} and not ready.must_persist


def test_forgets_slots_at_and_below_a_chosen_and_applied_slot():
    acceptor = Acceptor(b1, {s: (b1, x) for s in range(1, 8)})
    acceptor.forget_through(5)
    assert sorted(acceptor.accepted) == [6, 7]
    assert [s for s, _, _ in acceptor.accepted_from(1, 1 << 20)[0]] == [6, 7]


def test_the_broken_switch_makes_it_accept_below_its_promise():
    acceptor = Acceptor(b3, {}, ignore_promise=True)
    assert acceptor.accept(b2, ((1, NOOP),), Ready()) == (1,)
    assert acceptor.promised == b3
