"""configstore's Python client: `Client(urls, token)` (see configstore_client.client) and
one exception per API error (configstore_client.errors)."""

from configstore_client.client import Changes, Client, Entry, Listing
from configstore_client.errors import (
    ConfigstoreError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NoQuorum,
    NotConfirmed,
    NotFound,
    SchemaViolation,
    TooLarge,
    TooManyFailures,
    Unauthorized,
    Unavailable,
    VersionConflict,
)

__all__ = [
    "Changes",
    "Client",
    "ConfigstoreError",
    "Conflict",
    "Entry",
    "Forbidden",
    "InvalidRequest",
    "Listing",
    "NoQuorum",
    "NotConfirmed",
    "NotFound",
    "SchemaViolation",
    "TooLarge",
    "TooManyFailures",
    "Unauthorized",
    "Unavailable",
    "VersionConflict",
]
