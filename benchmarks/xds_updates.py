"""Cost of xDS updates on the sidecar's hot path: wrk keeps 50 keep-alive connections busy
through a sofamesh sidecar fed by a scripted ADS server while N route (RDS) and endpoint
(EDS) updates arrive back to back; reports requests lost (non-2xx, socket errors), the
throughput with and without updates, and each update's push-to-ACK time.

    .venv/bin/python benchmarks/xds_updates.py [--updates 100] [--interval-ms 20] [--delta]
        [--concurrency 2]   # N workers: one stream in the main process, ACK after all applied

Two nginx upstreams; each RDS update flips the route between clusters `a` and `b`, each
EDS update flips cluster `a`'s endpoints between the two nginx ports. Sidecar pinned to core
0, wrk to core 1 (benchmarks/README.md conventions).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.lib import nginx, proc, wrk
from tests.conftest import sofamesh_command
from tests.integration.pilot.conftest import ads_bootstrap
from tests.support.envoy import ProxyProcess
from tests.support.xds_server import ScriptedAds

T = "type.googleapis.com/envoy."
CDS, EDS = T + "config.cluster.v3.Cluster", T + "config.endpoint.v3.ClusterLoadAssignment"
LDS, RDS = T + "config.listener.v3.Listener", T + "config.route.v3.RouteConfiguration"


def resources(port: int):
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2
    from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
    from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
        http_connection_manager_pb2,
    )
    from google.protobuf import json_format

    def cluster(name: str):
        return json_format.ParseDict(
            {
                "name": name,
                "type": "EDS",
                "connect_timeout": "1s",
                "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
            },
            cluster_pb2.Cluster(),
        )

    def cla(name: str, ports: list[int]):
        eps = [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
            for p in ports
        ]
        return json_format.ParseDict(
            {"cluster_name": name, "endpoints": [{"lb_endpoints": eps}]},
            endpoint_pb2.ClusterLoadAssignment(),
        )

    def routes(target: str, n: int):
        return json_format.ParseDict(
            {
                "name": "r",
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "route": {"cluster": target},
                                "response_headers_to_add": [
                                    {"header": {"key": "x-gen", "value": str(n)}}
                                ],
                            }
                        ],
                    }
                ],
            },
            route_pb2.RouteConfiguration(),
        )

    lst = json_format.ParseDict(
        {
            "name": "ingress",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": {
                                "@type": T + "extensions.filters.network.http_connection_manager"
                                ".v3.HttpConnectionManager",
                                "stat_prefix": "ingress",
                                "rds": {
                                    "route_config_name": "r",
                                    "config_source": {"ads": {}, "resource_api_version": "V3"},
                                },
                                "http_filters": [
                                    {
                                        "name": "envoy.filters.http.router",
                                        "typed_config": {
                                            "@type": T + "extensions.filters.http.router.v3.Router"
                                        },
                                    }
                                ],
                            },
                        }
                    ]
                }
            ],
        },
        listener_pb2.Listener(),
    )
    return cluster, cla, routes, lst


async def main(args: argparse.Namespace) -> None:
    import grpc
    from envoy.service.discovery.v3 import ads_pb2_grpc

    work = Path(tempfile.mkdtemp(prefix="xds-updates-"))
    ports = [proc.free_port(), proc.free_port()]
    ups = []
    for i, p in enumerate(ports):
        d = work / f"nginx{i}"
        d.mkdir()
        ups.append(nginx.start(d, p, 1))
    lport, admin = proc.free_port(), proc.free_port()
    cluster, cla, routes, lst = resources(lport)
    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ads.push(CDS, "1", [cluster("a"), cluster("b")])
    ads.push(EDS, "1", [cla("a", ports[:1]), cla("b", ports[1:])])
    ads.push(LDS, "1", [lst])
    ads.push(RDS, "1", [routes("a", 0)])
    sidecar = ProxyProcess.sofamesh(
        sofamesh_command(),
        ads_bootstrap(xds_port, admin, args.delta),
        work / "sidecar",
        concurrency=args.concurrency,
        taskset="0",
    )
    await asyncio.to_thread(sidecar.start)
    url = f"http://127.0.0.1:{lport}/"
    try:
        base = await asyncio.to_thread(wrk.run, url, 50, 5, 1, "bench.local")
        load = asyncio.ensure_future(
            asyncio.to_thread(
                wrk.run, url, 50, args.updates * args.interval_ms / 1000 + 3, 1, "bench.local"
            )
        )
        await asyncio.sleep(1.0)
        times = {"rds": [], "eds": []}
        for i in range(1, args.updates + 1):
            v = str(i + 1)
            if i % 2:
                ads.push(RDS, v, [routes("b" if i % 4 == 1 else "a", i)])
                t, kind = RDS, "rds"
            else:
                ads.push(EDS, v, [cla("a", ports[1:] if i % 4 == 2 else ports[:1])])
                t, kind = EDS, "eds"
            r = await ads.answer(t)
            if r.error_detail.code:
                raise SystemExit(f"update {i} NACKed: {r.error_detail.message}")
            times[kind].append(ads.answered[r.response_nonce] - ads.sent_at[r.response_nonce])
            await asyncio.sleep(args.interval_ms / 1000)
        res = await load
    finally:
        await asyncio.to_thread(sidecar.stop)
        await server.stop(None)
        for u in ups:
            u.stop()

    def ms(xs: list[float]) -> str:
        xs = sorted(x * 1000 for x in xs)
        return f"p50 {statistics.median(xs):.2f} ms, max {xs[-1]:.2f} ms"

    print(
        f"mode: {'delta' if args.delta else 'sotw'}; {args.updates} updates, "
        f"{args.interval_ms} ms apart, wrk -c 50 (core 1), sidecar on core 0 "
        f"(--concurrency {args.concurrency})"
    )
    print(
        f"without updates: {base.rps:.0f} req/s, p99 {base.p99_ms:.2f} ms, "
        f"non-2xx {base.non_2xx}, socket errors {base.socket_errors}"
    )
    print(
        f"during updates:  {res.rps:.0f} req/s, p99 {res.p99_ms:.2f} ms, "
        f"requests {res.requests}, non-2xx {res.non_2xx}, socket errors {res.socket_errors}"
    )
    print(f"push -> ACK, RDS route swap ({len(times['rds'])}): {ms(times['rds'])}")
    print(f"push -> ACK, EDS host swap ({len(times['eds'])}): {ms(times['eds'])}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=100)
    ap.add_argument("--interval-ms", type=int, default=20)
    ap.add_argument("--delta", action="store_true")
    ap.add_argument("--concurrency", type=int, default=1)
    asyncio.run(main(ap.parse_args()))
