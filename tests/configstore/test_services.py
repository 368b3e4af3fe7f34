"""The services: every input they refuse is refused before anything is submitted (state and
history unchanged); an applier's rejection becomes the exception a caller acts on; a retried
idempotency key returns its first outcome without submitting again.

No cluster runs (see conftest): a valid write ends in NoQuorum, never submitted."""

from __future__ import annotations

import pytest

from configstore import exceptions, services
from configstore.services import Check, Write
from tests.configstore.conftest import Log, payload, replicated_state

MiB = 1024 * 1024


def put(**kwargs):
    return services.entry_put(**{"key": "k", "value": 1, "actor": "alice", **kwargs})


REFUSED_PUTS = [
    ({"key": "a//b"}, exceptions.InvalidKey),
    ({"key": "/a"}, exceptions.InvalidKey),
    ({"key": "a/"}, exceptions.InvalidKey),
    ({"key": "x" * 257}, exceptions.InvalidKey),
    ({"key": "sp ace"}, exceptions.InvalidKey),
    ({"value": float("nan")}, exceptions.InvalidInput),
    ({"value": {"a": float("inf")}}, exceptions.InvalidInput),
    ({"value": "nul\x00"}, exceptions.InvalidInput),
    ({"value": "\ud800"}, exceptions.InvalidInput),
    ({"value": {1, 2}}, exceptions.InvalidInput),
    ({"value": "x" * MiB}, exceptions.TooLarge),
    ({"actor": "x" * 151}, exceptions.InvalidInput),
    ({"reason": "r" * 2001}, exceptions.InvalidInput),
    ({"description": "d" * 10_001}, exceptions.InvalidInput),
    ({"expected_version": -1}, exceptions.InvalidInput),
    ({"expected_version": True}, exceptions.InvalidInput),
    ({"expected_version": 1, "create_only": True}, exceptions.InvalidInput),
    ({"create_only": True, "must_exist": True}, exceptions.InvalidInput),
]


@pytest.mark.parametrize("kwargs, error", REFUSED_PUTS)
def test_a_refused_put_changes_nothing(log, kwargs, error):
    log.apply(payload("put", key="k", value=0))
    before = replicated_state()
    with pytest.raises(error) as refused:
        put(**kwargs)
    assert type(refused.value) is error
    assert replicated_state() == before


def test_the_size_limit_is_a_setting_counted_on_compact_json(db, settings, configure):
    configure(max_value_bytes=20)
    with pytest.raises(exceptions.TooLarge) as refused:
        put(value={"a": "x" * 20})
    assert (refused.value.size, refused.value.limit) == (28, 20)
    with pytest.raises(exceptions.NoQuorum):  # 20 bytes exactly passes validation
        put(value={"a": "x" * 12})


def test_a_value_the_schema_refuses_is_refused_before_submitting(log):
    log.apply(payload("put_schema", key="svc/", schema={"properties": {"n": {"type": "integer"}}}))
    before = replicated_state()
    with pytest.raises(exceptions.SchemaViolation) as refused:
        put(key="svc/x", value={"n": "one"})
    assert (refused.value.path, refused.value.schema, refused.value.key) == ("$.n", "svc/", "svc/x")
    assert refused.value.as_dict()["error"] == "schema_violation"
    assert replicated_state() == before


def test_a_valid_write_without_quorum_is_not_submitted(log):
    before = replicated_state()
    with pytest.raises(exceptions.NoQuorum) as refused:
        put(key="ok", value={"fine": True}, reason="r")
    assert refused.value.request_id
    assert "nothing was submitted" in refused.value.detail
    assert replicated_state() == before
    with pytest.raises(exceptions.NoQuorum):
        services.entry_delete(key="k", actor="alice")
    with pytest.raises(exceptions.NoQuorum):
        services.read_barrier()


