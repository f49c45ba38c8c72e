"""Keeps benchmarks/h2_bench.py from rotting: a --quick run must produce numbers for every
scenario (h2c -> HTTP/1.1, h2c -> h2c, gRPC unary to nginx and to grpcio) and every target
(the upstream alone, Envoy 1.40, sofamesh), with the benchmark's own checks passing (no failed
or non-2xx requests, the rate-limit filter and the scenario's cluster counted every request,
HTTP/2 upstream connections opened, the gRPC server completed every call).

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
def test_h2_bench_quick_run_produces_numbers(tmp_path: Path) -> None:
    for tool in ("h2load", "nghttp", "taskset"):
        assert shutil.which(tool), f"{tool} missing: run `bash ci/install.sh test`"
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "h2_bench.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    results = json.loads(out.read_text())
    assert "errors" not in results, results["errors"]
    assert set(results["scenarios"]) == {"h2c-h1", "h2c-h2", "grpc-nginx", "grpc"}
    for scen, sres in results["scenarios"].items():
        assert set(sres["runs"]) == {"direct", "envoy", "sofamesh"}, scen
        for name, row in sres["runs"].items():
            assert "error" not in row, (scen, name, row)
            assert row["requests"] > 0 and row["rps"] > 0, (scen, name, row)
            assert row["cpu_us_per_req"] > 0, (scen, name, row)
            assert row["backend_cpu_us"] > 0, (scen, name, row)
            assert 0 < row["mean_ms"] <= row["max_ms"], (scen, name, row)
            (one,) = row["rounds"]
            # h2load really spoke h2c to the proxies (HTTP/1.1 only straight to nginx's h1 port)
            assert one["protocol"] == (
                "http/1.1" if (scen, name) == ("h2c-h1", "direct") else "h2c"
            ), (scen, name)
        if scen == "grpc":
            for name in ("envoy", "sofamesh"):
                one = sres["runs"][name]["rounds"][0]
                assert one["grpc_calls"] >= one["requests"], (name, one)
        assert set(sres["ratio_sofamesh_over_envoy"]) >= {"cpu_us_per_req", "rps"}, scen
        assert len(sres["cpu_ratio_per_round"]) == 1, scen
    assert "h2c-h2 sofamesh/envoy" in proc.stdout  # the table was printed
