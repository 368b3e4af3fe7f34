"""benchmarks.rejoin's pure parts: what it reads of a returning node's snapshot installs
(its published status and its worker log) and how it prints the probe's phases. No cluster."""

from __future__ import annotations

from benchmarks.rejoin import _installs, _transfer_phases

LINE = "[2026-12-08 00:31:02,123: WARNING/MainProcess] node n1: installed n2's snapshot at slot 1548 in 3.4 s\n"


def test_installs_reads_the_status_and_only_the_log_written_since_the_start(tmp_path):
    log = tmp_path / "worker-n1.log"
    log.write_text(LINE.replace("1548", "900"))
    start = log.stat().st_size
    with open(log, "a") as out:
        out.write("something else\n" + LINE)
    published = {
        "state_transfer": True,
        "snapshot_installed_index": 1548,
        "counters": {"snapshot_installs": 1, "snapshot_install_failures": 0},
    }
    found = _installs(published, log, start)
    assert found == {
        "state_transfer": True,
        "installs": 1,
        "failures": 0,
        "installed_index": 1548,
        "logged": [("n2", 1548, 3.4)],
    }


def test_installs_without_a_log_or_a_status(tmp_path):
    found = _installs({}, tmp_path / "missing.log", 0)
    assert found["installs"] is None
    assert found["logged"] == []


def test_transfer_phases_prints_both_p50s_and_their_ratio():
    installs = {
        "state_transfer": True,
        "installs": 0,
        "failures": 0,
        "installed_index": 0,
        "logged": [],
    }
    text = _transfer_phases(installs, 100, [10.0, 20.0, 30.0], [40.0, 60.0], 1200)
    assert "no install line" in text
    assert "before the kill (3 nodes up) p50 20.0 ms" in text
    assert "while it caught up p50 50.0 ms" in text
    assert "2.50x" in text
    assert "nan" in _transfer_phases(installs, 100, [10.0], [], 5)
