"""End-to-end HTTP/1.1 benchmark: nginx upstream, Envoy 1.40 and sofamesh side by side, CPU per request.

    .venv/bin/python benchmarks/http1_e2e.py [--quick] [--duration 10] [--connections 50] [--json out.json]
        [--rbac 20] [--tracing 1]

Layout (2 cores): each proxy runs alone, `--concurrency 1`, pinned to core 0; nginx (one
worker process) and wrk (one thread, keep-alive, fixed connections) share core 1. Both
proxies get the same Envoy v3 bootstrap: access log off, envoy.filters.http.local_ratelimit
(with a bucket no run can empty) then the router, one STATIC cluster to nginx. A direct
wrk -> nginx run is the baseline (its CPU column is nginx's own cost per request).

`--rbac N` also runs each proxy with envoy.filters.http.rbac in front (N ALLOW policies, only
the last lets the benchmark's requests through: every request runs all N; lib/bootstrap.rbac)
as targets `<proxy>+rbac`, and reports the on/off ratio per proxy. `--tracing PCT` likewise
runs `<proxy>+trace` with HCM tracing (envoy.tracers.zipkin, PCT % random sampling; spans
POSTed to nginx, which refuses them: the cost of making and sending spans is what is measured).
`--mixer` runs `<proxy>+mixer`: Mixer in the sidecar, all on: RBAC of `--rbac` policies (20 when
unset), envoy.filters.http.rate_limit_quota and the batched envoy.access_loggers.http_grpc,
both against one `sofamesh mixer` (on the load core; a quota no run can reach), and reports
the on/off ratio per proxy and the mixer's count of what each proxy reported.

CPU per request = the proxy's utime + stime (all threads, all worker processes) from
/proc/<pid>/stat, delta over the measured wrk run / the requests wrk completed in it.
Prints a table and JSON; exits 1 if a proxy failed to start, to proxy, or served errors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from lib import nginx, wrk
from lib import proc as lib_proc
from lib.bootstrap import BENCH_HOST, MIXER_POLICY, bootstrap
from lib.proc import Proc, cpu_seconds, free_port, http_get, process_tree


def envoy_binary() -> str:
    return os.environ.get("SOFAMESH_ENVOY") or str(ROOT / ".venv-envoy" / "bin" / "envoy")


def sofamesh_command() -> list[str]:
    exe = shutil.which("sofamesh", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "sofamesh"]


def proxy_argv(kind: str, config: Path) -> list[str]:
    kind = kind.split("+")[0]
    common = ["--concurrency", "1", "-l", "warning", "-c", str(config)]
    if kind == "envoy":
        return [
            envoy_binary(),
            *common,
            "--disable-hot-restart",
            "--base-id",
            str(os.getpid() % 50000 + 1),
        ]
    return [*sofamesh_command(), "proxy", *common]


def measure(url: str, args, pids_fn=None) -> dict:
    """Warm up, then one measured wrk run; CPU of pids_fn() processes over the measured run."""
    if args.warmup > 0:
        wrk.run(
            url, args.connections, args.warmup, args.load_core, BENCH_HOST, pace_ms=args.pace_ms
        )
    pids = pids_fn() if pids_fn else []
    cpu0 = cpu_seconds(pids)
    res = wrk.run(
        url, args.connections, args.duration, args.load_core, BENCH_HOST, pace_ms=args.pace_ms
    )
    cpu1 = cpu_seconds(pids)
    row = {
        "requests": res.requests,
        "seconds": round(res.seconds, 3),
        "rps": round(res.rps, 1),
        "p50_ms": round(res.p50_ms, 3),
        "p99_ms": round(res.p99_ms, 3),
        "non_2xx": res.non_2xx,
        "socket_errors": res.socket_errors,
        "cpu_s": round(cpu1 - cpu0, 3),
        "cpu_us_per_req": round((cpu1 - cpu0) * 1e6 / res.requests, 2) if res.requests else None,
        "processes": len(pids),
    }
    if res.non_2xx or res.socket_errors:
        row["error"] = f"{res.non_2xx} non-2xx responses, {res.socket_errors} socket errors"
    return row


RL_OK = "bench_rl.http_local_rate_limit.ok"
# the "<proxy>+<variant>" targets: (variant, what its on/off line calls it)
VARIANTS = (("rbac", "RBAC"), ("trace", "tracing"), ("mixer", "mixer filters"))
RBAC_ALLOWED = "http.bench.rbac.allowed"


def rl_ok(admin: int, stat: str = RL_OK) -> int | None:
    """Requests the local_ratelimit filter let through (Envoy's counter), from admin /stats."""
    try:
        _, text = http_get(admin, "/stats")
    except OSError:
        return None
    for line in text.decode("utf-8", "replace").splitlines():
        name, _, value = line.partition(": ")
        if name == stat and value.strip().isdigit():
            return int(value)
    return None


def start_proxy(kind: str, workdir: Path, upstream_port: int, args) -> tuple[Proc, int, int]:
    port, admin = free_port(), free_port()
    config = workdir / f"{kind.replace('+', '_')}.json"
    rbac_n = args.rbac if kind.endswith("+rbac") else 0
    trace = args.tracing if kind.endswith("+trace") else None
    mixer = args.mixer_port if kind.endswith("+mixer") else None
    if mixer is not None:
        rbac_n = args.rbac or 20
    boot = bootstrap(port, admin, upstream_port, rbac_n, trace, mixer, node=kind.replace("+", "-"))
    config.write_text(json.dumps(boot, indent=1))
    proc = Proc(
        kind, proxy_argv(kind, config), workdir / f"{kind.replace('+', '_')}.log", args.proxy_core
    )
    proc.start()
    try:
        proc.wait_ready(lambda: http_get(admin, "/ready")[0] == 200 and http_get(port)[0] == 200)
        status, body = http_get(port)
        if status != 200 or body != nginx.BODY.encode():
            raise RuntimeError(f"{kind} answered {status} {body[:200]!r}, not nginx's body")
    except Exception:
        proc.stop()
        raise
    return proc, port, admin


def start_mixer(workdir: Path, core: int) -> tuple[Proc, int, int]:
    """`sofamesh mixer` on the load core, on free ports, with a quota no run can reach."""
    grpc_port, http_port = free_port(), free_port()
    policy = workdir / "mixer.yaml"
    policy.write_text(MIXER_POLICY)
    argv = [
        *sofamesh_command(),
        "mixer",
        "--grpc-address",
        f"127.0.0.1:{grpc_port}",
        "--http-address",
        f"127.0.0.1:{http_port}",
        "--config",
        str(policy),
        "--log-level",
        "warning",
    ]
    proc = Proc("mixer", argv, workdir / "mixer.log", core)
    proc.start()
    proc.wait_ready(lambda: http_get(http_port, "/metrics")[0] == 200)
    return proc, grpc_port, http_port


def _metric_sum(text: str, name: str, label: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rpartition(" ")[2])
    return total


def mixer_reports(http_port: int, kinds: list[str], procs: dict, rows: dict) -> dict:
    """What the mixer counted from each +mixer proxy (after the last flush and report):
    access-log entries and quota-admitted requests, beside the requests wrk completed in the
    measured runs (warm-ups add more, so the mixer's counts should be at least that)."""
    time.sleep(2.5)  # one more buffer flush (1 s) and quota report (1 s) from every proxy
    _, body = http_get(http_port, "/metrics")
    text = body.decode("utf-8", "replace")
    out = {}
    for kind in kinds:
        if kind.endswith("+mixer") and kind in procs:
            node = kind.replace("+", "-")
            measured = sum(r.get("requests", 0) for r in rows[kind])
            out[kind] = {
                "requests_measured": measured,
                "access_log_entries": int(
                    _metric_sum(text, "istio_requests_total", f'reporter="{node}"')
                ),
                "quota_allowed": int(
                    _metric_sum(text, "sofamesh_mixer_quota_allowed_total", f'domain="{node}"')
                ),
            }
    return out


def median_row(rows: list[dict]) -> dict:
    """Per-metric median over rounds, with each round's figures kept under "rounds"."""
    good = [r for r in rows if "cpu_us_per_req" in r]
    out: dict = {}
    if good:
        for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "requests", "cpu_s"):
            out[key] = statistics.median(r[key] for r in good)
        out["cpu_us_per_req_min_max"] = [
            min(r["cpu_us_per_req"] for r in good),
            max(r["cpu_us_per_req"] for r in good),
        ]
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        out["error"] = "; ".join(errors)
    out["rounds"] = rows
    return out


