"""Priority levels and locality weights over EDS, side by side with Envoy 1.40 fed the same
assignments by a scripted ADS server: N requests per step, the share each priority level
(or locality) receives compared with Envoy's own share and with Envoy's priority load
formula (overprovisioning 1.4: a level's availability is min(100, 1.4 x healthy %), the
levels share 100% in priority order; all down is total panic, load by host count).

Cluster `p`: P0 of 4 hosts (a0..a3), P1 of 2 (b0, b1); health set per step by EDS
health_status. Cluster `l`: one level, localities x (weight 1: x0, x1) and y (weight 3:
y0, y1) with locality_weighted_lb_config."""

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
P0, P1 = ("a0", "a1", "a2", "a3"), ("b0", "b1")
LX, LY = ("x0", "x1"), ("y0", "y1")
N = 400
TOL = 0.1  # 4 standard deviations of a share at p=0.5 over 400 requests

# P0 healthy hosts, P1 healthy hosts -> the share of P0 (Envoy's priority load)
STEPS = [
    (4, 2, 1.00),
    (3, 2, 1.00),  # 75% x 1.4 > 100
    (2, 2, 0.70),
    (1, 2, 0.35),
    (0, 2, 0.00),  # failover to P1
    (0, 0, 0.67),  # total panic: by host count, 4 of 6 (+ the rounding point to P0)
    (4, 2, 1.00),  # back
]
# locality x healthy, y healthy -> share of x (effective weight w x min(1, 1.4 x healthy %))
LSTEPS = [
    (2, 2, 1 / 4),
    (1, 2, 0.7 / 3.7),
    (2, 1, 1 / 3.1),
    (0, 2, 0.0),
]


def clusters():
    from envoy.config.cluster.v3 import cluster_pb2

    def c(name, **extra):
        d = {
            "name": name,
            "type": "EDS",
            "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
            **extra,
        }
        return json_format.ParseDict(d, cluster_pb2.Cluster())

    return [c("p"), c("l", common_lb_config={"locality_weighted_lb_config": {}})]


def _lbes(names, ports, healthy):
    return [
        {
            "endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[n]}}
            },
            "health_status": "HEALTHY" if i < healthy else "UNHEALTHY",
        }
        for i, n in enumerate(names)
    ]


def prio_assignment(ports, h0, h1):
    from envoy.config.endpoint.v3 import endpoint_pb2

    d = {
        "cluster_name": "p",
        "endpoints": [
            {"locality": {"zone": "z0"}, "lb_endpoints": _lbes(P0, ports, h0)},
            {"locality": {"zone": "z1"}, "priority": 1, "lb_endpoints": _lbes(P1, ports, h1)},
        ],
    }
    return json_format.ParseDict(d, endpoint_pb2.ClusterLoadAssignment())


def loc_assignment(ports, hx, hy):
    from envoy.config.endpoint.v3 import endpoint_pb2

    d = {
        "cluster_name": "l",
        "endpoints": [
            {
                "locality": {"zone": "x"},
                "load_balancing_weight": 1,
                "lb_endpoints": _lbes(LX, ports, hx),
            },
            {
                "locality": {"zone": "y"},
                "load_balancing_weight": 3,
                "lb_endpoints": _lbes(LY, ports, hy),
            },
        ],
    }
    return json_format.ParseDict(d, endpoint_pb2.ClusterLoadAssignment())


def routes():
    return {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {"match": {"prefix": "/p/"}, "route": {"cluster": "p"}},
                    {"match": {"prefix": "/l/"}, "route": {"cluster": "l"}},
                ],
            }
        ],
    }


def shares(port: int, path: str, n: int = N) -> dict[str, int]:
    """n requests on one keep-alive connection: how many each upstream answered."""
    got: dict[str, int] = {}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(n):
            c.request("GET", path)
            r = c.getresponse()
            body = r.read().decode()
            k = body.split()[0].removeprefix("upstream=") if r.status == 200 else str(r.status)
            got[k] = got.get(k, 0) + 1
    finally:
        c.close()
    return got


def share_of(got: dict[str, int], names) -> float:
    return sum(v for k, v in got.items() if k in names) / sum(got.values())


async def run(kind: str, tmp_path) -> dict:
    up = RecordingUpstream([*P0, *P1, *LX, *LY]).start()
    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    lport, admin = free_port(), free_port()
    ads.push(CDS, "c1", clusters())
    ads.push(EDS, "e0", [prio_assignment(up.ports, 4, 2), loc_assignment(up.ports, 2, 2)])
    ads.push(LDS, "l1", [listener(lport, route_config=routes())])
    boot = ads_bootstrap(xds_port, admin, delta=False)
    if kind == "envoy":
        proxy = ProxyProcess.envoy(envoy_binary(), boot, tmp_path / kind)
    else:
        workers = 2 if kind.endswith("workers") else 1
        proxy = ProxyProcess.sofamesh(
            sofamesh_command(), boot, tmp_path / kind, concurrency=workers
        )
    out: dict = {"prio": [], "loc": [], "prio_hosts": []}
    try:
        await asyncio.to_thread(proxy.start)
        await ads.acked(LDS)
        for i, ((h0, h1, _), (hx, hy, _)) in enumerate(zip(STEPS, LSTEPS + [LSTEPS[0]] * 9)):
            ads.push(
                EDS,
                f"e{i + 1}",
                [prio_assignment(up.ports, h0, h1), loc_assignment(up.ports, hx, hy)],
            )
            await ads.acked(EDS)
            await asyncio.sleep(0.3)  # Envoy's workers take the new host set
            got = await asyncio.to_thread(shares, lport, "/p/")
            out["prio"].append(share_of(got, P0))
            out["prio_hosts"].append(sorted(got))
            if i < len(LSTEPS):
                got = await asyncio.to_thread(shares, lport, "/l/")
                out["loc"].append(share_of(got, LX))
        out["panic"] = await asyncio.to_thread(stat, admin, "cluster.p.lb_healthy_panic")
    finally:
        await asyncio.to_thread(proxy.stop)
        await server.stop(None)
        up.stop()
    return out


def check(res: dict) -> None:
    for got, (h0, h1, want) in zip(res["prio"], STEPS):
        assert abs(got - want) <= TOL, (h0, h1, got, want)
    for got, (hx, hy, want) in zip(res["loc"], LSTEPS):
        assert abs(got - want) <= TOL, (hx, hy, got, want)
    # no unhealthy host is chosen outside total panic; in it, every host is
    for hosts, (h0, h1, _) in zip(res["prio_hosts"], STEPS):
        if h0 or h1:
            assert set(hosts) <= {*P0[:h0], *P1[:h1]}, (h0, h1, hosts)
        else:
            assert set(hosts) == {*P0, *P1}
    assert res["panic"] == N  # only the all-down step's requests were in panic


@pytest.mark.envoy
async def test_eds_priority_and_locality_split_as_envoy(tmp_path):
    env = await run("envoy", tmp_path)
    check(env)  # the expectations hold for Envoy itself
    sm = await run("sofamesh", tmp_path)
    check(sm)
    for a, b in zip(sm["prio"] + sm["loc"], env["prio"] + env["loc"]):
        assert abs(a - b) <= 1.5 * TOL


async def test_eds_priority_two_workers(tmp_path):
    """--concurrency 2: each worker applies the assignments (proxy/pool_xds.py)."""
    check(await run("sofamesh-2-workers", tmp_path))
