"""The benchmark's pure parts: percentiles, the workload's keys and values, how each
system spells a request (etcd's gateway, configstore's REST API), the comparison rows,
ratios and goals, and the docs section they are written into. No etcd, no cluster."""

from __future__ import annotations

import base64
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks import report
from benchmarks.compare import WriteCosts, build_rows
from benchmarks.etcd import EtcdGateway, leader_of
from benchmarks.http import (
    KEY_BYTES,
    VALUE_BYTES,
    Client,
    Endpoint,
    PhaseResult,
    Tally,
    key_name,
    request_for,
    value_for,
)
from benchmarks.ours import ConfigstoreApi, block_pattern
from benchmarks.stats import median, percentile

# ---------------------------------------------------------------------- percentiles


def test_percentile_is_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0, 7.0], 50) == 3.0
    assert percentile([3.0, 7.0], 51) == 7.0
    assert percentile([4.2], 99) == 4.2


def test_percentile_of_nothing_is_nan_and_out_of_range_is_refused():
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 0)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_median_of_odd_and_even_counts():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert math.isnan(median([]))


# ---------------------------------------------------------------------- the workload


def test_keys_are_eight_bytes_and_values_256_distinct_bytes():
    assert len(key_name(0).encode()) == KEY_BYTES == 8
    assert len(key_name(123456).encode()) == 8
    assert len(value_for(63, 10**8).encode()) == VALUE_BYTES == 256
    assert value_for(1, 2) != value_for(2, 1)


def test_concurrent_clients_walk_different_keys():
    api = EtcdGateway()
    first = {request_for(api, "write", c, 0, 16).body for c in range(16)}
    assert len(first) == 16


def test_an_unknown_operation_is_refused():
    with pytest.raises(ValueError):
        request_for(EtcdGateway(), "scan", 0, 0, 1)


# ---------------------------------------------------------------------- etcd's gateway


def _decoded(body: bytes) -> dict:
    return json.loads(body)


def test_etcd_put_is_a_post_with_base64_key_and_value():
    request = EtcdGateway().write("k0000001", "v" * 256)
    assert (request.method, request.path) == ("POST", "/v3/kv/put")
    body = _decoded(request.body)
    assert base64.b64decode(body["key"]) == b"k0000001"
    assert base64.b64decode(body["value"]) == b"v" * 256
    assert ("Content-Type", "application/json") in request.headers


def test_etcd_reads_are_linearizable_unless_serializable_is_asked():
    gateway = EtcdGateway()
    linearizable = gateway.read("k0000001", linearizable=True)
    serializable = gateway.read("k0000001", linearizable=False)
    assert linearizable.path == serializable.path == "/v3/kv/range"
    assert _decoded(linearizable.body) == {"key": base64.b64encode(b"k0000001").decode()}
    assert _decoded(serializable.body)["serializable"] is True


def test_etcd_success_is_200_without_an_error_body():
    gateway = EtcdGateway()
    assert gateway.succeeded(200, b'{"header":{"revision":"5"}}')
    assert not gateway.succeeded(503, b'{"error":"etcdserver: leader changed","code":14}')
    assert not gateway.succeeded(200, b'{"error":"etcdserver: request timed out"}')


def test_the_leader_is_read_from_a_maintenance_status_answer():
    body = json.dumps(
        {
            "header": {"cluster_id": "1", "member_id": "8211f1d0f64f3269", "raft_term": "2"},
            "version": "3.4.23",
            "leader": "91bc3c398fb3c146",
            "raftIndex": "9",
        }
    ).encode()
    assert leader_of(body) == ("8211f1d0f64f3269", "91bc3c398fb3c146")


# ---------------------------------------------------------------------- configstore's API


def test_configstore_put_and_reads():
    api = ConfigstoreApi("secret-token")
    put = api.write("k0000001", "x" * 256)
    assert (put.method, put.path) == ("PUT", "/api/v1/keys/k0000001")
    assert json.loads(put.body) == {"value": "x" * 256, "reason": "benchmark"}
    assert ("Authorization", "Token secret-token") in put.headers
    assert api.read("k0000001", linearizable=True).path == "/api/v1/keys/k0000001"
    assert api.read("k0000001", linearizable=False).path == (
        "/api/v1/keys/k0000001?consistency=stale"
    )
    assert api.succeeded(201, b"") and api.succeeded(200, b"")
    assert not api.succeeded(503, b'{"error": "not_confirmed"}')


def test_wal_block_pattern_matches_only_our_databases():
    import re

    pattern = re.compile(block_pattern([16400, 16384]))
    assert pattern.search("blkref #0: rel 1663/16384/16700 fork main blk 0")
    assert pattern.search("blkref #0: rel 1663/16400/2619 fork main blk 3")
    assert not pattern.search("blkref #0: rel 1663/163840/16700 fork main blk 0")
    assert not pattern.search("blkref #0: rel 1663/5/16384 fork main blk 0")


# ---------------------------------------------------------------------- the client


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = json.dumps({"path": self.path, "len": len(body), "port": self.client_address[1]})
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer.encode())

    def log_message(self, *args):
        pass


