"""What every node says about itself: read from the status each worker publishes on its
own broker every half second (consensus.runtime.NodeRuntime.publish_status).

Used by `manage.py clusterstatus`, the admin's cluster page, `/api/v1/cluster/` and
`/healthz`. A node whose status is missing or older than STALE seconds is unreachable.
"""

from __future__ import annotations

import json
import logging
import math
import time

import redis

from consensus import conf
from consensus.runtime import status_key

STALE = 3.0
log = logging.getLogger(__name__)

#: The fields every reader of a status relies on, and their types.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "time": (int, float),
    "role": str,
    "leader": (str, type(None)),
    "quorum": bool,
    "commit_index": int,
    "applied_index": int,
}


WARN_EVERY = 60.0
#: How long node_has_quorum reuses a status it read: the status itself is published
#: every 0.5 s, and every write and linearizable read asks.
QUORUM_CHECK_REUSE = 0.1


class _Reader:
    """What this process keeps to read statuses (one per process, consensus.conf): a Redis
    client (with its connection pool) per broker, the statuses read recently, and when a
    malformed status was last logged per node."""

    def __init__(self) -> None:
        self.clients: dict[str, redis.Redis] = {}
        self.recent: dict[str, tuple[float, dict | None]] = {}
        self.warned: dict[str, float] = {}

    def client(self, broker_url: str) -> redis.Redis:
        if broker_url not in self.clients:
            self.clients[broker_url] = redis.Redis.from_url(
                broker_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
        return self.clients[broker_url]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def _reader() -> _Reader:
    return conf.process().get("consensus.status_reader", _Reader)


def parse_status(raw: bytes | str) -> dict | None:
    """A published status, or None when it is not one: not JSON, not an object, or missing a
    field of _FIELDS or holding it with another type (a bool is not an index). Anyone who can
    write to the broker can write this key; a malformed status means "status unknown"."""
    try:
        status = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(status, dict):
        return None
    for name, kind in _FIELDS.items():
        value = status.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return None
    if not math.isfinite(status["time"]):
        return None
    return status


def read_status(node_id: str, broker_url: str) -> dict | None:
    """The node's status as it published it, or None when it is missing, older than STALE
    seconds, malformed or unreadable (the broker down)."""
    reader = _reader()
    try:
        raw = reader.client(broker_url).get(status_key(node_id))
    except redis.RedisError:
        return None
    if raw is None:
        return None
    status = parse_status(raw)
    if status is None:
        if time.monotonic() - reader.warned.get(node_id, -1e9) > WARN_EVERY:  # not per request
            reader.warned[node_id] = time.monotonic()
            log.warning("the status of %s on its broker is malformed: treated as unknown", node_id)
        return None
    return status if time.time() - status["time"] <= STALE else None


def cluster_status(peers: dict[str, str] | None = None) -> dict:
    """Every node's id, reachability, view of the leader, ballot, chosen and applied index,
    and lag behind the most advanced node."""
    peers = peers or conf.node().peers
    nodes = []
    for node_id, url in sorted(peers.items()):
        status = read_status(node_id, url)
        nodes.append({"node_id": node_id, "reachable": status is not None, **(status or {})})
    reachable = [n for n in nodes if n["reachable"]]
    top = max((n["commit_index"] for n in reachable), default=0)
    for n in nodes:
        n["lag"] = top - n["applied_index"] if n["reachable"] else None
    leaders = {n["leader"] for n in reachable if n.get("leader")}
    leader = next((n["node_id"] for n in reachable if n.get("role") == "leader"), None)
    return {
        "leader": leader,
        "agreed_leader": leaders == {leader} if leader else False,
        "quorum": len(peers) // 2 + 1,
        "reachable": len(reachable),
        "nodes": nodes,
    }


def node_has_quorum(node_id: str | None = None) -> tuple[bool, dict | None]:
    """Whether this node can reach a quorum: it is the leader and heard from a quorum
    recently, or it follows a leader it heard from recently. Returns (ok, its status)."""
    node = conf.node()
    node_id = node_id or node.node_id
    now = time.monotonic()
    recent = _reader().recent
    read_at, status = recent.get(node_id, (-1e9, None))
    if now - read_at > QUORUM_CHECK_REUSE:
        status = read_status(node_id, node.peers[node_id])
        recent[node_id] = (now, status)
    if status is None:
        return False, None
    return bool(status.get("quorum")), status


def leader_contact_age(status: dict, now: float) -> float | None:
    """Seconds since the node of `status` last heard from the leader it follows, as of `now`
    (wall clock): 0 at the status's time when it is the leader itself; None when it knows no
    leader or has never heard from it."""
    if status.get("role") == "leader":
        return max(0.0, now - status["time"])
    peers = status.get("peers")
    leader = status.get("leader")
    if not isinstance(peers, dict) or leader is None:
        return None
    heard = peers.get(leader)
    if not isinstance(heard, int | float) or isinstance(heard, bool) or not math.isfinite(heard):
        return None
    return max(0.0, now - status["time"] + heard)
