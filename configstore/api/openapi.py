"""The OpenAPI description of every constraint and status the API enforces: the contract a
generated client relies on (drf-spectacular builds /api/schema/ from the views' annotations
and these definitions; `postprocess` adds what the annotations cannot say).

Every pattern here mirrors a check of the server (configstore.validation, the API views'
parameter parsers): a request the schema allows is never refused for its shape, and a
request it forbids is refused with a 4xx."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter

from configstore.commands import GRANTABLE, MAX_DESCRIPTION_LENGTH, MAX_REASON_LENGTH
from configstore.validation import MAX_KEY_LENGTH

#: The largest index or version PostgreSQL stores (bigint).
MAX_BIGINT = 2**63 - 1

_SEGMENT = r"(?:[A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)"
#: A key: segments of A-Z a-z 0-9 . _ - joined by '/', no '.' or '..' segment.
KEY_PATTERN = rf"^{_SEGMENT}(?:/{_SEGMENT})*$"
#: A schema target: a key, or a namespace (a key and a '/').
SCHEMA_KEY_PATTERN = rf"^{_SEGMENT}(?:/{_SEGMENT})*/?$"
#: A prefix: '' or a key, optionally followed by '/' (any segment allowed).
PREFIX_PATTERN = r"^(?:[A-Za-z0-9._-]+/)*(?:[A-Za-z0-9._-]+)?$"
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9._:~+/=-]{1,100}$"
VERSION_TAG = r'(?:W/)?"?[0-9]{1,18}"?'
NO_NUL = r"^[^\u0000]*$"
#: A username or a group name (configstore.commands), a token id.
NAME_PATTERN = r"^[A-Za-z0-9_.@+-]{1,150}$"
TOKEN_ID_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
SUBJECT_PATTERN = (
    r"^(?:user:[A-Za-z0-9_.@+-]{1,150}|group:[A-Za-z0-9_.@+-]{1,150}|token:[A-Za-z0-9_-]{1,32})$"
)
#: An ISO 8601 time with a timezone, as the API reads one (a date that does not exist: 422).
TIME_PATTERN = (
    r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T(?:[01][0-9]|2[0-3]):[0-5][0-9]"
    r"(?::[0-5][0-9](?:\.[0-9]{1,6})?)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)
#: An index in a query: ASCII digits (what the server parses), at most PostgreSQL's bigint.
INDEX = {"type": "integer", "minimum": 0, "maximum": MAX_BIGINT}

KEY = {"type": "string", "pattern": KEY_PATTERN, "maxLength": MAX_KEY_LENGTH}
SCHEMA_KEY = {"type": "string", "pattern": SCHEMA_KEY_PATTERN, "maxLength": MAX_KEY_LENGTH + 1}
PREFIX = {"type": "string", "pattern": PREFIX_PATTERN, "maxLength": MAX_KEY_LENGTH + 1}
TEXT = {"type": "string", "pattern": NO_NUL}
REASON = {"type": "string", "pattern": NO_NUL, "maxLength": MAX_REASON_LENGTH}
NAME = {"type": "string", "pattern": NAME_PATTERN}
TOKEN_ID = {"type": "string", "pattern": TOKEN_ID_PATTERN}
#: Any JSON value the store keeps: strings and object keys without NUL (see
#: configstore.validation.check_json; nesting and size limits are 400 and 413).
JSON_VALUE = {"$ref": "#/components/schemas/JsonValue"}
JSON_VALUE_COMPONENT = {
    "description": "any JSON value: no NUL (\\u0000) in strings or object keys, nested at "
    "most 100 levels",
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "number"},
        {"type": "string", "pattern": NO_NUL},
        {"type": "array", "items": JSON_VALUE},
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": JSON_VALUE,
        },
    ],
}
JSON_OBJECT = {
    "type": "object",
    "propertyNames": {"pattern": NO_NUL},
    "additionalProperties": JSON_VALUE,
}


def key_path(name: str = "key", schema: dict = KEY, description: str = "") -> OpenApiParameter:
    return OpenApiParameter(name, schema, OpenApiParameter.PATH, description=description)


CONSISTENCY = OpenApiParameter(
    "consistency",
    {"type": "string", "enum": ["linearizable", "stale"]},
    description="linearizable (default): confirmed through the log; stale: this node's state, "
    "with the X-Configstore-Commit-Index and X-Configstore-Leader-Contact-Age-Ms headers",
)
IDEMPOTENCY = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
    OpenApiParameter.HEADER,
    description="a retried request with the same key (and the same body), through any node, "
    "is applied once and answered as the first was; the same key with another body: 409 "
    "idempotency_key_reused",
)
IF_MATCH = OpenApiParameter(
    "If-Match",
    {"type": "string", "pattern": rf"^(?:\*|{VERSION_TAG})$"},
    OpenApiParameter.HEADER,
    description='"<version>": compare-and-set; *: the entry must exist',
)
IF_MATCH_VERSION = OpenApiParameter(
    "If-Match",
    {"type": "string", "pattern": rf"^{VERSION_TAG}$"},
    OpenApiParameter.HEADER,
    description='"<version>": compare-and-set',
)
IF_NONE_MATCH = OpenApiParameter(
    "If-None-Match",
    {"type": "string", "enum": ["*"]},
    OpenApiParameter.HEADER,
    description="*: create only (with If-Match too: 412, both cannot hold)",
)
PREFIX_PARAM = OpenApiParameter("prefix", PREFIX, description="only keys starting with this")
#: A list's cursor (configstore.api.pagination): base64url, unpadded.
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,1024}$"
CURSOR = OpenApiParameter(
    "cursor",
    {"type": "string", "pattern": CURSOR_PATTERN},
    description="where the page starts: the `next_cursor` of the page before (opaque; one "
    "this list did not give is a 400). Pages carry no total count, and ?page= is refused "
    "(400): follow `next`",
)
PAGE_SIZE = OpenApiParameter(
    "page_size", {"type": "integer", "minimum": 1, "maximum": 1000}, description="100 by default"
)
TIMEOUT = OpenApiParameter(
    "timeout",
    {"type": "number", "minimum": 0, "maximum": 300},
    description="long-poll seconds (30 by default)",
)
REASON_QUERY = OpenApiParameter("reason", REASON, description="why (the body's reason wins)")

_INDEX_HEADER = {
    "description": "the applied index of the state answered (a write: its log index)",
    "schema": {"type": "integer", "minimum": 0},
}
_STALE_HEADERS = {
    "X-Configstore-Commit-Index": {
        "description": "stale reads: the highest log index this node knows committed",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-Configstore-Leader-Contact-Age-Ms": {
        "description": "stale reads: milliseconds since this node last heard from the leader",
        "schema": {"type": "integer", "minimum": 0},
    },
}
_RETRY_AFTER = {
    "description": "seconds to wait before retrying",
    "schema": {"type": "integer", "minimum": 0},
}


def postprocess(result: dict, generator, request, public) -> dict:
    """drf-spectacular postprocessing hook: the JSON value component, and the headers of the
    answers (X-Configstore-Index on reads and writes, the staleness headers on reads,
    Retry-After on 429 and 503)."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    for component in components.values():  # a nullable JSONField: any JSON, null included
        for name, prop in component.get("properties", {}).items():
            if prop == {"oneOf": [{}, {"type": "null"}]}:
                component["properties"][name] = {}
    components["JsonValue"] = JSON_VALUE_COMPONENT
    components.update(INPUTS)
    for path, item in result.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for status, response in operation["responses"].items():
                headers = response.setdefault("headers", {})
                if status.startswith("2") and path != "/api/v1/requests/{request_id}":
                    headers["X-Configstore-Index"] = _INDEX_HEADER
                    if method == "get":
                        headers.update(_STALE_HEADERS)
                if status in ("429", "503"):
                    headers["Retry-After"] = _RETRY_AFTER
                if not headers:
                    del response["headers"]
    return result


