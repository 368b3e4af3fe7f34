"""python manage.py clusterstatus [--json]

Every node's id, reachability, who it believes is leader, its ballot, chosen and applied
index, and lag, from the status each node's worker publishes on its own broker."""

import json

from django.core.management.base import BaseCommand

from consensus.cluster import cluster_status


class Command(BaseCommand):
    help = "Show the state of every node of the cluster."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args, **options) -> None:
        state = cluster_status()
        if options["json"]:
            self.stdout.write(json.dumps(state, indent=2, sort_keys=True))
            return
        header = f"{'node':6} {'reachable':9} {'role':9} {'leader':6} {'ballot':12} {'chosen':>8} {'applied':>8} {'lag':>5}"
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
