"""The benchmark suite in its quickest form: smtpmux, a bare sink, smtp-sink, one tiny workload;
and the core-only benchmark (benchmarks/session.py), which needs no tools.

It proves the suite runs end to end (servers start, smtp-source drives them, the report has
figures and ratios, every process is stopped), not that any figure is good.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools import needs

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "suite.py"


SESSION = ROOT / "benchmarks" / "session.py"


@needs("smtp-source", "smtp-sink")
def test_quick_suite_reports_figures_and_ratios() -> None:
    servers = ["smtpmux-asyncio", "bare-asyncio", "smtp-sink"]
    command = [sys.executable, str(SUITE), "--quick", "--json", "--duration", "0.1"]
    command += ["--servers", ",".join(servers), "--workloads", "W1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["settings"]["runs"] == 1
    results = {r["server"]: r for r in report["results"] if r["metric"] == "W1"}
    assert sorted(results) == sorted(servers)
    for result in results.values():
        assert result["errors"] == []
        assert result["median"] > 0 and result["min"] <= result["median"] <= result["max"]
        assert result["cpu_us_median"] is not None
    if "smtp-sink" in results:
        assert results["smtp-sink"]["ratio_to_smtp_sink"] == pytest.approx(1.0)
        assert results["smtpmux-asyncio"]["ratio_to_smtp_sink"] > 0
    assert results["smtpmux-asyncio"]["ratio_to_aiosmtpd"] is None  # not measured here


@needs("smtp-source", "smtp-sink")
def test_suite_refuses_unknown_names() -> None:
    done = subprocess.run(
        [sys.executable, str(SUITE), "--servers", "nonesuch"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "unknown server nonesuch" in done.stderr


@pytest.mark.parametrize("log", [False, True], ids=["quiet", "logging"])
def test_session_benchmark_reports_every_workload(log: bool) -> None:
    """benchmarks/session.py (the core alone, no tools needed) runs W1, W2 and W4 and checks
    that every message was accepted (it exits 1 otherwise)."""
    command = [sys.executable, str(SESSION), "--quick", "--json"] + (["--log"] if log else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["log"] is log and report["runs"] == 2
    rows = {row["workload"]: row for row in report["rows"]}
    assert sorted(rows) == ["W1", "W2", "W4"]
    assert [rows[k]["unit"] for k in ("W1", "W2", "W4")] == ["message", "session", "transaction"]
    assert all(row["cpu_us"] > 0 for row in rows.values())


def test_session_benchmark_refuses_unknown_workloads() -> None:
    done = subprocess.run(
        [sys.executable, str(SESSION), "--quick", "--workloads", "W1,W9"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "unknown workload W9" in done.stderr


def test_log_cost_reports_both_formats_against_quiet() -> None:
    """benchmarks/log_cost.py (the CLI's logging in process, on session.py's Bench) reports
    text and JSON, each against --quiet."""
    command = [sys.executable, str(ROOT / "benchmarks" / "log_cost.py"), "--messages", "2"]
    done = subprocess.run(
        [*command, "--rounds", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["text", "json"]
    assert all("--quiet" in line and "logged" in line for line in lines)