REFUSED_TXNS = [
    ({"ops": []}, exceptions.InvalidInput),
    ({"ops": [Write("put", "a//", 1)]}, exceptions.InvalidKey),
    ({"ops": [Write("put", "a", 1), Write("delete", "a")]}, exceptions.InvalidInput),
    ({"ops": [Write("put", "a", 1, expected_version=1)]}, exceptions.InvalidInput),
    ({"ops": [Write("put", "a", float("nan"))]}, exceptions.InvalidInput),
    ({"ops": [Write("put", "a", 1)], "checks": [Check("a", -1)]}, exceptions.InvalidInput),
    (
        {"ops": [Write("put", "a", 1)], "checks": [Check("b", 1), Check("b", 2)]},
        exceptions.InvalidInput,
    ),
    ({"ops": [Write("put", "a", 1)], "checks": [Check("bad key", 1)]}, exceptions.InvalidKey),
    ({"ops": [Write("put", "a", "x" * (MiB + 1))]}, exceptions.TooLarge),
    ({"ops": [("put", "a", 1)]}, exceptions.InvalidInput),
]


@pytest.mark.parametrize("kwargs, error", REFUSED_TXNS)
def test_a_refused_txn_changes_nothing(log, kwargs, error):
    before = replicated_state()
    with pytest.raises(error) as refused:
        services.entry_txn(actor="alice", **kwargs)
    assert type(refused.value) is error  # not merely a subclass of it
    assert replicated_state() == before


def test_a_txn_is_limited_by_its_total_size_not_its_number_of_ops(db, settings, configure):
    configure(max_txn_bytes=1000)
    with pytest.raises(exceptions.TooLarge) as refused:
        services.entry_txn(ops=[Write("put", f"k{i}", "x" * 100) for i in range(10)], actor="a")
    assert refused.value.limit == 1000
    with pytest.raises(exceptions.NoQuorum):  # 5,000 tiny ops: under the limit
        services.entry_txn(ops=[Write("delete", f"k{i}") for i in range(5000)], actor="a")


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"key": "a//"}, exceptions.InvalidKey),
        ({"schema": {"type": "nonsense"}}, exceptions.InvalidInput),
        ({"schema": [1]}, exceptions.InvalidInput),
        ({"schema": {"minimum": float("nan")}}, exceptions.InvalidInput),
    ],
)
def test_a_refused_schema_changes_nothing(log, kwargs, error):
    before = replicated_state()
    with pytest.raises(error):
        services.schema_put(**{"key": "a/", "schema": {"type": "integer"}, "actor": "a", **kwargs})
    assert replicated_state() == before


@pytest.mark.parametrize(
    "result, error, fields",
    [
        (
            {
                "error": "version_conflict",
                "detail": "d",
                "key": "k",
                "expected_version": 2,
                "current_version": 3,
            },
            exceptions.VersionConflict,
            {"key": "k", "expected_version": 2, "current_version": 3},
        ),
        ({"error": "not_found", "detail": "d", "key": "k"}, exceptions.NotFound, {"key": "k"}),
        (
            {"error": "schema_violation", "detail": "d", "key": "k", "path": "$.a", "schema": "s/"},
            exceptions.SchemaViolation,
            {"key": "k", "path": "$.a", "schema": "s/"},
        ),
        (
            {"error": "txn_failed", "detail": "d", "failed": [{"key": "k"}]},
            exceptions.TxnFailed,
            {"failed": [{"key": "k"}]},
        ),
        ({"error": "malformed", "detail": "d"}, exceptions.InvalidInput, {}),
    ],
)
def test_each_rejection_maps_to_the_exception_a_caller_acts_on(result, error, fields):
    raised = services.rejection_error(result)
    assert type(raised) is error
    assert raised.as_dict() == {"error": raised.code, "detail": "d", **fields}


# ------------------------------------------------------------------ idempotent retries


@pytest.fixture
def committed_log(transactional_db) -> Log:
    """The applier on committed transactions: the submitter's own connection sees them."""
    return Log()


def test_a_retried_request_returns_its_first_outcome_without_submitting(committed_log):
    slot = committed_log.apply(
        payload(
            "put", key="k", value={"v": 1}, actor="alice", reason="r", idempotency_key="alice:abc"
        ),
        request_id="first",
    )
    before = replicated_state()
    written = put(value={"v": 1}, reason="r", idempotency_key="abc")
    assert (written.index, written.created, written.request_id) == (slot, True, "first")
    assert (written.entry.value, written.entry.version, written.entry.modified_index) == (
        {"v": 1},
        1,
        slot,
    )
    assert replicated_state() == before  # nothing submitted: no quorum was even needed


