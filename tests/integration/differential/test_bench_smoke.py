"""Keeps benchmarks/http1_e2e.py from rotting: a --quick run must produce numbers for every target.

Never asserts speed: figures belong to the benchmark's report, not to a test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.envoy
@pytest.mark.slow
def test_http1_e2e_quick_run_produces_numbers(tmp_path: Path) -> None:
    for tool in ("wrk", "taskset"):
        assert shutil.which(tool), f"{tool} missing: run `bash ci/install.sh test`"
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "http1_e2e.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    results = json.loads(out.read_text())
    assert set(results["runs"]) == {"direct", "envoy", "sofamesh"}
    for name, row in results["runs"].items():
        assert "error" not in row, (name, row)
        assert row["requests"] > 0 and row["rps"] > 0, (name, row)
        assert row["cpu_us_per_req"] > 0, (name, row)
        assert 0 < row["p50_ms"] <= row["p99_ms"], (name, row)
    assert set(results["ratio_sofamesh_over_envoy"]) == {
        "cpu_us_per_req",
        "rps",
        "p50_ms",
        "p99_ms",
    }
    assert "sofamesh / envoy" in proc.stdout  # the table was printed
