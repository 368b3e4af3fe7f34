"""The configstore side: a fresh 3-node cluster with web servers (devcluster.localcluster),
the REST API's requests, and what a committed write costs inside the cluster.

Costs, read around a phase:
- Celery tasks: every worker's `envelopes_in + submissions_in` counters (the tasks it
  consumed: Paxos envelopes from peers and submissions from its own web tier), from the
  statuses the workers publish on their brokers every 0.5 s.
- PostgreSQL commits: write transactions committed in the nodes' own databases, counted in
  the server's WAL between two positions with pg_walinspect (a COMMIT record whose
  transaction, or one of its subtransactions, wrote a block of one of our databases). The
  server may be shared: other databases' transactions are not counted.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from benchmarks.http import Endpoint, Request
from devcluster.localcluster import LocalCluster, free_ports

PREFERRED_BASE_PORT = 8201
#: Workers publish their status (and counters) every 0.5 s.
STATUS_SETTLE = 0.7
NEEDED_CONNECTIONS = 90


@dataclass(frozen=True)
class ConfigstoreApi:
    """configstore's spelling of the benchmark's operations (see benchmarks.http.Api)."""

    token: str
    name: str = "configstore"

    def _headers(self, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        return (("Authorization", f"Token {self.token}"), *extra)

    def write(self, key: str, value: str) -> Request:
        body = json.dumps({"value": value, "reason": "benchmark"}, separators=(",", ":"))
        return Request(
            "PUT",
            f"/api/v1/keys/{key}",
            body.encode(),
            self._headers(("Content-Type", "application/json")),
        )

    def read(self, key: str, *, linearizable: bool) -> Request:
        query = "" if linearizable else "?consistency=stale"
        return Request("GET", f"/api/v1/keys/{key}{query}", None, self._headers())

    def succeeded(self, status: int, body: bytes) -> bool:
        return status in (200, 201)


# The WAL records of the transactions that wrote to our databases, and their commits.
_COMMITS_SQL = """
WITH r AS (
    SELECT xid::text::bigint AS xid, resource_manager, record_type, description, block_ref
    FROM pg_get_wal_records_info(%(start)s::pg_lsn, %(end)s::pg_lsn)
),
touched AS (SELECT DISTINCT xid FROM r WHERE block_ref ~ %(blocks)s)
SELECT count(*) FROM r AS c
WHERE c.resource_manager = 'Transaction' AND c.record_type LIKE 'COMMIT%%'
  AND (
    c.xid IN (SELECT xid FROM touched)
    OR EXISTS (
        SELECT 1
        FROM unnest(string_to_array((regexp_match(c.description, 'subxacts: ([0-9 ]+)'))[1], ' '))
            AS sub(x)
        WHERE sub.x <> '' AND sub.x::bigint IN (SELECT xid FROM touched)
    )
  )
"""


def block_pattern(database_oids: list[int]) -> str:
    """A regular expression matching pg_walinspect's block_ref of a block in one of the
    databases (PostgreSQL 15: 'blkref #0: rel <tablespace>/<database>/<relation> ...')."""
    return r"rel [0-9]+/(" + "|".join(str(o) for o in sorted(database_oids)) + r")/"


@dataclass(frozen=True)
class Costs:
    """Counters at one moment: tasks consumed by all workers, a WAL position, and when
    (time.monotonic()) they were read."""

    tasks: int
    wal: str | None
    at: float


class OurCluster:
    """A fresh configstore cluster for the benchmark, in a temporary folder."""

    def __init__(self, nodes: int = 3) -> None:
        base = PREFERRED_BASE_PORT
        if not _free_range(base, nodes):
            base = free_ports(nodes, consecutive=True)[0]
        self.root = Path(tempfile.mkdtemp(prefix="configstore-cmp-"))
        self.root.chmod(0o755)  # the embedded PostgreSQL, if used, runs unprivileged
        self.cluster = LocalCluster.from_environment(
            self.root, nodes=nodes, web=True, fresh=True, base_port=base
        )
        self.api: ConfigstoreApi | None = None
        self.wal_problem: str | None = None
        self.connection_warning: str | None = None

    def __enter__(self) -> OurCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self.cluster.start()
            self.cluster.wait_for_leader()
            self.cluster.ensure_admin()
            self.api = ConfigstoreApi(self.cluster.api_token)
            self._prepare_wal_counting()
            self._check_connections()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.cluster.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("127.0.0.1", self.cluster.web_port(i)) for i in self.cluster.ids]

    def endpoint(self, node_id: str) -> Endpoint:
        return Endpoint("127.0.0.1", self.cluster.web_port(node_id))

    # ------------------------------------------------------------------ faults

    def kill(self, node_id: str) -> None:
        """SIGKILL the node's worker and its web server (as etcd loses its one process)."""
        self.cluster.kill_worker(node_id)
        self.cluster.kill_web(node_id)

    def restart(self, node_id: str) -> None:
        self.cluster.start_worker(node_id)
        self.cluster.start_web(node_id)
        self.cluster.wait_until_ready()

    # ------------------------------------------------------------------ costs

    def _first_db(self) -> str:
        return self.cluster.database_url(self.cluster.ids[0])

    def _prepare_wal_counting(self) -> None:
        names = [urlsplit(self.cluster.database_url(i)).path.lstrip("/") for i in self.cluster.ids]
        try:
            with psycopg.connect(self._first_db(), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
                rows = conn.execute(
                    "SELECT oid FROM pg_database WHERE datname = ANY(%s)", [names]
                ).fetchall()
            self._blocks = block_pattern([int(r[0]) for r in rows])
        except psycopg.Error as error:
            self.wal_problem = f"pg_walinspect unavailable: {error}".strip()

    def _check_connections(self) -> None:
        """Each web server thread holds its own PostgreSQL connection (up to 32 a node):
        64 clients need about 90 connections on the server besides everyone else's."""
        with psycopg.connect(self._first_db(), autocommit=True) as conn:
            free = conn.execute(
                "SELECT current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int"
                " - (SELECT count(*) FROM pg_stat_activity)"
            ).fetchone()[0]
        if free < NEEDED_CONNECTIONS:
            self.connection_warning = (
                f"the PostgreSQL server has {free} free connections; 64 clients need about "
                f"{NEEDED_CONNECTIONS} (one per busy web thread): expect 'too many clients'"
            )

    def costs(self, *, settle: bool = True) -> Costs:
        """Read the counters; with `settle`, first wait for the statuses to include
        everything done until now."""
        if settle:
            time.sleep(STATUS_SETTLE)
        tasks = 0
        for node in self.cluster.status()["nodes"]:
            counters = node.get("counters", {})
            tasks += counters.get("envelopes_in", 0) + counters.get("submissions_in", 0)
        wal = None
        if self.wal_problem is None:
            with psycopg.connect(self._first_db(), autocommit=True) as conn:
                wal = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
        return Costs(tasks, wal, time.monotonic())

    def commits_between(self, before: Costs, after: Costs) -> int | None:
        """Write transactions committed in our databases between two readings."""
        if before.wal is None or after.wal is None:
            return None
        try:
            with psycopg.connect(self._first_db(), autocommit=True) as conn:
                row = conn.execute(
                    _COMMITS_SQL, {"start": before.wal, "end": after.wal, "blocks": self._blocks}
                ).fetchone()
        except psycopg.Error as error:  # e.g. the WAL was recycled meanwhile
            self.wal_problem = f"cannot read the WAL: {error}".strip()
            return None
        return int(row[0])


def _free_range(base: int, count: int) -> bool:
    for port in range(base, base + count):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True
