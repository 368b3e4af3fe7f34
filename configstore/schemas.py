"""JSON Schema checks of values. Pure and deterministic, since the state machine runs them
again when a value is applied, on every node:

- the dialect is Draft 2020-12 unless the schema's "$schema" names another draft;
- "format" is an annotation only (format checkers depend on which optional packages a
  node has installed);
- no reference is ever fetched: a "$ref" that does not resolve inside the schema is an
  error of the schema;
- of several violations, the first by (path, message) is reported.

Bounded: no schema and no value can make a check take long (the applier runs them, and
every commit waits behind the applier):

- "pattern", "patternProperties" (and "additionalProperties" beside them) are matched by
  RE2 (google-re2), whose matching time is linear in the text: no catastrophic
  backtracking. A schema with a pattern RE2 cannot compile (backreferences, lookahead,
  lookbehind, over-large repetitions) is refused, naming the pattern and the construct;
  so is one that combines "unevaluatedProperties" with "patternProperties" (jsonschema
  matches those with Python's backtracking engine);
- "uniqueItems" is checked in linear time (jsonschema compares unhashable items pairwise);
- every keyword evaluation spends one step of a Budget (CHECK_STEPS per command, shared by
  every value the command checks). A check that runs out is a violation ("too costly to
  check"), the same on every node: the count does not depend on the clock. A schema is
  itself checked against its draft's metaschema on a Budget of its own (once: the answer
  is cached); one too large or complex for it is refused.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import lru_cache

import attrs
import re2
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

#: Keyword evaluations one command may spend on schema checks: about 4 s of one core here
#: (jsonschema costs ~20 us per keyword). A constant, never a setting: all nodes must agree.
CHECK_STEPS = 200_000


@dataclass(frozen=True)
class Violation:
    """A value that a schema refuses: where (a JSON path like "$.retries[0]") and why."""

    schema_key: str
    path: str
    message: str

    def describe(self, key: str) -> str:
        return f"{key} fails the schema of {self.schema_key!r} at {self.path}: {self.message}"


class InvalidSchema(ValueError):
    """The schema itself is not a valid JSON Schema (or cannot be evaluated)."""


class Budget:
    """The keyword evaluations left to one command's schema checks."""

    def __init__(self, steps: int | None = None) -> None:
        self.steps = CHECK_STEPS if steps is None else steps
        self.total = self.steps


class TooCostly(Exception):
    """A check ran out of its Budget."""


# ------------------------------------------------------------------------------ RE2

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is our answer, not a log line


@lru_cache(maxsize=1024)
def _regex(pattern: str):
    """The compiled RE2 of a schema's pattern; re2.error if RE2 cannot compile it."""
    return re2.compile(pattern, _RE2_OPTIONS)


def _search(pattern: str, text: str) -> bool:
    return _regex(pattern).search(text) is not None


def _pattern_error(pattern: str) -> str | None:
    try:
        _regex(pattern)
    except re2.error as error:
        why = error.args[0].decode() if error.args and isinstance(error.args[0], bytes) else error
        return (
            f"pattern {pattern!r} is not supported: {why} (patterns are matched by RE2, in "
            "linear time: no backreferences, lookahead or lookbehind)"
        )
    return None


def _objects(schema: object):
    """Every JSON object anywhere in the schema, the schema itself included."""
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            yield item
            stack.extend(item.values())


def _patterns(schema: object):
    """Every string in a "pattern" position and every "patternProperties" name, anywhere in
    the schema (conservatively: inside any object)."""
    for item in _objects(schema):
        if isinstance(item.get("pattern"), str):
            yield item["pattern"]
        if isinstance(item.get("patternProperties"), dict):
            yield from item["patternProperties"]


def _keywords(schema: object) -> set[str]:
    return {keyword for item in _objects(schema) for keyword in item}


# ------------------------------------------------------------------ bounded keywords


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"does not match {pattern!r}: {_clip(repr(instance), 100)}")


