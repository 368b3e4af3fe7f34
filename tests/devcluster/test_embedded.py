"""The embedded PostgreSQL and Redis keep their data across restarts and leave no processes.

No Django test database is used: the servers run in fresh temporary directories. Django's
PostgreSQL backend is exercised on its own connection, with pytest-django's blocker lifted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from django.db import connections
from django.db.backends.postgresql.base import DatabaseWrapper

from configstore.settings import database_from_url
from devcluster.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    start_postgres,
    start_redis,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_root() -> Iterator[Path]:
    """A fresh directory under the system temp dir, removed afterwards.

    Not pytest's tmp_path: as root, the embedded PostgreSQL runs as an unprivileged user that
    needs o+x on every ancestor, and each pytest session resets /tmp/pytest-of-root to 0700, so
    a concurrently starting session would pull the data directory from under a running test.
    """
    with tempfile.TemporaryDirectory(prefix="cs-emb-", ignore_cleanup_errors=True) as root:
        yield Path(root)


def _gone(process: psutil.Process) -> bool:
    """Exited; a zombie counts (an orphan's new parent may never reap it)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(processes: list[psutil.Process], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(_gone(p) for p in processes):
        assert time.monotonic() < deadline, f"still running: {processes}"
        time.sleep(0.02)


def _process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@contextlib.contextmanager
def _stopping(server: EmbeddedPostgres | EmbeddedRedis) -> Iterator[None]:
    """Stop the server even when the test body fails, so that no server outlives the test."""
    try:
        yield
    finally:
        server.stop()


def _read_row(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT value FROM kv WHERE key = 'k'").fetchone()
    assert row is not None
    return str(row[0])


def _django_select(url: str, django_db_blocker: object) -> str:
    """Read the row through Django's postgresql backend, configured by database_from_url."""
    # configure_settings fills in Django's defaults; it insists on a "default" alias.
    settings_dict = connections.configure_settings({"default": database_from_url(url)})["default"]
    wrapper = DatabaseWrapper(settings_dict, alias="embedded")
    unblock = getattr(django_db_blocker, "unblock", contextlib.nullcontext)
    with unblock():
        try:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT value FROM kv WHERE key = %s", ["k"])
                return str(cursor.fetchone()[0])
        finally:
            wrapper.close()


def test_postgres_keeps_data_across_restarts(data_root: Path, django_db_blocker: object) -> None:
    data_dir = data_root / "pg"
    first = start_postgres(data_dir)
    with _stopping(first):
        first.create_database("store")
        first.create_database("store")  # idempotent
        with psycopg.connect(first.url("store")) as conn:
            conn.execute("CREATE TABLE kv (key text PRIMARY KEY, value text NOT NULL)")
            conn.execute("INSERT INTO kv VALUES ('k', 'v1')")
        with pytest.raises(EmbeddedServerError, match="in use"):
            start_postgres(data_dir)  # one owner per folder
        tree = _process_tree(first.pid)
        assert len(tree) > 1  # postmaster plus its auxiliary processes
    assert first.process.returncode is not None
    assert all(_gone(p) for p in tree)
    assert not first.socket_dir.exists()

    second = start_postgres(data_dir)
    with _stopping(second):
        assert second.url("store") == first.url("store")  # stable across restarts
        assert _read_row(second.url("store")) == "v1"
        assert _django_select(second.url("store"), django_db_blocker) == "v1"
    second.stop()  # idempotent

    # A postmaster.pid left by a crash, whose pid now belongs to an unrelated live process.
    with subprocess.Popen(["sleep", "60"]) as bystander:
        try:
            (data_dir / "pgdata" / "postmaster.pid").write_text(
                f"{bystander.pid}\n{data_dir}\n1000000000\n5432\n/tmp\n\n 0 0\nready\n"
            )
            third = start_postgres(data_dir)
            with _stopping(third):
                assert _read_row(third.url("store")) == "v1"
            assert bystander.poll() is None  # the bystander was left alone
        finally:
            bystander.kill()


def test_redis_keeps_data_across_restarts(data_root: Path) -> None:
    data_dir = data_root / "redis"
    first = start_redis(data_dir)
    with _stopping(first):
        assert first.url(3) == f"redis://127.0.0.1:{first.port}/3"
        client = redis.Redis.from_url(first.url())
        assert client.set("k", "v1")
        client.close()
        process = psutil.Process(first.pid)
    assert first.process.returncode is not None
    assert _gone(process)

    second = start_redis(data_dir)
    with _stopping(second):
        client = redis.Redis.from_url(second.url())
        assert client.get("k") == b"v1"
        client.close()
    second.stop()  # idempotent


# Starts both servers, writes sys.argv[3] to them, prints their pids, dies without stopping them.
_DYING_OWNER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import psycopg, redis
    from devcluster.embedded import start_postgres, start_redis
    pg_dir, redis_dir, value = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    pg = start_postgres(pg_dir)
    pg.create_database("store")
    with psycopg.connect(pg.url("store")) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kv (key text PRIMARY KEY, value text NOT NULL)")
        conn.execute("INSERT INTO kv VALUES ('k', %s) ON CONFLICT (key) DO UPDATE SET value = %s",
                     (value, value))
    rd = start_redis(redis_dir)
    redis.Redis.from_url(rd.url()).set("k", value)
    print(pg.pid, rd.pid, flush=True)
    os.kill(os.getpid(), 9)
""")


def _run_dying_owner(pg_dir: Path, redis_dir: Path, value: str) -> list[psutil.Process]:
    """Run _DYING_OWNER in a fresh interpreter; the servers it leaves behind (postgres, redis)."""
    owner = subprocess.run(
        [sys.executable, "-c", _DYING_OWNER, str(pg_dir), str(redis_dir), value],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=60,
        check=False,
    )
    assert owner.returncode == -signal.SIGKILL, owner.stderr
    orphans = [psutil.Process(int(pid)) for pid in owner.stdout.split()]
    assert not any(_gone(p) for p in orphans)  # the servers outlived their owner
    return orphans


def _assert_values(pg_dir: Path, redis_dir: Path, value: str) -> None:
    """Start both servers on the folders, check they hold ``value``, stop them."""
    pg = start_postgres(pg_dir)
    with _stopping(pg):
        assert _read_row(pg.url("store")) == value
    rd = start_redis(redis_dir)
    with _stopping(rd):
        client = redis.Redis.from_url(rd.url())
        assert client.get("k") == value.encode()
        client.close()


def test_restart_after_owner_was_killed(data_root: Path) -> None:
    pg_dir, redis_dir = data_root / "pg", data_root / "redis"

    # The servers outlive their owner: the next start shuts them down cleanly, then takes over.
    orphans = _run_dying_owner(pg_dir, redis_dir, "v1")
    _assert_values(pg_dir, redis_dir, "v1")
    assert all(_gone(p) for p in orphans)

    # Owner and servers killed: stale postmaster.pid (naming a zombie where nobody reaps
    # orphans), socket lock file and redis state are left behind.
    orphans = _run_dying_owner(pg_dir, redis_dir, "v2")
    for process in orphans:
        process.kill()
    _wait_gone(orphans)
    _assert_values(pg_dir, redis_dir, "v2")


def test_a_killed_postgres_restarts_on_its_folder_with_its_data(data_root: Path) -> None:
    server = start_postgres(data_root / "pg")
    try:
        server.create_database("store")
        with psycopg.connect(server.url("store")) as conn:
            conn.execute("CREATE TABLE kv (key text PRIMARY KEY, value text NOT NULL)")
            conn.execute("INSERT INTO kv VALUES ('k', 'v1')")
        idle = psycopg.connect(server.url("store"))  # a backend that outlives its postmaster
        old_tree = _process_tree(server.pid)
        with pytest.raises(EmbeddedServerError, match="still running"):
            server.restart()
        os.kill(server.pid, signal.SIGKILL)
        server.process.wait(30)
        assert server.exited()
        restarted = server.restart()  # crash recovery; the old backends are killed first
        with _stopping(restarted):
            assert all(_gone(p) for p in old_tree)
            assert restarted.pid != server.pid
            assert restarted.url("store") == server.url("store")  # clients keep their settings
            assert _read_row(restarted.url("store")) == "v1"
            new_tree = _process_tree(restarted.pid)
        idle.close()
        assert all(_gone(p) for p in new_tree)
    finally:
        server.stop()  # idempotent; a no-op once restarted


def test_a_killed_redis_restarts_on_its_port_with_its_data(data_root: Path) -> None:
    server = start_redis(data_root / "redis")
    try:
        client = redis.Redis.from_url(server.url())
        assert client.set("k", "v1")  # in the AOF (written, fsynced within 1 s) once answered
        os.kill(server.pid, signal.SIGKILL)
        server.process.wait(30)
        assert server.exited()
        restarted = server.restart()
        with _stopping(restarted):
            assert (restarted.port, restarted.url(2)) == (server.port, server.url(2))
            assert client.get("k") == b"v1"  # the same client reconnects to the same URL
            client.close()
        assert restarted.process.returncode is not None  # stopped and reaped
    finally:
        server.stop()


def test_the_migrations_apply_on_the_embedded_postgres_which_has_no_pg_trgm(
    data_root: Path,
) -> None:
    """pgserver's build ships no contrib modules: migration 0006 makes the search's trigram
    indexes only where pg_trgm exists, and every other index everywhere."""
    pg = start_postgres(data_root / "pg")
    with _stopping(pg):
        pg.create_database("migrated")
        env = {
            **os.environ,
            "DATABASE_URL": pg.url("migrated"),
            "CONFIGSTORE_SECRET": secrets.token_hex(32),
            "DJANGO_SECRET_KEY": secrets.token_hex(32),
        }
        env.pop("CONFIGSTORE_APP_DB_ROLE", None)
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v", "0"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert migrate.returncode == 0, migrate.stderr[-2000:]
        with psycopg.connect(pg.url("migrated")) as conn:
            available = conn.execute(
                "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_trgm'"
            ).fetchone()
            indexes = {
                name
                for (name,) in conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'configstore_history'"
                )
            }
            (collation,) = conn.execute(
                "SELECT collation_name FROM information_schema.columns "
                "WHERE table_name = 'configstore_entry' AND column_name = 'key'"
            ).fetchone()
    assert available == (0,)
    assert {"configstore_history_order", "configstore_history_key_order"} <= indexes
    assert {"configstore_history_actor", "configstore_history_outcome"} <= indexes
    assert not any("search" in name for name in indexes)
    assert collation == "C"
