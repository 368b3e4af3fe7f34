"""Schemathesis hooks of the OpenAPI contract test (loaded through SCHEMATHESIS_HOOKS).

A list's `cursor` is opaque: the schema says its alphabet, not which cursors a list gave
(any other is a 400). A cursor of the schema's shape is replaced by a real one of that
list (after its first row, where the list has rows); one the case made invalid is kept.

Long-polls (GET /api/v1/watch/, GET /api/v1/keys/{key}?wait_index=) wait up to `timeout`
seconds (30 by default) on purpose: the fuzzer's valid ones are shortened to 0.2 s, so the
run stays bounded. A timeout the case made invalid is kept (it is what the case tests)."""

from __future__ import annotations

import re

import schemathesis

from configstore.api.openapi import CURSOR_PATTERN
from configstore.api.pagination import encode_cursor

SHORT_WAIT = 0.2
#: A cursor each paginated list could have given.
REAL_CURSORS = {
    "/api/v1/keys/": encode_cursor(["a"]),
    "/api/v1/schemas/": encode_cursor(["a"]),
    "/api/v1/history/": encode_cursor([1, 1]),
}


def _valid_timeout(value) -> bool:
    """A timeout the server accepts: a plain number from 0 to 300, as a number or as the
    query string's text (the coverage phase sends strings such as "299")."""
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        if not value.replace(".", "", 1).isascii() or not value.replace(".", "", 1).isdigit():
            return False
        value = float(value)
    return isinstance(value, int | float) and 0 <= value <= 300


@schemathesis.hook
def before_call(ctx, case, **kwargs) -> None:
    _one_op_per_key(case)
    query = case.query if isinstance(case.query, dict) else None
    if query is None or case.method.upper() != "GET":
        return
    long_poll = case.path == "/api/v1/watch/" or (
        case.path == "/api/v1/keys/{key}" and "wait_index" in query
    )
    if long_poll and ("timeout" not in query or _valid_timeout(query["timeout"])):
        query["timeout"] = SHORT_WAIT
    cursor = query.get("cursor")
    if isinstance(cursor, str) and re.fullmatch(CURSOR_PATTERN, cursor):
        query["cursor"] = REAL_CURSORS[case.path]


def _first_per_key(items: list, field: str = "key") -> list:
    seen, kept = set(), []
    for item in items:
        key = repr(item.get(field)) if isinstance(item, dict) else None
        if key is None or key not in seen:
            kept.append(item)
            seen.add(key)
    return kept


def _one_op_per_key(case) -> None:
    """A txn names each key once in its ops and once in its checks, a group each prefix
    once (the schema's `x-unique-by`, which JSON Schema cannot say): a valid body generated
    with one twice keeps the first of them."""
    body = case.body
    if not isinstance(body, dict):
        return
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if case.path == "/api/v1/txn":
        for name in ("ops", "checks"):
            if isinstance(body.get(name), list):
                body[name] = _first_per_key(body[name])
    elif case.path == "/api/v1/access/groups/{name}" and isinstance(body.get("prefixes"), list):
        body["prefixes"] = _first_per_key(body["prefixes"], "prefix")
    _only_known_properties(case, body)


#: Request bodies whose schema forbids other properties (additionalProperties: false).
_BODIES = {
    ("POST", "/api/v1/access/tokens/"): "Token",
    ("POST", "/api/v1/access/users/"): "NewUser",
    ("PATCH", "/api/v1/access/users/{username}"): "UserChange",
    ("PUT", "/api/v1/access/groups/{name}"): "Group",
}


def _only_known_properties(case, body: dict) -> None:
    """Schemathesis 4 was seen labelling "valid" a token body carrying a property "fields"
    (the shape of our error answers) that the schema forbids (additionalProperties: false):
    such a body is not valid, so a positive case keeps only the schema's properties."""
    from configstore.api.openapi import INPUTS

    component = _BODIES.get((case.method.upper(), case.path))
    if component is not None:
        allowed = INPUTS[component]["properties"]
        for name in [n for n in body if n not in allowed]:
            del body[name]
