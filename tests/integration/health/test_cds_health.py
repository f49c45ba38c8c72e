"""Health checks on a cluster that arrives by CDS (endpoints by EDS), with 1 and 2 workers:
EDS health and active checks combine as in Envoy (a host is chosen only if EDS does not say
unhealthy AND its checks pass; /clusters shows `/failed_eds_health` and `/failed_active_hc`
apart), and a cluster removed by CDS is no longer checked."""

from __future__ import annotations

import asyncio
import http.client
import time

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 - Any types
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import json_format

from tests.conftest import free_port, sofamesh_command
from tests.integration.health.helpers import HealthUpstream, bootstrap, hc_stats, host_flags
from tests.integration.pilot.conftest import ads_bootstrap
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.wait import wait_until
from tests.support.xds_server import ScriptedAds

pytestmark = pytest.mark.timeout(60)

_T = "type.googleapis.com/envoy."
CDS = _T + "config.cluster.v3.Cluster"
EDS = _T + "config.endpoint.v3.ClusterLoadAssignment"
LDS = _T + "config.listener.v3.Listener"
HC = {
    "timeout": "0.5s",
    "interval": "0.2s",
    "no_traffic_interval": "0.2s",
    "unhealthy_threshold": 2,
    "healthy_threshold": 1,
    "http_health_check": {"path": "/health"},
}


def _cluster() -> cluster_pb2.Cluster:
    d = {
        "name": "c",
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
        "health_checks": [HC],
        # no panic mode: with 1 healthy host of 3, Envoy's default 50% would use all three
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    }
    return json_format.ParseDict(d, cluster_pb2.Cluster())


def _cla(ports: list[int], unhealthy: tuple[int, ...] = ()) -> endpoint_pb2.ClusterLoadAssignment:
    eps = [
        {
            "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}},
            "health_status": "UNHEALTHY" if p in unhealthy else "HEALTHY",
        }
        for p in ports
    ]
    return json_format.ParseDict(
        {"cluster_name": "c", "endpoints": [{"lb_endpoints": eps}]},
        endpoint_pb2.ClusterLoadAssignment(),
    )


def _reached(port: int, n: int) -> set[int]:
    out = set()
    for _ in range(n):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            c.request("GET", "/x")
            r = c.getresponse()
            body = r.read()
            if r.status == 200:
                out.add(int(body))
        finally:
            c.close()
    return out


@pytest.mark.parametrize("workers", [1, 2])
async def test_cds_cluster_health_checked(tmp_path, workers):
    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ups = [HealthUpstream() for _ in range(3)]
    p1, p2, p3 = (u.port for u in ups)
    admin = free_port()
    b = ads_bootstrap(xds_port, admin, delta=False)
    lst = bootstrap([p1], HC)["static_resources"]["listeners"][0]
    lport = lst["address"]["socket_address"]["port_value"]
    ads.push(CDS, "1", [_cluster()])
    ads.push(EDS, "1", [_cla([p1, p2, p3], unhealthy=(p3,))])
    ads.push(LDS, "1", [json_format.ParseDict(lst, listener_pb2.Listener())])
    proxy = ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path, concurrency=workers)
    call = asyncio.to_thread
    try:
        await call(proxy.start)
        await ads.acked(LDS)
        await call(
            wait_until,
            lambda: host_flags(admin) == {p1: "healthy", p2: "healthy", p3: "/failed_eds_health"},
            5,
            "first checks",
        )
        assert await call(_reached, lport, 8) == {p1, p2}
        ups[1].status = 503
        await call(wait_until, lambda: host_flags(admin)[p2] == "/failed_active_hc", 3, "p2 out")
        assert await call(_reached, lport, 8) == {p1}
        # EDS says p3 is healthy now; its checks pass: it is chosen
        ads.push(EDS, "2", [_cla([p1, p2, p3])])
        await ads.acked(EDS)
        await call(wait_until, lambda: host_flags(admin)[p3] == "healthy", 3, "p3 in")
        assert await call(_reached, lport, 8) == {p1, p3}
        s = await call(hc_stats, admin)
        assert s["health_check.healthy"] == 2 and s["membership_healthy"] == 2
        # one check per host per interval, whatever the worker count
        t = time.monotonic()
        await asyncio.sleep(1.0)
        assert ups[0].checks_since(t) <= 6
        # the cluster removed by CDS: its checks stop
        ads.push(CDS, "2", [])
        await ads.acked(CDS)
        await asyncio.sleep(0.5)
        t = time.monotonic()
        await asyncio.sleep(0.6)
        assert sum(u.checks_since(t) for u in ups) == 0
    finally:
        await call(proxy.stop)
        for u in ups:
            u.close()
        await server.stop(None)


def _gauge(admin: int, name: str) -> int:
    _, text = admin_get(admin, "/stats")
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k == name:
            return int(v)
    return -1


@pytest.mark.parametrize("workers", [1, 2])
async def test_cds_cluster_warms_until_first_checks(tmp_path, workers):
    """A cluster added by CDS warms until each host had its first check (Envoy): one host
    that never answers holds it for the check's timeout; then it is active, that host
    failed, the other serving."""
    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ups = [HealthUpstream() for _ in range(2)]
    ups[0].status = 0  # never answers: its first check times out after 0.5 s
    admin = free_port()
    b = ads_bootstrap(xds_port, admin, delta=False)
    ads.push(CDS, "1", [])
    ads.push(LDS, "1", [])
    proxy = ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path, concurrency=workers)
    call = asyncio.to_thread
    try:
        await call(proxy.start)
        ads.push(CDS, "2", [_cluster()])
        ads.push(EDS, "2", [_cla([u.port for u in ups])])
        t = time.monotonic()
        await ads.acked(EDS)
        assert await call(_gauge, admin, "cluster_manager.warming_clusters") == 1
        assert await call(host_flags, admin) == {}  # not active: not in /clusters
        await call(
            wait_until, lambda: _gauge(admin, "cluster_manager.warming_clusters") == 0, 3, "warm"
        )
        assert 0.4 < time.monotonic() - t < 2.0
        # with workers, /clusters is read from them, and they take the now-active cluster
        # from the main process a moment after its warming gauge drops (seen once in a
        # loaded clean-clone run: {} right after warm)
        await call(wait_until, lambda: host_flags(admin) if workers > 1 else True, 3, "workers")
        flags = await call(host_flags, admin)
        assert flags == {ups[0].port: "/failed_active_hc/active_hc_timeout", ups[1].port: "healthy"}
    finally:
        await call(proxy.stop)
        for u in ups:
            u.close()
        await server.stop(None)
