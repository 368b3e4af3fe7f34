"""The deterministic simulator of the Paxos core: `python -m consensus.sim --help`."""

from .checks import Violation
from .cluster import Params, Simulation, Stats
from .runner import Failure, Summary, replay_command, run_seed, run_seeds

__all__ = [
    "Failure",
    "Params",
    "Simulation",
    "Stats",
    "Summary",
    "Violation",
    "replay_command",
    "run_seed",
    "run_seeds",
]
