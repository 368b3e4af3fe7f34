"""Supervision, on real processes: `manage.py runcluster` restarts whatever dies and stops
everything when told to, even with its output gone.

runcluster runs as a subprocess, as an operator runs it: a fresh data folder, free ports, and
its own embedded PostgreSQL and Redis (the CONFIGSTORE_CLUSTER_* templates are removed from its
environment, so that there is a postmaster and a redis-server of its own to kill). Each kill
is a SIGKILL from outside, as `kill -9` is; the cluster must then commit a write again through
the web servers, with nobody's hand, within a bounded wait.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import requests

from devcluster.embedded import DirLock, EmbeddedServerError
from devcluster.localcluster import (
    BROKER_URL_ENV,
    DATABASE_URL_ENV,
    NODE_PROCESSES_FILE,
    Backoff,
    LocalCluster,
    _Supervised,
    free_ports,
)

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
BANNER_END = "Ctrl-C stops everything"  # the last line of runcluster's banner
START_TIMEOUT = 300.0  # a cold start on a busy 2-core machine: initdb, 3 migrations, admin
RECOVERY_TIMEOUT = 90.0  # backoff 0.5 s, a PostgreSQL crash recovery, a worker's start


def _scratch(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)  # the embedded PostgreSQL runs as an unprivileged user under root
    return path


class RunCluster:
    """`manage.py runcluster` in a subprocess, with its output read line by line by a thread
    (which closes its end of the pipe after the first line when `close_output_early`)."""

    def __init__(self, root: Path, *, close_output_early: bool = False) -> None:
        self.root = root
        self.data = root / "data"
        self.ports = free_ports(3, consecutive=True)
        self.lines: list[str] = []
        self.banner = threading.Event()
        self.output_closed = threading.Event()
        self.seen: dict[int, psutil.Process] = {}  # every descendant ever looked at
        env = {k: v for k, v in os.environ.items() if k not in (DATABASE_URL_ENV, BROKER_URL_ENV)}
        with open(root / "stderr.log", "wb") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "runcluster",
                    "--data",
                    str(self.data),
                    "--base-port",
                    str(self.ports[0]),
                ],
                cwd=ROOT,
                env={**env, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self._reader = threading.Thread(target=self._read, args=(close_output_early,), daemon=True)
        self._reader.start()

    def _read(self, close_early: bool) -> None:
        out = self.process.stdout
        for line in out:
            self.lines.append(line.rstrip("\n"))
            if BANNER_END in line:
                self.banner.set()
            if close_early:
                break
        out.close()  # from now on, every write of runcluster's fails with EPIPE
        self.output_closed.set()

    def wait_for_banner(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self.banner.wait(0.5):
            assert self.process.poll() is None, f"runcluster exited:\n{self.diagnosis()}"
            assert time.monotonic() < deadline, f"no banner:\n{self.diagnosis()}"
        self.token = next(
            line.split()[2] for line in self.lines if line.strip().startswith("API token:")
        )

    def diagnosis(self) -> str:
        """runcluster's output and the tail of every process's log."""
        parts = ["stdout:", *self.lines[-30:]]
        for log in [self.root / "stderr.log", *sorted((self.data / "logs").glob("*.log"))]:
            with contextlib.suppress(OSError):
                parts += [f"----- {log.name}", *log.read_text(errors="replace").splitlines()[-15:]]
        return "\n".join(parts)

    # ------------------------------------------------------------------ its processes

    def descendants(self) -> list[psutil.Process]:
        try:
            found = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.seen.update((p.pid, p) for p in found)
        return found

    def find(self, what: Callable[[list[str]], bool]) -> list[psutil.Process]:
        """The live descendants whose command line satisfies `what`."""
        found = []
        for process in self.descendants():
            with contextlib.suppress(psutil.Error):
                if process.status() != psutil.STATUS_ZOMBIE and what(process.cmdline()):
                    found.append(process)
        return found

    def find_one(self, what: Callable[[list[str]], bool], name: str) -> psutil.Process:
        found = self.find(what)
        assert len(found) == 1, f"{len(found)} {name} processes: {found}"
        return found[0]

    # ------------------------------------------------------------------ its API

    def put(self, port: int) -> int | None:
        """PUT a new key through the web server on `port`: its status, None if unreachable."""
        try:
            answer = requests.put(
                f"http://127.0.0.1:{port}/api/v1/keys/supervision/{secrets.token_hex(4)}",
                json={"value": 1, "reason": "supervision test"},
                headers={"Authorization": f"Token {self.token}"},
                timeout=15,
            )
        except requests.RequestException:
            return None
        return answer.status_code

    def wait_for_writes(self, ports: list[int], restarted: str) -> float:
        """Seconds until every port committed a write and the output said `restarted`."""
        started = time.monotonic()
        pending = list(ports)
        last: dict[int, int | None] = {}
        while pending or not any(restarted in line for line in self.lines):
            elapsed = time.monotonic() - started
            assert elapsed < RECOVERY_TIMEOUT, (
                f"after {elapsed:.0f} s: no commit through {pending} (last answers {last}) or "
                f"no line {restarted!r} on the output\n{self.diagnosis()}"
            )
            for port in list(pending):
                last[port] = self.put(port)
                if last[port] in (200, 201):
                    pending.remove(port)
            time.sleep(0.2)
        return time.monotonic() - started

    # ------------------------------------------------------------------ ending

    def kill_everything(self) -> None:
        """Teardown, whatever the code under test did: runcluster and every process it ever
        had, by SIGKILL (a test that failed must not leave a cluster running)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for process in self.seen.values():
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(list(self.seen.values()), timeout=10)


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan's adopter may never reap it)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def is_worker(node: str) -> Callable[[list[str]], bool]:
    return lambda argv: "celery" in " ".join(argv) and f"consensus.{node}" in argv


