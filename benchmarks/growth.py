"""python -m benchmarks.growth [--puts 20000,200000] [--ops 5] [--window 20000] [--tail 5000]
[--clients 32] [--no-transfer] [--broker-index-offset 0]

Do the consensus tables grow with the history? One real 3-node cluster (devcluster.
localcluster, on the servers named by CONFIGSTORE_CLUSTER_DATABASE_URL / _BROKER_URL, else
embedded ones) is grown to each size of `--puts` in turn: that many committed puts in all,
in txns of `--ops` puts (a txn is one command, and one command per log slot:
CONFIGSTORE_MAX_BATCH=1), and as many linearizable reads (read barriers, spread over the
three nodes). After each size it prints, for one follower, every consensus_* and
configstore_* table's row count, dead rows not yet vacuumed and pg_total_relation_size; the
consensus_* rows in all on every node against the bound "log tail + request window"; and
checks the history: exactly one row per put applied (a txn of k puts is one command and k
rows, all with the command's request id), so as many request ids as txns applied.

State transfer is on (`--no-transfer`: off): the cluster runs with its web servers, so
CONFIGSTORE_PEER_URLS is set and every worker compacts its chosen log to `--tail` slots
below its applied index (CONFIGSTORE_LOG_TAIL). What it shows: consensus_chosen_slot holds
about the tail (plus what the compaction has not reached yet: it runs every 0.5 s),
consensus_accepted_slot only the slots above the applied index (pruned by the applier),
consensus_applied_request at most the request window (CONFIGSTORE_REQUEST_WINDOW, set to
`--window` slots here so that it is reached at these sizes; the default is 100,000) plus
what one transaction adds, and reads add no row anywhere. A table's size on disk follows
its rows only as far as vacuum makes the deleted rows' space reusable (dead rows are
printed; a plain VACUUM never gives space back to the system): where the server runs no
autovacuum (this machine's PostgreSQL has it off), the benchmark runs a plain VACUUM of the
three pruned tables on every node every `--vacuum-every` seconds (default 2), as
autovacuum would (0: never). The history grows by design: it is the product.
Asserts nothing but the history's count.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from benchmarks.rejoin import applied_index, spread
from consensus.client import Committed
from devcluster.localcluster import LocalCluster, free_ports

TABLES_SQL = (
    "SELECT c.relname, pg_total_relation_size(c.oid), coalesce(s.n_dead_tup, 0) FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE n.nspname = current_schema() "
    "AND c.relkind = 'r' AND (c.relname LIKE 'consensus\\_%%' OR c.relname LIKE 'configstore\\_%%') "
    "ORDER BY c.relname"
)


PRUNED = ("consensus_chosen_slot", "consensus_accepted_slot", "consensus_applied_request")


class Vacuum(threading.Thread):
    """A plain VACUUM of the pruned tables on every node every `every` seconds."""

    def __init__(self, cluster: LocalCluster, every: float) -> None:
        super().__init__(daemon=True)
        self.cluster, self.every = cluster, every
        self.stopped = threading.Event()
        self.runs = 0

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            for node in self.cluster.ids:
                with psycopg.connect(self.cluster.database_url(node), autocommit=True) as conn:
                    for table in PRUNED:
                        conn.execute(f"VACUUM {table}")
            self.runs += 1


def _txn(client: int, k: int, ops: int) -> str:
    return json.dumps(
        {
            "op": "txn",
            "ops": [{"op": "put", "key": f"growth/{client}/{i}", "value": k} for i in range(ops)],
            "at": datetime.now(UTC).isoformat(),
        }
    )


def grow(cluster: LocalCluster, commands: int, ops: int, clients: int) -> tuple[float, int]:
    """`commands` txns of `ops` puts, retried until each commits; (seconds, failures)."""
    failures = [0]

    def work(c: int, k: int) -> None:
        submitter = cluster.submitter(cluster.ids[c % len(cluster.ids)])
        payload = _txn(c, k, ops)
        while not isinstance(submitter.submit(payload, timeout=30), Committed):
            failures[0] += 1

    return spread(commands, clients, work), failures[0]


def read(cluster: LocalCluster, reads: int, clients: int) -> float:
    def work(c: int, _k: int) -> None:
        submitter = cluster.submitter(cluster.ids[c % len(cluster.ids)])
        while not isinstance(submitter.barrier(timeout=10), Committed):
            pass

    return spread(reads, clients, work)


def report(cluster: LocalCluster, node: str) -> dict[str, tuple[int, int]]:
    """{table: (rows, bytes)} on `node`, printed."""
    sizes = cluster.query(node, TABLES_SQL)
    found = {}
    for table, size, dead in sizes:
        (rows,) = cluster.query(node, f"SELECT count(*) FROM {table}")[0]
        found[table] = (rows, size)
        print(f"  {table:34} {rows:>10,} rows {dead:>9,} dead {size / 1024:>10,.0f} KB", flush=True)
    return found


def _consensus_rows(cluster: LocalCluster, node: str, tail: int, window: int) -> str:
    """`node`'s consensus_* rows in all against tail + window, with its applied index, its
    log's compaction point and the tables the two bound."""
    ((chosen, accepted, requests, applied, compacted),) = cluster.query(
        node,
        "SELECT (SELECT count(*) FROM consensus_chosen_slot), "
        "(SELECT count(*) FROM consensus_accepted_slot), "
        "(SELECT count(*) FROM consensus_applied_request), "
        "(SELECT applied_index FROM consensus_applied_state), "
        "(SELECT compacted_through FROM consensus_applied_state)",
    )
    every = cluster.query(node, TABLES_SQL)
    total = 0
    for table, _size, _dead in every:
        if table.startswith("consensus_"):
            total += cluster.query(node, f"SELECT count(*) FROM {table}")[0][0]
    bound = tail + window
    return (
        f"{node}: applied {applied:,}, compacted through {compacted:,}; chosen {chosen:,} "
        f"(tail {tail:,}), applied requests {requests:,} (window {window:,}), accepted "
        f"{accepted:,}; consensus_* rows in all {total:,} (tail + window {bound:,}: "
        + ("within" if total <= bound else f"over by {total - bound:,}")
        + ")"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.growth", description=__doc__)
    parser.add_argument("--puts", default="20000,200000")
    parser.add_argument("--ops", type=int, default=5)
    parser.add_argument("--window", type=int, default=20000)
    parser.add_argument("--tail", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--transfer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="web servers on: log compaction and state transfer (default: on)",
    )
    parser.add_argument(
        "--broker-index-offset",
        type=int,
        default=0,
        help="added to {index} of CONFIGSTORE_CLUSTER_BROKER_URL",
    )
    parser.add_argument(
        "--vacuum-every",
        type=float,
        default=None,
        help="seconds (default: 2 if autovacuum is off)",
    )
    args = parser.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="configstore-growth-"))
    data.chmod(0o755)
    cluster = LocalCluster.from_environment(
        data,
        web=args.transfer,
        fresh=True,
        broker_index_offset=args.broker_index_offset,
        extra_env={
            "CONFIGSTORE_MAX_BATCH": "1",
            "CONFIGSTORE_WINDOW": "64",
            "CONFIGSTORE_REQUEST_WINDOW": str(args.window),
            "CONFIGSTORE_LOG_TAIL": str(args.tail),
        },
        **({"base_port": free_ports(3, consecutive=True)[0]} if args.transfer else {}),
    )
    results = []
    try:
        cluster.start()
        (autovacuum,) = cluster.query(cluster.ids[0], "SHOW autovacuum")[0]
        every = (
            args.vacuum_every
            if args.vacuum_every is not None
            else (2.0 if autovacuum == "off" else 0)
        )
        vacuum = Vacuum(cluster, every)
        if every:
            vacuum.start()
        print(
            f"state transfer {'on' if args.transfer else 'off'}; CONFIGSTORE_LOG_TAIL "
            f"{args.tail:,} slots, CONFIGSTORE_REQUEST_WINDOW {args.window:,} slots: bound "
            f"for the consensus_* rows tail + window = {args.tail + args.window:,}; "
            f"autovacuum {autovacuum}; "
            + (
                f"VACUUM of {', '.join(PRUNED)} every {every:g} s" if every else "no VACUUM of ours"
            ),
            flush=True,
        )
        done = 0
        for puts in (int(s) for s in args.puts.split(",") if s):
            size = puts // args.ops  # commands
            leader = cluster.wait_for_leader()
            follower = next(i for i in cluster.ids if i != leader)
            took, failures = grow(cluster, size - done, args.ops, args.clients)
            read_took = read(cluster, (size - done) * args.ops, args.clients)
            done = size
            top = applied_index(cluster, leader)
            while applied_index(cluster, follower) < top:
                time.sleep(0.05)
            print(
                f"{size * args.ops:,} puts ({size:,} txns) and {size * args.ops:,} linearizable reads "
                f"in all (this step: writes {took:.0f} s, {failures} retried; reads "
                f"{read_took:.0f} s); applied index {top:,}; on {follower}, request window "
                f"{args.window:,} slots; {vacuum.runs} VACUUM rounds so far:",
                flush=True,
            )
            results.append((size, report(cluster, follower)))
            for node in cluster.ids:
                print(f"  {_consensus_rows(cluster, node, args.tail, args.window)}", flush=True)
            ((history, rows, requests, uneven),) = cluster.query(
                follower,
                "SELECT (SELECT count(*) FROM configstore_history), "
                "(SELECT count(*) FROM configstore_history WHERE key LIKE 'growth/%%'), "
                "(SELECT count(DISTINCT request_id) FROM configstore_history "
                "WHERE key LIKE 'growth/%%'), "
                "(SELECT count(*) FROM (SELECT request_id FROM configstore_history "
                "WHERE key LIKE 'growth/%%' GROUP BY request_id HAVING count(*) <> %s) u)",
                [args.ops],
            )
            expected = size * args.ops
            good = rows == expected == history and requests == size and uneven == 0
            print(
                f"  history: {rows:,} rows for the {expected:,} puts applied, from {requests:,} "
                f"request ids for the {size:,} txn commands applied, {uneven} commands without "
                f"exactly {args.ops} rows; {history:,} rows in all "
                f"({'one per put' if good else 'MISMATCH'})",
                flush=True,
            )
            if rows != expected:
                raise SystemExit("the history does not hold exactly one row per applied put")
        (small, a), (large, b) = results[0], results[-1]
        print(f"from {small * args.ops:,} to {large * args.ops:,} puts ({large / small:.1f}x):")
        for table in sorted(b):
            (r0, s0), (r1, s1) = a.get(table, (0, 0)), b[table]
            print(
                f"  {table:34} rows {r0:>9,} -> {r1:>9,}   size {s0 / 1024:>8,.0f} -> "
                f"{s1 / 1024:>8,.0f} KB",
                flush=True,
            )
    finally:
        cluster.stop()
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
