"""A fault-injection run against a real 3-node cluster, driven over the REST API only.

    ./dev python -m tests.nemesis.run --duration 600 [--seed N] [--keep DIR] [--no-hostile]

Clients (two pinned to each node, two that pick a node per request) read, put,
compare-and-set and delete a few keys while the nemesis (tests/nemesis/faults.py) kills,
pauses and partitions the nodes and hostile clients (tests/nemesis/hostile.py) poison the
nodes' queues, hold slow connections, flood one node with long polls and attach a
catastrophic schema pattern. Then everything is healed, every node must accept a write
again, and a final linearizable read of every key goes to every node. Checks: the history
is linearizable (tests/linearizability), the nodes' databases pass the audit
(tests/nemesis/audit.py), no answer was a 5xx other than 503, at least a floor of writes
was acknowledged and at most a share of them left indeterminate, and no worker or web
server exited without the nemesis killing it. The servers are those of
CONFIGSTORE_CLUSTER_DATABASE_URL / _BROKER_URL, or embedded ones. On failure the history,
the nodes' logs and a report stay in a folder, with the command that re-checks the history.

The test suite runs the short form (tests/nemesis/test_fault_run.py).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

from devcluster.localcluster import LocalCluster
from tests.linearizability.checker import Verdict, check
from tests.linearizability.history import DELETE, PUT, History
from tests.nemesis import workload
from tests.nemesis.audit import Audit, ChosenWatch, audit
from tests.nemesis.faults import Nemesis, ProcessWatch
from tests.nemesis.hostile import DEFAULT_INTENSITY, Hostile, Intensity
from tests.nemesis.revocation import Revocation

#: Node settings for a fault run: short server-side waits, so clients see 503s, not hangs.
CLUSTER_ENV = {
    "CONFIGSTORE_WRITE_TIMEOUT_MS": str(workload.WRITE_SERVER_TIMEOUT_MS),
    "CONFIGSTORE_READ_TIMEOUT_MS": str(workload.WRITE_SERVER_TIMEOUT_MS),
    # A short log tail: a worker killed for a few seconds falls behind its peers' compacted
    # logs and catches up by state transfer, while compaction goes on beside catch-ups.
    "CONFIGSTORE_LOG_TAIL": "20",
}
RECOVERY_TIMEOUT = 60.0
FINAL_READS_TIMEOUT = 60.0  # for all the final reads of a node
#: Acknowledged writes per second of faults a run must reach at least, and the share of
#: writes whose outcome the client never learned, at most. The short form without hostile
#: clients acknowledged 17 writes per second with 3% indeterminate, and 7.8/s with 7.9% when
#: the shared 2-core machine was loaded 15 deep (2026-12-02).
MIN_ACKNOWLEDGED_WRITES_PER_SECOND = 3.0
MAX_INDETERMINATE_SHARE = 0.2


@dataclass
class Report:
    seed: int
    duration: float
    operations: int = 0
    counts: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    acknowledged: int = 0  # operations with a definite answer
    indeterminate: int = 0  # writes whose outcome the client never learned
    failed_writes: int = 0  # writes refused before submission (refused, no_quorum)
    acknowledged_writes: int = 0  # puts and deletes with a definite answer
    indeterminate_writes: int = 0
    hostile: Hostile | None = None
    revocation: Revocation | None = None
    recovery: dict[str, float] = field(default_factory=dict)  # node -> s to a write after healing
    installs: int = 0  # snapshots installed by the nodes (their workers' logs)
    installs_cut: int = 0  # installs the nemesis cut with a SIGKILL
    verdict: str = ""
    check_seconds: float = 0.0
    audit: Audit | None = None
    problems: list[str] = field(default_factory=list)
    kept: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def indeterminate_share(self) -> float:
        writes = self.acknowledged_writes + self.indeterminate_writes
        return self.indeterminate_writes / writes if writes else 0.0

    def summary(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        lines = [
            f"fault run, seed {self.seed}, {self.duration:.0f} s of faults: "
            f"{'PASSED' if self.ok else 'FAILED'}",
            f"  operations: {self.operations} ({self.acknowledged} acknowledged, "
            f"{self.indeterminate} indeterminate; {self.failed_writes} writes refused before "
            "submission, left out)",
            f"  writes: {self.acknowledged_writes} acknowledged, {self.indeterminate_writes} "
            f"indeterminate ({self.indeterminate_share:.1%})",
            f"  faults injected: {sum(self.faults.values())} ({faults})",
            f"  state transfer: {self.installs} snapshots installed, {self.installs_cut} "
            "installs cut by a SIGKILL",
            "  by outcome: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())),
            *(
                ["  hostile clients: off"]
                if self.hostile is None
                else [
                    f"  hostile clients: long polls on {self.hostile.flood_node}, "
                    f"catastrophic schema through {self.hostile.redos_node}",
                    *self.hostile.summary_lines(),
                ]
            ),
            *([self.revocation.summary_line()] if self.revocation else []),
            "  recovery after healing (s to a committed write): "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(self.recovery.items())),
            f"  linearizability: {self.verdict} (checked in {self.check_seconds:.2f} s)",
        ]
        if self.audit is not None:
            lines.append(
                f"  audit: applied index {self.audit.applied_index} on every node, "
                f"{self.audit.history_rows} history rows, {self.audit.entries} entries, "
                f"logs compacted through {self.audit.log_slots_compacted} on every node; "
                + ("identical chosen logs, states and histories" if self.audit.ok else "FAILED")
            )
        lines += [f"  PROBLEM: {p}" for p in self.problems[:40]]
        if self.kept is not None:
            lines.append(f"  kept in {self.kept}; re-check the history with:")
            lines.append(
                f"    ./dev python -m tests.linearizability.checker {self.kept / 'history.json'}"
            )
        return "\n".join(lines)


def run_faults(
    cluster: LocalCluster,
    *,
    duration: float,
    seed: int,
    keep_dir: Path,
    pinned_per_node: int = 2,
    roaming: int = 2,
    keys: int = 10,
    hostile: Intensity | None = DEFAULT_INTENSITY,
    min_acknowledged_writes: int | None = None,
    max_indeterminate_share: float = MAX_INDETERMINATE_SHARE,
    revocation: bool = True,
) -> Report:
    """Run clients, the nemesis and (unless `hostile` is None) the hostile clients on a
    started cluster (with web servers, whose nodes have CLUSTER_ENV), heal, check. The
    cluster is left running; the caller stops it. `min_acknowledged_writes` defaults to
    MIN_ACKNOWLEDGED_WRITES_PER_SECOND per second of faults."""
    rng = random.Random(seed)
    report = Report(seed=seed, duration=duration)
    if getattr(cluster, "api_token", None) is None:
        cluster.ensure_admin()
    token = cluster.api_token
    urls = [cluster.web_url(node) for node in cluster.ids]
    recorder = workload.Recorder()
    keyspace = workload.KeySpace(keys=keys)
    stop = threading.Event()
    run_id = f"r{seed}"
    targets = [
        (f"{node}-{k}", [url])
        for node, url in zip(cluster.ids, urls, strict=True)
        for k in range(pinned_per_node)
    ] + [(f"any-{k}", urls) for k in range(roaming)]
    clients = [
        workload.Client(
            name, nodes, token, keyspace, recorder, stop, seed=rng.randrange(2**32), run_id=run_id
        )
        for name, nodes in targets
    ]
    nemesis = Nemesis(cluster, random.Random(rng.randrange(2**32)), recorder.now)
    watch = ProcessWatch(cluster, nemesis)
    watch.start()
    chosen = ChosenWatch(cluster)  # the log as it goes: the nodes compact theirs
    chosen.start()
    if hostile is not None:
        report.hostile = Hostile(
            cluster, token, random.Random(rng.randrange(2**32)), stop, duration, intensity=hostile
        )
        report.hostile.start()
    if revocation:
        report.revocation = Revocation(
            cluster, token, random.Random(rng.randrange(2**32)), stop, run_id
        )
        report.revocation.start()
    for client in clients:
        client.start()
    try:
        nemesis.run(duration, stop)  # heals everything when it ends, however it ends
    finally:
        stop.set()
        for client in clients:
            client.join(workload.REQUEST_TIMEOUT + workload.CONNECT_TIMEOUT + 5)
        if report.hostile is not None:
            report.hostile.join()
        if report.revocation is not None:
            report.revocation.join()
    report.faults = Counter(event.fault for event in nemesis.events)
    report.installs_cut = nemesis.installs_cut
    report.problems += recorder.errors
    if report.hostile is not None:
        report.problems += report.hostile.problems

    report.recovery = _wait_for_writes(cluster, token, run_id)
    if len(report.recovery) < len(cluster.ids):
        report.problems.append(
            f"not every node commits a write within {RECOVERY_TIMEOUT:.0f} s of healing: "
            f"{report.recovery}"
        )
    _final_reads(cluster, urls, token, recorder, keyspace, run_id)
    report.installs = sum(
        log.read_text(errors="replace").count("'s snapshot at slot")
        for log in (cluster.data_dir / "logs").glob("worker-*.log")
    )

    history = History(
        tuple(recorder.operations),
        {
            "seed": seed,
            "duration": duration,
            "nodes": list(cluster.ids),
            "faults": [vars(e) for e in nemesis.events],
        },
    )
    report.operations = len(history.operations)
    report.counts = recorder.counts
    report.indeterminate = sum(op.unknown for op in history.operations)
    report.acknowledged = report.operations - report.indeterminate
    report.failed_writes = len(recorder.failed)
    writes = [op for op in recorder.operations if op.kind in (PUT, DELETE)]
    report.indeterminate_writes = sum(op.unknown for op in writes)
    report.acknowledged_writes = len(writes) - report.indeterminate_writes
    floor = (
        int(MIN_ACKNOWLEDGED_WRITES_PER_SECOND * duration)
        if min_acknowledged_writes is None
        else min_acknowledged_writes
    )
    if report.acknowledged_writes < floor:
        report.problems.append(
            f"only {report.acknowledged_writes} writes acknowledged, fewer than {floor}"
        )
    if report.indeterminate_share > max_indeterminate_share:
        report.problems.append(
            f"{report.indeterminate_share:.1%} of the writes indeterminate, more than "
            f"{max_indeterminate_share:.0%}"
        )
    started = time.monotonic()
    result = check(history)
    report.check_seconds = time.monotonic() - started
    report.verdict = result.describe().splitlines()[0]
    if result.verdict is not Verdict.LINEARIZABLE:
        report.problems.append(result.describe())
    chosen.stop()
    report.audit = audit(cluster, list(history.operations), recorder.failed, chosen)
    report.problems += report.audit.problems
    if report.revocation is not None and report.audit.ok:
        report.problems += report.revocation.check()
    report.problems += watch.crashes()
    for who, broken in (
        ("the workload", recorder.broken),
        ("the hostile clients", report.hostile.broken if report.hostile else []),
    ):
        if broken:
            report.problems.append(
                f"{len(broken)} answers to {who} were a 5xx other than 503, the first: "
                + "; ".join(text[:200] for text in broken[:3])
            )
    if not report.ok:
        report.kept = _keep(keep_dir, cluster, history, report)
    return report


def _wait_for_writes(cluster: LocalCluster, token: str, run_id: str) -> dict[str, float]:
    """Seconds from now until each node commits a write of its own (after healing)."""
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    started = time.monotonic()
    recovered: dict[str, float] = {}
    attempt = 0
    while len(recovered) < len(cluster.ids) and time.monotonic() - started < RECOVERY_TIMEOUT:
        for node in cluster.ids:
            if node in recovered:
                continue
            attempt += 1
            try:
                response = session.put(
                    f"{cluster.web_url(node)}/api/v1/keys/recovery/{node}",
                    json={"value": attempt, "reason": f"{run_id} recovery check"},
                    timeout=(1.0, 5.0),
                )
            except requests.RequestException:
                continue
            if response.status_code in (200, 201):
                recovered[node] = time.monotonic() - started
        time.sleep(0.1)
    return recovered


def _final_reads(cluster, urls, token, recorder, keyspace, run_id) -> None:
    """A linearizable read of every key the run touched, on every node, recorded; each
    node gets FINAL_READS_TIMEOUT seconds for all of them."""
    keys = sorted({op.key for op in recorder.operations})
    stop = threading.Event()
    for node, url in zip(cluster.ids, urls, strict=True):
        reader = workload.Client(
            f"final-{node}", [url], token, keyspace, recorder, stop, seed=0, run_id=run_id
        )
        deadline = time.monotonic() + FINAL_READS_TIMEOUT
        unread = []
        for key in keys:
            for _ in range(5):  # a read may still meet a node catching up: try again
                if time.monotonic() > deadline:
                    unread.append(key)
                    break
                if reader.read(key, f"{url}/api/v1/keys/{key}") is not None:
                    break
                time.sleep(0.2)
            else:
                unread.append(key)
        if unread:
            recorder.errors.append(
                f"node {node} answered no final read of {len(unread)} keys: {unread[:5]}"
            )


def _keep(keep_dir: Path, cluster: LocalCluster, history: History, report: Report) -> Path:
    folder = keep_dir / f"fault-run-{report.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    history.dump(folder / "history.json")
    shutil.copytree(cluster.data_dir / "logs", folder / "logs", dirs_exist_ok=True)
    (folder / "report.txt").write_text(report.summary() + "\n")
    if report.audit is not None:
        (folder / "hashes.json").write_text(json.dumps(report.audit.hashes, indent=2))
    return folder


def start_cluster_for_run(data_dir: Path, base_port: int) -> LocalCluster:
    cluster = LocalCluster.from_environment(
        data_dir, nodes=3, web=True, fresh=True, base_port=base_port, extra_env=dict(CLUSTER_ENV)
    )
    cluster.start()
    cluster.ensure_admin()
    return cluster


def main(argv: list[str] | None = None) -> int:
    from tests.conftest import free_base_port  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="python -m tests.nemesis.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--keep", type=Path, default=Path("fault-runs"), help="where failures are kept"
    )
    parser.add_argument(
        "--no-hostile", action="store_true", help="the nemesis and the workload only"
    )
    parser.add_argument(
        "--min-acknowledged-writes",
        type=int,
        default=None,
        help=f"(default: {MIN_ACKNOWLEDGED_WRITES_PER_SECOND:g} per second of faults)",
    )
    parser.add_argument("--max-indeterminate-share", type=float, default=MAX_INDETERMINATE_SHARE)
    defaults = DEFAULT_INTENSITY
    for name in Intensity.__dataclass_fields__:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=type(getattr(defaults, name)),
            default=getattr(defaults, name),
            help=f"hostile clients (default {getattr(defaults, name)})",
        )
    args = parser.parse_args(argv)
    intensity = Intensity(**{name: getattr(args, name) for name in Intensity.__dataclass_fields__})
    seed = args.seed if args.seed is not None else random.randrange(1, 10**6)
    data = Path(tempfile.mkdtemp(prefix="configstore-faults-"))
    data.chmod(0o755)
    cluster = start_cluster_for_run(data, free_base_port())
    try:
        report = run_faults(
            cluster,
            duration=args.duration,
            seed=seed,
            keep_dir=args.keep.resolve(),
            hostile=None if args.no_hostile else intensity,
            min_acknowledged_writes=args.min_acknowledged_writes,
            max_indeterminate_share=args.max_indeterminate_share,
        )
    finally:
        cluster.stop()
        shutil.rmtree(data, ignore_errors=True)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
