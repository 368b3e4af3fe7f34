"""A 3-member etcd cluster on loopback, started and stopped by the benchmark, and the
requests of etcd v3.4's HTTP/JSON gRPC gateway.

The etcd binary is Debian's `etcd-server` package (3.4). Each member gets its own
temporary data folder and free client and peer ports (never 2379/2380, where a
Debian-started etcd service would listen), a cluster token of its own, and an environment
without ETCD_* variables, so nothing of a system etcd reaches the benchmark's cluster.

Gateway (v3.4): POST /v3/kv/put {"key", "value"} and /v3/kv/range {"key"[, "serializable"]},
keys and values base64; POST /v3/maintenance/status tells a member's id and its leader's.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.http import Client, Endpoint, Request
from devcluster.localcluster import free_ports, stop_groups

SYSTEM_PORTS = (2379, 2380)
INSTALL_HINT = "install it with: apt-get install -y etcd-server   (as root; Debian's etcd 3.4)"


class EtcdUnavailable(RuntimeError):
    """No etcd binary, and it could not be installed."""


# ---------------------------------------------------------------------- gateway requests


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _post(path: str, body: dict) -> Request:
    return Request(
        "POST",
        path,
        json.dumps(body, separators=(",", ":")).encode(),
        (("Content-Type", "application/json"),),
    )


@dataclass(frozen=True)
class EtcdGateway:
    """etcd's spelling of the benchmark's operations (see benchmarks.http.Api)."""

    name: str = "etcd"

    def write(self, key: str, value: str) -> Request:
        return _post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def read(self, key: str, *, linearizable: bool) -> Request:
        body: dict = {"key": _b64(key)}
        if not linearizable:
            body["serializable"] = True  # answered from the member's own state
        return _post("/v3/kv/range", body)

    def status(self) -> Request:
        return _post("/v3/maintenance/status", {})

    def succeeded(self, status: int, body: bytes) -> bool:
        # The gateway answers gRPC errors with a non-200 status and {"error": ...}.
        return status == 200 and b'"error"' not in body[:64]


def leader_of(status_body: bytes) -> tuple[str, str]:
    """(this member's id, its leader's id) from a /v3/maintenance/status answer."""
    status = json.loads(status_body)
    return status["header"]["member_id"], status.get("leader", "0")


# ---------------------------------------------------------------------- the binary


def etcd_binary(*, install: bool = True) -> str:
    """The etcd binary's path; installs Debian's etcd-server when missing and root."""
    found = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if found:
        return found
    if not install or os.geteuid() != 0:
        raise EtcdUnavailable(f"etcd is not installed; {INSTALL_HINT}")
    print("etcd missing: apt-get install -y etcd-server", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install_cmd = ["apt-get", "install", "-y", "-q", "etcd-server"]
    if subprocess.run(install_cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(install_cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise EtcdUnavailable(f"apt-get install etcd-server failed:\n{done.stderr[-2000:]}")
    found = shutil.which("etcd")
    if not found:
        raise EtcdUnavailable(f"etcd-server installed but no etcd on PATH; {INSTALL_HINT}")
    return found


def etcd_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    first = out.splitlines()[0] if out else "unknown"
    return first.replace("etcd Version:", "").strip()


# ---------------------------------------------------------------------- the cluster


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.client_port)

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    """Three etcd members on loopback in a temporary folder; `stop()` kills them and
    removes the folder (use it as a context manager)."""

    def __init__(self, binary: str, members: int = 3) -> None:
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="configstore-cmp-etcd-"))
        ports = free_ports(2 * members, avoid=SYSTEM_PORTS)
        self.members = [
            Member(f"m{i + 1}", ports[2 * i], ports[2 * i + 1], self.root / f"m{i + 1}")
            for i in range(members)
        ]
        self.token = f"configstore-cmp-{secrets.token_hex(4)}"
        self.api = EtcdGateway()

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoints(self) -> list[Endpoint]:
        return [m.endpoint for m in self.members]

    def _args(self, member: Member) -> list[str]:
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        client_url = f"http://127.0.0.1:{member.client_port}"
        return [
            self.binary,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip

    def start_member(self, member: Member) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        log = open(self.root / f"{member.name}.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            member.process = subprocess.Popen(
                self._args(member),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the benchmark, which stops us
            )
        finally:
            log.close()

    def start(self, timeout: float = 30.0) -> None:
        try:
            for member in self.members:
                self.start_member(member)
            self.wait_for_leader(timeout)
        except BaseException:
            self.stop()
            raise

    def kill(self, member: Member) -> None:
        """SIGKILL the member's process (its data folder stays, to restart it)."""
        if member.process is not None and member.process.poll() is None:
            os.kill(member.process.pid, signal.SIGKILL)
            member.process.wait(30)
        member.process = None

    def leader(self, among: list[Member] | None = None) -> Member | None:
        """The member every live member of `among` names as leader, if they agree."""
        by_id: dict[str, Member] = {}
        named: set[str] = set()
        for member in among or self.members:
            if member.process is None:
                continue
            client = Client(member.endpoint, timeout=1.0)
            try:
                status, body = client.exchange(self.api.status())
            except OSError:
                return None
            finally:
                client.close()
            if status != 200:
                return None
            member_id, leader_id = leader_of(body)
            by_id[member_id] = member
            named.add(leader_id)
        if len(named) != 1:
            return None
        return by_id.get(named.pop())

    def wait_for_leader(self, timeout: float = 30.0) -> Member:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for member in self.members:
                if member.process is not None and member.process.poll() is not None:
                    raise RuntimeError(
                        f"etcd {member.name} exited with {member.process.returncode}: "
                        f"see {self.root / f'{member.name}.log'}"
                    )
            leader = self.leader()
            if leader is not None:
                return leader
            time.sleep(0.05)
        raise TimeoutError(f"etcd elected no leader within {timeout}s: see {self.root}")

    def stop(self) -> None:
        for member in self.members:
            stop_groups([member.process])
            member.process = None
        shutil.rmtree(self.root, ignore_errors=True)
