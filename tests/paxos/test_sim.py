"""The simulator: thousands of seeds pass, runs replay exactly, and every deliberately
broken behaviour is caught within the seeds CI runs."""

import os
import subprocess
import sys

import pytest

from consensus.host import HOST_BUGS
from consensus.paxos import KNOWN_BUGS
from consensus.sim import Failure, Params, Stats, run_seed, run_seeds

# Thousands of seeds, CPU-bound on every core: out of the inner-loop tier (README, "Test tiers").
pytestmark = pytest.mark.sim

# The seeds CI runs: 1,500 on 3 nodes and 1,500 on 5 nodes, plus JSON-wire seeds.
CI_SEEDS = 1500
WIRE_SEEDS = 200


def _failures_text(summary) -> str:
    return "\n".join(f"seed {f.seed}: {f.reason}\n  replay: {f.replay}" for f in summary.failures)


@pytest.mark.parametrize("nodes", [3, 5])
def test_ci_seeds_keep_every_safety_and_liveness_property(nodes):
    summary = run_seeds([(seed, Params(nodes=nodes)) for seed in range(1, CI_SEEDS + 1)])
    print(f"\n{nodes} nodes: {summary.line()}")
    assert not summary.failures, _failures_text(summary)
    assert summary.seeds == CI_SEEDS
    # The faults really happened, failed persists (the host rebuilt its core) among them.
    assert summary.crashes > CI_SEEDS and summary.partitions > CI_SEEDS
    assert summary.persist_failures > CI_SEEDS // 20
    assert summary.commands > 20 * CI_SEEDS
    # Logs were compacted, and nodes behind them caught up by installing snapshots, some
    # crashing during the transfer or the install, some refusing a damaged snapshot.
    assert summary.compactions > CI_SEEDS and summary.snapshots > CI_SEEDS
    assert summary.installs > CI_SEEDS // 10
    assert summary.transfer_crashes > CI_SEEDS // 20 and summary.damaged_refused > 0


def test_seeds_with_every_message_round_tripped_through_json():
    jobs = [
        (seed, Params(nodes=3 if seed % 2 else 5, wire=True)) for seed in range(1, WIRE_SEEDS + 1)
    ]
    summary = run_seeds(jobs)
    assert not summary.failures, _failures_text(summary)
    # The seeds ran, and every message of them went through its JSON form.
    assert summary.seeds == WIRE_SEEDS and summary.commands > 20 * WIRE_SEEDS
    assert summary.wire_messages == summary.messages > 0


def _digest_in_subprocess(seed: int, hashseed: str) -> str:
    code = (
        "from consensus.sim import Params, run_seed;"
        f"print(run_seed({seed}, Params(nodes=5)).digest)"
    )
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_seed_replays_exactly_in_another_process_with_another_hash_seed():
    here = run_seed(7, Params(nodes=5))
    assert isinstance(here, Stats)
    assert _digest_in_subprocess(7, "1") == _digest_in_subprocess(7, "2") == here.digest
    assert run_seed(8, Params(nodes=5)).digest != here.digest


# Each broken behaviour: the scenario that exposes it, the seeds CI runs for it, and the
# words of the violation the checks must report (any one of them). The core's (KNOWN_BUGS),
# then the host's (HOST_BUGS: the runtime's loop and its state machine).
BROKEN = {
    "ignore_promise": ("faults", 300, ("below its promise",)),
    "no_adopt": ("faults", 300, ("two values chosen",)),
    "no_dedup": ("faults", 300, ("twice",)),
    "forget_on_restart": ("faults", 300, ("below the",)),
    "stale_read": ("faults", 300, ("stale read",)),
    "catchup_skip": ("faults", 300, ("learned slot", "detected")),
    "ignore_prevote": ("rejoin", 8, ("disruption",)),
    "catchup_unpaced": ("rejoin", 8, ("unpaced catch-up",)),
    "ignore_forward": ("faults", 300, ("liveness",)),
    "send_before_persist": ("faults", 300, ("before persisting",)),
    "apply_out_of_order": ("faults", 300, ("out of order",)),
    "forget_applied_on_restart": ("faults", 300, ("again",)),
    "compact_beyond_snapshot": ("faults", 300, ("beyond its latest snapshot",)),
    "install_resets_acceptor": ("faults", 300, ("installed a snapshot and its promise went",)),
    "install_unverified": ("faults", 300, ("whose history differs",)),
}


