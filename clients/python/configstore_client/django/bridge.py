"""`config`: a Django service's configuration, read from a configstore cluster.

It is a `LiveView` of one prefix (configstore_client.live), started at the first read (or
by `config.start()`, e.g. in the service's `AppConfig.ready`), and served from memory: a
read is a dictionary lookup, not a request. Settings, all in `CONFIGSTORE_CLIENT`:

    URLS         every node's base URL (required)
    TOKEN        an API token; a read-only one scoped to PREFIX is enough (required)
    PREFIX       the keys the service reads ("" = every key the token may read)
    CACHE_PATH   the view's file: written atomically as it changes, read when no node
                 answers at start (fail-static). Default: none
    DEFAULTS     {key: value} served while a key is absent (or never had a valid value)
    SCHEMAS      {key or namespace "a/b/": JSON Schema}: the service's own expectations,
                 checked beside the cluster's schemas
    STALE_AFTER  seconds without hearing from the cluster before `config.stale` (30)
    TIMEOUT      seconds per request (5); POLL_TIMEOUT: seconds per long-poll (20)

Values are checked against every JSON Schema that applies to their key: the cluster's (the
key's own and its namespaces', read at start and again when a schema change passes in the
view) and the service's own `SCHEMAS`. A value that fails is not served: the key keeps its
last valid value (or its default), `config.invalid[key]` says why, a warning is logged and
the system check reports it. The cluster checks its schemas at every write, so only a
service's own schema, or a cache file edited by hand, can fail here.

`config_changed` is sent (from the view's thread, once per change, in log order) with
`key`, `old` and `new` (None: absent) whenever a served value changes. Receivers should be
quick: the view applies the next change after them.

Reads never raise because the cluster is away: the view serves what it last knew (from
memory, or the cache file at start) and says how old it is (`config.age`, `config.stale`).
A service whose cluster is away at start, without a cache, serves its DEFAULTS and keeps
trying. Under a pre-fork server (e.g. gunicorn --preload) a child starts its own view at
its first read.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.dispatch import Signal

from configstore_client import errors
from configstore_client.client import Client
from configstore_client.live import LiveView

logger = logging.getLogger("configstore_client.django")

SETTING = "CONFIGSTORE_CLIENT"
DEFAULT_OPTIONS: dict[str, Any] = {
    "URLS": (),
    "TOKEN": "",
    "PREFIX": "",
    "CACHE_PATH": None,
    "DEFAULTS": {},
    "SCHEMAS": {},
    "STALE_AFTER": 30.0,
    "TIMEOUT": 5.0,
    "POLL_TIMEOUT": 20.0,
}

#: sent with key=, old=, new= (None: absent) when a served value changes
config_changed = Signal()

_ABSENT = object()
SCHEMA_OPS = ("put_schema", "delete_schema")


def options() -> dict[str, Any]:
    """CONFIGSTORE_CLIENT over the defaults; ImproperlyConfigured when it cannot work."""
    given = getattr(settings, SETTING, None)
    if not isinstance(given, dict):
        raise ImproperlyConfigured(f"set {SETTING} = {{'URLS': [...], 'TOKEN': ...}}")
    unknown = set(given) - set(DEFAULT_OPTIONS)
    if unknown:
        raise ImproperlyConfigured(f"{SETTING}: unknown option(s) {sorted(unknown)}")
    merged = {**DEFAULT_OPTIONS, **given}
    urls = merged["URLS"]
    if isinstance(urls, str) or not urls or not all(isinstance(u, str) for u in urls):
        raise ImproperlyConfigured(f"{SETTING}['URLS']: a list of the nodes' base URLs")
    if not isinstance(merged["TOKEN"], str) or not merged["TOKEN"]:
        raise ImproperlyConfigured(f"{SETTING}['TOKEN']: an API token of the cluster")
    if not isinstance(merged["PREFIX"], str):
        raise ImproperlyConfigured(f"{SETTING}['PREFIX']: a key prefix, e.g. 'payments/'")
    for name in ("DEFAULTS", "SCHEMAS"):
        if not isinstance(merged[name], dict):
            raise ImproperlyConfigured(f"{SETTING}['{name}']: a dict keyed by key")
    return merged


def client_for(opts: dict[str, Any], **overrides: Any) -> Client:
    """A Client of the cluster `opts` (see `options`) names: a timeout per request of
    TIMEOUT, each node tried once; `overrides` for other Client arguments."""
    timeout = float(opts["TIMEOUT"])
    arguments = {
        "timeout": timeout,
        "connect_timeout": min(2.0, timeout),
        "retries": max(1, len(opts["URLS"]) - 1),
        **overrides,
    }
    return Client(list(opts["URLS"]), opts["TOKEN"], **arguments)


def applies(schema_key: str, key: str) -> bool:
    """A schema attached to `schema_key` applies to `key` (as on the server: the key's own,
    and every namespace "a/", "a/b/" above it)."""
    return schema_key == key or (schema_key.endswith("/") and key.startswith(schema_key))


def namespaces_above(prefix: str) -> list[str]:
    """The namespaces strictly above `prefix` whose schemas apply to keys under it."""
    parts = prefix.split("/")[:-1]
    found = ["/".join(parts[: i + 1]) + "/" for i in range(len(parts))]
    return [n for n in found if not n.startswith(prefix)]


class Config:
    """The service's configuration (see the module's docstring). One per process:
    `configstore_client.django.config`."""

    def __init__(self) -> None:
        self._start_lock = threading.Lock()
        self._lock = threading.RLock()
        self._ready = False
        self._view: LiveView | None = None
        self._client: Client | None = None
        self._prefix = ""
        self._defaults: dict[str, Any] = {}
        self._local_schemas: dict[str, Any] = {}
        self._server_schemas: dict[str, Any] = {}
        self._schemas_known = False  # the cluster's schemas were read
        self._schemas_dirty = False
        self._validators: dict[str, Any] = {}
        self._values: dict[str, Any] = {}  # what is served: the view's valid values
        self._invalid: dict[str, str] = {}

    # ------------------------------------------------------------------ reading

    def __getitem__(self, key: str) -> Any:
        self._ensure_started()
        try:
            return self._values[key]
        except KeyError:
            pass
        try:
            return self._defaults[key]
        except KeyError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: str) -> bool:
        self._ensure_started()
        return key in self._values or key in self._defaults

    def __getattr__(self, name: str) -> Any:
        """`config.timeout_ms` is `config[PREFIX + "timeout_ms"]` (for keys that are not
        also names of this class: use [] for those)."""
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[self.prefix + name]
        except KeyError:
            raise AttributeError(f"no configuration key {name!r} under the prefix") from None

    def items(self) -> dict[str, Any]:
        """Every key served: the view's valid values over the defaults."""
        self._ensure_started()
        return {**self._defaults, **self._values}

    def __iter__(self) -> Iterator[str]:
        return iter(self.items())

    @property
    def prefix(self) -> str:
        self._ensure_started()
        return self._prefix

    @property
    def index(self) -> int:
        """The log index the view has applied."""
        return self._started_view().index

    @property
    def age(self) -> float:
        """Seconds since the view last heard from the cluster (inf: never)."""
        return self._started_view().age

    @property
    def stale(self) -> bool:
        """True while the view is not following the cluster or has not heard from it for
        STALE_AFTER seconds (e.g. served from the cache file)."""
        return self._started_view().stale

    @property
    def from_cache(self) -> bool:
        return self._started_view().from_cache

    @property
    def loaded(self) -> bool:
        """The view holds the prefix (from the cluster or the cache), not only DEFAULTS."""
        return self._started_view().loaded

    @property
    def invalid(self) -> dict[str, str]:
        """Keys whose current value fails a schema (not served) -> why."""
        with self._lock:
            return dict(self._invalid)

    def schemas_for(self, key: str) -> list[Any]:
        """The JSON Schemas a value of `key` is checked against."""
        self._ensure_started()
        with self._lock:
            return [
                schema
                for source in (self._server_schemas, self._local_schemas)
                for schema_key, schema in sorted(source.items())
                if applies(schema_key, key)
            ]

    def wait_for_index(self, index: int, timeout: float = 10.0) -> bool:
        return self._started_view().wait_for_index(index, timeout)

    def _ensure_started(self) -> None:
        if not self._ready:
            self.start()

    def _started_view(self) -> LiveView:
        self._ensure_started()
        assert self._view is not None
        return self._view

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        """Read the prefix (or the cache file; or, with neither, serve DEFAULTS and keep
        trying), then follow it. Idempotent; reads call it."""
        with self._start_lock:
            if self._ready:
                return
            opts = options()
            client = client_for(opts)
            view = LiveView(
                client,
                opts["PREFIX"],
                cache_path=opts["CACHE_PATH"],
                poll_timeout=float(opts["POLL_TIMEOUT"]),
                stale_after=float(opts["STALE_AFTER"]),
                start=False,
                require_initial=False,
            )
            with self._lock:
                self._client, self._view, self._prefix = client, view, opts["PREFIX"]
                self._defaults = dict(opts["DEFAULTS"])
                self._local_schemas = dict(opts["SCHEMAS"])
                self._validators = {}
            self._read_schemas()
            view.subscribe("", self._changed)
            view.subscribe_events(self._event)
            view.on_contact(self._contact)
            view.start()
            self._revalidate(notify=False)
            self._ready = True

    def close(self) -> None:
        """Stop following the cluster (the next read starts again)."""
        with self._start_lock:
            view, client = self._view, self._client
            self._ready, self._view, self._client = False, None, None
            with self._lock:
                self._values, self._invalid = {}, {}
                self._server_schemas, self._schemas_known = {}, False
        if view is not None:
            view.close(timeout=5)
        if client is not None:
            client.close()

    def _after_fork(self) -> None:
        """In a forked child the view's thread is gone: start anew at the first read."""
        self._start_lock = threading.Lock()
        self._lock = threading.RLock()
        self._ready, self._view, self._client = False, None, None

    # ------------------------------------------------------------------ the view's thread

    def _changed(self, key: str, old: Any, new: Any) -> None:
        view = self._view
        present = view is not None and key in view
        with self._lock:
            self._accept(key, new if present else _ABSENT, notify=self._ready)

    def _event(self, row: dict) -> None:
        if row.get("operation") in SCHEMA_OPS and row.get("outcome") == "committed":
            self._schemas_dirty = True

    def _contact(self) -> None:
        if self._schemas_dirty or not self._schemas_known:
            self._schemas_dirty = False
            self._read_schemas()
            self._revalidate(notify=self._ready)

    def _read_schemas(self) -> None:
        """The cluster's schemas for the prefix; on failure keep what is known (the
        cluster checked every value against them at its write)."""
        client = self._client
        if client is None:
            return
        try:
            found = client.schemas(self._prefix)
            for namespace in namespaces_above(self._prefix):
                schema = client.schema(namespace)
                if schema is not None:
                    found[namespace] = schema
        except errors.Forbidden as error:
            logger.warning("configstore: the token may not read schemas (%s)", error)
            found = {}
        except errors.ConfigstoreError:
            return  # unreachable: read them at the next contact
        self._schemas_known = True
        with self._lock:
            if found != self._server_schemas:
                self._server_schemas = found
                self._validators = {}

    def _revalidate(self, *, notify: bool) -> None:
        """Check every value of the view again (schemas changed, or at start)."""
        view = self._view
        if view is None:
            return
        with self._lock:
            current = view.items()
            for key in sorted(self._values.keys() | self._invalid.keys() | current.keys()):
                self._accept(key, current.get(key, _ABSENT), notify=notify)

    def _accept(self, key: str, value: Any, *, notify: bool) -> None:
        """Serve `value` for `key` (or drop it: _ABSENT) if it passes its schemas."""
        previous = self._values.get(key, _ABSENT)
        if value is _ABSENT:
            self._invalid.pop(key, None)
            if previous is _ABSENT:
                return
            del self._values[key]
        else:
            problem = self._violation(key, value)
            if problem is not None:
                if self._invalid.get(key) != problem:
                    logger.warning(
                        "configstore: %s fails its schema, not served (%s)", key, problem
                    )
                self._invalid[key] = problem
                return
            self._invalid.pop(key, None)
            if previous is not _ABSENT and previous == value:
                return
            self._values[key] = value
        if notify:
            old = None if previous is _ABSENT else previous
            new = None if value is _ABSENT else value
            for receiver, outcome in config_changed.send_robust(
                sender=Config, key=key, old=old, new=new
            ):
                if isinstance(outcome, Exception):
                    logger.error(
                        "configstore: config_changed receiver %r failed on %s",
                        receiver,
                        key,
                        exc_info=outcome,
                    )

    def _violation(self, key: str, value: Any) -> str | None:
        for source, tag in ((self._server_schemas, "cluster"), (self._local_schemas, "local")):
            for schema_key, schema in source.items():
                if not applies(schema_key, key):
                    continue
                validator = self._validator(f"{tag}:{schema_key}", schema)
                error = next(iter(validator.iter_errors(value)), None)
                if error is not None:
                    path = "/".join(str(p) for p in error.absolute_path)
                    return f"{tag} schema {schema_key!r}: {error.message} at /{path}"
        return None

    def _validator(self, name: str, schema: Any):
        validator = self._validators.get(name)
        if validator is None:
            from jsonschema.validators import validator_for

            cls = validator_for(schema)
            validator = self._validators[name] = cls(schema)
        return validator


config = Config()
os.register_at_fork(after_in_child=config._after_fork)
