"""One test per rule of the acceptor (phase 1b and 2b)."""

from consensus.paxos import NOOP, Acceptor, Ballot, Command, Nack, Promise, Ready, Value

b1, b2, b3 = Ballot(1, "n1"), Ballot(2, "n2"), Ballot(3, "n1")
x = Value((Command("x", "x"),))


def test_promises_a_higher_ballot_and_records_it_for_persisting():
    acceptor, ready = Acceptor(b1, {}), Ready()
    reply = acceptor.promise(b2, 1, ready)
    assert reply == Promise(b2, 1, ())
    assert acceptor.promised == b2 and ready.promised == b2


def test_refuses_to_promise_below_its_promise_and_names_the_promise():
    acceptor, ready = Acceptor(b2, {}), Ready()
    assert acceptor.promise(b1, 1, ready) == Nack(b1, b2)
    assert acceptor.promised == b2 and not ready.must_persist


def test_repeated_prepare_of_the_same_ballot_is_answered_without_a_new_write():
    acceptor, ready = Acceptor(b2, {}), Ready()
    assert isinstance(acceptor.promise(b2, 1, ready), Promise)
    assert not ready.must_persist


def test_promise_reports_accepted_values_from_the_requested_slot_on():
    acceptor = Acceptor(b1, {1: (b1, x), 2: (b1, NOOP), 5: (b1, x)})
    reply = acceptor.promise(b2, 2, Ready())
    assert reply.accepted == ((2, b1, NOOP), (5, b1, x))


def test_accepts_at_its_promise_and_above_raising_the_promise():
    acceptor, ready = Acceptor(b1, {}), Ready()
    assert acceptor.accept(b2, ((1, x), (2, NOOP)), ready) == (1, 2)
    assert acceptor.promised == b2 and ready.promised == b2
    assert ready.accepted == [(1, b2, x), (2, b2, NOOP)]


def test_never_accepts_below_its_promise():
    acceptor, ready = Acceptor(b3, {1: (b1, x)}), Ready()
    assert acceptor.accept(b2, ((1, NOOP),), ready) == Nack(b2, b3)
    assert acceptor.accepted == {1: (b1, x)} and not ready.must_persist


def test_the_broken_switch_makes_it_accept_below_its_promise():
    acceptor = Acceptor(b3, {}, ignore_promise=True)
    assert acceptor.accept(b2, ((1, NOOP),), Ready()) == (1,)
    assert acceptor.promised == b3
