#!/usr/bin/env python3
"""Two clusters in network namespaces (tests/support/multicluster.py), sofamesh then Envoy 1.40
as every sidecar and edge, in one run (root: it makes namespaces):

1. Registration to sidecar: a new service registered with c2's pilot (REST API, from e2) until
   c1's sidecar answers a call to it through the edges (a poller in c1 tries every 2 ms).
   p50/p99 over --registrations services.
2. The edge hop: one caller in c1, sequential keep-alive requests, to b in c2 (sidecar -> e1 ->
   e2 -> b) and to the same application in c1 (sidecar -> b); the extra latency is the
   difference of the medians. Then wrk (-c 4) through the edges for --duration seconds: the
   two edges' CPU (/proc, their whole process trees) per request.

    sudo .venv/bin/python benchmarks/multicluster.py [--registrations 30] [--requests 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.multicluster import (
    C1,
    E1_IN,
    Net,
    apps,
    curl,
    register,
    two_clusters,
    wait_until,
)

POLLER = r"""
import http.client, sys, time
for line in sys.stdin:
    name = line.strip()
    conn = http.client.HTTPConnection("127.0.0.1", 15001, timeout=2)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            conn.request("GET", "/", headers={"host": name})
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                break
        except OSError:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", 15001, timeout=2)
        time.sleep(0.002)
    print(f"{time.time():.6f}", flush=True)
    conn.close()
"""

REGISTRAR = r"""
import http.client, json, sys, time
conn = http.client.HTTPConnection("127.0.0.1", 15020, timeout=5)
for line in sys.stdin:
    name, body = line.split(" ", 1)
    t0 = time.time()
    conn.request("PUT", f"/v1/services/{name}/instances/i1", body=body,
                 headers={"content-type": "application/json"})
    r = conn.getresponse()
    r.read()
    print(f"{t0:.6f} {r.status}", flush=True)
"""

LATENCY = r"""
import http.client, json, sys, time
host, n = sys.argv[1], int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", 15001, timeout=5)
out = []
for i in range(n + 100):
    t0 = time.perf_counter()
    conn.request("GET", "/lat", headers={"host": host})
    r = conn.getresponse()
    r.read()
    assert r.status == 200, r.status
    if i >= 100:
        out.append(time.perf_counter() - t0)
print(json.dumps(out))
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                todo.extend(int(k) for k in kids)
        except (OSError, ValueError):
            continue
    return total


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def registrations(nets: dict[str, Net], n: int) -> list[float]:
    c1, e2 = nets["c1"], nets["e2"]
    poll = subprocess.Popen(
        c1.argv([sys.executable, "-c", POLLER]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    reg = subprocess.Popen(
        e2.argv([sys.executable, "-c", REGISTRAR]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert poll.stdin and poll.stdout and reg.stdin and reg.stdout
    out = []
    try:
        for i in range(n):
            name = f"new{i}-{os.getpid()}"
            poll.stdin.write(name + "\n")
            poll.stdin.flush()
            body = {"address": "10.62.1.2", "port": 8080, "protocol": "http", "service_port": 8080}
            reg.stdin.write(f"{name} {json.dumps(body)}\n")
            reg.stdin.flush()
            t0, status = reg.stdout.readline().split()
            assert status in ("200", "201"), status
            t1 = float(poll.stdout.readline())
            out.append(t1 - float(t0))
            time.sleep(0.3)  # apart: each one its own push, not one batch
    finally:
        for p in (poll, reg):
            p.stdin.close()  # type: ignore[union-attr]
            p.wait(timeout=10)
    return out


def latency(c1: Net, host: str, n: int) -> list[float]:
    r = c1.run([sys.executable, "-c", LATENCY, host, str(n)], check=True)
    return json.loads(r.stdout)


def wrk(c1: Net, host: str, seconds: int) -> int:
    r = c1.run(
        ["taskset", "-c", "0", "wrk", "-t1", "-c4", f"-d{seconds}s", "-H", f"Host: {host}",
         "http://127.0.0.1:15001/"],
        check=True,
    )  # fmt: skip
    if "Non-2xx" in r.stdout or "Socket errors" in r.stdout:
        raise RuntimeError(f"wrk saw failures:\n{r.stdout}")
    for line in r.stdout.splitlines():
        if "requests in" in line:
            return int(line.split()[0])
    raise RuntimeError(r.stdout)


def run(kind: str, args: argparse.Namespace, work: Path) -> dict:
    with two_clusters(work / kind, kind, rpc=False) as nets:
        c1, e1, e2 = nets["c1"], nets["e1"], nets["e2"]
        apps(c1, "apps", C1)  # the same application in c1, as service "near"
        register(c1, E1_IN, "near", "c1", {"address": C1, "port": 8080, "protocol": "http",
                 "service_port": 8080})  # fmt: skip
        for host in ("b", "near"):
            wait_until(
                lambda host=host: (
                    curl(c1, "-H", f"host: {host}", "http://127.0.0.1:15001/")[0] == "200"
                ),
                20,
                lambda host=host: f"{host} not served",
            )
        reg = registrations(nets, args.registrations)
        far = latency(c1, "b", args.requests)
        near = latency(c1, "near", args.requests)
        pids = [e1.procs["edge"].pid, e2.procs["edge"].pid]
        before = [cpu_seconds(p) for p in pids]
        n = wrk(c1, "b", args.duration)
        after = [cpu_seconds(p) for p in pids]
        edge_us = [(a - b) / n * 1e6 for a, b in zip(after, before)]
        return {
            "registration_p50_ms": pct(reg, 0.5) * 1000,
            "registration_p99_ms": pct(reg, 0.99) * 1000,
            "registration_max_ms": max(reg) * 1000,
            "via_edges_p50_us": statistics.median(far) * 1e6,
            "via_edges_p99_us": pct(far, 0.99) * 1e6,
            "local_p50_us": statistics.median(near) * 1e6,
            "local_p99_us": pct(near, 0.99) * 1e6,
            "edge_hop_extra_p50_us": (statistics.median(far) - statistics.median(near)) * 1e6,
            "wrk_requests": n,
            "cpu_us_per_request_e1": edge_us[0],
            "cpu_us_per_request_e2": edge_us[1],
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registrations", type=int, default=30)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--kinds", default="sofamesh,envoy")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("benchmarks/multicluster.py makes network namespaces: run it as root")
    results = {}
    with tempfile.TemporaryDirectory(prefix="sofamesh-multicluster-") as tmp:
        for kind in args.kinds.split(","):
            results[kind] = run(kind, args, Path(tmp))
    keys = list(next(iter(results.values())))
    print(f"{'':28}" + "".join(f"{k:>12}" for k in results))
    for key in keys:
        print(f"{key:28}" + "".join(f"{results[k][key]:>12.1f}" for k in results))
    if "sofamesh" in results and "envoy" in results:
        s, e = results["sofamesh"], results["envoy"]
        edge = (s["cpu_us_per_request_e1"] + s["cpu_us_per_request_e2"]) / (
            e["cpu_us_per_request_e1"] + e["cpu_us_per_request_e2"]
        )
        print(f"edge CPU per request, sofamesh / Envoy: {edge:.2f}")


if __name__ == "__main__":
    main()
