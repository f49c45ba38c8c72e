"""TLS benchmark: Envoy 1.40 and sofamesh side by side, CPU per handshake and per request.

    .venv/bin/python benchmarks/tls_bench.py [--duration 8] [--connections 50] [--json out.json]

Layout (2 cores) as benchmarks/http1_e2e.py: each proxy alone, `--concurrency 1`, pinned to
core 0; nginx (the upstream) and the clients on core 1. Both proxies get the same bootstrap:
http1_e2e's (local_ratelimit + router to nginx) with a DownstreamTlsContext on the listener
(one ECDSA P-256 certificate made here, Envoy's default TLS versions and ciphers).

- handshakes: `openssl s_time -new` (full handshakes, one connection at a time, TLS 1.3 and
  TLS 1.2) and `-reuse` (TLS 1.2 session resumption); the proxy's CPU over the run divided
  by the handshakes its own `ssl.handshake` counter saw: CPU per handshake, and its inverse,
  handshakes per CPU-second.
- keep-alive HTTP/1.1 over TLS: wrk (https, fixed connections) for `--duration` s; the
  proxy's CPU / requests wrk completed.
Prints a table and JSON; figures in benchmarks/RESULTS.md ("TLS").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from http1_e2e import proxy_argv
from lib import nginx, wrk
from lib.bootstrap import BENCH_HOST, bootstrap
from lib.proc import Proc, cpu_seconds, free_port, http_get, pin, process_tree

TLS_DOWN = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def make_cert(d: Path) -> tuple[str, str]:
    from tests.support.certs import make_ca, make_leaf

    ca = make_ca("bench CA")
    leaf = make_leaf(ca, cn="bench.local", dns=("bench.local", "localhost"))
    return leaf.write(d, "server")


def tls_bootstrap(port: int, admin: int, upstream: int, cert: tuple[str, str]) -> dict:
    b = bootstrap(port, admin, upstream)
    lst = b["static_resources"]["listeners"][0]
    lst["stat_prefix"] = "bench"
    lst["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS_DOWN,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": cert[0]},
                        "private_key": {"filename": cert[1]},
                    }
                ],
                "alpn_protocols": ["http/1.1"],
            },
        },
    }
    return b


def stat(admin: int, name: str) -> int:
    _, text = http_get(admin, "/stats")
    for line in text.decode("utf-8", "replace").splitlines():
        k, _, v = line.partition(": ")
        if k == name and v.strip().isdigit():
            return int(v)
    return 0


def s_time(port: int, seconds: float, core: int, extra: list[str]) -> str:
    argv = pin(
        ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-time", str(int(seconds)), *extra],
        core,
    )
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    return out.stdout + out.stderr


def handshakes(kind: str, pid: int, port: int, admin: int, args, extra: list[str]) -> dict:
    pids = process_tree(pid)
    h0, r0 = (
        stat(admin, "listener.bench.ssl.handshake"),
        stat(admin, "listener.bench.ssl.session_reused"),
    )
    c0 = cpu_seconds(pids)
    s_time(port, args.duration, args.load_core, extra)
    c1 = cpu_seconds(pids)
    h1, r1 = (
        stat(admin, "listener.bench.ssl.handshake"),
        stat(admin, "listener.bench.ssl.session_reused"),
    )
    n = h1 - h0
    cpu = c1 - c0
    return {
        "handshakes": n,
        "resumed": r1 - r0,
        "cpu_s": round(cpu, 3),
        "cpu_us_per_handshake": round(cpu * 1e6 / n, 1) if n else None,
        "handshakes_per_cpu_s": round(n / cpu, 1) if cpu else None,
    }


def keepalive(pid: int, port: int, args) -> dict:
    url = f"https://127.0.0.1:{port}/"
    wrk.run(url, args.connections, 2, args.load_core, BENCH_HOST)  # warm-up
    pids = process_tree(pid)
    c0 = cpu_seconds(pids)
    res = wrk.run(url, args.connections, args.duration, args.load_core, BENCH_HOST)
    c1 = cpu_seconds(pids)
    return {
        "requests": res.requests,
        "rps": round(res.rps, 1),
        "p99_ms": round(res.p99_ms, 3),
        "non_2xx": res.non_2xx,
        "socket_errors": res.socket_errors,
        "cpu_us_per_req": round((c1 - c0) * 1e6 / res.requests, 2) if res.requests else None,
    }


def run_proxy(kind: str, wd: Path, upstream: int, cert: tuple[str, str], args) -> dict:
    port, admin = free_port(), free_port()
    cfg = wd / f"{kind}.json"
    cfg.write_text(json.dumps(tls_bootstrap(port, admin, upstream, cert), indent=1))
    proc = Proc(kind, proxy_argv(kind, cfg), wd / f"{kind}.log", args.proxy_core).start()
    try:
        proc.wait_ready(lambda: http_get(admin, "/ready")[0] == 200)
        out = {
            "full TLS 1.3": handshakes(kind, proc.pid, port, admin, args, ["-new"]),
            "full TLS 1.2": handshakes(kind, proc.pid, port, admin, args, ["-new", "-tls1_2"]),
            "resumed TLS 1.2": handshakes(kind, proc.pid, port, admin, args, ["-reuse", "-tls1_2"]),
            "keep-alive HTTP/1.1": keepalive(proc.pid, port, args),
        }
    finally:
        proc.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--proxy-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tls-bench-") as tmp:
        wd = Path(tmp)
        cert = make_cert(wd)
        up_port = free_port()
        ngx = nginx.start(wd, up_port, args.load_core)
        try:
            results = {
                "loadavg_1m_before": round(os.getloadavg()[0], 2),
                "runs": {k: run_proxy(k, wd, up_port, cert, args) for k in ("envoy", "sofamesh")},
            }
        finally:
            ngx.stop()
    results["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    env, sofa = results["runs"]["envoy"], results["runs"]["sofamesh"]
    ratio = {}
    for case in env:
        key = "cpu_us_per_req" if case.startswith("keep") else "cpu_us_per_handshake"
        if env[case].get(key) and sofa[case].get(key):
            ratio[case] = round(sofa[case][key] / env[case][key], 3)
    results["cpu_ratio_sofamesh_over_envoy"] = ratio
    print(
        f"load average {results['loadavg_1m_before']} before, {results['loadavg_1m_after']} after"
    )
    print(f"{'case':<22}{'proxy':<10}{'count':>10}{'CPU us each':>14}{'per CPU-s':>12}")
    for case in env:
        for kind in ("envoy", "sofamesh"):
            r = results["runs"][kind][case]
            if case.startswith("keep"):
                each, count = r["cpu_us_per_req"], r["requests"]
                per = round(1e6 / each, 1) if each else None
            else:
                each, count, per = (
                    r["cpu_us_per_handshake"],
                    r["handshakes"],
                    r["handshakes_per_cpu_s"],
                )
            print(f"{case:<22}{kind:<10}{count!s:>10}{each!s:>14}{per!s:>12}")
        print(f"{'':<22}{'ratio':<10}{'':>10}{ratio.get(case, '')!s:>14}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    bad = [
        k
        for k in ("envoy", "sofamesh")
        for c, r in results["runs"][k].items()
        if r.get("non_2xx")
        or r.get("socket_errors")
        or not (r.get("handshakes") or r.get("requests"))
    ]
    if bad:
        print("errors in:", bad, file=sys.stderr)
        return 1
    time.sleep(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
