"""The fault run's process watch tells a crash from a kill by the nemesis: checked on real
processes standing in for a node's worker and web server."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from devcluster.localcluster import NodeProcesses
from tests.nemesis.faults import Nemesis, ProcessWatch


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])


@dataclass
class Processes:
    """What the watch reads of a LocalCluster: its node ids and their processes."""

    ids: tuple[str, ...] = ("n1", "n2")
    web: bool = True
    processes: dict[str, NodeProcesses] = field(default_factory=dict)


def test_an_exit_the_nemesis_did_not_cause_is_a_crash_and_a_restart_does_not_hide_it():
    cluster = Processes()
    for node in cluster.ids:
        cluster.processes[node] = NodeProcesses(worker=sleeper(), web=sleeper())
    nemesis = Nemesis(cluster, random.Random(1), time.monotonic)
    watch = ProcessWatch(cluster, nemesis, interval=0.05)
    watch.start()
    try:
        killed = cluster.processes["n1"].worker
        nemesis.killed.add(killed.pid)  # as Nemesis._sigkill_worker does before its SIGKILL
        killed.send_signal(signal.SIGKILL)
        crashed = cluster.processes["n2"].web
        crashed.send_signal(signal.SIGKILL)  # nobody told the nemesis
        killed.wait(5)
        crashed.wait(5)
        time.sleep(0.2)
        cluster.processes["n1"].worker = sleeper()  # both restarted, as heal_all does
        cluster.processes["n2"].web = sleeper()
        crashes = watch.crashes()
        assert len(crashes) == 1, crashes
        assert crashes[0].startswith(f"the web server of n2 (pid {crashed.pid}) exited with -9")

        cluster.processes["n2"].worker.kill()  # dead at the end, and not restarted
        cluster.processes["n2"].worker.wait(5)
        assert "the worker of n2 is not running at the end of the run" in watch.crashes()
    finally:
        for node in cluster.ids:
            for process in (cluster.processes[node].worker, cluster.processes[node].web):
                process.kill()
                process.wait(5)