def ratios(a: dict, b: dict) -> dict:
    out = {}
    for key in ("cpu_us_per_req", "rps", "p50_ms", "p99_ms"):
        if a.get(key) and b.get(key):
            out[key] = round(a[key] / b[key], 3)
    return out


def table(results: dict) -> str:
    cols = ("cpu_us_per_req", "rps", "p50_ms", "p99_ms", "requests", "cpu_s")
    head = f"{'target':<22}" + "".join(f"{c:>16}" for c in cols) + f"{'cpu_us min..max':>18}"
    title = (
        f"medians over {results['layout']['rounds']} interleaved round(s); load average "
        f"{results['loadavg_1m_before']} before, {results.get('loadavg_1m_after')} after"
    )
    lines = [title, head, "-" * len(head)]
    for name, row in results["runs"].items():
        if "cpu_us_per_req" not in row:
            lines.append(f"{name:<22}  ERROR {row.get('error', '')[:300]}")
            continue
        label = name + (" (cpu: nginx)" if name == "direct" else "")
        lo, hi = row["cpu_us_per_req_min_max"]
        lines.append(
            f"{label:<22}" + "".join(f"{row[c]!s:>16}" for c in cols) + f"{f'{lo}..{hi}':>18}"
        )
        if row.get("error"):
            lines.append(f"{'':<22}  ERROR {row['error']}")
    r = results.get("ratio_sofamesh_over_envoy")
    if r:
        lines.append(f"{'sofamesh / envoy':<22}" + "".join(f"{r.get(c, '')!s:>16}" for c in cols))
    for variant, label in VARIANTS:
        r = results.get(f"ratio_sofamesh_over_envoy_{variant}")
        if r:
            lines.append(
                f"{'sofamesh/envoy +' + variant:<22}"
                + "".join(f"{r.get(c, '')!s:>16}" for c in cols)
            )
        on_off = results.get(f"{variant}_on_over_off_cpu")
        if on_off:
            lines.append(
                f"{label} on / off, CPU per request: "
                + ", ".join(f"{k} {v}" for k, v in on_off.items())
            )
    for kind, rep in results.get("mixer_reports", {}).items():
        lines.append(f"mixer saw from {kind}: {rep}")
    if results.get("cpu_ratio_per_round"):
        lines.append(
            f"sofamesh / envoy CPU per request, round by round: "
            f"{', '.join(map(str, results['cpu_ratio_per_round']))}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 s, 10 connections")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per target")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per target")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    ap.add_argument("--proxies", default="envoy,sofamesh")
    ap.add_argument("--proxy-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1, help="core for wrk and nginx")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--pace-ms",
        type=int,
        default=0,
        help="each connection waits this long between requests, so every target "
        "runs at about the same rate (CPU per request at equal load); "
        "0: as fast as each target goes",
    )
    ap.add_argument(
        "--rbac",
        type=int,
        default=0,
        help="also run each proxy with an RBAC filter of this many policies",
    )
    ap.add_argument(
        "--tracing",
        type=float,
        default=None,
        help="also run each proxy with Zipkin tracing at this random sampling percent",
    )
    ap.add_argument(
        "--mixer",
        action="store_true",
        help="also run each proxy with RBAC, rate_limit_quota and gRPC access logs to a mixer",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for nginx, the proxies and wrk alike (e.g. -10 on a busy machine)",
    )
    args = ap.parse_args(argv)
    lib_proc.NICE = args.nice
    if args.quick:
        args.duration, args.warmup, args.connections, args.rounds = 2.0, 1.0, 10, 1

    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        # Other work on the machine shows up as noise; recorded so a reader can judge a run.
        "loadavg_1m_before": round(os.getloadavg()[0], 2),
        "layout": {
            "proxy_core": args.proxy_core,
            "wrk_and_nginx_core": args.load_core,
            "connections": args.connections,
            "duration_s": args.duration,
            "nice": args.nice,
            "pace_ms": args.pace_ms,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "wrk_threads": 1,
            "proxy_concurrency": 1,
        },
        "runs": {},
    }
    kinds = [p.strip() for p in args.proxies.split(",") if p.strip()]
    if args.rbac:
        kinds += [f"{k}+rbac" for k in kinds]
        results["layout"]["rbac_policies"] = args.rbac
    if args.tracing is not None:
        kinds += [f"{k}+trace" for k in kinds if "+" not in k]
        results["layout"]["tracing_percent"] = args.tracing
    if args.mixer:
        kinds += [f"{k}+mixer" for k in kinds if "+" not in k]
        results["layout"]["mixer_rbac_policies"] = args.rbac or 20
    mixer_proc = None
    with tempfile.TemporaryDirectory(prefix="sofamesh-bench-") as tmp:
        workdir = Path(tmp)
        up_port = free_port()
        upstream = nginx.start(workdir, up_port, args.load_core)
        if args.mixer:
            mixer_proc, args.mixer_port, mixer_http = start_mixer(workdir, args.load_core)
        procs: dict[str, tuple[Proc, int, int]] = {}
        rows: dict[str, list[dict]] = {k: [] for k in ["direct", *kinds]}
        try:
            for kind in kinds:
                try:
                    procs[kind] = start_proxy(kind, workdir, up_port, args)
                except Exception as e:  # noqa: BLE001 - reported in the table and exit status
                    rows[kind].append({"error": f"{type(e).__name__}: {e}"[:2000]})
            # Rounds interleave the targets (order alternating), so noise from other work on
            # the machine hits every target alike; the table shows per-metric medians.
            for rnd in range(args.rounds):
                order = ["direct", *(kinds if rnd % 2 == 0 else kinds[::-1])]
                for kind in order:
                    if kind == "direct":
                        rows[kind].append(
                            measure(
                                f"http://127.0.0.1:{up_port}/",
                                args,
                                lambda: process_tree(upstream.pid),
                            )
                        )
                    elif kind in procs:
                        proc, port, admin = procs[kind]
                        rl0 = rl_ok(admin)
                        row = measure(
                            f"http://127.0.0.1:{port}/", args, lambda p=proc: process_tree(p.pid)
                        )
                        rl1 = rl_ok(admin)
                        if kind.endswith(("+rbac", "+mixer")):
                            rb = rl_ok(admin, RBAC_ALLOWED)
                            row["rbac_allowed"] = rb
                            if rb is None or rb < row["requests"]:
                                row["error"] = (
                                    f"{RBAC_ALLOWED} is {rb} after {row['requests']}"
                                    " requests: the RBAC filter did not run"
                                )
                        # Fairness: the rate-limit filter must have run on every request (the
                        # counter also moves during the warm-up, hence >=).
                        row["ratelimit_ok"] = None if rl0 is None or rl1 is None else rl1 - rl0
                        if row["ratelimit_ok"] is None or row["ratelimit_ok"] < row["requests"]:
                            row["error"] = (
                                f"{RL_OK} moved by {row['ratelimit_ok']} for "
                                f"{row['requests']} requests: the filter did not run"
                            )
                        if proc.p.poll() is not None:
                            row["error"] = f"{kind} exited with {proc.p.returncode} during the run"
                        rows[kind].append(row)
                args.warmup = min(args.warmup, 1.0)  # later rounds only need a short warm-up
            if mixer_proc is not None:
                results["mixer_reports"] = mixer_reports(mixer_http, kinds, procs, rows)
        finally:
            for proc, _, _ in procs.values():
                proc.stop()
            upstream.stop()
            if mixer_proc is not None:
                mixer_proc.stop()
    results["runs"] = {k: median_row(v) for k, v in rows.items()}
    results["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    runs = results["runs"]
    if "envoy" in runs and "sofamesh" in runs:
        results["ratio_sofamesh_over_envoy"] = ratios(runs["sofamesh"], runs["envoy"])
        # Same round = same moment and machine load: the least noisy comparison.
        results["cpu_ratio_per_round"] = [
            round(s["cpu_us_per_req"] / e["cpu_us_per_req"], 3)
            for s, e in zip(runs["sofamesh"]["rounds"], runs["envoy"]["rounds"])
            if s.get("cpu_us_per_req") and e.get("cpu_us_per_req")
        ]
    for variant, _ in VARIANTS:
        for k in kinds:
            on, off = runs.get(f"{k}+{variant}"), runs.get(k)
            if on and off and on.get("cpu_us_per_req") and off.get("cpu_us_per_req"):
                results.setdefault(f"{variant}_on_over_off_cpu", {})[k] = round(
                    on["cpu_us_per_req"] / off["cpu_us_per_req"], 3
                )
        if f"envoy+{variant}" in runs and f"sofamesh+{variant}" in runs:
            results[f"ratio_sofamesh_over_envoy_{variant}"] = ratios(
                runs[f"sofamesh+{variant}"], runs[f"envoy+{variant}"]
            )
    print(table(results))
    print(json.dumps(results, indent=1))
    print(table(results))  # again, after the JSON, so the summary is the last thing on screen
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if any("error" in row for row in runs.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
