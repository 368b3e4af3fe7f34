"""The node runtime's settings, each declared once, and this process's node objects.

Settings. Every setting of a node is an environment variable declared by a field of a
frozen dataclass: `NodeSettings` here (the runtime's), `configstore.conf.StoreSettings`
(the config store's and the deployment's). A field names its variable, its default as the
environment would give it, its parser (which validates) and its meaning. Django's settings
module builds both once, when it loads (`from_environ`): a process with a bad value does
not start, and says which variable is wrong and why. The README's settings table is
generated from the declarations (`python -m configstore.conf --readme`) and a test keeps it
so. Code reads the typed objects (`node()`, `configstore.conf.store()`), never
`os.environ` nor a setting by its string name.

The Paxos core's options are settings too, and their defaults are the core's own
(`consensus.paxos.Config`): one number, not a default in the core and another in
production.

Process objects. The objects a process keeps for its node (the submitter and its
listener, the status reader and its broker clients, the worker's runtime, the envelope
sealers, the config store's watcher) live in one `Process`, made on first use and made
anew in a forked child (which must not share its parent's connections, threads or
envelope sequence numbers). There is no other module-level state in consensus/ or
configstore/ (tests/test_settings.py walks their syntax trees to keep it so).
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from consensus.paxos import Config

T = TypeVar("T")


# ---------------------------------------------------------------------- declarations


class SettingError(ValueError):
    """A setting's value cannot be used; its message names the variable and says why."""


@dataclass(frozen=True)
class Variable:
    """How one environment variable becomes one field."""

    name: str
    #: The value when the variable is unset, as the environment would give it; None: unset.
    default: str | None
    parse: Callable[[str], Any]
    meaning: str
    #: What the README shows as the default, where the raw one would mislead.
    shown_default: str | None = None


def setting(
    name: str,
    default: str | None,
    parse: Callable[[str], Any],
    meaning: str,
    *,
    shown_default: str | None = None,
) -> Any:
    """A dataclass field read from the environment variable `name`."""
    return field(metadata={"variable": Variable(name, default, parse, meaning, shown_default)})


def variables(settings_class: type) -> list[tuple[str, Variable]]:
    """(field name, its variable) of a settings dataclass, in declaration order."""
    return [(f.name, f.metadata["variable"]) for f in dataclasses.fields(settings_class)]


def from_environ(settings_class: type[T], environ: Mapping[str, str]) -> T:
    """The settings of `settings_class` from `environ`; SettingError naming every variable
    that is wrong (not only the first)."""
    values, problems = {}, []
    for attribute, variable in variables(settings_class):
        raw = environ.get(variable.name, variable.default)
        try:
            values[attribute] = None if raw is None else variable.parse(raw)
        except ValueError as error:
            problems.append(f"{variable.name}={raw!r}: {error}")
    if problems:
        raise SettingError("; ".join(problems))
    try:
        return settings_class(**values)
    except ValueError as error:
        raise SettingError(str(error)) from None


# ---------------------------------------------------------------------- parsers


def text(raw: str) -> str:
    return raw


def flag(raw: str) -> bool:
    if raw not in ("0", "1"):
        raise ValueError("must be 0 or 1")
    return raw == "1"


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("must be a whole number") from None
        _within(value, low, high)
        return value

    return parse


def number(low: float, high: float | None = None, *, scale: float = 1.0) -> Callable[[str], float]:
    """A decimal number in [low, high] (in the variable's own unit), times `scale`."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("must be a number") from None
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        _within(value, low, high)
        return value * scale

    return parse


def milliseconds(low: float, high: float | None = None) -> Callable[[str], float]:
    """A duration given in milliseconds, read as seconds."""
    return number(low, high, scale=1 / 1000)


def _within(value: float, low: float, high: float | None) -> None:
    if high is None and value < low:
        raise ValueError(f"must be {low:g} or more")
    if high is not None and not low <= value <= high:
        raise ValueError(f"must be from {low:g} to {high:g}")


def _pairs(text: str, variable: str, what: str) -> dict[str, str]:
    """'n1=url1,n2=url2' -> {'n1': 'url1', 'n2': 'url2'} (ValueError naming `variable`)."""
    found: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        node_id, sep, url = item.partition("=")
        if not sep or not node_id.strip() or not url.strip():
            raise ValueError(f"{variable} entry {item!r} is not id={what}")
        if node_id.strip() in found:
            raise ValueError(f"{variable} names {node_id.strip()!r} twice")
        found[node_id.strip()] = url.strip()
    return found


def parse_peers(text: str) -> dict[str, str]:
    """'n1=redis://h1:6379/0,n2=...' -> {'n1': 'redis://h1:6379/0', ...}"""
    found = _pairs(text, "CONFIGSTORE_PEERS", "broker-url")
    if not found:
        raise ValueError("CONFIGSTORE_PEERS is empty")
    return found


def parse_peer_urls(text: str) -> dict[str, str]:
    """'n1=http://h1:8000,n2=...' -> {'n1': 'http://h1:8000', ...}; empty: {} (none)."""
    found = _pairs(text, "CONFIGSTORE_PEER_URLS", "web-url")
    for node_id, url in found.items():
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"CONFIGSTORE_PEER_URLS: {node_id}'s URL {url!r} is not http(s)")
        found[node_id] = url.rstrip("/")
    return found


def _core(name: str) -> Any:
    """The core's default of one of its options (consensus.paxos.Config)."""
    return next(f.default for f in dataclasses.fields(Config) if f.name == name)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g}"


