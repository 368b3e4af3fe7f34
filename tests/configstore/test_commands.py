"""The command format: encode/decode round trips, and every way a payload can be malformed
(pure: no database)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from configstore.commands import (
    Check,
    Malformed,
    Noop,
    Origin,
    SchemaOperation,
    Write,
    WriteOperation,
    decode,
    encode,
)

ORIGIN = Origin(
    at=datetime(2026, 11, 27, 12, 0, tzinfo=UTC), actor="alice", reason="why", node="n2"
)

COMMANDS = [
    WriteOperation("put", (Write("put", "a/b", {"x": [1, None]}, "desc", 3),), ORIGIN),
    WriteOperation("put", (Write("put", "a", None, create_only=True),), ORIGIN),
    WriteOperation("put", (Write("put", "a", "s", must_exist=True),), ORIGIN),
    WriteOperation("delete", (Write("delete", "a", expected_version=2),), ORIGIN),
    WriteOperation(
        "txn",
        (Write("put", "a", 1), Write("delete", "b"), Write("put", "c", [], "d")),
        ORIGIN,
        (Check("a", 0), Check("z", 7)),
    ),
    SchemaOperation("put_schema", "a/", ORIGIN, {"type": "integer"}, "ints", 1),
    SchemaOperation("delete_schema", "a/b", ORIGIN, expected_version=None),
    Noop(),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.op)
def test_every_command_round_trips(command):
    assert decode(encode(command)) == command


def test_the_original_put_payload_still_decodes():
    """The runtime's own tests submit {"op", "key", "value", "at"} only."""
    command = decode(
        json.dumps({"op": "put", "key": "k", "value": 1, "at": "2026-01-01T00:00:00+00:00"})
    )
    assert command.writes == (Write("put", "k", 1),)
    assert command.origin.actor == ""


def base(**fields) -> dict:
    return {"op": "put", "key": "k", "value": 1, "at": "2026-11-27T12:00:00+00:00", **fields}


MALFORMED = [
    ("not json", "unreadable"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"op": "frob"}), "unknown operation"),
    (json.dumps(base(key="a//b")), "key"),
    (json.dumps(base(key="x" * 300)), "key"),
    (json.dumps({k: v for k, v in base().items() if k != "value"}), "value is required"),
    (json.dumps(base(at="yesterday")), "at must be"),
    (json.dumps(base(at="2026-11-27T12:00:00")), "timezone"),
    (json.dumps(base(actor="x" * 151)), "actor"),
    (json.dumps(base(actor=5)), "actor"),
    (json.dumps(base(reason="\x00")), "reason"),
    (json.dumps(base(node="n" * 65)), "node"),
    (json.dumps(base(expected_version=-1)), "expected_version"),
    (json.dumps(base(expected_version=True)), "expected_version"),
    (json.dumps(base(expected_version=2**63)), "expected_version"),
    (json.dumps(base(create_only="yes")), "create_only"),
    (json.dumps(base(create_only=True, must_exist=True)), "exclude"),
    ('{"op": "put", "key": "k", "value": NaN, "at": "2026-11-27T12:00:00+00:00"}', "unreadable"),
    ('{"op": "put", "key": "k", "value": 1e400, "at": "2026-11-27T12:00:00+00:00"}', "infinite"),
    ('{"op": "put", "key": "k", "value": "\\u0000", "at": "2026-11-27T12:00:00+00:00"}', "NUL"),
    (
        '{"op": "put", "key": "k", "value": "\\ud800", "at": "2026-11-27T12:00:00+00:00"}',
        "surrogate",
    ),
    (
        '{"op": "put", "key": "k", "value": '
        + "[" * 150
        + "]" * 150
        + ', "at": "2026-11-27T12:00:00+00:00"}',
        "nested",
    ),
    (
        '{"op": "put", "key": "k", "value": ' + "1" * 5000 + ', "at": "2026-11-27T12:00:00+00:00"}',
        "unreadable",
    ),
    (json.dumps(base(op="txn", ops=[])), "at least one op"),
    (json.dumps(base(op="txn", ops="x")), "must be a list"),
    (json.dumps(base(op="txn", ops=[{"op": "frob", "key": "a"}])), "ops[0]"),
    (json.dumps(base(op="txn", ops=[{"op": "put", "key": "a"}])), "ops[0]: value is required"),
    (
        json.dumps(
            base(
                op="txn", ops=[{"op": "put", "key": "a", "value": 1}, {"op": "delete", "key": "a"}]
            )
        ),
        "twice",
    ),
    (
        json.dumps(base(op="txn", ops=[{"op": "delete", "key": "a"}], checks=[{"key": "b"}])),
        "checks[0]: version",
    ),
    (
        json.dumps(
            base(
                op="txn",
                ops=[{"op": "delete", "key": "a"}],
                checks=[{"key": "b", "version": 1}, {"key": "b", "version": 2}],
            )
        ),
        "twice",
    ),
    (json.dumps(base(op="put_schema", key="a/", schema={"type": "nonsense"})), "schema"),
    (json.dumps(base(op="put_schema", key="a/", schema=[1])), "schema"),
    (json.dumps(base(op="delete_schema", key="a//")), "key"),
]


@pytest.mark.parametrize("text, why", MALFORMED)
def test_malformed_payloads_are_refused_with_a_reason(text, why):
    with pytest.raises(Malformed, match=why.replace("[", r"\[").replace("]", r"\]")):
        decode(text)


def test_a_refusal_keeps_what_could_be_read_for_the_history():
    with pytest.raises(Malformed) as refused:
        decode(json.dumps(base(expected_version="three", actor="bob")))
    assert refused.value.op == "put"
    assert refused.value.key == "k"
    assert refused.value.origin.actor == "bob"
