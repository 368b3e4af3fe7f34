"""The config store's settings and the deployment's, each declared once (as the runtime's
are in consensus.conf, whose machinery this uses; read its docstring), and the objects a
web process keeps for the config store.

`python -m devcluster.settingsdoc --readme` writes the README's settings table from these
declarations, the runtime's and devcluster's; a test keeps the README so.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.conf import (
    flag,
    integer,
    milliseconds,
    number,
    process,
    setting,
    text,
)


def _hosts(raw: str) -> list[str]:
    return [h for h in raw.split(",") if h]


@dataclass(frozen=True)
class StoreSettings:
    """The node's web tier, API and database, and the deployment around them."""

    database_url: str | None = setting(
        "DATABASE_URL",
        None,
        text,
        "this node's own database; the web server and the worker should connect as the app "
        "role, `manage.py migrate` as the tables' owner (see [Database roles](#database-roles))",
        shown_default="`postgresql://postgres@127.0.0.1:5432/configstore_<node id>`",
    )
    broker_url: str = setting(
        "CELERY_BROKER_URL",
        "redis://127.0.0.1:6379/0",
        text,
        "this node's own broker (its entry in `CONFIGSTORE_PEERS`)",
    )
    django_secret_key: str = setting(
        "DJANGO_SECRET_KEY",
        "dev-insecure-secret-key-change-me",
        text,
        "Django's secret key; checked like `CONFIGSTORE_SECRET`",
        shown_default="a development value",
    )
    debug: bool = setting("DJANGO_DEBUG", "0", flag, "`1` for Django's debug mode")
    allowed_hosts: list[str] = setting(
        "DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost", _hosts, "comma-separated"
    )
    log_level: str = setting("CONFIGSTORE_LOG_LEVEL", "INFO", text, "log level")
    max_value_bytes: int = setting(
        "CONFIGSTORE_MAX_VALUE_BYTES",
        str(1024 * 1024),
        integer(1),
        "largest value a put may carry (413 above it)",
    )
    max_txn_bytes: int = setting(
        "CONFIGSTORE_MAX_TXN_BYTES", str(4 * 1024 * 1024), integer(1), "largest transaction body"
    )
    write_timeout: float = setting(
        "CONFIGSTORE_WRITE_TIMEOUT_MS",
        "5000",
        milliseconds(1, 600_000),
        'how long a write waits for its commit before answering 503 "not confirmed" (with '
        "its request id)",
    )
    read_timeout: float = setting(
        "CONFIGSTORE_READ_TIMEOUT_MS",
        "5000",
        milliseconds(1, 600_000),
        "how long a linearizable read waits for its barrier",
    )
    anonymous_reads: bool = setting(
        "CONFIGSTORE_ANONYMOUS_READS", "0", flag, "`1` lets unauthenticated clients read"
    )
    login_failure_limit: int = setting(
        "CONFIGSTORE_LOGIN_FAILURE_LIMIT",
        "5",
        integer(1),
        "failed admin sign-ins of one username from one address that lock that pair out of "
        "this node's admin (see [Brute-force protection](#brute-force-protection))",
    )
    login_cooloff_minutes: float = setting(
        "CONFIGSTORE_LOGIN_COOLOFF_MINUTES",
        "15",
        number(0),
        "how long a locked-out pair stays locked after its last attempt (a fraction allowed)",
    )
    token_failure_limit: int = setting(
        "CONFIGSTORE_TOKEN_FAILURE_LIMIT",
        "50",
        integer(0),
        "refused API tokens from one address within the window that lock it out of this "
        "node's token authentication until the window ends; `0`: no limit",
    )
    token_failure_window: float = setting(
        "CONFIGSTORE_TOKEN_FAILURE_WINDOW_S",
        "60",
        number(0.001),
        "that window, in seconds from the address's first refused token",
    )
    web_threads: int = setting(
        "CONFIGSTORE_WEB_THREADS",
        "16",
        integer(1, 1024),
        "threads per web server process that run Django (long-polls wait without one)",
    )
    body_timeout: float = setting(
        "CONFIGSTORE_BODY_TIMEOUT_MS",
        "10000",
        milliseconds(1),
        "a request body not complete within this time answers 408 and the connection is "
        "closed (request headers: granian's `--http1-header-read-timeout`, 10 s)",
    )
    db_pool_size: int = setting(
        "CONFIGSTORE_DB_POOL_SIZE",
        "8",
        integer(1, 1000),
        "PostgreSQL connections per process in Django's pool (a web server process holds this "
        "plus up to 3 of its own: the applied-index listener, shared by writes, read barriers "
        "and long-polls, and two for outcome lookups)",
    )
    db_pool_timeout: float = setting(
        "CONFIGSTORE_DB_POOL_TIMEOUT_MS",
        "5000",
        milliseconds(1),
        "a request that finds the pool empty this long fails with a database error (503 with "
        "`Retry-After`)",
    )
    metrics_token: str = setting(
        "CONFIGSTORE_METRICS_TOKEN",
        "",
        text,
        "`/metrics` requires `Authorization: Bearer <this>`; unset, only loopback clients may "
        "scrape (see [Metrics](#metrics))",
        shown_default="unset",
    )
    snapshot_dir: str = setting(
        "CONFIGSTORE_SNAPSHOT_DIR",
        "",
        text,
        "where this node keeps the snapshots it serves its peers (the two newest) and a "
        "snapshot it is fetching, readable by its web server and its worker",
        shown_default="`<temp dir>/configstore-snapshots-<node id>`",
    )
    prometheus_multiproc_dir: str | None = setting(
        "PROMETHEUS_MULTIPROC_DIR",
        None,
        text,
        "the web server's prometheus_client multiprocess folder, one per node, emptied before "
        "the server starts; never set it for the worker (read by prometheus_client itself)",
        shown_default="unset (runcluster: `data/metrics/<node>`)",
    )


def store() -> StoreSettings:
    """This process's config store settings (Django's CONFIGSTORE, built once at start)."""
    from django.conf import settings

    return settings.CONFIGSTORE


def kept(name: str, factory):
    """An object this process keeps for the config store (consensus.conf.Process)."""
    return process().get(f"configstore.{name}", factory)
