"""One exception per error a caller can act on: the API's error contract (every error is
JSON {"error": code, "detail": text, ...}; the server's README lists them)."""

from __future__ import annotations

from typing import Any


class ConfigstoreError(Exception):
    """An error answer. `code` is the API's stable `error`; `status` the HTTP status;
    `body` the whole JSON answer; `request_id` when the server named one."""

    code = "error"

    def __init__(self, detail: str, *, status: int | None = None, body: dict | None = None):
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.body: dict[str, Any] = body or {}
        self.request_id: str | None = self.body.get("request_id")


class InvalidRequest(ConfigstoreError):
    """400: the request itself is wrong; retrying it unchanged fails again."""

    code = "invalid"


class Unauthorized(ConfigstoreError):
    """401: no credentials, or unknown, revoked or expired ones."""

    code = "not_authenticated"


class Forbidden(ConfigstoreError):
    """403: the user (or the token's scope or prefix) may not do this; or the credential
    was revoked before the command's log index (`forbidden`)."""

    code = "permission_denied"


class NotFound(ConfigstoreError):
    code = "not_found"


class Conflict(ConfigstoreError):
    """409: a txn's checks failed (`failed`), an idempotency key reused, an access conflict."""

    code = "conflict"


class VersionConflict(ConfigstoreError):
    """412: the key is not at the expected version (`current_version`)."""

    code = "version_conflict"

    @property
    def current_version(self) -> int | None:
        return self.body.get("current_version")


class TooLarge(ConfigstoreError):
    code = "too_large"


class SchemaViolation(ConfigstoreError):
    """422: the value fails a JSON Schema (`schema`, `path`)."""

    code = "schema_violation"


class TooManyFailures(ConfigstoreError):
    """429: too many refused tokens from this address on that node."""

    code = "too_many_failures"


class Unavailable(ConfigstoreError):
    """503 or no answer from any node: nothing is known to have committed."""

    code = "unavailable"


class NoQuorum(Unavailable):
    """503 no_quorum: the write was not submitted."""

    code = "no_quorum"


class NotConfirmed(Unavailable):
    """503 not_confirmed: submitted, not confirmed in time; it may still commit.
    `request_id` names it (Client.request_outcome looks it up)."""

    code = "not_confirmed"


_BY_STATUS: dict[int, type[ConfigstoreError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: VersionConflict,
    413: TooLarge,
    422: SchemaViolation,
    429: TooManyFailures,
    503: Unavailable,
}
_BY_CODE: dict[str, type[ConfigstoreError]] = {
    "no_quorum": NoQuorum,
    "not_confirmed": NotConfirmed,
    "version_conflict": VersionConflict,
    "schema_violation": SchemaViolation,
}


def error_for(status: int, body: Any) -> ConfigstoreError:
    body = body if isinstance(body, dict) else {}
    code = str(body.get("error", ""))
    kind = _BY_CODE.get(code) or _BY_STATUS.get(status) or ConfigstoreError
    error = kind(str(body.get("detail", f"HTTP {status}")), status=status, body=body)
    error.code = code or kind.code
    return error
