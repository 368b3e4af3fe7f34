"""Signed freshness of envelopes (consensus.envelope): what the MAC covers and which
envelopes a receiver's `Freshness` refuses. Pure: time and incarnations come in."""

from __future__ import annotations

import json
import random

import pytest

from consensus.envelope import (
    FRESH_FOR,
    MAX_INCARNATIONS,
    SEQ_WINDOW,
    BadEnvelope,
    Freshness,
    Sealer,
    new_incarnation,
    open_envelope,
)
from consensus.paxos import Ballot, Command, Prepare

SECRET = b"cluster-secret"
NODES = ("n1", "n2", "n3")
T0 = 1_800_000_000.0


def _sealer(sender: str = "n1", born: float = T0) -> Sealer:
    return Sealer(SECRET, sender, new_incarnation(born, random.Random(born).randbytes(8)))


def _opened(envelope: dict, me: str = "n2"):
    return open_envelope(SECRET, me, NODES, envelope)


def _prepare(sealer: Sealer, now: float, to: str = "n2") -> dict:
    return sealer.seal(to, [Prepare(Ballot(1, sealer.sender), 1)], now)


def _refusal(freshness: Freshness, envelope: dict, now: float, me: str = "n2") -> str | None:
    try:
        freshness.admit(_opened(envelope, me), now)
    except BadEnvelope as refused:
        return refused.reason
    return None


def test_freshness_is_inside_the_mac():
    envelope = _prepare(_sealer(), T0)
    body = json.loads(envelope["body"])
    assert {"inc", "seq", "at"} <= set(body)
    body["seq"] += 1
    tampered = {"body": json.dumps(body, sort_keys=True), "mac": envelope["mac"]}
    with pytest.raises(BadEnvelope) as refused:
        _opened(tampered)
    assert refused.value.reason == "bad_mac"


def test_an_envelope_is_taken_once_even_reordered():
    freshness, sealer = Freshness(), _sealer()
    envelopes = [_prepare(sealer, T0 + i * 0.001) for i in range(50)]
    shuffled = envelopes[:]
    random.Random(7).shuffle(shuffled)
    assert [_refusal(freshness, e, T0 + 0.1) for e in shuffled] == [None] * 50
    assert {_refusal(freshness, e, T0 + 0.2) for e in envelopes} == {"replayed"}


def test_an_envelope_far_behind_the_window_or_out_of_time_is_refused():
    freshness, sealer = Freshness(), _sealer()
    first = _prepare(sealer, T0)
    for _ in range(SEQ_WINDOW):
        assert _refusal(freshness, _prepare(sealer, T0), T0) is None
    assert _refusal(freshness, first, T0) == "replayed"  # too far behind to tell
    assert _refusal(freshness, _prepare(sealer, T0 - FRESH_FOR - 1), T0) == "stale"
    assert _refusal(freshness, _prepare(sealer, T0 + FRESH_FOR + 1), T0) == "stale"


def test_a_restarted_worker_is_heard_and_its_old_incarnation_refused():
    freshness = Freshness()
    old, new = _sealer(born=T0), _sealer(born=T0 + 3)
    in_flight = _prepare(old, T0 + 3)
    assert _refusal(freshness, _prepare(old, T0 + 3), T0 + 3) is None
    assert _refusal(freshness, _prepare(new, T0 + 4), T0 + 4) is None
    assert _refusal(freshness, in_flight, T0 + 4) == "superseded"
    # Sequence numbers are per incarnation: the new one's start at 1 again and are taken.
    assert _refusal(freshness, _prepare(new, T0 + 4), T0 + 4) is None


def test_a_newer_incarnation_is_forgotten_after_it_falls_silent():
    # A sender restarted with a clock set back is refused for FRESH_FOR at most.
    freshness = Freshness()
    ahead, back = _sealer(born=T0 + 100), _sealer(born=T0)
    assert _refusal(freshness, _prepare(ahead, T0), T0) is None
    assert _refusal(freshness, _prepare(back, T0 + 1), T0 + 1) == "superseded"
    later = T0 + FRESH_FOR + 2
    assert _refusal(freshness, _prepare(back, later), later) is None


def test_many_web_processes_submit_at_once_and_memory_stays_bounded():
    freshness = Freshness()
    web = [_sealer("n2", born=T0 + i / 1000) for i in range(MAX_INCARNATIONS + 10)]
    submissions = [s.seal_submit([Command(f"r{i}", "{}")], T0 + 1) for i, s in enumerate(web)]
    for envelope in submissions:
        assert _refusal(freshness, envelope, T0 + 1) is None  # no incarnation supersedes another
    assert sum(len(w) for w in freshness._windows.values()) <= MAX_INCARNATIONS
    assert _refusal(freshness, submissions[-1], T0 + 1) == "replayed"


def test_sequence_numbers_count_per_receiver():
    sealer = _sealer()
    seqs = [
        json.loads(sealer.seal(to, [Prepare(Ballot(1, "n1"), 1)], T0)["body"])["seq"]
        for to in ("n2", "n3", "n2", "n2", "n3")
    ]
    assert seqs == [1, 1, 2, 3, 2]
