"""What a key, a prefix, a schema target and a value may be (pure)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from configstore import schemas
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


# ------------------------------------------------------------------ bounded schema checks

NEAR_MISS = "a" * 5000 + "!"
#: (pattern, a text it does not match, on which a backtracking engine takes exponential time)
CATASTROPHIC = [
    ("^(a+)+$", NEAR_MISS),
    ("^(a|a)*$", NEAR_MISS),
    ("^(a|aa)+$", NEAR_MISS),
    ("^(\\w+\\s?)*$", NEAR_MISS),
    ("(.*a){20}", "a" * 19 + "b" * 3000),
]


def check_isolated(schema: dict, value, timeout: float = 60.0) -> str | None:
    """configstore.schemas.violation in a child process, killed after `timeout`: a check
    that backtracks exponentially fails the test instead of hanging the suite. Returns the
    violation's message, or None."""
    code = (
        "import json, sys\n"
        "from configstore import schemas\n"
        "schema, value = json.loads(sys.stdin.read())\n"
        "found = schemas.violation('k', schema, value)\n"
        "print(json.dumps(found and found.message))\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps([schema, value]),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"checking the value against {schema} did not end within {timeout:g} s")
    return json.loads(done.stdout)


@pytest.mark.parametrize("pattern, text", CATASTROPHIC)
def test_a_catastrophic_pattern_is_matched_in_linear_time(pattern, text):
    found = check_isolated({"type": "string", "pattern": pattern}, text)
    assert "does not match" in found


def test_a_catastrophic_pattern_property_or_additional_property_is_linear_too():
    name = "a" * 5000 + "!"
    by_pattern = {"patternProperties": {"^(a+)+$": {"type": "integer"}}}
    assert check_isolated(by_pattern, {name: "x"}) is None  # the name does not match
    closed = {**by_pattern, "additionalProperties": False}
    assert "additional properties" in check_isolated(closed, {name: 1})


def test_unique_items_over_many_distinct_objects_is_linear():
    items = [{"n": i} for i in range(100_000)]
    assert check_isolated({"uniqueItems": True}, items) is None
    assert "non-unique" in check_isolated({"uniqueItems": True}, [*items, {"n": 7}])


def test_an_exponential_schema_runs_out_of_its_budget_the_same_way_every_time():
    levels = {
        f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
        for i in range(40)
    }
    schema = {"$defs": {**levels, "d40": {"type": "integer"}}, "$ref": "#/$defs/d0"}
    found = check_isolated(schema, 1)
    assert found.startswith(f"too costly to check: over {schemas.CHECK_STEPS}")
    assert schemas.violation("k", schema, 1).message == found


@pytest.mark.parametrize(
    "schema, construct",
    [
        ({"pattern": "(a)\\1"}, "\\1"),
        ({"pattern": "a(?=b)"}, "(?="),
        ({"pattern": "(?<!a)b"}, "(?<!"),
        ({"properties": {"x": {"pattern": "(?!a)"}}}, "(?!"),
        ({"patternProperties": {"(x)\\1": {}}}, "\\1"),
        ({"pattern": "a{2000}"}, "{2000}"),
    ],
)
def test_a_pattern_re2_cannot_match_is_refused_naming_the_construct(schema, construct):
    error = schemas.schema_error(schema)
    assert error is not None and "not supported" in error and construct in error
    assert schemas.violation("k", schema, "a").path == "$"  # and fails every value


def test_unevaluated_properties_beside_pattern_properties_is_refused():
    schema = {"patternProperties": {"^x": {}}, "unevaluatedProperties": False}
    assert "unevaluatedProperties" in schemas.schema_error(schema)
    assert schemas.schema_error({"unevaluatedProperties": False}) is None


def test_bounded_keywords_keep_json_schema_semantics():
    def ok(schema, value) -> bool:
        return schemas.violation("k", schema, value) is None

    assert ok({"pattern": "b+"}, "abbbc") and not ok({"pattern": "^b+$"}, "abbbc")  # a search
    assert ok({"pattern": "^\\d{3}$"}, 123)  # not a string: not checked
    props = {"patternProperties": {"^x_": {"type": "integer"}}, "additionalProperties": False}
    assert ok(props, {"x_a": 1}) and not ok(props, {"x_a": "1"}) and not ok(props, {"y": 1})
    typed = {"properties": {"a": {}}, "additionalProperties": {"type": "string"}}
    assert ok(typed, {"a": 1, "b": "s"}) and not ok(typed, {"b": 2})
    unique = {"uniqueItems": True}
    assert not ok(unique, [1, 1.0]) and ok(unique, [1, True]) and ok(unique, [0, False])
    assert not ok(unique, [{"a": 1, "b": [2]}, {"b": [2], "a": 1}]) and ok(unique, [[1, 2], [2, 1]])
    assert ok({"uniqueItems": False}, [1, 1])
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "pattern": "^(a+)+$"}
    assert "does not match" in schemas.violation("k", draft7, "a" * 5000 + "!").message


def test_one_budget_is_shared_by_every_check_of_a_command():
    schema = {"type": "array", "items": {"type": "integer"}}
    budget = schemas.Budget(steps=1000)
    assert schemas.violation("k", schema, list(range(600)), budget) is None
    found = schemas.violation("k", schema, list(range(600)), budget)  # the rest is not enough
    assert found is not None and found.message.startswith("too costly to check")


def test_a_subschema_naming_its_draft_is_bounded_too():
    for draft in (
        "https://json-schema.org/draft/2020-12/schema",
        "http://json-schema.org/draft-07/schema#",
    ):
        inner = {"$schema": draft, "pattern": "^(a+)+$"}
        schema = {"$defs": {"x": inner}, "$ref": "#/$defs/x"}
        assert "does not match" in check_isolated(schema, NEAR_MISS)


def test_a_schema_too_large_to_check_is_refused():
    props = {f"p{i}": {"type": "integer", "minimum": 0} for i in range(10_000)}
    error = schemas.schema_error({"properties": props})
    assert error.startswith("the schema is too large or complex to check")
    assert schemas.schema_error({"properties": dict(list(props.items())[:100])}) is None