def _pattern_properties(validator, pattern_properties, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        for name, value in instance.items():
            if _search(pattern, name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(validator, additional, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [
        name
        for name in instance
        if name not in properties and not any(_search(p, name) for p in patterns)
    ]
    if validator.is_type(additional, "object"):
        for name in extras:
            yield from validator.descend(instance[name], additional, path=name)
    elif not additional and extras:
        names = ", ".join(repr(name) for name in sorted(extras))
        yield ValidationError(f"additional properties are not allowed ({names} unexpected)")


def _canonical(value):
    """A hashable form of a JSON value under JSON Schema's equality: 1 == 1.0, true != 1,
    objects unordered."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if value is None:
        return ("z",)
    if isinstance(value, list):
        return ("a", tuple(_canonical(v) for v in value))
    return ("o", frozenset((k, _canonical(v)) for k, v in value.items()))


def _unique_items(validator, unique, instance, schema):
    if not unique or not validator.is_type(instance, "array"):
        return
    seen = set()
    for i, item in enumerate(instance):
        form = _canonical(item)
        if form in seen:
            yield ValidationError(f"has non-unique elements (item {i} repeats an earlier one)")
            return
        seen.add(form)


_BOUNDED = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "uniqueItems": _unique_items,
}

_spending = threading.local()  # .budget: the Budget of the check running on this thread


def _metered(keyword):
    def evaluate(validator, value, instance, schema):
        budget = getattr(_spending, "budget", None)
        if budget is not None:
            budget.steps -= 1
            if budget.steps < 0:
                raise TooCostly
        return keyword(validator, value, instance, schema)

    return evaluate


_bounded_classes: set[type] = set()


@lru_cache(maxsize=16)
def _bounded_class(cls):
    """The draft's validator class with the bounded keywords, every keyword metered. A
    subschema that names another draft ("$schema") is evaluated by that draft's bounded
    class too (jsonschema's own `evolve` would pick the draft's plain class)."""
    keywords = {name: _BOUNDED.get(name, fn) for name, fn in cls.VALIDATORS.items()}
    bounded = validators.extend(cls, {name: _metered(fn) for name, fn in keywords.items()})
    plain_evolve = bounded.evolve

    def evolve(self, **changes):
        evolved = plain_evolve(self, **changes)
        if type(evolved) in _bounded_classes:
            return evolved
        target = _bounded_class(type(evolved))
        fields = attrs.fields(type(evolved))
        return target(**{f.alias: getattr(evolved, f.name) for f in fields if f.init})

    bounded.evolve = evolve
    _bounded_classes.add(bounded)
    return bounded


# -------------------------------------------------------------------------- checks


def schema_error(schema: object) -> str | None:
    """Why `schema` is not a usable JSON Schema, or None. Bounded like a value's check: the
    schema is validated against its draft's metaschema on a Budget of its own."""
    if not isinstance(schema, dict | bool):
        return "a schema must be a JSON object (or true/false)"
    return _schema_error(json.dumps(schema, sort_keys=True))


@lru_cache(maxsize=64)
def _schema_error(canonical: str) -> str | None:
    schema = json.loads(canonical)
    for pattern in _patterns(schema):
        if (error := _pattern_error(pattern)) is not None:
            return error
    if {"unevaluatedProperties", "patternProperties"} <= _keywords(schema):
        return (
            "a schema may not combine unevaluatedProperties with patternProperties (their "
            "combination is not matched in linear time)"
        )
    budget = Budget()
    _spending.budget = budget
    try:  # what cls.check_schema does, on the bounded, metered validator classes
        cls = validators.validator_for(schema, default=Draft202012Validator)
        meta = _bounded_class(validators.validator_for(cls.META_SCHEMA, default=cls))
        error = best_match(
            meta(cls.META_SCHEMA, format_checker=cls.FORMAT_CHECKER).iter_errors(schema)
        )
    except TooCostly:
        return (
            f"the schema is too large or complex to check: over {budget.total} keyword "
            "evaluations against its metaschema"
        )
    except Exception as error:  # noqa: BLE001 - any failure of a user's schema is its error
        return f"not a valid JSON Schema: {error}"
    finally:
        _spending.budget = None
    if error is not None:
        return f"not a valid JSON Schema: {_clip(error.message)}"
    return None


@lru_cache(maxsize=512)
def _validator(canonical: str):
    schema = json.loads(canonical)
    cls = validators.validator_for(schema, default=Draft202012Validator)
    return _bounded_class(cls)(schema)


def violation(
    schema_key: str, schema: object, value: object, budget: Budget | None = None
) -> Violation | None:
    """The first way `value` fails `schema`, or None if it conforms. A schema that cannot be
    evaluated (an unresolvable $ref, a bad pattern) fails every value, with the reason; so
    does a check that runs out of `budget` (a fresh Budget if None)."""
    if (error := schema_error(schema)) is not None:
        return Violation(schema_key, "$", error)
    budget = budget if budget is not None else Budget()
    _spending.budget = budget
    try:
        validator = _validator(json.dumps(schema, sort_keys=True))
        errors = sorted(validator.iter_errors(value), key=lambda e: (e.json_path, e.message))
    except TooCostly:
        return Violation(
            schema_key,
            "$",
            f"too costly to check: over {budget.total} schema keyword evaluations for this "
            "command (a smaller value or a simpler schema passes)",
        )
    except Exception as error:  # noqa: BLE001 - see above: deterministic for a given schema
        return Violation(schema_key, "$", f"the schema cannot be evaluated: {error}")
    finally:
        _spending.budget = None
    if not errors:
        return None
    return Violation(schema_key, errors[0].json_path, _clip(errors[0].message))


def _clip(message: str, limit: int = 500) -> str:
    """Messages quote the offending value, which may be large."""
    return message if len(message) <= limit else message[: limit - 3] + "..."


def first_violation(
    schemas: list[tuple[str, object]], value: object, budget: Budget | None = None
) -> Violation | None:
    """Check `value` against every (schema key, schema) in order, all spending one `budget`
    (a fresh Budget if None); the first violation."""
    budget = budget if budget is not None else Budget()
    for schema_key, schema in schemas:
        if (found := violation(schema_key, schema, value, budget)) is not None:
            return found
    return None