def _strict(properties: dict, required: list[str]) -> dict:
    """An input object: unknown fields are refused (StrictSerializer)."""
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


_DESCRIPTION = {
    "type": ["string", "null"],
    "pattern": NO_NUL,
    "maxLength": MAX_DESCRIPTION_LENGTH,
}
#: The request bodies, exactly as the API's serializers and the services check them.
INPUTS: dict = {
    "PutEntry": _strict(
        {
            "value": {**JSON_VALUE_COMPONENT, "description": "any JSON value (null included)"},
            "reason": REASON,
            "description": _DESCRIPTION,
        },
        ["value"],
    ),
    "PutSchema": _strict(
        {
            "schema": {
                "description": "a JSON Schema (Draft 2020-12 by default); one its metaschema "
                "refuses is a 400",
                "anyOf": [JSON_OBJECT, {"type": "boolean"}],
            },
            "reason": REASON,
            "description": _DESCRIPTION,
        },
        ["schema"],
    ),
    "TxnCheck": _strict(
        {
            "key": KEY,
            "version": {**INDEX, "description": "0: the key must not exist"},
        },
        ["key", "version"],
    ),
    "TxnOp": {
        "description": "a put (with a value) or a delete (with neither value nor description)",
        "oneOf": [
            _strict(
                {
                    "op": {"type": "string", "enum": ["put"]},
                    "key": KEY,
                    "value": JSON_VALUE,
                    "description": _DESCRIPTION,
                },
                ["op", "key", "value"],
            ),
            _strict(
                {
                    "op": {"type": "string", "enum": ["delete"]},
                    "key": KEY,
                    "description": {"type": "null"},
                },
                ["op", "key"],
            ),
        ],
    },
    "UserChange": _strict(
        {
            "password": {
                "type": "string",
                "pattern": NO_NUL,
                "minLength": 1,
                "maxLength": 4096,
                "writeOnly": True,
                "description": "hashed by the node that takes it; only the hash is kept",
            },
            "is_active": {"type": "boolean"},
            "is_staff": {"type": "boolean", "description": "may sign in to the admin"},
            "is_superuser": {"type": "boolean"},
            "email": {"type": "string", "pattern": NO_NUL, "maxLength": 254},
            "first_name": {"type": "string", "pattern": NO_NUL, "maxLength": 150},
            "last_name": {"type": "string", "pattern": NO_NUL, "maxLength": 150},
            "groups": {"type": "array", "items": NAME, "maxItems": 1000},
            "permissions": {
                "type": "array",
                "items": {"type": "string", "enum": list(GRANTABLE)},
                "maxItems": 1000,
            },
            "reason": REASON,
        },
        [],
    ),
    "PrefixRight": _strict(
        {
            "prefix": PREFIX,
            "view": {"type": "boolean", "default": True},
            "change": {"type": "boolean", "default": False},
            "delete": {"type": "boolean", "default": False},
        },
        ["prefix"],
    ),
    "Group": _strict(
        {
            "permissions": {
                "type": "array",
                "items": {"type": "string", "enum": list(GRANTABLE)},
                "maxItems": 1000,
            },
            "prefixes": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/PrefixRight"},
                "maxItems": 1000,
                "description": "each prefix at most once (a 400 otherwise)",
                "x-unique-by": "prefix",
            },
            "reason": REASON,
        },
        [],
    ),
    "Token": _strict(
        {
            "username": NAME,
            "name": {"type": "string", "pattern": NO_NUL, "minLength": 1, "maxLength": 100},
            "scope": {"type": "string", "enum": ["read", "write"], "default": "write"},
            "prefix": {**PREFIX, "type": ["string", "null"], "description": "only keys under it"},
            "expires_at": {
                "anyOf": [{"type": "string", "pattern": TIME_PATTERN}, {"type": "null"}],
                "description": "ISO 8601 with a timezone; null: never",
            },
            "reason": REASON,
        },
        ["username", "name"],
    ),
    "Txn": _strict(
        {
            "checks": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/TxnCheck"},
                "description": "each key at most once (a 400 otherwise)",
                "x-unique-by": "key",
            },
            "ops": {
                "type": "array",
                "minItems": 1,
                "items": {"$ref": "#/components/schemas/TxnOp"},
                "description": "each key at most once (a 400 otherwise)",
                "x-unique-by": "key",
            },
            "reason": REASON,
        },
        ["ops"],
    ),
}


INPUTS["NewUser"] = {
    **INPUTS["UserChange"],
    "properties": {"username": NAME, **INPUTS["UserChange"]["properties"]},
    "required": ["username"],
}
INPUTS["PatchedUserChange"] = INPUTS["UserChange"]  # drf-spectacular's name for PATCH
