"""python manage.py clusterstatus [--json]

Every node's id, reachability, who it believes is leader, its ballot, chosen and applied
index, and lag, from the status each node's worker publishes on its own broker.

Exit codes (the same as configstorectl's): 0 the cluster has an agreed leader and a quorum
of reachable nodes; 2 no cluster named (CONFIGSTORE_PEERS is not set: it does not guess a
default cluster); 5 no quorum or no agreed leader."""

import json
import os

from django.core.management.base import BaseCommand, CommandError

from consensus.cluster import cluster_status

EXIT_OK, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 2, 5


class Command(BaseCommand):
    help = "Show the state of every node of the cluster (exit 5 without a quorum)."
    # It only reads what the nodes publish on their brokers: no secret of a node is needed
    # (the line runcluster prints is run from any shell).
    requires_system_checks: list = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args, **options) -> None:
        if not os.environ.get("CONFIGSTORE_PEERS"):
            raise CommandError(
                "set CONFIGSTORE_PEERS to the cluster's nodes (n1=redis://...,n2=...; "
                "runcluster prints the line): no cluster is assumed",
                returncode=EXIT_USAGE,
            )
        state = cluster_status()
        healthy = bool(state["agreed_leader"]) and state["reachable"] >= state["quorum"]
        if options["json"]:
            self.stdout.write(json.dumps(state, indent=2, sort_keys=True))
        else:
            self._table(state)
        if not healthy:
            raise CommandError(
                "no quorum or no agreed leader: writes are refused now", returncode=EXIT_UNAVAILABLE
            )

    def _table(self, state: dict) -> None:
        header = (
            f"{'node':6} {'reachable':9} {'role':9} {'leader':6} {'ballot':12} {'chosen':>8} "
            f"{'applied':>8} {'lag':>5}"
        )
        self.stdout.write(header)
        for n in state["nodes"]:
            if not n["reachable"]:
                self.stdout.write(f"{n['node_id']:6} {'no':9}")
                continue
            self.stdout.write(
                f"{n['node_id']:6} {'yes':9} {n['role']:9} {n.get('leader') or '-':6} "
                f"{n['ballot']:12} {n['commit_index']:>8} {n['applied_index']:>8} {n['lag']:>5}"
            )
        verdict = "agreed" if state["agreed_leader"] else "NOT agreed"
        self.stdout.write(
            f"leader: {state['leader'] or 'none'} ({verdict}); "
            f"{state['reachable']}/{len(state['nodes'])} nodes reachable, quorum {state['quorum']}"
        )
