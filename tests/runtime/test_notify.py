"""The applier's NOTIFY carries the outcomes of the request ids it applied (so a waiter
needs no query), within PostgreSQL's payload cap; a large outcome is left to a lookup."""

from __future__ import annotations

import json
import threading

from consensus.client import Committed, Rejected, Submitter
from consensus.storage import NOTIFY_LIMIT, _notify_payloads


def _rows(n: int, result: dict, outcome: str = "committed") -> list[tuple]:
    return [(f"req-{i:04d}", 10 + i, outcome, json.dumps(result), None) for i in range(n)]


def test_every_applied_id_is_notified_with_its_outcome_under_the_size_cap():
    rows = _rows(300, {"key": "a/b", "version": 3, "created": False})
    payloads = [json.loads(p) for p in _notify_payloads(rows, 42)]
    assert len(payloads) > 1
    assert all(len(p) < NOTIFY_LIMIT + 500 for p in _notify_payloads(rows, 42))
    assert [i for p in payloads for i in p["ids"]] == [r[0] for r in rows]
    outcomes = {k: v for p in payloads for k, v in p["outcomes"].items()}
    assert outcomes["req-0007"] == [17, "committed", {"key": "a/b", "version": 3, "created": False}]
    assert len(outcomes) == 300 and {p["index"] for p in payloads} == {42}


def test_a_large_outcome_is_named_but_not_carried():
    (payload,) = _notify_payloads(_rows(1, {"detail": "x" * 5000}, "rejected"), 7)
    assert json.loads(payload) == {"index": 7, "ids": ["req-0000"], "outcomes": {}}
    (empty,) = _notify_payloads([], 7)
    assert json.loads(empty) == {"index": 7, "ids": [], "outcomes": {}}


def test_a_waiter_takes_its_outcome_from_the_notification():
    submitter = Submitter(node_id="n1", dsn="", broker_url="redis://127.0.0.1:1/0", secret=b"s")
    event = threading.Event()
    submitter._waiters["a"] = event
    submitter._waiters["b"] = threading.Event()
    submitter._wake(
        json.loads(
            _notify_payloads(
                [("a", 5, "committed", '{"version": 1}', None), ("b", 5, "rejected", "{}", None)]
                + [("nobody-waits", 5, "committed", "{}", None)],
                5,
            )[0]
        )
    )
    assert event.is_set()
    assert submitter._notified == {
        "a": Committed("a", 5, {"version": 1}),
        "b": Rejected("b", 5, {}),
    }
