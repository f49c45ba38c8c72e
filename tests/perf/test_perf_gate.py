"""The performance-regression gate (benchmarks/perf_gate.py): the hot path's instruction
counts stay within the committed baseline, and the gate does fail when the hot path gets
slower (shown once here with a parse made deliberately more expensive)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GATE = ROOT / "benchmarks" / "perf_gate.py"

# a slowed build of the HTTP/1.1 head parser: each parse also does ~10 % more work
SLOWED = """
from sofamesh._core.codecs import http1

_parse = http1.parse_request_head


def parse_request_head(data, _parse=_parse):
    for _ in range(4):
        bytes(data).split(b"\\r\\n")
    return _parse(data)


http1.parse_request_head = parse_request_head
"""


def _gate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(GATE), *args], check=False, capture_output=True, text=True, timeout=900
    )


def test_hot_path_within_the_committed_baseline():
    p = _gate()
    if p.returncode == 3:  # counted on another interpreter/compiler: not comparable
        pytest.skip(p.stderr.strip())
    assert p.returncode == 0, p.stdout + p.stderr
    base = json.loads((ROOT / "benchmarks" / "perf_baseline.json").read_text())
    for name in base["workloads"]:
        assert f"{name} " in p.stdout, name


def test_the_gate_fails_a_slowed_parser_and_only_that(tmp_path):
    baseline = tmp_path / "baseline.json"
    only = "h1_parse,token_bucket"
    p = _gate("--only", only, "--update", "--baseline", str(baseline))
    assert p.returncode == 0, p.stdout + p.stderr
    p = _gate("--only", only, "--baseline", str(baseline))
    assert p.returncode == 0, p.stdout + p.stderr  # the same build: within the threshold
    slowed = tmp_path / "slowed"
    slowed.mkdir()
    (slowed / "sitecustomize.py").write_text(SLOWED)
    p = _gate("--only", only, "--baseline", str(baseline), "--pythonpath", str(slowed))
    assert p.returncode == 1, p.stdout + p.stderr
    bad = [ln for ln in p.stdout.splitlines() if ln.startswith("REGRESSION")]
    assert len(bad) == 1 and bad[0].startswith("REGRESSION: h1_parse:"), p.stdout
