"""What a key, a prefix, a schema target and a value may be (pure)."""

from __future__ import annotations

import pytest

from configstore.validation import (
    MAX_JSON_DEPTH,
    InvalidValue,
    check_json,
    json_size,
    key_error,
    loads,
    schema_target_error,
    schema_targets,
    validate_prefix,
)

VALID_KEYS = [
    "a",
    "payments/timeout_ms",
    "A-Z.a_z-0.9",
    "a/b/c/d",
    "x" * 256,
    ".hidden",
    "v1..2",
]
INVALID_KEYS = [
    "",
    "/a",
    "a/",
    "a//b",
    "/",
    "x" * 257,
    "a b",
    "a?b",
    "a%2Fb",
    "é",
    "a\x00b",
    ".",
    "..",
    "a/../b",
    "a/./b",
    None,
    3,
]


@pytest.mark.parametrize("key", VALID_KEYS)
def test_valid_keys_are_accepted(key):
    assert key_error(key) is None


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_keys_are_refused_with_a_reason(key):
    assert key_error(key)


@pytest.mark.parametrize("prefix", ["", "a", "a/", "a/b", "a/b/", "pay"])
def test_prefixes_may_end_with_a_slash(prefix):
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "/a", "a//", "a b", "x" * 258])
def test_bad_prefixes_are_refused(prefix):
    with pytest.raises(InvalidValue):
        validate_prefix(prefix)


def test_a_schema_attaches_to_a_key_or_a_namespace():
    assert schema_target_error("a/b") is None
    assert schema_target_error("a/b/") is None
    assert schema_target_error("a//") is not None
    assert schema_target_error("/") is not None


def test_the_schemas_of_a_key_are_its_own_and_every_enclosing_namespace():
    assert schema_targets("a/b/c") == ["a/", "a/b/", "a/b/c"]
    assert schema_targets("top") == ["top"]


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -1.5, 10**30, "text", "ünïcødé ✓", [], {}, {"a": [1, {"b": None}]}],
)
def test_storable_json_passes(value):
    check_json(value)


@pytest.mark.parametrize(
    "value, why",
    [
        (float("nan"), "NaN"),
        (float("inf"), "infinite"),
        ({"a": [1, float("-inf")]}, "infinite"),
        ("a\x00b", "NUL"),
        ({"k\x00": 1}, "NUL"),
        ("\ud800", "surrogate"),
        ({"\udfff": 1}, "surrogate"),
        ({1: "non-string key"}, "non-string"),
        ({1, 2}, "not JSON"),
    ],
)
def test_values_postgres_cannot_store_are_refused(value, why):
    with pytest.raises(InvalidValue, match=why):
        check_json(value)


def test_nesting_is_limited():
    deep = []
    for _ in range(MAX_JSON_DEPTH - 1):
        deep = [deep]
    check_json(deep)  # exactly the limit: fine
    with pytest.raises(InvalidValue, match="nested deeper"):
        check_json([deep])


def test_size_is_counted_on_compact_utf8_json():
    assert json_size({"a": [1, 2]}) == len(b'{"a":[1,2]}')
    assert json_size("é") == 4  # the quotes and two bytes of UTF-8


def test_strict_loads_refuses_nan_and_infinity():
    with pytest.raises(InvalidValue):
        loads('{"a": NaN}')
    with pytest.raises(InvalidValue):
        loads("Infinity")
    assert loads('{"a": 1}') == {"a": 1}
