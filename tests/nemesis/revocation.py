"""A user whose permission is revoked and restored during a fault run, while writers keep
using its token through every node.

The toggler takes configstore.change_entry away from the user and gives it back every few
seconds (through a random node, as an operator would, faults or not); two writers put
keys under churn/ with the user's token through random nodes. The check reads the log's
order from the healed nodes: every write by the user that committed must come after a
grant and before the next revocation in the log (a write racing a revocation is refused
at apply: rejected `forbidden`), whatever the nodes, the faults and the answers were."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter

import requests

from consensus.paxos.types import Value
from devcluster.localcluster import LocalCluster
from tests.nemesis import workload

PERMISSION = "configstore.change_entry"


class Revocation:
    def __init__(
        self,
        cluster: LocalCluster,
        admin_token: str,
        rng: random.Random,
        stop: threading.Event,
        run_id: str,
    ) -> None:
        self.cluster, self.admin, self.rng, self.stop = cluster, admin_token, rng, stop
        self.user = f"churn-{run_id}"
        self.secret = cluster.add_user(self.user, "--perm", PERMISSION)
        self.urls = [cluster.web_url(node) for node in cluster.ids]
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._toggle, args=(random.Random(rng.random()),), daemon=True)
        ] + [
            threading.Thread(target=self._write, args=(random.Random(rng.random()), k), daemon=True)
            for k in range(2)
        ]
        self.committed = self.forbidden = 0

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(workload.REQUEST_TIMEOUT + workload.CONNECT_TIMEOUT + 5)

    def _count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def _call(self, rng, method: str, path: str, body, token: str):
        return requests.request(
            method,
            rng.choice(self.urls) + path,
            json=body,
            headers={"Authorization": f"Token {token}"},
            timeout=(workload.CONNECT_TIMEOUT, workload.REQUEST_TIMEOUT),
        )

    def _toggle(self, rng: random.Random) -> None:
        granted = True
        while not self.stop.wait(rng.uniform(1.5, 4.0)):
            granted = not granted
            body = {"permissions": [PERMISSION] if granted else [], "reason": "churn"}
            try:
                answer = self._call(
                    rng, "PATCH", f"/api/v1/access/users/{self.user}", body, self.admin
                )
                self._count(f"{'grant' if granted else 'revoke'} {answer.status_code}")
            except requests.RequestException:
                self._count(f"{'grant' if granted else 'revoke'} no answer")

    def _write(self, rng: random.Random, k: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                answer = self._call(
                    rng, "PUT", f"/api/v1/keys/churn/{self.user}/{k}", {"value": n}, self.secret
                )
                self._count(f"write {answer.status_code}")
            except requests.RequestException:
                self._count("write no answer")
            self.stop.wait(0.02)

    def check(self) -> list[str]:
        """Problems: a write by the user committed while the log had it revoked."""
        node = self.cluster.ids[0]
        changes = self.cluster.query(
            node,
            "SELECT index, request_id, new FROM configstore_access_history WHERE subject = %s "
            "AND outcome = 'committed' ORDER BY index, id",
            [f"user:{self.user}"],
        )
        writes = self.cluster.query(
            node,
            "SELECT index, request_id, key, outcome, error FROM configstore_history "
            "WHERE actor = %s ORDER BY index, id",
            [self.user],
        )
        self.committed = sum(1 for w in writes if w[3] == "committed")
        self.forbidden = sum(1 for w in writes if w[4] == "forbidden")
        slots = {w[0] for w in writes} & {c[0] for c in changes}
        order = {}
        for slot, value in self.cluster.query(
            node,
            "SELECT slot, value FROM consensus_chosen_slot WHERE slot = ANY(%s)",
            [list(slots)],
        ):
            value = Value.from_json(json.loads(value) if isinstance(value, str) else value)
            for position, command in enumerate(value.commands):
                order.setdefault((slot, command.request_id), position)
        problems = []
        for index, request_id, key, outcome, _ in writes:
            if outcome != "committed":
                continue
            before = [
                c
                for c in changes
                if c[0] < index
                or (
                    c[0] == index
                    and order.get((index, c[1]), 0) < order.get((index, request_id), 0)
                )
            ]
            granted = not before or PERMISSION in (before[-1][2] or {}).get("permissions", [])
            if not granted:
                problems.append(
                    f"{self.user}'s write of {key} committed at log index {index}, after its "
                    f"permission was revoked at index {before[-1][0]}"
                )
        return problems

    def summary_line(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        return (
            f"  revoked user {self.user}: {self.committed} writes committed while granted, "
            f"{self.forbidden} rejected forbidden at apply; answers: {counts}"
        )
