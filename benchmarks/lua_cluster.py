"""What Envoy's Lua cluster specifier costs per request, Envoy 1.40 and sofamesh side by side.

    .venv/bin/python benchmarks/lua_cluster.py [--quick] [--duration 10] [--rounds 3] [--json out.json]

Both proxies run Envoy's lua-cluster-specifier example (tests/fixtures/envoy-examples): its
route's inline envoy.router.cluster_specifier_plugin.lua reads `header_key` through
route_handle:headers():get() and names example_cluster, whose endpoint here is nginx. The
`+lua` targets run that config as it is; the plain targets the same config with the route's
plugin replaced by `cluster: example_cluster` (what the script answers for this traffic), so
the difference is the Lua call alone. The layout and the measurement are http1_e2e.py's:
`--concurrency 1` proxies pinned to core 0, nginx and wrk (keep-alive, no header_key) on
core 1, CPU per request = the proxy's utime + stime over the measured run / requests;
interleaved rounds, medians. Prints a table and JSON; exits 1 if a target failed or served
errors.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from http1_e2e import measure, proxy_argv
from lib import nginx
from lib import proc as lib_proc
from lib.proc import Proc, free_port, http_get, process_tree

EXAMPLE = ROOT / "tests" / "fixtures" / "envoy-examples" / "lua-cluster-specifier_envoy.yaml"


def example_bootstrap(port: int, admin: int, upstream: int, lua: bool) -> dict:
    """The example with its Lua listener on port, example_cluster on nginx, the example's
    second listener (the cluster's own upstream there) left out."""
    boot = yaml.safe_load(EXAMPLE.read_text())
    res = boot["static_resources"]
    lst = res["listeners"][0]
    res["listeners"] = [lst]
    lst["address"]["socket_address"].update(address="127.0.0.1", port_value=port)
    route = lst["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    route = route["virtual_hosts"][0]["routes"][0]["route"]
    if not lua:
        del route["inline_cluster_specifier_plugin"]
        route["cluster"] = "example_cluster"
    for cl in res["clusters"]:
        for eps in cl["load_assignment"]["endpoints"]:
            for ep in eps["lb_endpoints"]:
                ep["endpoint"]["address"]["socket_address"].update(
                    address="127.0.0.1", port_value=upstream
                )
    boot["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}}
    return boot


def start(kind: str, workdir: Path, upstream: int, core: int) -> tuple[Proc, int]:
    port, admin = free_port(), free_port()
    config = workdir / f"{kind.replace('+', '_')}.json"
    boot = example_bootstrap(port, admin, upstream, kind.endswith("+lua"))
    config.write_text(json.dumps(boot, indent=1))
    proc = Proc(kind, proxy_argv(kind, config), workdir / f"{kind.replace('+', '_')}.log", core)
    proc.start()
    try:
        proc.wait_ready(lambda: http_get(admin, "/ready")[0] == 200 and http_get(port)[0] == 200)
        status, body = http_get(port)
        if status != 200 or body != nginx.BODY.encode():
            raise RuntimeError(f"{kind} answered {status} {body[:200]!r}, not nginx's body")
        # the script really runs: header_key: fake names fake_cluster, which does not exist
        status, _ = _get(port, {"header_key": "fake"})
        want = 503 if kind.endswith("+lua") else 200
        if status != want:
            raise RuntimeError(f"{kind}: header_key: fake answered {status}, not {want}")
    except Exception:
        proc.stop()
        raise
    return proc, port


def _get(port: int, headers: dict) -> tuple[int, bytes]:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/", headers={"host": "bench.local", **headers})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def median_row(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r and r.get("cpu_us_per_req")]
    if not ok:
        return {"error": next((r["error"] for r in rows if "error" in r), "no run"), "rounds": rows}
    out = {k: statistics.median(r[k] for r in ok) for k in ("rps", "cpu_us_per_req", "p50_ms")}
    return {**out, "rounds": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 s, 10 connections")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--proxy-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument("--pace-ms", type=int, default=0)
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    lib_proc.NICE = args.nice
    if args.quick:
        args.duration, args.warmup, args.connections, args.rounds = 2.0, 1.0, 10, 1
    kinds = ["envoy", "envoy+lua", "sofamesh", "sofamesh+lua"]
    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_1m_before": round(os.getloadavg()[0], 2),
        "layout": {"connections": args.connections, "duration_s": args.duration},
    }
    rows: dict[str, list[dict]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="sofamesh-lua-bench-") as tmp:
        workdir = Path(tmp)
        up_port = free_port()
        upstream = nginx.start(workdir, up_port, args.load_core)
        procs: dict[str, tuple[Proc, int]] = {}
        try:
            for kind in kinds:
                try:
                    procs[kind] = start(kind, workdir, up_port, args.proxy_core)
                except Exception as e:  # noqa: BLE001 - reported in the table and exit status
                    rows[kind].append({"error": f"{type(e).__name__}: {e}"[:2000]})
            for rnd in range(args.rounds):
                for kind in kinds if rnd % 2 == 0 else kinds[::-1]:
                    if kind not in procs:
                        continue
                    proc, port = procs[kind]
                    row = measure(
                        f"http://127.0.0.1:{port}/", args, lambda p=proc: process_tree(p.pid)
                    )
                    if proc.p.poll() is not None:
                        row["error"] = f"{kind} exited with {proc.p.returncode} during the run"
                    rows[kind].append(row)
                args.warmup = min(args.warmup, 1.0)
        finally:
            for proc, _ in procs.values():
                proc.stop()
            upstream.stop()
    runs = {k: median_row(v) for k, v in rows.items()}
    results["runs"] = runs
    results["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    lines = [f"{'target':<14} {'rps':>9} {'CPU us/req':>11} {'p50 ms':>8}"]
    for k in kinds:
        r = runs[k]
        if "error" in r:
            lines.append(f"{k:<14} ERROR {r['error'][:200]}")
        else:
            lines.append(
                f"{k:<14} {r['rps']:>9.0f} {r['cpu_us_per_req']:>11.2f} {r['p50_ms']:>8.3f}"
            )
    summary = {}
    for p in ("envoy", "sofamesh"):
        a, b = runs[p], runs[f"{p}+lua"]
        if "error" not in a and "error" not in b:
            # the same round, the same moment: the least noisy view of the Lua call's cost
            per_round = [
                round(y["cpu_us_per_req"] - x["cpu_us_per_req"], 2)
                for x, y in zip(rows[p], rows[f"{p}+lua"], strict=False)
                if x.get("cpu_us_per_req") and y.get("cpu_us_per_req")
            ]
            summary[p] = {
                "lua_added_cpu_us_per_req": round(b["cpu_us_per_req"] - a["cpu_us_per_req"], 2),
                "lua_over_plain": round(b["cpu_us_per_req"] / a["cpu_us_per_req"], 3),
                "added_per_round": per_round,
            }
            lines.append(
                f"{p}: the Lua route adds {summary[p]['lua_added_cpu_us_per_req']:.2f} us "
                f"CPU per request ({summary[p]['lua_over_plain']:.3f}x; per round {per_round})"
            )
    if "error" not in runs["sofamesh+lua"] and "error" not in runs["envoy+lua"]:
        r = runs["sofamesh+lua"]["cpu_us_per_req"] / runs["envoy+lua"]["cpu_us_per_req"]
        summary["sofamesh_over_envoy_with_lua"] = round(r, 3)
        lines.append(f"sofamesh+lua / envoy+lua CPU per request: {r:.3f}")
    results["summary"] = copy.deepcopy(summary)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if any("error" in r for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