def is_web_master(port: int) -> Callable[[list[str]], bool]:
    return lambda argv: any("granian" in a for a in argv) and "--port" in argv and str(port) in argv


@pytest.fixture(scope="module")
def running() -> Iterator[RunCluster]:
    root = _scratch("configstore-supervised-")
    cluster = RunCluster(root)
    try:
        cluster.wait_for_banner()
        yield cluster
    finally:
        cluster.kill_everything()
        shutil.rmtree(root, ignore_errors=True)


def _web_master(cluster: RunCluster, port: int) -> psutil.Process:
    # granian's master is runcluster's child; its worker (same command line) its child.
    masters = [p for p in cluster.find(is_web_master(port)) if p.ppid() == cluster.process.pid]
    assert len(masters) == 1, masters
    return masters[0]


def test_a_killed_worker_is_restarted_and_its_node_commits_again(running):
    old = running.find_one(is_worker("n2"), "worker of n2")
    old.kill()
    took = running.wait_for_writes([running.ports[1]], "worker of n2 restarted")
    new = running.find_one(is_worker("n2"), "worker of n2")
    assert new.pid != old.pid
    print(f"\nworker of n2 SIGKILLed: n2 committed again after {took:.1f} s")


def test_a_killed_web_server_is_restarted_and_serves_again(running):
    port = running.ports[2]
    old = _web_master(running, port)
    old_workers = old.children()
    old.kill()  # the master only, as `kill -9 <pid>` does; its workers are orphaned
    took = running.wait_for_writes([port], "web server of n3 restarted")
    new = _web_master(running, port)
    assert new.pid != old.pid
    _, alive = psutil.wait_procs(old_workers, timeout=10)
    assert not [p for p in alive if _running(p)], "the killed master's workers still run"
    print(f"\nweb server of n3 SIGKILLed: it committed a write again after {took:.1f} s")


