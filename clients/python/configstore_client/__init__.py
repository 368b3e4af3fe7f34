"""configstore's Python client: `Client(urls, token)` (configstore_client.client), a live
local view of a prefix with a fail-static cache (`LiveView`, configstore_client.live) and
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
from configstore_client.live import LiveView

__all__ = [
    "Changes",
    "Client",
    "ConfigstoreError",
    "Conflict",
    "Entry",
    "Forbidden",
    "InvalidRequest",
    "Listing",
    "LiveView",
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
