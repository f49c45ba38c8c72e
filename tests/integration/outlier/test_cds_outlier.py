"""Outlier detection on a cluster that arrives by CDS (endpoints by EDS), with 1 and 2
workers: a failing host is ejected, an EDS update keeps it out (and shows EDS health apart),
and a cluster removed by CDS no longer counts its ejection."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import json_format

from tests.conftest import free_port, sofamesh_command
from tests.integration.health.helpers import bootstrap, host_flags
from tests.integration.health.test_cds_health import CDS, EDS, LDS, _cla, _gauge
from tests.integration.pilot.conftest import ads_bootstrap
from tests.support.envoy import ProxyProcess
from tests.support.wait import wait_until
from tests.support.xds_server import ScriptedAds

from .test_http_outlier import Upstream, get

pytestmark = pytest.mark.timeout(60)

ACTIVE = "cluster.c.outlier_detection.ejections_active"


def _cluster() -> cluster_pb2.Cluster:
    d = {
        "name": "c",
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
        # no panic mode: 1 host of 3 left would make Envoy (and sofamesh) use all three
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "outlier_detection": {
            "consecutive_5xx": 3,
            "interval": "0.5s",
            "base_ejection_time": "10s",
            "max_ejection_percent": 50,
        },
    }
    return json_format.ParseDict(d, cluster_pb2.Cluster())


@pytest.mark.parametrize("workers", [1, 2])
async def test_cds_cluster_outlier_detection(tmp_path, workers):
    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ups = [Upstream() for _ in range(3)]
    p1, p2, p3 = (u.port for u in ups)
    admin = free_port()
    b = ads_bootstrap(xds_port, admin, delta=False)
    lst = bootstrap([p1], {})["static_resources"]["listeners"][0]
    lport = lst["address"]["socket_address"]["port_value"]
    ads.push(CDS, "1", [_cluster()])
    ads.push(EDS, "1", [_cla([p1, p2, p3])])
    ads.push(LDS, "1", [json_format.ParseDict(lst, listener_pb2.Listener())])
    proxy = ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path, concurrency=workers)
    call = asyncio.to_thread

    def until_ejected() -> int:
        fails = 0
        for _ in range(60):
            if host_flags(admin).get(p1) == "/failed_outlier_check":
                return fails
            fails += get(lport)[0] == 503
        raise AssertionError("not ejected")

    try:
        await call(proxy.start)
        await ads.acked(LDS)
        ups[0].status = 503
        fails = await call(until_ejected)
        assert 3 <= fails <= 3 * workers
        assert await call(_gauge, admin, ACTIVE) == 1
        # EDS: p3 unhealthy; p1 stays ejected
        ads.push(EDS, "2", [_cla([p1, p2, p3], unhealthy=(p3,))])
        await ads.acked(EDS)
        await call(
            wait_until,
            lambda: (
                host_flags(admin)
                == {p1: "/failed_outlier_check", p2: "healthy", p3: "/failed_eds_health"}
            ),
            3,
            "flags after EDS",
        )
        served = ups[0].served
        for _ in range(6):
            assert (await call(get, lport)) == (200, p2)
        assert ups[0].served == served
        # the cluster removed by CDS: its ejection no longer counts
        ads.push(CDS, "2", [])
        await ads.acked(CDS)
        await call(wait_until, lambda: _gauge(admin, ACTIVE) in (0, -1), 3, "gauge after CDS")
    finally:
        await call(proxy.stop)
        for u in ups:
            u.stop()
        await server.stop(None)