def test_a_killed_postmaster_is_restarted_and_every_node_commits_again(running):
    is_postmaster = lambda argv: argv[:1] and argv[0].endswith("/postgres") and "-D" in argv  # noqa: E731
    old = running.find_one(is_postmaster, "postmaster")
    old.kill()
    took = running.wait_for_writes(running.ports, "embedded PostgreSQL restarted")
    new = running.find_one(is_postmaster, "postmaster")
    assert new.pid != old.pid
    print(f"\nembedded postmaster SIGKILLed: every node committed again after {took:.1f} s")


def test_a_killed_redis_is_restarted_and_every_node_commits_again(running):
    is_redis = lambda argv: any("redis-server" in a for a in argv)  # noqa: E731
    old = running.find_one(is_redis, "redis-server")
    old.kill()
    took = running.wait_for_writes(running.ports, "embedded Redis restarted")
    new = running.find_one(is_redis, "redis-server")
    assert new.pid != old.pid
    print(f"\nembedded redis-server SIGKILLed: every node committed again after {took:.1f} s")


# ---------------------------------------------------------------------------- stopping


def _port_free(port: int) -> bool:
    """Whether a server could listen on `port` now (as servers do, with SO_REUSEADDR: the
    TIME_WAIT left by closed connections does not count, a listening socket does)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_for(cluster: RunCluster, condition: Callable[[], object], every: float) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        assert cluster.process.poll() is None, f"runcluster exited:\n{cluster.diagnosis()}"
        assert time.monotonic() < deadline, f"runcluster did not start:\n{cluster.diagnosis()}"
        cluster.descendants()  # remembered, so that teardown can kill them whatever happens
        time.sleep(every)


@pytest.mark.parametrize(
    ("signum", "when"),
    [(signal.SIGTERM, "running"), (signal.SIGINT, "running"), (signal.SIGINT, "starting")],
    ids=["SIGTERM-running", "SIGINT-running", "SIGINT-starting"],
)
def test_runcluster_with_its_output_gone_stops_every_process_on_a_signal(signum, when):
    """As with `runcluster | tee` and Ctrl-C: tee is gone, so every write of runcluster's
    fails with EPIPE; it must still stop every process it started and free every port."""
    root = _scratch("configstore-stopping-")
    cluster = RunCluster(root, close_output_early=True)
    try:
        if when == "running":  # every node serving (its banner written into the void)
            _wait_for(cluster, lambda: not any(_port_free(p) for p in cluster.ports), 0.5)
            time.sleep(3.0)  # past ensure_admin and the banner, on most runs
        else:  # its workers are being started
            _wait_for(cluster, lambda: cluster.find(is_worker("n1")), 0.05)
        assert cluster.output_closed.wait(10)
        children = cluster.descendants()
        redis_port_file = cluster.data / "redis-port"
        ports = [*cluster.ports]
        if redis_port_file.exists():
            ports.append(int(redis_port_file.read_text()))
        cluster.process.send_signal(signum)
        cluster.process.wait(120)
        _, alive = psutil.wait_procs(children, timeout=30)
        alive = [p for p in alive if _running(p)]
        assert not alive, "still running after runcluster exited: " + ", ".join(
            f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in alive
        )
        busy = [port for port in ports if not _port_free(port)]
        assert not busy, f"ports still taken after runcluster exited: {busy}"
    finally:
        cluster.kill_everything()
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------- backoff


def test_backoff_doubles_from_its_initial_delay_up_to_its_cap():
    backoff = Backoff(initial=0.5, cap=30.0, stable_after=30.0)
    assert [backoff.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_a_process_that_keeps_exiting_is_restarted_later_each_time_until_it_runs_stably():
    """The supervisor's decisions on real short-lived processes, on a clock of the test's."""
    cluster = LocalCluster(
        _scratch("configstore-backoff-"), backoff=Backoff(initial=1, cap=4, stable_after=10)
    )
    now = [0.0]
    spawned: list[subprocess.Popen] = []

    def spawn() -> None:
        spawned.append(subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"]))
        spawned[-1].wait(30)

    spawn()
    unit = _Supervised("crasher", lambda: spawned[-1], spawn, Path("crasher.log"))

    def restart_delay() -> float:
        """Tend until the next restart; the delay it waited."""
        report = cluster._tend(unit, lambda: now[0])
        assert len(report) == 1 and "exited with status 3" in report[0], report
        exited_at, before = now[0], len(spawned)
        while len(spawned) == before:
            now[0] += 0.25
            cluster._tend(unit, lambda: now[0])
        return now[0] - exited_at

    try:
        assert [restart_delay() for _ in range(5)] == [1, 2, 4, 4, 4]
        now[0] += 10  # the last one counts as having run stably for 10 s
        assert restart_delay() == 1
        unit.current = lambda: None  # stopped on purpose: left alone
        assert cluster._tend(unit, lambda: now[0] + 100) == []
    finally:
        shutil.rmtree(cluster.data_dir, ignore_errors=True)


# ---------------------------------------------------------------------------- secrets


def test_the_secrets_a_cluster_keeps_are_long_random_and_private():
    """runcluster and the tests run with DEBUG off: their secrets must pass the checks that
    refuse default or short ones, also when a kept file was cut short (e.g. by a crash)."""
    cluster = LocalCluster(_scratch("configstore-secrets-"))
    try:
        first = cluster._kept_secret("cluster-secret")
        assert len(first) == 64 and int(first, 16) >= 0
        path = cluster.data_dir / "cluster-secret"
        assert path.stat().st_mode & 0o777 == 0o600
        assert cluster._kept_secret("cluster-secret") == first  # kept across starts
        assert cluster._kept_secret("django-secret") != first
        for damaged in ("", "abc", "dev-cluster-secret-change-me" * 3):
            path.write_text(damaged)
            renewed = cluster._kept_secret("cluster-secret")
            assert len(renewed) == 64 and renewed not in (first, damaged)
            assert path.read_text() == renewed and path.stat().st_mode & 0o777 == 0o600
    finally:
        shutil.rmtree(cluster.data_dir, ignore_errors=True)


# ---------------------------------------------------------------------------- folder owner


def test_a_data_folder_has_one_live_cluster_and_the_next_stops_what_a_killed_one_left():
    """An owner killed with SIGKILL stops nothing; its node processes (here a group of two
    sleeping processes, as a gunicorn master and its worker) must not keep a port or an inbox
    when the folder is used again. A listed pid whose process started at another time is not
    ours any more (a reused pid) and is left alone."""
    data = _scratch("configstore-owner-")
    held = DirLock(data / "cluster.lock")  # a live owner
    try:
        with pytest.raises(EmbeddedServerError, match="in use"):
            LocalCluster(data).start()
    finally:
        held.release()
    # What a killed owner left: a process group in a session of its own, listed in the folder.
    left = subprocess.Popen(["sh", "-c", "sleep 120 & sleep 120; wait"], start_new_session=True)
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        members = []
        while len(members) < 2:  # the shell and its background sleep
            members = psutil.Process(left.pid).children() + [psutil.Process(left.pid)]
            time.sleep(0.05)
        entries = [
            {"pid": left.pid, "started_at": psutil.Process(left.pid).create_time()},
            {"pid": bystander.pid, "started_at": 1000.0},  # a reused pid: not the listed one
        ]
        (data / NODE_PROCESSES_FILE).write_text("".join(json.dumps(e) + "\n" for e in entries))
        cluster = LocalCluster(data)
        cluster._stop_left_behind()
        left.wait(30)
        _, alive = psutil.wait_procs(members, timeout=30)
        assert not [p for p in alive if _running(p)]
        assert bystander.poll() is None
        assert not (data / NODE_PROCESSES_FILE).exists()
    finally:
        bystander.kill()
        bystander.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(left.pid, signal.SIGKILL)
        left.wait()
        shutil.rmtree(data, ignore_errors=True)