# ---------------------------------------------------------------------- the runtime's


@dataclass(frozen=True)
class NodeSettings:
    """A node's runtime: who it is, its cluster, and how its worker runs the core."""

    node_id: str = setting("CONFIGSTORE_NODE_ID", "n1", text, "this node's id")
    peers: dict[str, str] = setting(
        "CONFIGSTORE_PEERS",
        "n1=redis://127.0.0.1:6379/0",
        parse_peers,
        "every node of the cluster as `id=broker-url`, comma-separated; identical on every node",
    )
    secret: str = setting(
        "CONFIGSTORE_SECRET",
        "dev-cluster-secret-change-me",
        text,
        "the cluster secret that signs every Paxos envelope; with `DJANGO_DEBUG=0`, a "
        "development value or one under 32 characters fails `manage.py check` and stops the "
        "web server and the worker from starting (`configstore/checks.py`)",
        shown_default="a development value",
    )
    tick: float = setting(
        "CONFIGSTORE_TICK_MS",
        "10",
        milliseconds(1, 1000),
        "how often the worker ticks the Paxos core",
    )
    heartbeat_interval: float = setting(
        "CONFIGSTORE_HEARTBEAT_MS",
        _ms(_core("heartbeat_interval")),
        milliseconds(1, 60_000),
        "leader heartbeat interval",
    )
    election_timeout: float = setting(
        "CONFIGSTORE_ELECTION_TIMEOUT_MS",
        _ms(_core("election_timeout")),
        milliseconds(10, 600_000),
        "a follower that hears no leader for a random time between this and twice this "
        "starts an election",
    )
    retransmit_interval: float = setting(
        "CONFIGSTORE_RETRANSMIT_MS",
        _ms(_core("retransmit_interval")),
        milliseconds(1, 60_000),
        "retransmission of unanswered Prepare/Accept and of unconfirmed submissions",
    )
    window: int = setting(
        "CONFIGSTORE_WINDOW",
        str(_core("window")),
        integer(1, 4096),
        "slots in flight at once; commands arriving meanwhile share the next slot",
    )
    max_batch: int = setting(
        "CONFIGSTORE_MAX_BATCH",
        str(_core("max_batch")),
        integer(1, 100_000),
        "commands per slot, at most",
    )
    forward_interval: float = setting(
        "CONFIGSTORE_FORWARD_MS",
        _ms(_core("forward_interval")),
        milliseconds(0, 10_000),
        "a follower forwards new commands at once unless it forwarded within this time, else "
        "on its next tick",
    )
    catchup_bytes_per_second: float = setting(
        "CONFIGSTORE_CATCHUP_KB_PER_S",
        f"{_core('catchup_bytes_per_second') / 1024:g}",
        number(0, scale=1024),
        "catch-up streamed to one returning node, KB/s at most; `0` = unlimited (hosts of "
        "their own: a returning node then catches up as fast as it applies, ~1.5x sooner "
        "here, but on hosts it shares with the cluster it takes a core: see the measured "
        "figures)",
    )
    max_envelope_bytes: int = setting(
        "CONFIGSTORE_MAX_ENVELOPE_BYTES",
        str(16 * 1024 * 1024),
        integer(64 * 1024),
        "largest item a worker takes off its queue; longer ones are dropped before they are "
        "decoded (the largest write fits with its encoding)",
    )
    request_window: int = setting(
        "CONFIGSTORE_REQUEST_WINDOW",
        "100000",
        integer(1),
        "slots for which an applied request id is remembered: chosen again within them it is "
        "dropped as a duplicate, after them applied again; older ids are deleted. The same on "
        "every node (see [Backup, restore and bounded growth](#backup-restore-and-bounded-growth))",
    )
    peer_urls: dict[str, str] = setting(
        "CONFIGSTORE_PEER_URLS",
        "",
        parse_peer_urls,
        "every node's web server as `id=base-url` (`http://` or `https://`), comma-separated, "
        "identical on every node: a node that fell behind its peers' compacted logs fetches "
        "a snapshot from one of them there (state transfer, authenticated with "
        "`CONFIGSTORE_SECRET`). Unset: no state transfer, and so no log compaction (see "
        "[Backup, restore and bounded growth](#backup-restore-and-bounded-growth))",
        shown_default="unset",
    )
    log_tail: int = setting(
        "CONFIGSTORE_LOG_TAIL",
        "5000",
        integer(0),
        "chosen slots a node keeps below its applied index when it compacts its log: a peer "
        "that was away for fewer slots catches up by replaying them, one further behind by "
        "state transfer",
    )
    app_db_role: str = setting(
        "CONFIGSTORE_APP_DB_ROLE",
        "",
        text,
        "for `manage.py migrate` (run as the owner): after migrating, create this role if "
        "missing and grant it row access only, the audit history append-only; unset, migrate "
        "grants nothing",
        shown_default="unset",
    )
    app_db_password: str = setting(
        "CONFIGSTORE_APP_DB_PASSWORD",
        "",
        text,
        "for `manage.py migrate`: set this password on `CONFIGSTORE_APP_DB_ROLE`; unset, the "
        "role's password is left as it is",
        shown_default="unset",
    )
    faults_file: str | None = setting(
        "CONFIGSTORE_FAULTS_FILE",
        None,
        text,
        "test-only fault switches (see above); never set in production",
        shown_default="unset",
    )
    trace_steps: bool = setting(
        "CONFIGSTORE_TRACE_STEPS",
        "0",
        flag,
        "`1` logs every step's persist/send/apply timings (profiling)",
    )

    def __post_init__(self) -> None:
        if self.node_id not in self.peers:
            raise ValueError(f"CONFIGSTORE_NODE_ID {self.node_id!r} is not in CONFIGSTORE_PEERS")
        if self.peer_urls and set(self.peer_urls) != set(self.peers):
            raise ValueError(
                "CONFIGSTORE_PEER_URLS must name the nodes of CONFIGSTORE_PEERS, every one "
                f"(it names {sorted(self.peer_urls)}, the peers are {sorted(self.peers)})"
            )

    @property
    def state_transfer(self) -> bool:
        """Whether this node's peers serve snapshots (and so whether logs are compacted)."""
        return bool(self.peer_urls)

    @property
    def broker_url(self) -> str:
        """This node's own broker (its entry in the peers)."""
        return self.peers[self.node_id]

    def core_options(self) -> dict[str, Any]:
        """The options of consensus.paxos.Config that are settings."""
        return {
            "heartbeat_interval": self.heartbeat_interval,
            "election_timeout": self.election_timeout,
            "retransmit_interval": self.retransmit_interval,
            "window": self.window,
            "max_batch": self.max_batch,
            "forward_interval": self.forward_interval,
            "catchup_bytes_per_second": self.catchup_bytes_per_second,
        }


