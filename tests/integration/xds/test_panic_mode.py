"""Envoy's panic mode, side by side with Envoy 1.40 fed the same EDS cluster over ADS: when
fewer hosts than `common_lb_config.healthy_panic_threshold` (default 50%) are healthy, the
load balancer uses every host, healthy or not, and counts `cluster.<name>.lb_healthy_panic`.
The threshold is judged as Envoy does for one priority, with its overprovisioning factor of
1.4: 3 healthy hosts of 4 are 100% available, so a threshold of 80% sees no panic."""

from __future__ import annotations

import asyncio
import http.client

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import json_format

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.pilot.conftest import ads_bootstrap
from tests.integration.xds.test_sidecar_nack import CDS, LDS, listener, stat
from tests.support.envoy import ProxyProcess
from tests.support.http_upstream import RecordingUpstream
from tests.support.xds_server import ScriptedAds

EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
NAMES = ("h0", "h1", "h2", "h3", "h4")


def eds_cluster(name: str, threshold: float | None):
    from envoy.config.cluster.v3 import cluster_pb2

    d = {
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
    }
    if threshold is not None:
        d["common_lb_config"] = {"healthy_panic_threshold": {"value": threshold}}
    return json_format.ParseDict(d, cluster_pb2.Cluster())


def assignment(name: str, ports: dict[str, int], statuses: list[str]):
    from envoy.config.endpoint.v3 import endpoint_pb2

    lbes = [
        {
            "endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[n]}}
            },
            "health_status": st,
        }
        for n, st in zip(NAMES, statuses)
    ]
    d = {"cluster_name": name, "endpoints": [{"lb_endpoints": lbes}]}
    return json_format.ParseDict(d, endpoint_pb2.ClusterLoadAssignment())


def routes(n: int) -> dict:
    return {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {"match": {"prefix": f"/c{i}/"}, "route": {"cluster": f"c{i}"}}
                    for i in range(n)
                ],
            }
        ],
    }


def who(port: int, path: str) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read().decode()
        return body.split()[0].removeprefix("upstream=") if r.status == 200 else str(r.status)
    finally:
        c.close()


def reached(port: int, i: int, n: int = 40) -> set[str]:
    return {who(port, f"/c{i}/") for _ in range(n)}


# (threshold or None for Envoy's default, statuses of h0.., the upstreams traffic reaches)
CASES = [
    (None, ["HEALTHY", "UNHEALTHY", "UNHEALTHY", "UNHEALTHY"], {"h0", "h1", "h2", "h3"}),
    (None, ["HEALTHY", "HEALTHY", "UNHEALTHY", "UNHEALTHY"], {"h0", "h1"}),  # 50%: not under
    (None, ["UNHEALTHY", "DRAINING", "TIMEOUT"], {"h0", "h1", "h2"}),  # none healthy: all
    (0, ["HEALTHY", "UNHEALTHY", "UNHEALTHY", "UNHEALTHY"], {"h0"}),  # 0: never panic
    (0, ["UNHEALTHY", "UNHEALTHY"], {"503"}),
    (80, ["HEALTHY", "HEALTHY", "HEALTHY", "UNHEALTHY"], {"h0", "h1", "h2"}),  # 75% * 1.4
    (80, ["HEALTHY", "HEALTHY", "UNHEALTHY", "UNHEALTHY", "UNHEALTHY"], {f"h{i}" for i in range(5)}),
    (30, ["HEALTHY", "HEALTHY", "UNHEALTHY", "UNHEALTHY", "UNHEALTHY"], {"h0", "h1"}),
]  # fmt: skip


@pytest.mark.parametrize("kind", ["envoy", "sofamesh", "sofamesh-2-workers"])
async def test_panic_mode_as_envoy(tmp_path, kind):
    up = RecordingUpstream(list(NAMES)).start()
    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    lport, admin = free_port(), free_port()
    # one cluster per case, c<i>, reached at /c<i>/
    ads.push(CDS, "c1", [eds_cluster(f"c{i}", t) for i, (t, _, _) in enumerate(CASES)])
    ads.push(EDS, "e1", [assignment(f"c{i}", up.ports, st) for i, (_, st, _) in enumerate(CASES)])
    ads.push(LDS, "l1", [listener(lport, route_config=routes(len(CASES)))])
    boot = ads_bootstrap(xds_port, admin, delta=False)
    if kind == "envoy":
        proxy = ProxyProcess.envoy(envoy_binary(), boot, tmp_path)
    else:
        workers = 2 if kind.endswith("workers") else 1
        proxy = ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path, concurrency=workers)
    try:
        await asyncio.to_thread(proxy.start)
        await ads.acked(LDS)
        got = [await asyncio.to_thread(reached, lport, i) for i in range(len(CASES))]
        assert got == [want for _, _, want in CASES]
        # in panic (traffic reached an unhealthy host) each pick counts: 40 requests
        for i, (_, statuses, want) in enumerate(CASES):
            panic = any(statuses[int(h[1:])] != "HEALTHY" for h in want if h != "503")
            panics = await asyncio.to_thread(stat, admin, f"cluster.c{i}.lb_healthy_panic")
            assert (panics >= 40) if panic else panics == 0, (i, panics)

        # host health changes over EDS: c0 leaves panic (2 healthy of 4: 50%)
        statuses = ["HEALTHY", "HEALTHY", "UNHEALTHY", "UNHEALTHY"]
        ads.push(EDS, "e2", [assignment("c0", up.ports, statuses)])
        await ads.acked(EDS)
        await asyncio.sleep(0.3)  # Envoy's workers take the new host set
        assert await asyncio.to_thread(reached, lport, 0) == {"h0", "h1"}
        # the EDS cluster's own counters (a StatGroup in the sidecar): two accepted updates
        assert await asyncio.to_thread(stat, admin, "cluster.c0.update_success") == 2
        assert await asyncio.to_thread(stat, admin, "cluster.c0.update_rejected") == 0
    finally:
        await asyncio.to_thread(proxy.stop)
        await server.stop(None)
        up.stop()
