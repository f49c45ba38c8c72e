"""A TCP health check on a Dubbo cluster (dubbo_proxy, real sofa-rpc-node providers): a
provider that goes away is taken out after unhealthy_threshold failed connects, and every
call goes to the one left (without the check, calls routed to it would fail)."""

from __future__ import annotations

import pytest

from tests.conftest import free_port
from tests.integration.health.helpers import host_flags, wait_flags
from tests.integration.rpc.conftest import (
    SERVICE,
    NodeServer,
    bootstrap,
    cluster,
    dubbo_filter,
    listener,
    node_client,
    route_config,
    sofamesh,
)
from tests.support.envoy import admin_port, listener_ports

pytestmark = pytest.mark.timeout(90)


def test_dubbo_provider_gone_is_taken_out(tmp_path):
    with NodeServer(dubbo=True, tag="d1") as d1, NodeServer(dubbo=True, tag="d2") as d2:
        c = cluster("dubbo_up", [d1.port, d2.port])
        c["health_checks"] = [
            {
                "timeout": "0.5s",
                "interval": "0.2s",
                "no_traffic_interval": "0.2s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "tcp_health_check": {},
            }
        ]
        lst = listener("dubbo", free_port(), [dubbo_filter([route_config(SERVICE, "dubbo_up")])])
        b = bootstrap([lst], [c])
        with sofamesh(b, tmp_path) as _p:
            a, port = admin_port(b), listener_ports(b)[0]
            assert set(host_flags(a, "dubbo_up").values()) == {"healthy"}
            res = node_client(port, [{"method": "who"}], mode="dubbo", repeat=8)
            assert {r.get("result") for r in res} == {"d1", "d2"}
            d2.stop()
            wait_flags(a, d2.port, "/failed_active_hc", 3.0, "dubbo_up")
            res = node_client(port, [{"method": "who"}], mode="dubbo", repeat=8)
            assert all(r.get("ok") for r in res), res
            assert {r["result"] for r in res} == {"d1"}