def test_one_client_keeps_one_connection_across_requests():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = Client(Endpoint("127.0.0.1", server.server_address[1]), timeout=5)
        request = EtcdGateway().write("k0000001", "v" * 256)
        answers = [client.exchange(request) for _ in range(3)]
        client.close()
    finally:
        server.shutdown()
        server.server_close()
    assert [status for status, _ in answers] == [200, 200, 200]
    ports = {json.loads(body)["port"] for _, body in answers}
    assert len(ports) == 1  # the same connection each time
    assert json.loads(answers[0][1]) == {
        "path": "/v3/kv/put",
        "len": len(request.body),
        "port": ports.pop(),
    }


# ---------------------------------------------------------------------- rows and goals


def _phase(op: str, clients: int, ok: int, latencies: list[float] | None = None) -> PhaseResult:
    return PhaseResult(op, clients, 10.0, Tally(ok=ok, latencies_ms=sorted(latencies or [])))


def test_ratio_is_ours_over_etcd_and_goals_read_both_ways():
    slow = report.Row("write latency p50", "ms", 9.0, 2.0, True, report.Goal(3, at_most=True))
    assert slow.ratio == 4.5 and slow.goal_met is False
    assert slow.goal.shortfall(slow.ratio) == "1.50× short of the goal"
    fast = report.Row("writes", "ops/s", 600, 1000, False, report.Goal(0.5, at_most=False))
    assert fast.ratio == 0.6 and fast.goal_met is True
    half = report.Row("reads", "ops/s", 250, 1000, False, report.Goal(0.5, at_most=False))
    assert half.goal.shortfall(half.ratio) == "2.00× short of the goal"
    only_ours = report.Row("tasks per write", "tasks", 2.5, None, True)
    assert math.isnan(only_ours.ratio) and only_ours.goal_met is None


def test_rows_cover_every_measure_with_goals_at_64_clients():
    results = {}
    for name, scale in (("configstore", 1), ("etcd", 4)):
        results[name, "write", 1] = _phase("write", 1, 100 * scale, [10.0 / scale] * 99 + [50.0])
        for c in (16, 64):
            results[name, "write", c] = _phase("write", c, 200 * scale * c // 16)
        for op in ("read", "local_read"):
            for c in (1, 16, 64):
                results[name, op, c] = _phase(op, c, 300 * scale)
    recovery = {"configstore": [0.5, 0.4, 0.9], "etcd": [1.2, 1.1, 1.3]}
    costs = {c: WriteCosts(3.0, 1.5) for c in (1, 16, 64)}
    rows = build_rows(results, recovery, costs, [1, 16, 64])
    by_measure = {r.measure: r for r in rows}
    p50 = by_measure["write latency p50, 1 client"]
    assert (p50.ours, p50.etcd, p50.ratio) == (10.0, 2.5, 4.0) and not p50.goal_met
    assert by_measure["write throughput, 64 clients"].goal is not None
    assert by_measure["write throughput, 16 clients"].goal is None
    assert by_measure["write throughput, 64 clients"].ours == 80.0  # 800 ok in 10 s
    recovery_row = by_measure["leader-loss recovery, median of 3"]
    assert (recovery_row.ours, recovery_row.etcd) == (0.5, 1.2) and recovery_row.goal_met
    goals = [r.measure for r in rows if r.goal is not None]
    assert goals == [
        "write latency p50, 1 client",
        "write throughput, 64 clients",
        "linearizable read throughput, 64 clients",
        "stale (ours) / serializable (etcd) reads, 64 clients",
        "leader-loss recovery, median of 3",
    ]
    assert by_measure["Celery tasks per committed write, 16 clients"].etcd is None


def test_the_table_has_a_line_per_row_with_verdicts():
    rows = [
        report.Row("write latency p50, 1 client", "ms", 12.04, 2.0, True, report.Goal(3, True)),
        report.Row("Celery tasks per committed write", "tasks", 2.5, None, True, digits=2),
    ]
    lines = report.table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    assert len({len(line) for line in lines}) == 1  # aligned
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0] == report.HEADER
    assert cells[2] == ["write latency p50, 1 client", "ms", "12.0", "2.0", "6.02×", "lower",
                        "≤ 3× MISSED"]  # fmt: skip
    assert cells[3] == ["Celery tasks per committed write", "tasks", "2.50", "—", "—", "lower", ""]
    assert report.goal_lines(rows) == [
        "- write latency p50, 1 client: configstore/etcd = 6.02×, goal ≤ 3×: "
        "MISSED, 2.01× short of the goal"
    ]


def test_the_docs_section_is_replaced_in_place_or_appended():
    original = f"# Benchmarks\n\nintro\n\n{report.BEGIN}\nold table\n{report.END}\n\nafter\n"
    replaced = report.replace_section(original, "new table")
    assert "old table" not in replaced and "new table" in replaced
    assert replaced.startswith("# Benchmarks\n\nintro\n") and replaced.endswith("\nafter\n")
    assert report.replace_section(replaced, "newer").count(report.BEGIN) == 1
    appended = report.replace_section("# Benchmarks\n", "first table")
    assert appended == f"# Benchmarks\n\n{report.BEGIN}\nfirst table\n{report.END}\n"


def test_the_docs_show_the_command_without_its_note():
    from benchmarks.compare import _without_note

    argv = ["--seconds", "3", "--note", "busy machine", "--write-docs", "--note=again"]
    assert _without_note(argv) == ["--seconds", "3", "--write-docs"]
