"""python manage.py runcluster [--nodes 3] [--data DIR] [--base-port 8001]

Starts a real cluster on this machine (consensus.localcluster): each node with its own
PostgreSQL database, Celery worker, broker queue and web server; creates an admin user on
every node; prints the URLs and credentials; Ctrl-C stops every process it started.
Servers: CONFIGSTORE_CLUSTER_DATABASE_URL / CONFIGSTORE_CLUSTER_BROKER_URL (templates with
{node} / {index}) when set, else an embedded PostgreSQL and Redis kept in the data folder.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from django.core.management.base import BaseCommand

from consensus.localcluster import LocalCluster


class Command(BaseCommand):
    help = "Run a local replicated cluster (workers, web servers, databases, broker)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--nodes", type=int, default=3, choices=(1, 3, 5))
        parser.add_argument("--data", default="data", help="data folder (kept across runs)")
        parser.add_argument("--base-port", type=int, default=8001)

    def handle(self, *args, nodes: int, data: str, base_port: int, **options) -> None:
        cluster = LocalCluster.from_environment(Path(data), nodes=nodes, base_port=base_port)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        self.stdout.write(f"starting a {nodes}-node cluster in {cluster.data_dir} ...")
        try:
            cluster.start()
            password = cluster.ensure_admin()
            self._banner(cluster, password)
            reported: set[int] = set()
            while not stop.wait(1.0):
                self._report_exits(cluster, reported)
        finally:
            self.stdout.write("stopping every process of the cluster ...")
            cluster.stop()
            self.stdout.write("stopped.")

    def _report_exits(self, cluster: LocalCluster, reported: set[int]) -> None:
        """A node process that died is reported once; the rest of the cluster goes on (a
        minority can be lost), and `cluster.start_worker(id)` is how tests restart one."""
        for node_id, procs in cluster.processes.items():
            for name, process in (("worker", procs.worker), ("web server", procs.web)):
                if (
                    process is not None
                    and process.poll() is not None
                    and process.pid not in reported
                ):
                    reported.add(process.pid)
                    self.stdout.write(
                        self.style.WARNING(
                            f"{name} of {node_id} exited ({process.returncode}); the other "
                            f"nodes go on. Logs: {cluster.data_dir / 'logs'}"
                        )
                    )

    def _banner(self, cluster: LocalCluster, password: str) -> None:
        w = self.stdout.write
        w(self.style.SUCCESS(f"cluster up: leader {cluster.leader()}"))
        for node_id in cluster.ids:
            url = cluster.web_url(node_id)
            w(f"  {node_id}: admin {url}/admin/   API {url}/api/v1/   health {url}/healthz")
        w(f"  admin user: admin   password: {password}")
        w(f"  API token:  {cluster.api_token}   (header  Authorization: Token {cluster.api_token})")
        w(f"  cluster state: CONFIGSTORE_PEERS='{cluster.peers()}' ./dev manage clusterstatus")
        w(f"  data and logs: {cluster.data_dir}   (Ctrl-C stops everything)")
