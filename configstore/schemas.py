"""JSON Schema checks of values. Pure and deterministic, since the state machine runs them
again when a value is applied, on every node:

- the dialect is Draft 2020-12 unless the schema's "$schema" names another draft;
- "format" is an annotation only (format checkers depend on which optional packages a
  node has installed);
- no reference is ever fetched: a "$ref" that does not resolve inside the schema is an
  error of the schema;
- of several violations, the first by (path, message) is reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError


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


def schema_error(schema: object) -> str | None:
    """Why `schema` is not a usable JSON Schema, or None."""
    if not isinstance(schema, dict | bool):
        return "a schema must be a JSON object (or true/false)"
    try:
        cls = validators.validator_for(schema, default=Draft202012Validator)
        cls.check_schema(schema)
    except SchemaError as error:
        return f"not a valid JSON Schema: {error.message}"
    except Exception as error:  # noqa: BLE001 - any failure of a user's schema is its error
        return f"not a valid JSON Schema: {error}"
    return None


@lru_cache(maxsize=512)
def _validator(canonical: str):
    schema = json.loads(canonical)
    cls = validators.validator_for(schema, default=Draft202012Validator)
    return cls(schema)


def violation(schema_key: str, schema: object, value: object) -> Violation | None:
    """The first way `value` fails `schema`, or None if it conforms. A schema that cannot be
    evaluated (an unresolvable $ref, a bad pattern) fails every value, with the reason."""
    if (error := schema_error(schema)) is not None:
        return Violation(schema_key, "$", error)
    try:
        validator = _validator(json.dumps(schema, sort_keys=True))
        errors = sorted(validator.iter_errors(value), key=lambda e: (e.json_path, e.message))
    except Exception as error:  # noqa: BLE001 - see above: deterministic for a given schema
        return Violation(schema_key, "$", f"the schema cannot be evaluated: {error}")
    if not errors:
        return None
    return Violation(schema_key, errors[0].json_path, _clip(errors[0].message))


def _clip(message: str, limit: int = 500) -> str:
    """Messages quote the offending value, which may be large."""
    return message if len(message) <= limit else message[: limit - 3] + "..."


def first_violation(schemas: list[tuple[str, object]], value: object) -> Violation | None:
    """Check `value` against every (schema key, schema) in order; the first violation."""
    for schema_key, schema in schemas:
        if (found := violation(schema_key, schema, value)) is not None:
            return found
    return None
