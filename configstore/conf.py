"""The config store's settings, with their defaults (settings.py sets them from the
environment; the README lists them)."""

from __future__ import annotations

from django.conf import settings

DEFAULTS = {
    # Largest value, as compact UTF-8 JSON (413 above it).
    "CONFIGSTORE_MAX_VALUE_BYTES": 1024 * 1024,
    # Largest txn: all its values together.
    "CONFIGSTORE_MAX_TXN_BYTES": 4 * 1024 * 1024,
    # How long a write waits to be committed and applied here before "not confirmed" (s).
    "CONFIGSTORE_WRITE_TIMEOUT": 5.0,
    # How long a linearizable read waits for its barrier (s).
    "CONFIGSTORE_READ_TIMEOUT": 5.0,
    # Whether reads (keys, history, watch, cluster) need no credentials.
    "CONFIGSTORE_ANONYMOUS_READS": False,
    # Failed token authentications from one address within the window (s) that lock it out
    # until the window ends (configstore.api.throttle); 0: no limit.
    "CONFIGSTORE_TOKEN_FAILURE_LIMIT": 50,
    "CONFIGSTORE_TOKEN_FAILURE_WINDOW": 60.0,
}


def get(name: str):
    return getattr(settings, name, DEFAULTS[name])
