"""python manage.py runcluster [--nodes 3] [--data DIR] [--base-port 8001]

Starts a real cluster on this machine (devcluster.localcluster): each node with its own
PostgreSQL database, Celery worker, broker queue and web server; creates an admin user on
every node; prints the URLs and credentials. Servers: CONFIGSTORE_CLUSTER_DATABASE_URL /
CONFIGSTORE_CLUSTER_BROKER_URL (templates with {node} / {index}) when set, else an embedded
PostgreSQL and Redis kept in the data folder.

Supervised: a worker, web server or embedded server that exits is restarted with backoff, and
each exit and restart is printed and written to DATA/logs/supervisor.log.

Ctrl-C, SIGTERM or SIGHUP stop every process it started (whole process groups), also during
the start and also when its output is gone (a closed pipe, e.g. `| tee` interrupted with it):
printing never stands in the way of stopping.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

import psutil
from django.core.management.base import BaseCommand

from devcluster.localcluster import LocalCluster

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequested(Exception):
    """A stop signal arrived while the cluster was starting."""


class Command(BaseCommand):
    # A tool that starts a cluster of its own on this machine, with secrets it generates for
    # the nodes: this process signs nothing and serves nothing, so the deploy checks (e.g.
    # configstore.E001, a development secret) are the nodes' business, not its own.
    requires_system_checks = []
    help = "Run a local replicated cluster (workers, web servers, databases, broker)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--nodes", type=int, default=3, choices=(1, 3, 5))
        parser.add_argument("--data", default="data", help="data folder (kept across runs)")
        parser.add_argument("--base-port", type=int, default=8001)

    def handle(self, *args, nodes: int, data: str, base_port: int, **options) -> None:
        self._output_gone = False
        self._starting = True
        stop = threading.Event()

        def on_signal(signum: int, _frame) -> None:
            stop.set()
            if self._starting:
                self._starting = False  # a second signal must not interrupt the cleanup
                raise StopRequested(signal.Signals(signum).name)

        for sig in STOP_SIGNALS:
            signal.signal(sig, on_signal)
        cluster = LocalCluster.from_environment(
            Path(data), nodes=nodes, base_port=base_port, supervise=True, on_event=self._say
        )
        self._say(f"starting a {nodes}-node cluster in {cluster.data_dir} ...")
        try:
            cluster.start()
            password = cluster.ensure_admin()
            self._starting = False
            if not stop.is_set():
                self._banner(cluster, password)
            stop.wait()
        except StopRequested as requested:
            self._say(f"{requested} during the start")
        finally:
            self._starting = False
            self._say("stopping every process of the cluster ...")
            try:
                cluster.stop()
            finally:
                stop_leftover_children()
            self._say("stopped.")

    def _say(self, line: str, style=None) -> None:
        """Print one line at once. Once the output is gone (EPIPE, closed), stop printing and
        point stdout at /dev/null, so that nothing later (the interpreter's final flush) fails
        on it either; the supervisor's lines are in its log file regardless."""
        if self._output_gone:
            return
        try:
            self.stdout.write(style(line) if style else line)
            self.stdout.flush()
        except (OSError, ValueError):  # BrokenPipeError, EIO, or write to a closed file
            self._output_gone = True
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)

    def _banner(self, cluster: LocalCluster, password: str) -> None:
        w = self._say
        w(f"cluster up: leader {cluster.leader()}", self.style.SUCCESS)
        for node_id in cluster.ids:
            url = cluster.web_url(node_id)
            w(f"  {node_id}: admin {url}/admin/   API {url}/api/v1/   health {url}/healthz")
        w(f"  admin user: admin   password: {password}")
        w(f"  API token:  {cluster.api_token}   (header  Authorization: Token {cluster.api_token})")
        w(f"  cluster state: CONFIGSTORE_PEERS='{cluster.peers()}' ./dev manage clusterstatus")
        w(f"  data and logs: {cluster.data_dir}   (supervision: logs/supervisor.log)")
        w("  a process that exits is restarted; Ctrl-C stops everything")


def stop_leftover_children(timeout: float = 10.0) -> None:
    """Stop whatever is still a child of this process after the cluster stopped: a process a
    stop signal caught between its start and its bookkeeping, a migration in progress. A child
    leading a group of its own (a node process) is stopped with its group."""
    children = psutil.Process().children()
    for child in children:
        _signal_child(child, signal.SIGTERM)
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        _signal_child(child, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=timeout)


def _signal_child(child: psutil.Process, sig: int) -> None:
    """`sig` to the child's whole group when it leads one, else to the child alone."""
    with contextlib.suppress(psutil.Error, OSError):
        if os.getpgid(child.pid) == child.pid:
            os.killpg(child.pid, sig)
        else:
            child.send_signal(sig)
