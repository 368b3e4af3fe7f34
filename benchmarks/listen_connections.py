"""The database connections of one node's web server, by process, and what each last ran.

    ./dev python -m benchmarks.listen_connections [--database-url URL-TEMPLATE]

Starts a fresh 3-node cluster with its web servers (the machine's PostgreSQL, databases
cs_listen_{node}, unless --database-url says otherwise; embedded Redis), makes on node n1 a
write, a linearizable read, and a long-poll that a second write wakes, then lists every
connection each of n1's web server processes holds to its database: its sockets joined to
pg_stat_activity by client port. The applied-index listener is the connection named
`consensus_listener`; before consensus.api (25fc45a) a process held two LISTEN connections,
the submitter's and the long-poll watcher's (the one whose last query reads configstore_history).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests


def main(argv: list[str] | None = None) -> None:
    from devcluster.localcluster import LocalCluster, free_ports

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url", default="postgresql://postgres@127.0.0.1:5432/cs_listen_{node}"
    )
    args = parser.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="configstore-listen-"))
    data.chmod(0o755)
    cluster = LocalCluster(
        data,
        base_port=free_ports(3, consecutive=True)[0],
        database_url_template=args.database_url,
        fresh=True,
    )
    try:
        cluster.start()
        cluster.ensure_admin()
        exercise(cluster.web_url("n1") + "/api/v1/keys/", cluster.api_token)
        time.sleep(1.0)
        report(cluster)
    finally:
        cluster.stop()
        shutil.rmtree(data, ignore_errors=True)


def exercise(base: str, token: str) -> None:
    """A write, a linearizable read, and a long-poll woken by a write."""
    headers = {"Authorization": f"Token {token}"}
    written = requests.put(base + "m/a", json={"value": 1}, headers=headers, timeout=30)
    written.raise_for_status()
    index = written.json()["modified_index"]
    requests.get(base + "m/a", headers=headers, timeout=30).raise_for_status()
    answer: dict[str, requests.Response] = {}

    def long_poll() -> None:
        answer["poll"] = requests.get(
            base + f"m/a?wait_index={index}&timeout=20", headers=headers, timeout=30
        )

    polling = threading.Thread(target=long_poll)
    polling.start()
    time.sleep(1.0)
    requests.put(base + "m/a", json={"value": 2}, headers=headers, timeout=30).raise_for_status()
    polling.join()
    print(
        f"long-poll answered {answer['poll'].status_code}: value {answer['poll'].json()['value']}"
    )


def report(cluster) -> None:
    rows = cluster.query(
        "n1",
        "SELECT client_port, application_name, state, left(query, 70) FROM pg_stat_activity "
        "WHERE datname = current_database() AND client_port IS NOT NULL",
    )
    by_port = {row[0]: row[1:] for row in rows}
    web = psutil.Process(cluster.processes["n1"].web.pid)
    for process in [web, *web.children(recursive=True)]:
        ports = sorted(
            c.laddr.port
            for c in process.net_connections(kind="tcp")
            if c.raddr and c.laddr.port in by_port
        )
        listeners = sum(by_port[p][0] == "consensus_listener" for p in ports)
        print(f"web process {process.pid}: {len(ports)} connections, {listeners} listener")
        for port in ports:
            name, state, query = by_port[port]
            print(f"  {name or '-':<20} {state:<6} {' '.join(query.split())}")


if __name__ == "__main__":
    main()
