"""Performance-regression gate: instructions per operation of the hot-path micro-benchmarks
(benchmarks/lib/perf_workloads.py: HTTP/1.1 head parse, route match, Bolt and Dubbo decode and
id rewrite, the token bucket, HPACK, HTTP/2 frames), counted by valgrind's callgrind and
compared with the committed baseline (benchmarks/perf_baseline.json).

    .venv/bin/python benchmarks/perf_gate.py             # check; exit 1 on a regression
    .venv/bin/python benchmarks/perf_gate.py --update    # a deliberate change: new baseline
    .venv/bin/python benchmarks/perf_gate.py --only h1_parse,route_match [--json out.json]

Why instructions: they are repeatable on a shared, noisy machine (a CI runner), where times
are not. Each workload runs in its own interpreter under callgrind, which counts only the
loop of N operations (--toggle-collect on the functools.reduce that drives it), not
start-up or set-up; per operation = Ir / N, the loop's own call (~500 instructions)
included. PYTHONHASHSEED is fixed for the measured runs (string hashing moves the counts).
A workload fails the gate when it costs more than the baseline by over its threshold
(THRESHOLD_PCT, or the baseline's own `threshold_pct`); one that got cheaper by as much is
reported, so that the baseline is refreshed on purpose. Wall times for the same operations:
the pytest-benchmark micro-benchmarks (benchmarks/test_micro_*.py). The end-to-end side-by-side
benchmarks are reported (RESULTS.md), never gated on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "perf_baseline.json"
RUNNER = HERE / "lib" / "perf_workloads.py"
THRESHOLD_PCT = 3.0
N = 2000  # operations counted per workload

sys.path.insert(0, str(HERE / "lib"))
from perf_workloads import WORKLOADS


def _ir(name: str, n: int, env: dict[str, str]) -> int:
    """Total instructions of one run of `name` x n under callgrind."""
    with tempfile.TemporaryDirectory(prefix="perfgate") as d:
        out = Path(d) / "cg.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            "--collect-atstart=no",
            "--toggle-collect=functools_reduce",
            sys.executable,
            str(RUNNER),
            name,
            str(n),
        ]
        p = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
        if p.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"{name}: callgrind run failed ({p.returncode}):\n{p.stderr[-2000:]}"
            )
        m = re.search(
            r"^(?:summary|totals):\s*(\d+)", out.read_text(errors="replace"), re.MULTILINE
        )
        if m is None or int(m.group(1)) == 0:
            raise RuntimeError(f"{name}: callgrind counted nothing (functools_reduce not seen)")
        return int(m.group(1))


def measure(name: str, pythonpath: str | None = None) -> float:
    """Instructions per operation of workload `name`."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    return _ir(name, N, env) / N


def fingerprint() -> str:
    """What the counts depend on besides sofamesh's code: the interpreter and its build, the
    C compiler, Cython and valgrind. A baseline holds only for the same fingerprint."""
    import Cython

    vg = subprocess.run(
        ["valgrind", "--version"], check=False, capture_output=True, text=True
    ).stdout.strip()
    return (
        f"{platform.python_implementation()} {platform.python_version()} "
        f"[{platform.python_compiler()}] {platform.machine()} Cython {Cython.__version__} {vg}"
    )


def compare(base: dict, got: dict[str, float], threshold: float) -> tuple[list[str], list[str]]:
    """(regressions, improvements) as lines for the report."""
    bad, better = [], []
    for name, v in got.items():
        entry = base.get("workloads", {}).get(name)
        if entry is None:
            better.append(f"{name}: {v:,.0f} instructions per op, not in the baseline")
            continue
        ref = entry["instructions_per_op"]
        limit = entry.get("threshold_pct", threshold)
        pct = (v - ref) / ref * 100
        line = f"{name}: {v:,.0f} instructions per op, baseline {ref:,.0f} ({pct:+.1f} %, limit {limit:+.1f} %)"
        if pct > limit:
            bad.append(line)
        elif pct < -limit:
            better.append(line)
    return bad, better


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--update", action="store_true", help="write the measured counts as the baseline"
    )
    ap.add_argument("--only", help="comma-separated workloads (default: all)")
    ap.add_argument("--baseline", default=str(BASELINE))
    ap.add_argument("--threshold", type=float, default=THRESHOLD_PCT, help="percent (default 3)")
    ap.add_argument(
        "--pythonpath",
        help="put this directory first on the measured runs' import path (another build)",
    )
    ap.add_argument("--json", help="also write the measured counts here")
    ap.add_argument("--jobs", type=int, default=2, help="workloads counted at once (default 2)")
    a = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("perf_gate: valgrind is not installed (ci/install.sh installs it)", file=sys.stderr)
        return 2
    names = a.only.split(",") if a.only else list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        print(
            f"perf_gate: unknown workload(s) {unknown}; known: {sorted(WORKLOADS)}", file=sys.stderr
        )
        return 2
    fp = fingerprint()
    path = Path(a.baseline)
    base = json.loads(path.read_text()) if path.exists() else None
    if not a.update:
        if base is None:
            print(f"perf_gate: no baseline at {path}; run with --update", file=sys.stderr)
            return 2
        if base.get("fingerprint") != fp:
            print(
                f"perf_gate: the baseline was counted on {base.get('fingerprint')!r}, this is "
                f"{fp!r}: counts differ between platforms; make a baseline here with --update",
                file=sys.stderr,
            )
            return 3
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        counts = pool.map(lambda n: measure(n, a.pythonpath), names)
        got = {}
        for name, v in zip(names, counts, strict=True):
            got[name] = v
            print(f"{name:18s} {v:12,.0f} instructions per op", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(got, indent=1) + "\n")
    if a.update:
        if base is None or base.get("fingerprint") != fp:
            base = {"workloads": {}}  # another platform's counts do not carry over
        for name, v in got.items():
            base["workloads"].setdefault(name, {})["instructions_per_op"] = round(v, 1)
        base["command"] = "benchmarks/perf_gate.py --update"
        base["fingerprint"] = fp
        path.write_text(json.dumps(base, indent=1, sort_keys=True) + "\n")
        print(f"baseline written: {path}")
        return 0
    bad, better = compare(base, got, a.threshold)
    for line in better:
        print(f"cheaper than the baseline (refresh it with --update): {line}")
    for line in bad:
        print(f"REGRESSION: {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
