"""End-to-end HTTP/2 benchmark: h2load through Envoy 1.40 and sofamesh side by side, CPU per request.

    .venv/bin/python benchmarks/h2_bench.py [--quick] [--duration 10] [--rounds 3]
        [--scenarios h2c-h1,h2c-h2,grpc-nginx,grpc] [--json out.json] [--nice -10]

Scenarios (load: `h2load -c 10 -m 10`, 10 h2c connections x 10 concurrent streams, closed loop):
- `h2c-h1`: GET over h2c to the proxy -> HTTP/1.1 upstream (nginx, `return 200`, 34 bytes);
- `h2c-h2`: GET over h2c -> HTTP/2 upstream (the same nginx, an h2c `listen ... http2` port);
- `grpc-nginx`: gRPC unary calls (h2load POSTs a length-prefixed 24-byte message with
  content-type application/grpc and te: trailers) -> HTTP/2 upstream, nginx answering every
  call with a canned gRPC reply (200, application/grpc, the same message, trailer grpc-status
  0; lib/nginx.py): gRPC's shape (POST with a body, trailers back) with a fast upstream;
- `grpc`: the same calls to /bench.Echo/Echo -> HTTP/2 upstream, a grpcio (asyncio) server
  (lib/grpc_backend.py) that echoes the message. This backend is Python and is the bottleneck
  of this scenario (about 115 us of CPU per call): the proxies run well below their capacity,
  where CPU per request is higher for both. Its CPU per request is reported beside the proxies'.

Layout (2 cores), as benchmarks/http1_e2e.py: each proxy runs alone, `--concurrency 1`, pinned
to core 0 with taskset; the upstreams (nginx: one process; the grpcio server) and h2load (one
thread) share core 1. Both proxies get the same Envoy v3 bootstrap (lib/bootstrap.h2_bootstrap):
one listener, HCM codec_type AUTO, no access log, envoy.filters.http.local_ratelimit (a bucket
no run can empty) then the router; clusters h1 (HTTP/1.1), h2 and grpc (HttpProtocolOptions
explicit http2_protocol_options). A `direct` run per scenario sends the same load straight to
the upstream (h2load --h1 with 10 pipelined requests per connection for the HTTP/1.1 one): its
CPU column is the upstream's own cost.

CPU per request = utime + stime (all threads, all processes of the tree) from /proc/<pid>/stat,
delta over the measured h2load run / the requests h2load counted as succeeded in it; the same
for the upstream (`backend_cpu_us`). Checks per run, else the run is an error: no failed,
errored, timed-out or non-2xx requests; the proxy's local_ratelimit `ok` counter, its
downstream_rq_http2_total and its cluster's upstream_rq_total each moved by at least the
requests counted (the filter ran, the requests were HTTP/2 and took the scenario's cluster);
for gRPC, the server completed at least as many Echo calls (h2load sees only the HTTP status,
not grpc-status). At the end each proxy's HTTP/2 clusters must show upstream_cx_http2_total > 0.
Prints a table and JSON; exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from http1_e2e import proxy_argv
from lib import h2load, nginx
from lib import proc as lib_proc
from lib.bootstrap import GRPC_SERVICE, h2_bootstrap
from lib.proc import Proc, cpu_seconds, free_port, http_get, process_tree

GRPC_PAYLOAD = nginx.GRPC_MESSAGE  # 24 bytes, the same as nginx's canned reply
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
GOAL = 0.5  # issue 9: at most 0.5x Envoy's CPU per request
SCENARIOS = ("h2c-h1", "h2c-h2", "grpc-nginx", "grpc")
CLUSTER = {"h2c-h1": "h1", "h2c-h2": "h2", "grpc-nginx": "grpc_nginx", "grpc": "grpc"}
PATH = {
    "h2c-h1": "/h1/",
    "h2c-h2": "/h2/",
    "grpc-nginx": nginx.GRPC_PATH,
    "grpc": f"/{GRPC_SERVICE}/Echo",
}


def stats(admin: int) -> dict[str, int]:
    """The proxy's counters from admin /stats (Envoy's text format, as sofamesh serves it)."""
    _, text = http_get(admin, "/stats")
    out = {}
    for line in text.decode("utf-8", "replace").splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def grpc_call(port: int, method: str, payload: bytes, service: str = GRPC_SERVICE) -> bytes:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return ch.unary_unary(f"/{service}/{method}")(payload, timeout=10)


def nghttp_get(port: int, path: str) -> bytes:
    """GET over h2c with prior knowledge (nghttp, from nghttp2-client), the response body."""
    out = subprocess.run(
        ["nghttp", f"http://127.0.0.1:{port}{path}"], capture_output=True, timeout=10, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"nghttp {path}: exit {out.returncode} {out.stderr[-500:]!r}")
    return out.stdout


class Backends:
    """nginx (HTTP/1.1 port and h2c port, one process) and the grpcio server, on the load core."""

    def __init__(self, workdir: Path, core: int):
        self.h1_port, self.h2_port, self.grpc_port = free_port(), free_port(), free_port()
        self.nginx = nginx.start(workdir, self.h1_port, core, h2_port=self.h2_port)
        self.grpc = Proc(
            "grpc-backend",
            [sys.executable, str(HERE / "lib" / "grpc_backend.py"), str(self.grpc_port)],
            workdir / "grpc-backend.log",
            core,
        ).start()
        try:
            self.grpc.wait_ready(lambda: "ready" in self.grpc.tail(), timeout=20)
            if nghttp_get(self.h2_port, "/") != nginx.BODY.encode():
                raise RuntimeError("nginx's h2c port does not answer with the body")
            if grpc_call(self.grpc_port, "Echo", GRPC_PAYLOAD) != GRPC_PAYLOAD:
                raise RuntimeError("the gRPC backend does not echo")
            if grpc_call(self.h2_port, "Echo", b"x", nginx.GRPC_SERVICE) != nginx.GRPC_MESSAGE:
                raise RuntimeError("nginx's canned gRPC reply is not a gRPC reply")
        except Exception:
            self.stop()
            raise

    def pids(self, scenario: str) -> list[int]:
        return process_tree((self.grpc if scenario == "grpc" else self.nginx).pid)

    def grpc_calls(self) -> int:
        return int(grpc_call(self.grpc_port, "Count", b""))

    def stop(self) -> None:
        self.grpc.stop()
        self.nginx.stop()


def start_proxy(kind: str, workdir: Path, b: Backends, args) -> tuple[Proc, int, int]:
    port, admin = free_port(), free_port()
    config = workdir / f"{kind}.json"
    boot = h2_bootstrap(port, admin, b.h1_port, b.h2_port, b.grpc_port)
    config.write_text(json.dumps(boot, indent=1))
    proc = Proc(kind, proxy_argv(kind, config), workdir / f"{kind}.log", args.proxy_core)
    proc.start()
    try:
        proc.wait_ready(lambda: http_get(admin, "/ready")[0] == 200 and http_get(port)[0] == 200)
        for path in ("/h1/", "/h2/"):
            body = nghttp_get(port, path)
            if body != nginx.BODY.encode():
                raise RuntimeError(f"{kind} answered {path} over h2c with {body[:200]!r}")
        if grpc_call(port, "Echo", GRPC_PAYLOAD) != GRPC_PAYLOAD:
            raise RuntimeError(f"{kind} did not pass a gRPC call through")
        if grpc_call(port, "Echo", GRPC_PAYLOAD, nginx.GRPC_SERVICE) != nginx.GRPC_MESSAGE:
            raise RuntimeError(f"{kind} did not pass a gRPC call to nginx through")
    except Exception:
        proc.stop()
        raise
    return proc, port, admin


def load(url: str, scenario: str, seconds: float, args, direct: bool) -> h2load.H2loadResult:
    grpc = scenario.startswith("grpc")
    return h2load.run(
        url,
        args.connections,
        args.streams,
        seconds,
        args.load_core,
        h1=direct and scenario == "h2c-h1",
        body=args.grpc_body if grpc else None,
        headers=GRPC_HEADERS if grpc else (),
    )


def measure(kind: str, scenario: str, url: str, args, proxy_pids, backends: Backends, admin):
    if args.warmup > 0:
        load(url, scenario, args.warmup, args, kind == "direct")
    pids = proxy_pids() if proxy_pids else []
    bpids = backends.pids(scenario)
    calls0 = backends.grpc_calls() if scenario == "grpc" else 0
    st0 = stats(admin) if admin else {}
    attached = None
    if args.attach and kind in args.attach_to.split(",") and pids:
        cmd = args.attach.format(pid=pids[0], kind=kind, scenario=scenario, round=args.round)
        print(f"attach: {cmd}", flush=True)
        attached = subprocess.Popen(cmd, shell=True)
    cpu0, bcpu0 = cpu_seconds(pids), cpu_seconds(bpids)
    res = load(url, scenario, args.duration, args, kind == "direct")
    cpu1, bcpu1 = cpu_seconds(pids), cpu_seconds(bpids)
    if attached is not None:
        attached.wait(timeout=120)
    st1 = stats(admin) if admin else {}
    n = res.requests
    row: dict = {
        "requests": n,
        "seconds": round(res.seconds, 3),
        "rps": round(res.rps, 1),
        "mean_ms": round(res.mean_ms, 3),
        "max_ms": round(res.max_ms, 3),
        "backend_cpu_s": round(bcpu1 - bcpu0, 3),
        "backend_cpu_us": round((bcpu1 - bcpu0) * 1e6 / n, 2) if n else None,
        "protocol": res.protocol,
    }
    if kind == "direct":  # the CPU column is the upstream's
        row["cpu_s"], row["cpu_us_per_req"] = row["backend_cpu_s"], row["backend_cpu_us"]
    else:
        row["cpu_s"] = round(cpu1 - cpu0, 3)
        row["cpu_us_per_req"] = round((cpu1 - cpu0) * 1e6 / n, 2) if n else None
        row["processes"] = len(pids)
    errors = []
    if not n:
        errors.append("no request succeeded")
    if res.failed or res.errored or res.timeout or res.status_other:
        errors.append(
            f"{res.failed} failed, {res.errored} errored, {res.timeout} timed out, "
            f"{res.status_other} non-2xx"
        )
    if res.protocol != ("http/1.1" if kind == "direct" and scenario == "h2c-h1" else "h2c"):
        errors.append(f"h2load spoke {res.protocol}")
    if admin:
        cl = CLUSTER[scenario]
        for stat in (
            "bench_rl.http_local_rate_limit.ok",
            "http.bench.downstream_rq_http2_total",
            f"cluster.{cl}.upstream_rq_total",
        ):
            moved = st1.get(stat, 0) - st0.get(stat, 0)
            if moved < n:
                errors.append(f"{stat} moved by {moved} for {n} requests")
    if scenario == "grpc":
        calls = backends.grpc_calls() - calls0
        row["grpc_calls"] = calls
        if calls < n:
            errors.append(f"the gRPC server completed {calls} calls for {n} requests")
    if errors:
        row["error"] = "; ".join(errors)
    return row


def median_row(rows: list[dict]) -> dict:
    good = [r for r in rows if r.get("cpu_us_per_req")]
    out: dict = {}
    if good:
        for key in ("rps", "cpu_us_per_req", "backend_cpu_us", "mean_ms", "max_ms", "requests"):
            vals = [r[key] for r in good if r.get(key) is not None]
            if vals:
                out[key] = statistics.median(vals)
        out["cpu_us_per_req_min_max"] = [
            min(r["cpu_us_per_req"] for r in good),
            max(r["cpu_us_per_req"] for r in good),
        ]
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        out["error"] = "; ".join(errors)
    out["rounds"] = rows
    return out


COLS = ("cpu_us_per_req", "rps", "backend_cpu_us", "mean_ms", "max_ms", "requests")


def table(results: dict) -> str:
    head = (
        f"{'scenario / target':<30}"
        + "".join(f"{c:>15}" for c in COLS)
        + f"{'cpu_us min..max':>17}"
    )
    title = (
        f"medians over {results['layout']['rounds']} interleaved round(s); h2load -c "
        f"{results['layout']['connections']} -m {results['layout']['streams']}; load average "
        f"{results['loadavg_1m_before']} before, {results.get('loadavg_1m_after')} after"
    )
    lines = [
        title,
        head,
        "-" * len(head),
    ]
    for scen, sres in results["scenarios"].items():
        for name, row in sres["runs"].items():
            label = f"{scen} {name}" + (" (upstream)" if name == "direct" else "")
            if "cpu_us_per_req" not in row:
                lines.append(f"{label:<30}  ERROR {row.get('error', '')[:300]}")
                continue
            lo, hi = row["cpu_us_per_req_min_max"]
            lines.append(
                f"{label:<30}"
                + "".join(f"{row.get(c, '')!s:>15}" for c in COLS)
                + f"{f'{lo}..{hi}':>17}"
            )
            if row.get("error"):
                lines.append(f"{'':<30}  ERROR {row['error'][:300]}")
        r = sres.get("ratio_sofamesh_over_envoy")
        if r:
            lines.append(
                f"{scen + ' sofamesh/envoy':<30}" + "".join(f"{r.get(c, '')!s:>15}" for c in COLS)
            )
            per = ", ".join(map(str, sres.get("cpu_ratio_per_round", [])))
            c = r.get("cpu_us_per_req")
            verdict = (
                ""
                if c is None
                else (" (goal <= 0.5: met)" if c <= GOAL else " (goal <= 0.5: NOT met)")
            )
            lines.append(f"{'':<30}  CPU/request ratio per round: {per}{verdict}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 2 s per target")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per target")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per target")
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--streams", type=int, default=10, help="concurrent streams per connection")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--proxies", default="envoy,sofamesh")
    ap.add_argument("--no-direct", action="store_true", help="skip the direct (upstream) runs")
    ap.add_argument("--proxy-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1, help="core for h2load and the upstreams")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--nice", type=int, default=0, help="niceness for every benchmark process (e.g. -10)"
    )
    ap.add_argument(
        "--attach",
        help="profiling aid: a shell command started at the beginning of each measured run of "
        "--attach-to (and waited for after it), formatted with {pid} (the proxy's main "
        "process), {kind}, {scenario}, {round}; e.g. 'py-spy record --native -p {pid} -d 8 "
        "-f raw -o /tmp/{scenario}.txt'. A profiler slows the proxy: such runs' figures are "
        "not benchmark figures",
    )
    ap.add_argument(
        "--attach-to", default="sofamesh", help="the proxies --attach profiles (comma-separated)"
    )
    args = ap.parse_args(argv)
    lib_proc.NICE = args.nice
    if args.quick:
        args.duration, args.warmup, args.rounds = 2.0, 1.0, 1
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
    kinds = [p.strip() for p in args.proxies.split(",") if p.strip()]
    targets = ([] if args.no_direct else ["direct"]) + kinds

    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "loadavg_1m_before": round(os.getloadavg()[0], 2),
        "layout": {
            "proxy_core": args.proxy_core,
            "load_and_upstream_core": args.load_core,
            "connections": args.connections,
            "streams": args.streams,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "nice": args.nice,
            "h2load_threads": 1,
            "proxy_concurrency": 1,
        },
        "scenarios": {},
    }
    rows: dict[str, dict[str, list[dict]]] = {s: {t: [] for t in targets} for s in scenarios}
    final_errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sofamesh-h2bench-") as tmp:
        workdir = Path(tmp)
        args.grpc_body = workdir / "grpc-request.bin"
        args.grpc_body.write_bytes(struct.pack(">BI", 0, len(GRPC_PAYLOAD)) + GRPC_PAYLOAD)
        backends = Backends(workdir, args.load_core)
        procs: dict[str, tuple[Proc, int, int]] = {}
        try:
            for kind in kinds:
                try:
                    procs[kind] = start_proxy(kind, workdir, backends, args)
                except Exception as e:  # noqa: BLE001 - reported in the table and exit status
                    for s in scenarios:
                        rows[s][kind].append({"error": f"{type(e).__name__}: {e}"[:2000]})
            for rnd in range(args.rounds):
                args.round = rnd
                for scen in scenarios:
                    order = [t for t in targets if t == "direct"] + (
                        kinds if rnd % 2 == 0 else kinds[::-1]
                    )
                    for kind in order:
                        if kind == "direct":
                            port = {
                                "h2c-h1": backends.h1_port,
                                "h2c-h2": backends.h2_port,
                                "grpc-nginx": backends.h2_port,
                                "grpc": backends.grpc_port,
                            }[scen]
                            url = f"http://127.0.0.1:{port}{PATH[scen]}"
                            rows[scen][kind].append(
                                measure(kind, scen, url, args, None, backends, None)
                            )
                        elif kind in procs:
                            proc, port, admin = procs[kind]
                            url = f"http://127.0.0.1:{port}{PATH[scen]}"
                            row = measure(
                                kind,
                                scen,
                                url,
                                args,
                                lambda p=proc: process_tree(p.pid),
                                backends,
                                admin,
                            )
                            if proc.p.poll() is not None:
                                row["error"] = f"{kind} exited with {proc.p.returncode}"
                            rows[scen][kind].append(row)
                args.warmup = min(args.warmup, 1.0)  # later rounds only need a short warm-up
            for kind, (proc, _, admin) in procs.items():
                st = stats(admin) if proc.p.poll() is None else {}
                for scen in ("h2c-h2", "grpc-nginx", "grpc"):
                    cl = CLUSTER[scen]
                    if scen in scenarios and st.get(f"cluster.{cl}.upstream_cx_http2_total", 0) < 1:
                        final_errors.append(f"{kind}: cluster {cl} opened no HTTP/2 connection")
        finally:
            for proc, _, _ in procs.values():
                proc.stop()
            backends.stop()
    for scen in scenarios:
        runs = {t: median_row(v) for t, v in rows[scen].items()}
        sres: dict = {"runs": runs}
        e, s = runs.get("envoy", {}), runs.get("sofamesh", {})
        if e.get("cpu_us_per_req") and s.get("cpu_us_per_req"):
            sres["ratio_sofamesh_over_envoy"] = {
                k: round(s[k] / e[k], 3) for k in COLS if s.get(k) and e.get(k)
            }
            sres["cpu_ratio_per_round"] = [
                round(a["cpu_us_per_req"] / b["cpu_us_per_req"], 3)
                for a, b in zip(s["rounds"], e["rounds"])
                if a.get("cpu_us_per_req") and b.get("cpu_us_per_req")
            ]
            sres["goal_cpu_ratio"] = GOAL
            sres["goal_met"] = sres["ratio_sofamesh_over_envoy"]["cpu_us_per_req"] <= GOAL
        results["scenarios"][scen] = sres
    results["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    if final_errors:
        results["errors"] = final_errors
    print(table(results))
    print(json.dumps(results, indent=1))
    print(table(results))  # again, after the JSON, so the summary is the last thing on screen
    for e in final_errors:
        print("ERROR", e)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    failed = final_errors or any(
        "error" in row for s in results["scenarios"].values() for row in s["runs"].values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
