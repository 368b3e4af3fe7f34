"""What a key, a prefix and a value may be. Pure functions, used both by the services
(before a command is submitted) and by the state machine (again, when it is applied), so
that a command the applier does not reject can never make PostgreSQL fail: a statement error
inside the apply transaction would stop the node from applying anything after it.
"""

from __future__ import annotations

import json
import re

MAX_KEY_LENGTH = 256
#: Deeper JSON than this is refused: well within Python's and PostgreSQL's own limits, so
#: the outcome never depends on a recursion limit.
MAX_JSON_DEPTH = 100

_SEGMENT = r"[A-Za-z0-9._-]+"
_KEY = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
_PREFIX = re.compile(rf"(?:{_SEGMENT}/)*(?:{_SEGMENT})?")


class InvalidValue(ValueError):
    """A key, prefix or JSON value that the store refuses. The message says why."""


def key_error(key: object) -> str | None:
    """Why `key` is not a valid key, or None. A key is 1-256 characters of A-Z a-z 0-9 . _ - /
    with no leading, trailing or doubled '/', and no '.' or '..' segment (which URLs and
    clients would rewrite)."""
    if not isinstance(key, str):
        return "a key must be a string"
    if not key:
        return "a key must not be empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"a key must be at most {MAX_KEY_LENGTH} characters"
    if not _KEY.fullmatch(key):
        if key.startswith("/") or key.endswith("/") or "//" in key:
            return "a key must not start or end with '/' nor contain '//'"
        return "a key may only contain A-Z a-z 0-9 . _ - /"
    if any(segment in (".", "..") for segment in key.split("/")):
        return "a key must not contain '.' or '..' as a segment"
    return None


def validate_key(key: object) -> str:
    if (error := key_error(key)) is not None:
        raise InvalidValue(f"invalid key {key!r}: {error}" if isinstance(key, str) else error)
    return key  # type: ignore[return-value]


def validate_prefix(prefix: object) -> str:
    """A key prefix: '' (everything), a key, or a key followed by '/'."""
    if not isinstance(prefix, str):
        raise InvalidValue("a prefix must be a string")
    if len(prefix) > MAX_KEY_LENGTH + 1 or not _PREFIX.fullmatch(prefix):
        raise InvalidValue(
            f"invalid prefix {prefix!r}: A-Z a-z 0-9 . _ - / only, no leading or doubled '/'"
        )
    return prefix


def schema_target_error(target: object) -> str | None:
    """A schema attaches to a key, or to every key under a namespace: a key followed by '/'."""
    if isinstance(target, str) and target.endswith("/"):
        return key_error(target[:-1])
    return key_error(target)


def schema_targets(key: str) -> list[str]:
    """The schema targets that apply to `key`: the key itself and every enclosing namespace
    ('a/', 'a/b/' for 'a/b/c'). Sorted, so every node meets them in the same order."""
    parts = key.split("/")
    return sorted([key, *("/".join(parts[:i]) + "/" for i in range(1, len(parts)))])


def check_text(text: object, what: str, max_length: int | None = None) -> str:
    """A string PostgreSQL can store in a text column: valid UTF-8, no NUL."""
    if not isinstance(text, str):
        raise InvalidValue(f"{what} must be a string")
    if max_length is not None and len(text) > max_length:
        raise InvalidValue(f"{what} must be at most {max_length} characters")
    if "\x00" in text:
        raise InvalidValue(f"{what} must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValue(f"{what} must be valid Unicode (no lone surrogates)") from None
    return text


def check_json(value: object, what: str = "value") -> None:
    """`value` (as json.loads returns it) can be stored as jsonb and read back equal: finite
    numbers, strings without NUL or lone surrogates, nesting at most MAX_JSON_DEPTH."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_json_string(item, what)
        elif isinstance(item, bool) or item is None or isinstance(item, int):
            continue
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                raise InvalidValue(f"{what} must not contain NaN or infinite numbers")
        elif isinstance(item, list | dict):
            if depth > MAX_JSON_DEPTH:
                raise InvalidValue(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                for k, v in item.items():
                    if not isinstance(k, str):
                        raise InvalidValue(f"{what} has a non-string object key")
                    _check_json_string(k, what)
                    stack.append((v, depth + 1))
            else:
                stack.extend((v, depth + 1) for v in item)
        else:
            raise InvalidValue(f"{what} holds a {type(item).__name__}, which is not JSON")


def _check_json_string(text: str, what: str) -> None:
    if "\x00" in text:
        raise InvalidValue(f"{what} must not contain NUL characters (\\u0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValue(f"{what} must be valid Unicode (no lone surrogates)") from None


def json_size(value: object) -> int:
    """The size that counts against the limit: bytes of the compact UTF-8 JSON encoding."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _refuse_constant(name: str):
    raise InvalidValue(f"{name} is not JSON")


def loads(text: str | bytes):
    """Strict json.loads: NaN and Infinity are refused (Python reads them by default)."""
    return json.loads(text, parse_constant=_refuse_constant)
