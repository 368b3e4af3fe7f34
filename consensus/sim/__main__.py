"""python -m consensus.sim --seeds N --first-seed S [--nodes 3|5] [--bug NAME] [--wire]
                          [--scenario faults|rejoin] [--writes N] [--compaction on|off]

Prints one summary line; on any violation also one line per failing seed with the command
that replays it, and exits 1.
"""

from __future__ import annotations

import argparse
import sys

from consensus.host import HOST_BUGS
from consensus.paxos import KNOWN_BUGS

from .cluster import Params
from .runner import run_seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consensus.sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument(
        "--nodes", type=int, choices=(3, 5), help="cluster size (default: 3 and 5 alternately)"
    )
    parser.add_argument("--fault-time", type=float, default=Params.fault_time)
    parser.add_argument("--processes", type=int, default=None, help="default: one per CPU")
    parser.add_argument("--wire", action="store_true", help="round-trip messages through JSON")
    parser.add_argument(
        "--scenario",
        choices=("faults", "rejoin"),
        default="faults",
        help="faults: the nemesis; rejoin: a node away while --writes commands commit",
    )
    parser.add_argument("--writes", type=int, default=Params.rejoin_writes)
    parser.add_argument(
        "--compaction",
        choices=("on", "off"),
        help="snapshots and log compaction on every seed, or on none (default: 3 in 4)",
    )
    parser.add_argument(
        "--bug",
        action="append",
        default=[],
        choices=sorted(KNOWN_BUGS | HOST_BUGS | {"forget_on_restart"}),
        help="TEST ONLY: turn on a deliberately broken behaviour",
    )
    args = parser.parse_args(argv)
    jobs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        nodes = args.nodes or (3 if seed % 2 else 5)
        params = Params(
            nodes=nodes,
            fault_time=args.fault_time,
            wire=args.wire,
            bugs=frozenset(args.bug),
            scenario=args.scenario,
            rejoin_writes=args.writes,
            compaction=None if args.compaction is None else args.compaction == "on",
        )
        jobs.append((seed, params))
    summary = run_seeds(jobs, processes=args.processes)
    for failure in summary.failures:
        print(f"FAIL seed {failure.seed} ({failure.nodes} nodes): {failure.reason}")
        print(f"  replay: {failure.replay}")
    print(summary.line())
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