def node() -> NodeSettings:
    """This process's node settings (Django's CONFIGSTORE_NODE, built once at start)."""
    from django.conf import settings

    return settings.CONFIGSTORE_NODE


# ---------------------------------------------------------------------- process objects


class Process:
    """The objects this process keeps for its node, each made on first use by its factory
    and kept under its name; `close()` closes (or stops) those that can be."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._objects: dict[Any, Any] = {}
        #: The worker's node runtime while its worker runs (consensus.worker), else None.
        self.runtime: Any = None

    def get(self, name: Any, factory: Callable[[], T]) -> T:
        with self._lock:
            try:
                return self._objects[name]
            except KeyError:
                made = self._objects[name] = factory()
                return made

    def peek(self, name: Any) -> Any:
        """The object kept under `name`, or None: nothing is made."""
        with self._lock:
            return self._objects.get(name)

    def close(self) -> None:
        with self._lock:
            objects, self._objects = list(self._objects.values()), {}
        for kept in reversed(objects):  # the last made first: it may use those made before
            for method in ("stop", "close"):
                if callable(getattr(kept, method, None)):
                    getattr(kept, method)()
                    break


_process = Process()


def process() -> Process:
    return _process


def reset_process() -> None:
    """Close this process's objects and start afresh (tests: between clusters)."""
    global _process
    old, _process = _process, Process()
    old.close()


def _afresh_in_child() -> None:
    # A forked child (a web server's worker process) makes its own: its parent's
    # connections and threads are not its own, and reusing its parent's envelope
    # incarnation would make receivers take its envelopes for replays.
    global _process
    _process = Process()


os.register_at_fork(after_in_child=_afresh_in_child)
