"""The failures a caller of configstore.services can act on: one type each. The REST API maps
them to HTTP once (configstore.api.errors); the admin maps them to messages.

Every error has a stable `code` and a human `detail`; `as_dict()` is its JSON form
{"error": code, "detail": ..., plus the fields a caller needs (current_version, path, ...)}.
"""

from __future__ import annotations


class ConfigstoreError(Exception):
    code = "error"
    #: Set when the applier rejected the command: its request id and log index (the index
    #: of its rejected row in the history).
    request_id: str | None = None
    index: int | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def extra(self) -> dict:
        return {}

    def as_dict(self) -> dict:
        return {"error": self.code, "detail": self.detail, **self.extra()}


class InvalidInput(ConfigstoreError):
    """Bad input: nothing was submitted. `field` names the offending input, when known."""

    code = "invalid"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field

    def extra(self) -> dict:
        return {"field": self.field} if self.field else {}


class InvalidTime(InvalidInput):
    """A time of the right form that does not exist (February 30th)."""

    code = "invalid_time"


class InvalidKey(InvalidInput):
    code = "invalid_key"


class IdempotencyKeyReused(ConfigstoreError):
    """The idempotency key was already used, by the same actor, for a different request
    (another fingerprint): nothing of this one was applied. Raised before submitting (this
    node knew the key) or when the applier rejected it (a race: the log ordered the other
    request first). Retrying cannot help; a new request needs a new key."""

    code = "idempotency_key_reused"


class SchemaViolation(InvalidInput):
    """The value fails a JSON Schema attached to its key or a namespace above it. Raised
    before submitting (nothing submitted) or when the applier refused it (rejected)."""

    code = "schema_violation"

    def __init__(self, detail: str, *, key: str, path: str, schema: str) -> None:
        super().__init__(detail, field="value")
        self.key = key
        self.path = path
        self.schema = schema

    def extra(self) -> dict:
        return {"key": self.key, "path": self.path, "schema": self.schema}


class TooLarge(ConfigstoreError):
    """A value (or a whole txn) over the size limit: nothing was submitted."""

    code = "too_large"

    def __init__(self, detail: str, *, size: int, limit: int) -> None:
        super().__init__(detail)
        self.size = size
        self.limit = limit

    def extra(self) -> dict:
        return {"size": self.size, "limit": self.limit}


class VersionConflict(ConfigstoreError):
    """The applier found another version than the one the write expected: nothing changed."""

    code = "version_conflict"

    def __init__(
        self, detail: str, *, key: str, expected_version: int | None, current_version: int | None
    ) -> None:
        super().__init__(detail)
        self.key = key
        self.expected_version = expected_version
        self.current_version = current_version

    def extra(self) -> dict:
        return {
            "key": self.key,
            "expected_version": self.expected_version,
            "current_version": self.current_version,
        }


class PreconditionFailed(ConfigstoreError):
    """The request's conditions can never hold together (If-Match with If-None-Match: *):
    nothing was submitted."""

    code = "precondition_failed"


class NotFound(ConfigstoreError):
    code = "not_found"

    def __init__(self, detail: str, *, key: str = "") -> None:
        super().__init__(detail)
        self.key = key

    def extra(self) -> dict:
        return {"key": self.key} if self.key else {}


class Forbidden(ConfigstoreError):
    """The applier refused the command: its credential no longer allowed it at the
    command's log index (revoked, deactivated, expired or narrowed meanwhile)."""

    code = "forbidden"


class Conflict(ConfigstoreError):
    """An access command met a state it cannot apply to (the user exists already, ...)."""

    code = "conflict"


class TxnFailed(ConfigstoreError):
    """A txn's checks failed (or it deleted a key that does not exist): nothing applied.
    `failed` lists {"key", "expected_version", "current_version"} per failed check."""

    code = "txn_failed"

    def __init__(self, detail: str, *, failed: list[dict]) -> None:
        super().__init__(detail)
        self.failed = failed

    def extra(self) -> dict:
        return {"failed": self.failed}


class Unavailable(ConfigstoreError):
    """The cluster could not commit (or confirm) in time. Retry with the same idempotency key
    (the API's Idempotency-Key), through any node: it is applied at most once."""

    def __init__(self, detail: str, *, request_id: str) -> None:
        super().__init__(detail)
        self.request_id = request_id

    def extra(self) -> dict:
        return {"request_id": self.request_id}


class NoQuorum(Unavailable):
    """This node cannot reach a quorum: the command was NOT submitted, nothing committed."""

    code = "no_quorum"


class NotConfirmed(Unavailable):
    """Submitted, but not confirmed applied in time: it may still commit. Its outcome can be
    looked up by request id (services.request_outcome, GET /api/v1/requests/<id>)."""

    code = "not_confirmed"


class DependencyUnavailable(ConfigstoreError):
    """A server this node depends on cannot be reached or refuses it (PostgreSQL down or out
    of connections, the broker down): nothing was submitted. Retry after Retry-After, on this
    node or another."""


class DatabaseUnavailable(DependencyUnavailable):
    code = "database_unavailable"


class BrokerUnavailable(DependencyUnavailable):
    code = "broker_unavailable"
