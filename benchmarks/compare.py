"""python -m benchmarks.compare [--seconds 10] [--clients 1,16,64] [--processes 4]
                              [--recoveries 3] [--write-docs] [--note TEXT]

Benchmarks a fresh 3-node configstore cluster (REST API over Multi-Paxos, PostgreSQL,
Celery) and a 3-member etcd cluster (Debian's etcd-server, HTTP/JSON gateway) on this
machine, in one run, through the same Python HTTP client, and prints one table with both
systems, the ratio configstore/etcd per row and the issue's goals.

Both clusters run for the whole run; each measurement is taken on one system right after
the other (alternating which goes first), so that a noisy machine affects both alike:
- write latency p50/p99 with 1 client, write throughput with each client count;
- linearizable reads (ours: GET, etcd: range) and local reads (ours: ?consistency=stale,
  etcd: serializable range) with each client count;
- leader loss: SIGKILL the leader (ours: its worker and web server; etcd: the member) and
  time until a write through a surviving node succeeds, repeated, median reported;
- for configstore: Celery tasks and PostgreSQL commits per committed write.

With --write-docs the run replaces the results section of docs/benchmarks.md.
Servers for configstore: CONFIGSTORE_CLUSTER_DATABASE_URL / _BROKER_URL (else embedded).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import signal
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
import redis

from benchmarks import report
from benchmarks.etcd import EtcdCluster, EtcdUnavailable, etcd_binary, etcd_version
from benchmarks.http import (
    KEYS,
    Api,
    Endpoint,
    PhaseResult,
    attempt,
    key_name,
    run_phase,
    value_for,
)
from benchmarks.ours import OurCluster
from benchmarks.stats import median, percentile

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
#: During recovery a write attempt starts this often and waits this long at most.
RECOVERY_INTERVAL = 0.05
RECOVERY_ATTEMPT_TIMEOUT = 2.0
RECOVERY_LIMIT = 60.0


@dataclass
class System:
    name: str
    api: Api
    endpoints: list[Endpoint]


@dataclass
class WriteCosts:
    tasks_per_write: float
    commits_per_write: float | None


@dataclass
class IdleCosts:
    tasks_per_second: float
    commits_per_second: float | None


def idle_costs(ours: OurCluster, seconds: float = 3.0) -> IdleCosts:
    """What the cluster spends with no client at all (heartbeats and their acks)."""
    before = ours.costs()
    time.sleep(seconds)
    after = ours.costs()
    commits = ours.commits_between(before, after)
    elapsed = after.at - before.at
    return IdleCosts(
        (after.tasks - before.tasks) / elapsed, None if commits is None else commits / elapsed
    )


def _log(line: str, lines: list[str]) -> None:
    print(line, flush=True)
    lines.append(line)


def prefill(system: System) -> None:
    """Write every key of the workload once (and warm up both systems' paths)."""
    for n in range(KEYS):
        endpoint = system.endpoints[n % len(system.endpoints)]
        request = system.api.write(key_name(n), value_for(0, n))
        if not attempt(system.api, endpoint, request, timeout=10.0):
            raise RuntimeError(f"{system.name}: prefill write of {key_name(n)} failed")


def time_until_write(api: Api, survivors: list[Endpoint], killed_at: float) -> float:
    """Seconds from `killed_at` until a write through one of `survivors` succeeds.

    A write sent while there is no leader may hang until its server gives up (etcd drops
    such a proposal and answers only at its request timeout), so one attempt at a time
    would measure the client's timeout. Instead a new attempt starts every
    RECOVERY_INTERVAL on a fresh connection, alternating between the survivors, each
    waiting up to RECOVERY_ATTEMPT_TIMEOUT; the first success ends the measurement."""
    succeeded_at: list[float] = []
    done = threading.Event()
    lock = threading.Lock()

    def one(n: int) -> None:
        request = api.write(key_name(n), value_for(999, n))
        if attempt(api, survivors[n % len(survivors)], request, RECOVERY_ATTEMPT_TIMEOUT):
            with lock:
                if not succeeded_at:
                    succeeded_at.append(time.perf_counter() - killed_at)
                    done.set()

    n = 0
    while not done.wait(RECOVERY_INTERVAL if n else 0):
        if time.perf_counter() - killed_at > RECOVERY_LIMIT:
            raise RuntimeError(f"no write succeeded within {RECOVERY_LIMIT}s of the kill")
        threading.Thread(target=one, args=(n,), daemon=True).start()
        n += 1
    return succeeded_at[0]


def recover_etcd(etcd: EtcdCluster) -> tuple[str, float]:
    leader = etcd.wait_for_leader()
    survivors = [m.endpoint for m in etcd.members if m is not leader]
    killed_at = time.perf_counter()
    etcd.kill(leader)
    elapsed = time_until_write(etcd.api, survivors, killed_at)
    etcd.start_member(leader)
    etcd.wait_for_leader(60.0)  # every member up again and agreeing on a leader
    return leader.name, elapsed


def recover_ours(ours: OurCluster) -> tuple[str, float]:
    cluster = ours.cluster
    leader = _wait_all_agree(ours)
    survivors = [ours.endpoint(i) for i in cluster.ids if i != leader]
    killed_at = time.perf_counter()
    ours.kill(leader)
    elapsed = time_until_write(ours.api, survivors, killed_at)
    ours.restart(leader)
    _wait_all_agree(ours)
    return leader, elapsed


def _wait_all_agree(ours: OurCluster, timeout: float = 60.0) -> str:
    """Every node reachable, agreeing on one leader and caught up: the state in which a
    recovery round starts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = ours.cluster.status()
        nodes = state["nodes"]
        if (
            state["agreed_leader"]
            and state["reachable"] == len(nodes)
            and all(n["lag"] == 0 for n in nodes)
        ):
            return state["leader"]
        time.sleep(0.05)
    raise TimeoutError(f"configstore: nodes did not all rejoin within {timeout}s")


def _clients(count: int) -> str:
    return f"{count} client{'' if count == 1 else 's'}"


def _phase_line(system: str, result: PhaseResult, extra: str = "") -> str:
    lat = result.tally.latencies_ms
    line = (
        f"{system:<11} {result.op:<10} {_clients(result.clients):>11}: "
        f"{result.throughput:8.1f} ops/s, p50 {percentile(lat, 50):6.1f} ms, "
        f"p99 {percentile(lat, 99):6.1f} ms, {result.tally.ok} ok, "
        f"{result.tally.errors} errors"
    )
    if result.tally.first_error:
        line += f" (first: {result.tally.first_error})"
    return line + extra


def measure(
    systems: dict[str, System],
    ours: OurCluster,
    op: str,
    clients: int,
    args: argparse.Namespace,
    order: list[str],
    lines: list[str],
    results: dict,
    costs: dict[int, WriteCosts],
) -> None:
    for name in order:
        system = systems[name]
        measured_costs = name == "configstore" and op == "write"
        before = ours.costs(settle=False) if measured_costs else None
        result = run_phase(system.api, system.endpoints, op, clients, args.seconds, args.processes)
        results[name, op, clients] = result
        extra = ""
        if measured_costs:
            after = ours.costs()
            writes = max(result.succeeded, 1)
            commits = ours.commits_between(before, after)
            costs[clients] = WriteCosts(
                (after.tasks - before.tasks) / writes,
                None if commits is None else commits / writes,
            )
            extra = f"; {costs[clients].tasks_per_write:.2f} Celery tasks/write"
            if commits is not None:
                extra += f", {costs[clients].commits_per_write:.2f} PostgreSQL commits/write"
        _log(_phase_line(name, result, extra), lines)


def build_rows(
    results: dict,
    recovery: dict[str, list[float]],
    costs: dict[int, WriteCosts],
    clients: list[int],
    idle: IdleCosts | None = None,
) -> list[report.Row]:
    Row, Goal = report.Row, report.Goal
    top = 64 if 64 in clients else max(clients)
    one = min(clients)

    def tput(op: str, name: str, c: int) -> float | None:
        result = results.get((name, op, c))
        return None if result is None else result.throughput

    def lat(name: str, p: float) -> float | None:
        result = results.get((name, "write", one))
        return None if result is None else percentile(result.tally.latencies_ms, p)

    rows = [
        Row(f"write latency p50, {_clients(one)}", "ms", lat("configstore", 50), lat("etcd", 50),
            True, Goal(3, at_most=True)),
        Row(f"write latency p99, {_clients(one)}", "ms", lat("configstore", 99), lat("etcd", 99),
            True),
    ]  # fmt: skip
    for op, label, goal in (
        ("write", "write throughput", Goal(0.5, at_most=False)),
        ("read", "linearizable read throughput", Goal(0.5, at_most=False)),
        ("local_read", "stale (ours) / serializable (etcd) reads", Goal(1, at_most=False)),
    ):
        for c in clients:
            rows.append(
                Row(
                    f"{label}, {_clients(c)}",
                    "ops/s",
                    tput(op, "configstore", c),
                    tput(op, "etcd", c),
                    False,
                    goal if c == top else None,
                    digits=0,
                )
            )
    if recovery.get("configstore") and recovery.get("etcd"):
        rounds = len(recovery["configstore"])
        rows.append(
            Row(
                f"leader-loss recovery, median of {rounds}",
                "s",
                median(recovery["configstore"]),
                median(recovery["etcd"]),
                True,
                Goal(3, at_most=True),
                digits=2,
            )
        )
    for label, unit, attribute in (
        ("Celery tasks", "tasks", "tasks_per_write"),
        ("PostgreSQL commits", "commits", "commits_per_write"),
    ):
        for c in clients:
            if c in costs:
                figure = getattr(costs[c], attribute)
                rows.append(Row(f"{label} per committed write, {_clients(c)}", unit,
                                figure, None, True, digits=2))  # fmt: skip
    if idle is not None:
        rows.append(Row("idle cluster: Celery tasks per second", "tasks/s",
                        idle.tasks_per_second, None, True, digits=1))  # fmt: skip
        rows.append(Row("idle cluster: PostgreSQL commits per second", "commits/s",
                        idle.commits_per_second, None, True, digits=1))  # fmt: skip
    return rows


def machine_facts(ours: OurCluster, etcd_bin: str) -> list[str]:
    facts = [f"{os.cpu_count()} CPUs ({_cpu_model()})", f"Python {platform.python_version()}"]
    try:
        with psycopg.connect(ours.cluster.database_url(ours.cluster.ids[0])) as conn:
            facts.append(f"PostgreSQL {conn.execute('SHOW server_version').fetchone()[0]}")
    except psycopg.Error:
        facts.append("PostgreSQL (version unknown)")
    try:
        info = redis.Redis.from_url(ours.cluster.broker_url(ours.cluster.ids[0])).info("server")
        facts.append(f"Redis {info['redis_version']}")
    except redis.RedisError:
        facts.append("Redis (version unknown)")
    facts.append(f"etcd {etcd_version(etcd_bin)} ({etcd_bin})")
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def docs_section(
    *,
    command: str,
    started: datetime,
    finished: datetime,
    facts: list[str],
    load_before: str,
    load_after: str,
    note: str,
    args: argparse.Namespace,
    rows: list[report.Row],
    lines: list[str],
) -> str:
    when = f"{started:%Y-%m-%d %H:%M}–{finished:%H:%M} {started.astimezone().tzname()}"
    head = [
        f"**Run:** {when}. **Machine:** {', '.join(facts)}. "
        f"Load average (1/5/15 min) {load_before} at the start, {load_after} at the end."
        + (f" {note}" if note else ""),
        "",
        f"**Command:** `{command}` ({args.seconds:g} s per measurement, client processes: "
        f"{args.processes}, recovery rounds: {args.recoveries}).",
        "",
        report.table(rows),
        "",
        "Goals (the ratio is configstore/etcd):",
        "",
        *report.goal_lines(rows),
        "",
        "Every measurement as printed (p50/p99 are of the requests that succeeded):",
        "",
        "```",
        *lines,
        "```",
    ]
    return "\n".join(head)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="configstore vs etcd, side by side, on this machine.",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--clients", default="1,16,64", help="client counts, comma-separated")
    parser.add_argument("--processes", type=int, default=4, help="client processes, at most")
    parser.add_argument("--recoveries", type=int, default=3, help="leader kills per system")
    parser.add_argument(
        "--write-docs", action="store_true", help=f"replace the results section of {DOCS}"
    )
    parser.add_argument("--docs", type=Path, default=DOCS, help=argparse.SUPPRESS)
    parser.add_argument("--note", default="", help="a remark for the docs (machine state)")
    args = parser.parse_args(argv)
    args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    if not args.client_counts or min(args.client_counts) < 1:
        parser.error("--clients takes positive whole numbers")
    return args


def _without_note(argv: list[str]) -> list[str]:
    """The command line as the docs show it: the --note is written beside it already."""
    shown, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            shown.append(arg)
    return shown


def _stop_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "./dev compare " + shlex.join(_without_note(sys.argv[1:] if argv is None else argv))
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        binary = etcd_binary()
    except EtcdUnavailable as error:
        print(f"compare: {error}", file=sys.stderr)
        return 2
    started = datetime.now().astimezone()
    load_before = _load()
    lines: list[str] = []
    results: dict = {}
    costs: dict[int, WriteCosts] = {}
    recovery: dict[str, list[float]] = {"configstore": [], "etcd": []}
    try:
        with ExitStack() as stack:
            print("starting a 3-member etcd cluster ...", flush=True)
            etcd = stack.enter_context(EtcdCluster(binary))
            print("starting a fresh 3-node configstore cluster ...", flush=True)
            ours = stack.enter_context(OurCluster())
            systems = {
                "etcd": System("etcd", etcd.api, etcd.endpoints),
                "configstore": System("configstore", ours.api, ours.endpoints),
            }
            for system in systems.values():
                prefill(system)
            facts = machine_facts(ours, binary)
            print("machine: " + ", ".join(facts), flush=True)
            if ours.connection_warning:
                _log(f"configstore: warning: {ours.connection_warning}", lines)
            idle = idle_costs(ours)
            step = 0
            for op in ("write", "read", "local_read"):
                for clients in args.client_counts:
                    order = ["etcd", "configstore"][:: 1 if step % 2 == 0 else -1]
                    step += 1
                    measure(systems, ours, op, clients, args, order, lines, results, costs)
            for round_ in range(args.recoveries):
                leader, seconds = recover_etcd(etcd)
                recovery["etcd"].append(seconds)
                _log(f"etcd        recovery {round_ + 1}: killed {leader}, "
                     f"a write succeeded after {seconds:.3f} s", lines)  # fmt: skip
                leader, seconds = recover_ours(ours)
                recovery["configstore"].append(seconds)
                _log(f"configstore recovery {round_ + 1}: killed {leader} (worker and web), "
                     f"a write succeeded after {seconds:.3f} s", lines)  # fmt: skip
            if ours.wal_problem:
                _log(f"configstore: PostgreSQL commits not counted: {ours.wal_problem}", lines)
            print("stopping both clusters ...", flush=True)
    except KeyboardInterrupt:
        print("compare: interrupted; both clusters stopped", file=sys.stderr)
        return 130
    finished = datetime.now().astimezone()
    rows = build_rows(results, recovery, costs, args.client_counts, idle)
    print()
    print(report.table(rows))
    print()
    print("\n".join(report.goal_lines(rows)))
    if args.write_docs:
        section = docs_section(
            command=command,
            started=started,
            finished=finished,
            facts=facts,
            load_before=load_before,
            load_after=_load(),
            note=args.note,
            args=args,
            rows=rows,
            lines=lines,
        )
        document = args.docs.read_text() if args.docs.exists() else "# Benchmarks\n"
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(report.replace_section(document, section))
        print(f"\nwrote the results into {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
