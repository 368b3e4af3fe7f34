"""System checks (`manage.py check`, and before runserver and migrate), tag "configstore":

- configstore_client.E001  CONFIGSTORE_CLIENT is missing or wrong
- configstore_client.E002  the cluster refuses the token (unknown, revoked or expired)
- configstore_client.E003  the token may not read PREFIX
- configstore_client.E004  the cluster answers the read with another error
- configstore_client.W001  no node answers: the service serves its cached view or DEFAULTS
- configstore_client.W002  nodes answer but the cluster has no quorum
- configstore_client.W003  a value fails its schema and is not served

The reachability checks make one read of at most one entry, with short timeouts, trying
every node once."""

from __future__ import annotations

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from configstore_client import errors
from configstore_client.django import bridge

TAG = "configstore"


@checks.register(TAG)
def cluster_reachable(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    try:
        opts = bridge.options()
    except ImproperlyConfigured as error:
        return [checks.Error(str(error), id="configstore_client.E001")]
    client = bridge.client_for(
        opts,
        timeout=min(5.0, float(opts["TIMEOUT"])),
        connect_timeout=1.0,
        retries=len(opts["URLS"]) - 1,
        backoff=0.05,
        max_backoff=0.2,
    )
    try:
        client.ping(opts["PREFIX"])
    except errors.ConfigstoreError as error:
        return [_unreachable(error, opts)]
    finally:
        client.close()
    return [
        checks.Warning(
            f"{key} fails its schema and is not served: {why}",
            id="configstore_client.W003",
        )
        for key, why in sorted(bridge.config.invalid.items())
    ]


def _unreachable(error: errors.ConfigstoreError, opts: dict) -> checks.CheckMessage:
    """What the check says when the cluster answers its read with `error` (or not at all)."""
    prefix = opts["PREFIX"]
    where = f"the configstore cluster ({', '.join(opts['URLS'])})"
    if isinstance(error, errors.Unauthorized):
        return checks.Error(
            f"{where} refuses CONFIGSTORE_CLIENT['TOKEN']: {error.detail}",
            hint="the token may be revoked or expired: make a new one "
            "(configstorectl or manage.py access token)",
            id="configstore_client.E002",
        )
    if isinstance(error, errors.Forbidden):
        return checks.Error(
            f"the token may not read the prefix {prefix!r}: {error.detail}",
            hint="give the token's user view permission on the prefix",
            id="configstore_client.E003",
        )
    if isinstance(error, errors.NoQuorum):
        return checks.Warning(
            f"{where} answers but has no quorum: reads are served from the last view",
            id="configstore_client.W002",
        )
    if isinstance(error, errors.Unavailable):
        fallback = f"its cache file {opts['CACHE_PATH']}" if opts["CACHE_PATH"] else "no cache file"
        return checks.Warning(
            f"no node of {where} answers ({error.detail}): the service starts from "
            f"{fallback} and its DEFAULTS, and keeps trying",
            hint="check CONFIGSTORE_CLIENT['URLS'] and the cluster (configstorectl status)",
            id="configstore_client.W001",
        )
    return checks.Error(
        f"{where} answers a read of {prefix!r} with {error.code}: {error.detail}",
        id="configstore_client.E004",
    )