def test_every_broken_behaviour_has_a_canary():
    assert set(BROKEN) == KNOWN_BUGS | HOST_BUGS | {"forget_on_restart"}


def _params(bug: str, nodes: int) -> Params:
    scenario, _, _ = BROKEN[bug]
    return Params(nodes=nodes, bugs=frozenset({bug}), scenario=scenario, rejoin_writes=500)


@pytest.mark.parametrize("bug", sorted(BROKEN))
@pytest.mark.parametrize("nodes", [3, 5])
def test_each_broken_behaviour_is_caught_within_the_ci_seeds(bug, nodes):
    _, seeds, words = BROKEN[bug]
    caught = []
    # In blocks, stopping at the first block that catches it: the seeds are the CI's.
    for start in range(1, seeds + 1, 40):
        block = range(start, min(start + 40, seeds + 1))
        summary = run_seeds([(seed, _params(bug, nodes)) for seed in block])
        caught = [f for f in summary.failures if any(w in f.reason for w in words)]
        if caught:
            break
    assert caught, f"{bug} was not caught in seeds 1-{seeds} on {nodes} nodes"
    # The printed replay reproduces the same violation.
    first = caught[0]
    assert f"--first-seed {first.seed} " in first.replay and f"--bug {bug}" in first.replay
    again = run_seed(first.seed, _params(bug, nodes))
    assert isinstance(again, Failure) and again.reason == first.reason


# The rejoin scenario's CI seeds: a follower away while writes commit, then back.
REJOIN_SEEDS = 12


@pytest.mark.parametrize("nodes", [3, 5])
def test_a_returning_node_causes_no_election_and_catches_up_within_the_bound(nodes):
    jobs = [
        (seed, Params(nodes=nodes, scenario="rejoin", rejoin_writes=2000))
        for seed in range(1, REJOIN_SEEDS + 1)
    ]
    summary = run_seeds(jobs)
    print(f"\n{nodes} nodes, rejoin: {summary.line()}")
    assert not summary.failures, _failures_text(summary)
    # The writes, and the probe's writes during each catch-up (one per 20 ms).
    assert 2000 * REJOIN_SEEDS < summary.commands < 2000 * REJOIN_SEEDS + 250 * REJOIN_SEEDS
    assert 0 < summary.catchup <= Params.catchup_time
    # Some came back behind the leader's compaction point and installed its snapshot.
    assert summary.installs > 0
    # Catch-up came in chunks: no message near the size of what the node lacked.
    assert summary.max_message <= 300 * 1024


def test_reads_are_answered_and_checked_in_the_ci_seeds():
    summary = run_seeds([(seed, Params(nodes=3)) for seed in range(1, 41)])
    assert not summary.failures, _failures_text(summary)
    assert summary.reads > 40 * 50


def test_the_command_line_prints_a_replay_line_and_exits_non_zero_on_a_violation():
    cmd = [sys.executable, "-m", "consensus.sim", "--seeds", "40", "--first-seed", "1"]
    broken = subprocess.run(cmd + ["--bug", "no_adopt"], capture_output=True, text=True)
    assert broken.returncode == 1
    replay = next(line for line in broken.stdout.splitlines() if "replay:" in line)
    replay_cmd = replay.split("replay: ", 1)[1].split()
    assert replay_cmd[:3] == ["python", "-m", "consensus.sim"]
    again = subprocess.run([sys.executable, *replay_cmd[1:]], capture_output=True, text=True)
    assert again.returncode == 1 and "1 FAILED" in again.stdout
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("sim ok: 40 seeds")
