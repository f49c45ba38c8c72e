"""RPC benchmark: Bolt and Dubbo request/response through sofamesh, Envoy 1.40's dubbo_proxy
(Dubbo) and a direct connection, side by side in one run, with proxy CPU per request.

    .venv/bin/python benchmarks/rpc_bench.py [--duration 8] [--connections 20] [--inflight 8]
                                             [--json out.json]

Layout (2 cores): each proxy runs alone, `--concurrency 1`, pinned to core 0 (`taskset -c 0`);
the upstream server and the load generator (both uvloop, using sofamesh's own codecs to
frame) share core 1. The load generator keeps `--inflight` requests outstanding on each of
`--connections` connections for `--duration` seconds after a warm-up, measures every
request's latency, and counts responses. Both proxies get equivalent configs: one route by
interface (and method for Bolt) to one STATIC cluster.

CPU per request = the proxy's utime + stime (all threads) from /proc/<pid>/stat over the
measured window / the responses completed in it. The direct run has no proxy: its CPU
column is empty. Exits 1 if a run served errors or a proxy failed to start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

SERVICE = "com.alipay.bench.EchoService:1.0"
DUBBO_SERVICE = "com.alipay.bench.EchoService"


# ---------------------------------------------------------------- frames
def bolt_request() -> bytes:
    from sofamesh._core.codecs import bolt

    return bolt.BoltFrame(
        request_id=1,
        codec=1,
        timeout=3000,
        class_name=bolt.SOFA_REQUEST_CLASS,
        headers={
            "service": SERVICE,
            "sofa_head_method_name": "echo",
            "sofa_head_target_app": "bench",
            "rpc_trace_context.sofaTraceId": "0a1b2c3d4e",
            "rpc_trace_context.sofaRpcId": "0",
        },
        content=b"\x91" * 64,
    ).encode()


def bolt_response() -> bytes:
    from sofamesh._core.codecs import bolt

    return bolt.BoltFrame(
        type=0,
        cmdcode=2,
        request_id=1,
        codec=1,
        status=0,
        class_name=bolt.SOFA_RESPONSE_CLASS,
        content=b"\x91" * 64,
    ).encode()


def dubbo_request() -> bytes:
    from sofamesh._core.codecs import dubbo
    from sofamesh._core.codecs.hessian import h2_encode_simple

    return dubbo.encode_request(
        1,
        "2.0.2",
        DUBBO_SERVICE,
        "1.0",
        "echo",
        "Ljava/lang/String;",
        h2_encode_simple("x" * 64),
        {"path": DUBBO_SERVICE, "interface": DUBBO_SERVICE, "version": "1.0", "timeout": "3000"},
    )


def dubbo_response() -> bytes:
    from sofamesh._core.codecs import dubbo
    from sofamesh._core.codecs.hessian import h2_encode_simple

    return dubbo.encode_response(1, h2_encode_simple("x" * 64), flag=1)


# ---------------------------------------------------------------- upstream server
def serve(proto: str, port: int) -> None:
    import uvloop

    from sofamesh._core.codecs import bolt, dubbo

    resp = bytearray(bolt_response() if proto == "bolt" else dubbo_response())

    class Server(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t
            self.dec = bolt.BoltDecoder() if proto == "bolt" else dubbo.DubboDecoder()

        def data_received(self, data):
            out = []
            for f in self.dec.feed(data):
                if proto == "bolt":
                    if f.cmdcode == 0:
                        out.append(bolt.heartbeat_ack(f))
                        continue
                    struct.pack_into(">I", resp, 5, f.request_id)
                else:
                    if f.flags & 0x20:
                        out.append(dubbo.heartbeat_response(f))
                        continue
                    struct.pack_into(">Q", resp, 4, f.request_id)
                out.append(bytes(resp))
            self.t.writelines(out)

    async def main():
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(Server, "127.0.0.1", port, backlog=1024)
        print("ready", flush=True)
        await srv.serve_forever()

    uvloop.run(main())


# ---------------------------------------------------------------- load generator
def load(proto: str, port: int, conns: int, inflight: int, warmup: float, duration: float) -> None:
    import uvloop

    from sofamesh._core.codecs import bolt, dubbo

    tmpl = bytearray(bolt_request() if proto == "bolt" else dubbo_request())
    fmt, off = (">I", 5) if proto == "bolt" else (">Q", 4)
    state = {"measuring": False, "done": 0, "errors": 0, "lat": []}
    perf = time.perf_counter

    class Client(asyncio.Protocol):
        def __init__(self):
            self.sent: dict[int, float] = {}
            self.next_id = 1

        def connection_made(self, t):
            self.t = t
            self.dec = bolt.BoltDecoder() if proto == "bolt" else dubbo.DubboDecoder()
            self.t.writelines([self._req() for _ in range(inflight)])

        def _req(self) -> bytes:
            rid = self.next_id
            self.next_id += 1
            struct.pack_into(fmt, tmpl, off, rid)
            self.sent[rid] = perf()
            return bytes(tmpl)

        def data_received(self, data):
            now = perf()
            out = []
            for f in self.dec.feed(data):
                t0 = self.sent.pop(f.request_id, None)
                if t0 is None:
                    continue
                ok = (f.status == 0) if proto == "bolt" else (f.status == 20)
                if state["measuring"]:
                    state["done"] += 1
                    state["lat"].append(now - t0)
                    if not ok:
                        state["errors"] += 1
                out.append(self._req())
            if out:
                self.t.writelines(out)

    async def main():
        loop = asyncio.get_running_loop()
        clients = []
        for _ in range(conns):
            t, _c = await loop.create_connection(Client, "127.0.0.1", port)
            t.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            clients.append(t)
        await asyncio.sleep(warmup)
        print("measure-start", flush=True)
        state["measuring"] = True
        t0 = perf()
        await asyncio.sleep(duration)
        state["measuring"] = False
        elapsed = perf() - t0
        print("measure-end", flush=True)
        for t in clients:
            t.close()
        lat = sorted(state["lat"])
        n = len(lat)
        print(
            json.dumps(
                {
                    "requests": state["done"],
                    "errors": state["errors"],
                    "seconds": elapsed,
                    "rps": state["done"] / elapsed if elapsed else 0,
                    "p50_ms": lat[n // 2] * 1000 if n else None,
                    "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1000 if n else None,
                }
            ),
            flush=True,
        )

    uvloop.run(main())


# ---------------------------------------------------------------- orchestration
def envoy_binary() -> str:
    return os.environ.get("SOFAMESH_ENVOY") or str(ROOT / ".venv-envoy" / "bin" / "envoy")


def sofamesh_argv() -> list[str]:
    exe = ROOT / ".venv" / "bin" / "sofamesh"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sofamesh"]


def bootstrap(proto: str, listen: int, admin: int, upstream: int) -> dict:
    if proto == "bolt":
        flt = {
            "name": "sofamesh.filters.network.bolt_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/sofamesh.filters.network.bolt_proxy.v1.BoltProxy",
                "stat_prefix": "bench",
                "route_config": [
                    {
                        "name": "bench",
                        "interface": SERVICE.split(":")[0],
                        "routes": [
                            {
                                "match": {"method": {"name": {"exact": "echo"}}},
                                "route": {"cluster": "upstream"},
                            }
                        ],
                    }
                ],
            },
        }
    else:
        flt = {
            "name": "envoy.filters.network.dubbo_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3"
                ".DubboProxy",
                "stat_prefix": "bench",
                "protocol_type": "Dubbo",
                "serialization_type": "Hessian2",
                "route_config": [
                    {
                        "name": "bench",
                        "interface": DUBBO_SERVICE,
                        "routes": [
                            {
                                "match": {"method": {"name": {"exact": "echo"}}},
                                "route": {"cluster": "upstream"},
                            }
                        ],
                    }
                ],
            },
        }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [{"filters": [flt]}],
                }
            ],
            "clusters": [
                {
                    "name": "upstream",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "upstream",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": upstream,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


def _spawn(argv, core, env=None, log=None):
    return subprocess.Popen(
        ["taskset", "-c", str(core), *argv],
        stdout=subprocess.PIPE,
        stderr=log or subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        start_new_session=True,
    )


def _kill(p):
    import signal

    if p is None or p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(5)


def run_case(proto: str, target: str, args, workdir: Path) -> dict:
    from lib.proc import accepts, cpu_seconds, free_port, process_tree

    me = [sys.executable, str(Path(__file__).resolve())]
    up_port = free_port()
    server = _spawn([*me, "--serve", proto, "--port", str(up_port)], 1)
    proxy = None
    try:
        assert server.stdout.readline().strip() == "ready"
        port = up_port
        if target != "direct":
            port, admin = free_port(), free_port()
            cfg = workdir / f"{target}-{proto}.json"
            cfg.write_text(json.dumps(bootstrap(proto, port, admin, up_port)))
            if target == "envoy":
                argv = [
                    envoy_binary(),
                    "--concurrency",
                    "1",
                    "-l",
                    "error",
                    "--disable-hot-restart",
                    "-c",
                    str(cfg),
                ]
            else:
                argv = [
                    *sofamesh_argv(),
                    "proxy",
                    "--concurrency",
                    "1",
                    "-l",
                    "error",
                    "-c",
                    str(cfg),
                ]
            with open(workdir / f"{target}-{proto}.log", "w") as log:
                proxy = _spawn(argv, 0, log=log)
            deadline = time.monotonic() + 30
            while not accepts(port):
                if proxy.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{target} did not start: "
                        f"{(workdir / f'{target}-{proto}.log').read_text()[-2000:]}"
                    )
                time.sleep(0.05)
        gen = _spawn(
            [
                *me,
                "--load",
                proto,
                "--port",
                str(port),
                "--connections",
                str(args.connections),
                "--inflight",
                str(args.inflight),
                "--warmup",
                str(args.warmup),
                "--duration",
                str(args.duration),
            ],
            1,
        )
        pids = process_tree(proxy.pid) if proxy else []
        assert gen.stdout.readline().strip() == "measure-start"
        c0 = cpu_seconds(pids) if pids else 0.0
        assert gen.stdout.readline().strip() == "measure-end"
        c1 = cpu_seconds(pids) if pids else 0.0
        res = json.loads(gen.stdout.readline())
        gen.wait(10)
        res["cpu_us_per_req"] = (
            (c1 - c0) / res["requests"] * 1e6 if pids and res["requests"] else None
        )
        res["proxy_cpu_s"] = c1 - c0 if pids else None
        return res
    finally:
        _kill(proxy)
        _kill(server)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve")
    ap.add_argument("--load")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--inflight", type=int, default=8)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if args.load:
        load(args.load, args.port, args.connections, args.inflight, args.warmup, args.duration)
        return 0
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for proto, targets in (
            ("dubbo", ("direct", "envoy", "sofamesh")),
            ("bolt", ("direct", "sofamesh")),
        ):
            for target in targets:
                key = f"{proto}/{target}"
                results[key] = run_case(proto, target, args, Path(tmp))
                print(f"{key:16} {json.dumps(results[key])}", file=sys.stderr, flush=True)
    sd, ed = results["dubbo/sofamesh"], results["dubbo/envoy"]
    sb = results["bolt/sofamesh"]
    ratios = {
        "dubbo_cpu_sofamesh_over_envoy": sd["cpu_us_per_req"] / ed["cpu_us_per_req"],
        "dubbo_rps_sofamesh_over_envoy": sd["rps"] / ed["rps"],
        "dubbo_p99_sofamesh_over_envoy": sd["p99_ms"] / ed["p99_ms"],
        "dubbo_rps_sofamesh_over_direct": sd["rps"] / results["dubbo/direct"]["rps"],
        "bolt_cpu_over_dubbo_cpu_sofamesh": sb["cpu_us_per_req"] / sd["cpu_us_per_req"],
        "bolt_rps_sofamesh_over_direct": sb["rps"] / results["bolt/direct"]["rps"],
    }
    print(f"\n{'case':18}{'rps':>10}{'p50 ms':>9}{'p99 ms':>9}{'proxy us/req':>14}{'errors':>8}")
    for key, r in results.items():
        cpu = f"{r['cpu_us_per_req']:.1f}" if r["cpu_us_per_req"] is not None else "-"
        print(
            f"{key:18}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{cpu:>14}"
            f"{r['errors']:>8}"
        )
    print()
    for k, v in ratios.items():
        print(f"{k:36} {v:.2f}")
    out = {
        "config": {
            "connections": args.connections,
            "inflight": args.inflight,
            "duration_s": args.duration,
            "proxy_core": 0,
            "load_core": 1,
        },
        "results": results,
        "ratios": ratios,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 1 if any(r["errors"] or not r["requests"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
