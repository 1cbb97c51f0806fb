"""The benchmark suite in its quickest form: smtpmux, a bare sink, smtp-sink, one tiny workload.

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


pytestmark = needs("smtp-source", "smtp-sink")


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


def test_suite_refuses_unknown_names() -> None:
    done = subprocess.run(
        [sys.executable, str(SUITE), "--servers", "nonesuch"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "unknown server nonesuch" in done.stderr
