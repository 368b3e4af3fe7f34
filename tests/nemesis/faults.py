"""The nemesis: every few seconds one fault on a real cluster, held a while, then healed.

Faults, as Jepsen's etcd tests do them, on the processes and links of a LocalCluster:
    kill-worker   SIGKILL a node's worker (its Paxos node), restart it after the hold
    kill-web      SIGKILL a node's web server (its whole process group), restart it
    kill-node     both at once: the node's worker and web server
    kill-all-workers  SIGKILL every worker at once (no quorum), restart them all: nothing
                  acknowledged may be lost across a whole-cluster crash
    pause-worker  SIGSTOP a node's worker, SIGCONT after the hold
    isolate-leader  cut the current leader off from the others (the fault file)
    split         cut a random minority off from the majority
    bridge        cut the links between two nodes; a third sees both (overlapping majorities)
    ring          one-way links in a ring: each node hears only its predecessor
    kill-during-install  SIGKILL a follower's worker; at heal, restart it and, as soon as it
                  starts fetching a peer's snapshot (the others compacted their logs past it:
                  the run's log tail is short), SIGKILL it again, then restart it: an
                  install cut anywhere must leave nothing half done
The targets of process faults are the leader half of the time, else a random node. The
faults come as a shuffled deck: each runs once in every len(FAULTS) faults.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

from consensus.faults import isolate
from devcluster.localcluster import LocalCluster

FAULTS = (
    "kill-worker",
    "kill-web",
    "kill-node",
    "kill-all-workers",
    "pause-worker",
    "isolate-leader",
    "split",
    "bridge",
    "ring",
    "kill-during-install",
)
#: Seconds a restarted worker is watched for the start of a snapshot fetch (a worker takes
#: up to ~15 s to start on a loaded 2-core machine), and the others' compaction is waited for.
INSTALL_WATCH = 30.0


@dataclass
class Event:
    fault: str
    targets: list[str]
    start: float
    end: float | None = None


@dataclass
class Nemesis:
    cluster: LocalCluster
    rng: random.Random
    clock: callable
    hold: tuple[float, float] = (1.5, 4.0)  # seconds a fault lasts
    quiet: tuple[float, float] = (1.0, 2.0)  # seconds between faults
    events: list[Event] = field(default_factory=list)
    #: Every process the nemesis killed (its pid): any other exit is a crash.
    killed: set[int] = field(default_factory=set)
    #: Installs the nemesis cut by a SIGKILL (kill-during-install saw the fetch start).
    installs_cut: int = 0

    def run(self, duration: float, stop: threading.Event) -> None:
        """Faults for `duration` seconds (or until `stop`), then everything healed."""
        deadline = time.monotonic() + duration
        deck: list[str] = []
        try:
            while time.monotonic() < deadline and not stop.is_set():
                if not deck:
                    deck = list(FAULTS)
                    self.rng.shuffle(deck)
                fault = deck.pop()
                event = Event(fault, [], self.clock())
                heal = getattr(self, "_" + fault.replace("-", "_"))(event)
                self.events.append(event)
                stop.wait(min(self.rng.uniform(*self.hold), max(0.0, deadline - time.monotonic())))
                heal()
                event.end = self.clock()
                stop.wait(self.rng.uniform(*self.quiet))
        finally:
            self.heal_all()

    # ------------------------------------------------------------------ targets

    def _leader_or_random(self) -> str:
        leader = self.cluster.leader() if self.rng.random() < 0.5 else None
        return leader or self.rng.choice(self.cluster.ids)

    # ------------------------------------------------------------------ faults

    def _sigkill_worker(self, node: str) -> None:
        """SIGKILL a node's worker, remembered as killed by the nemesis."""
        worker = self.cluster.processes[node].worker
        if worker is not None and worker.poll() is None:  # a dead one crashed before
            self.killed.add(worker.pid)
        self.cluster.kill_worker(node)

    def _sigkill_web(self, node: str) -> None:
        web = self.cluster.processes[node].web
        if web is not None and web.poll() is None:
            self.killed.add(web.pid)
        kill_web_group(self.cluster, node)

    def _kill_worker(self, event: Event):
        node = self._leader_or_random()
        event.targets = [node]
        self._sigkill_worker(node)
        return lambda: self.cluster.start_worker(node)

    def _kill_web(self, event: Event):
        node = self._leader_or_random()
        event.targets = [node]
        self._sigkill_web(node)
        return lambda: self.cluster.start_web(node)

    def _kill_node(self, event: Event):
        node = self._leader_or_random()
        event.targets = [node]
        self._sigkill_worker(node)
        self._sigkill_web(node)

        def restart() -> None:
            self.cluster.start_worker(node)
            self.cluster.start_web(node)

        return restart

    def _kill_all_workers(self, event: Event):
        event.targets = list(self.cluster.ids)
        for node in self.cluster.ids:
            self._sigkill_worker(node)

        def restart() -> None:
            for node in self.cluster.ids:
                self.cluster.start_worker(node)

        return restart

    def _pause_worker(self, event: Event):
        node = self._leader_or_random()
        event.targets = [node]
        self.cluster.pause_worker(node)
        return lambda: self.cluster.resume_worker(node)

    def _isolate_leader(self, event: Event):
        leader = self.cluster.leader() or self.rng.choice(self.cluster.ids)
        event.targets = [leader]
        self.cluster.partition(leader)
        return self.cluster.heal

    def _split(self, event: Event):
        ids = list(self.cluster.ids)
        minority = self.rng.sample(ids, (len(ids) - 1) // 2)
        event.targets = minority
        self.cluster.partition(*minority)
        return self.cluster.heal

    def _bridge(self, event: Event):
        ids = list(self.cluster.ids)
        self.rng.shuffle(ids)
        a, b = ids[0], ids[1]
        event.targets = [a, b]  # the cut pair; every other node sees both
        self.cluster.cut(isolate([a, b], {a}))
        return self.cluster.heal

    def _ring(self, event: Event):
        ids = list(self.cluster.ids)
        self.rng.shuffle(ids)
        hears = {ids[i]: ids[i - 1] for i in range(len(ids))}  # each hears its predecessor
        event.targets = ids
        self.cluster.cut([(a, b) for a in ids for b in ids if a != b and hears[b] != a])
        return self.cluster.heal

    def _kill_during_install(self, event: Event):
        leader = self.cluster.leader()
        node = self.rng.choice([n for n in self.cluster.ids if n != leader])
        event.targets = [node]
        self._sigkill_worker(node)

        def restart_kill_restart() -> None:
            # Until the others' logs are compacted past it (the workload writes on).
            deadline = time.monotonic() + INSTALL_WATCH
            while time.monotonic() < deadline and not self._behind_compaction(node):
                time.sleep(0.2)
            log = self.cluster.data_dir / "logs" / f"worker-{node}.log"
            seen = log.stat().st_size if log.exists() else 0
            self.cluster.start_worker(node)
            deadline = time.monotonic() + INSTALL_WATCH
            while time.monotonic() < deadline:
                with open(log, "rb") as f:
                    f.seek(seen)
                    if b"snapshot (at least slot" in f.read():
                        time.sleep(self.rng.uniform(0.0, 0.3))  # mid-fetch or mid-install
                        self._sigkill_worker(node)
                        self.installs_cut += 1
                        self.cluster.start_worker(node)
                        return
                time.sleep(0.02)

        return restart_kill_restart

    def _behind_compaction(self, node: str) -> bool:
        """Whether every other node compacted its log past `node`'s applied index."""
        sql = "SELECT applied_index, compacted_through FROM consensus_applied_state"
        try:
            applied = self.cluster.query(node, sql)[0][0]
            return all(
                self.cluster.query(other, sql)[0][1] > applied
                for other in self.cluster.ids
                if other != node
            )
        except Exception:  # noqa: BLE001 - a database being restarted: not yet
            return False

    # ------------------------------------------------------------------ healing

    def heal_all(self) -> None:
        """Network whole, every process running and not paused."""
        self.cluster.heal()
        for node in self.cluster.ids:
            processes = self.cluster.processes[node]
            if processes.worker is None or processes.worker.poll() is not None:
                self.cluster.start_worker(node)
            else:
                self.cluster.resume_worker(node)
            if self.cluster.web and (processes.web is None or processes.web.poll() is not None):
                self.cluster.start_web(node)


class ProcessWatch(threading.Thread):
    """Every worker and web server a cluster runs while the watch runs (polled every
    `interval` s), to tell afterwards which exited without the nemesis killing them."""

    def __init__(self, cluster: LocalCluster, nemesis: Nemesis, interval: float = 0.2) -> None:
        super().__init__(name="process-watch", daemon=True)
        self.cluster = cluster
        self.nemesis = nemesis
        self.interval = interval
        self.seen: dict[int, tuple[str, str, subprocess.Popen]] = {}  # pid -> node, kind, it
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.look()
            self.done.wait(self.interval)

    def look(self) -> None:
        for node in self.cluster.ids:
            processes = self.cluster.processes[node]
            for kind, process in (("worker", processes.worker), ("web server", processes.web)):
                if process is not None:
                    self.seen.setdefault(process.pid, (node, kind, process))

    def crashes(self) -> list[str]:
        """Stop watching; every process that exited unkilled by the nemesis, and every one
        not running now (the nemesis restarts what it kills, so neither may happen)."""
        self.done.set()
        self.join(5)
        self.look()
        found = []
        for pid, (node, kind, process) in sorted(self.seen.items()):
            code = process.poll()
            if code is not None and pid not in self.nemesis.killed:
                log = "worker" if kind == "worker" else "web"
                found.append(
                    f"the {kind} of {node} (pid {pid}) exited with {code} and the nemesis did "
                    f"not kill it: see logs/{log}-{node}.log"
                )
        for node in self.cluster.ids:
            processes = self.cluster.processes[node]
            running = [("worker", processes.worker)]
            if self.cluster.web:
                running.append(("web server", processes.web))
            for kind, process in running:
                if process is None or process.poll() is not None:
                    found.append(f"the {kind} of {node} is not running at the end of the run")
        return found


def kill_web_group(cluster: LocalCluster, node: str) -> None:
    """SIGKILL a node's web server: the gunicorn master and its workers (one process
    group, as LocalCluster starts each process in a session of its own)."""
    process = cluster.processes[node].web
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    cluster.processes[node].web = None