def test_an_idempotency_key_reused_for_another_request_is_refused_unsubmitted(committed_log):
    committed_log.apply(
        payload("put", key="k", value=1, reason="", idempotency_key="alice:abc"),
        request_id="first",
    )
    before = replicated_state()
    for reuse in (
        lambda: put(value=2, idempotency_key="abc"),
        lambda: put(key="other", value=1, idempotency_key="abc"),
        lambda: put(value=1, reason="another reason", idempotency_key="abc"),
        lambda: put(value=1, expected_version=1, idempotency_key="abc"),
        lambda: services.entry_delete(key="k", actor="alice", idempotency_key="abc"),
    ):
        with pytest.raises(exceptions.IdempotencyKeyReused) as refused:
            reuse()
        assert "first" in refused.value.detail
    assert replicated_state() == before


def test_idempotency_keys_are_per_actor(committed_log):
    committed_log.apply(
        payload("put", key="k", value=1, reason="", idempotency_key="alice:abc"),
        request_id="first",
    )
    with pytest.raises(exceptions.NoQuorum):  # bob's "abc" is not alice's: a new request
        put(actor="bob", value=2, idempotency_key="abc")
    assert services.idempotent_outcome(actor="bob", idempotency_key="abc") is None
    assert services.idempotent_outcome(actor="alice", idempotency_key="abc").slot == 1


def test_a_retried_rejected_request_raises_its_rejection_again(committed_log):
    committed_log.apply(payload("put", key="k", value=1))
    slot = committed_log.apply(
        payload(
            "put", key="k", value=2, expected_version=7, reason="", idempotency_key="alice:cas"
        ),
        request_id="first",
    )
    with pytest.raises(exceptions.VersionConflict) as refused:
        put(value=2, expected_version=7, idempotency_key="cas")
    assert (refused.value.current_version, refused.value.request_id, refused.value.index) == (
        1,
        "first",
        slot,
    )


def test_a_key_expired_from_the_window_is_a_new_request(committed_log, monkeypatch):
    committed_log.apply(payload("put", key="k", value=1, reason="", idempotency_key="alice:old"))
    committed_log.apply(payload("put", key="other", value=1))
    monkeypatch.setattr(services, "IDEMPOTENCY_WINDOW", 0)
    with pytest.raises(exceptions.NoQuorum):  # submitted afresh (here: no quorum)
        put(value=2, idempotency_key="old")


def test_the_outcome_of_a_request_id_can_be_looked_up(committed_log):
    slot = committed_log.apply(payload("delete", key="nope"), request_id="look")
    outcome = services.request_outcome("look")
    assert (outcome.slot, outcome.result["error"]) == (slot, "not_found")
    assert services.request_outcome("never") is None


def test_a_retry_returns_its_first_outcome_even_if_a_schema_now_refuses_it(committed_log):
    slot = committed_log.apply(
        payload("put", key="n/k", value=-1, reason="", idempotency_key="alice:early")
    )
    committed_log.apply(payload("put", key="n/k", value=1))
    committed_log.apply(payload("put_schema", key="n/", schema={"minimum": 0}))
    with pytest.raises(exceptions.SchemaViolation):
        put(key="n/k", value=-1)  # a new request is checked against the schema
    written = put(key="n/k", value=-1, idempotency_key="early")
    assert (written.index, written.entry.version) == (slot, 1)


# ------------------------------------------------------------------ hostile schemas


def test_a_near_miss_of_a_catastrophic_pattern_is_refused_before_submitting(log):
    log.apply(payload("put_schema", key="r/k", schema={"type": "string", "pattern": "^(a+)+$"}))
    before = replicated_state()
    with pytest.raises(exceptions.SchemaViolation) as refused:
        put(key="r/k", value="a" * 40 + "!")
    assert refused.value.schema == "r/k"
    assert replicated_state() == before


@pytest.mark.parametrize(
    "pattern, construct", [("(a)\\1", "\\1"), ("(?=a)", "(?="), ("(?<=a)b", "(?<=")]
)
def test_a_schema_with_a_pattern_re2_cannot_match_is_refused_naming_it(log, pattern, construct):
    before = replicated_state()
    with pytest.raises(exceptions.InvalidInput) as refused:
        services.schema_put(key="r/k", schema={"pattern": pattern}, actor="alice")
    assert refused.value.field == "schema" and construct in refused.value.detail
    assert replicated_state() == before
