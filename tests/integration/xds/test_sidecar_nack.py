"""A test xDS server (grpc.aio, in this process) feeds the sofamesh sidecar, started as users
start it (`sofamesh proxy -c`), over SotW and Delta ADS: a config with an error is NACKed
with `error_detail` naming the field, the last good config keeps serving, and the next good
push is taken."""

from __future__ import annotations

import asyncio
import http.client

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import json_format

from tests.conftest import free_port, sofamesh_command
from tests.integration.pilot.conftest import ads_bootstrap
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.http_upstream import RecordingUpstream
from tests.support.xds_server import ScriptedAds

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)


def cluster(port: int, **extra) -> cluster_pb2.Cluster:
    d = {
        "name": "app",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "app",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
        **extra,
    }
    return json_format.ParseDict(d, cluster_pb2.Cluster())


def listener(port: int, **hcm_extra) -> listener_pb2.Listener:
    from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
    from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
        http_connection_manager_pb2,
    )

    hcm = {
        "@type": HCM,
        "stat_prefix": "ingress",
        "route_config": {
            "name": "local",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
        **hcm_extra,
    }
    d = {
        "name": "ingress",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    return json_format.ParseDict(d, listener_pb2.Listener())


def who(port: int) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/")
        r = c.getresponse()
        body = r.read().decode()
        return body.split()[0].removeprefix("upstream=") if r.status == 200 else str(r.status)
    finally:
        c.close()


def stat(admin: int, name: str) -> int:
    _, text = admin_get(admin, f"/stats?filter=^{name}$")
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k == name:
            return int(v)
    return -1


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("mode", ["sotw", "delta"])
async def test_nack_names_the_field_keeps_last_good_and_recovers(tmp_path, mode, workers):
    """With 2 workers the main process's one stream NACKs what the workers reject."""
    delta = mode == "delta"
    up = RecordingUpstream(["alpha", "beta", "gamma"]).start()
    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    lport, admin = free_port(), free_port()
    ads.push(CDS, "1", [cluster(up.ports["alpha"])])
    ads.push(LDS, "1", [listener(lport)])
    proxy = ProxyProcess.sofamesh(
        sofamesh_command(),
        ads_bootstrap(xds_port, admin, delta),
        tmp_path / "sidecar",
        concurrency=workers,
    )
    try:
        await asyncio.to_thread(proxy.start)
        assert (await ads.answer(CDS)).error_detail.code == 0
        assert (await ads.answer(LDS)).error_detail.code == 0
        assert await asyncio.to_thread(who, lport) == "alpha"

        # 1. a cluster with an unimplemented lb_policy (and a new endpoint): NACKed by name
        ads.push(CDS, "2", [cluster(up.ports["beta"], lb_policy="MAGLEV")])
        nack = await ads.answer(CDS)
        assert nack.error_detail.code == 3  # INVALID_ARGUMENT
        assert "app" in nack.error_detail.message
        assert "lb_policy" in nack.error_detail.message, nack.error_detail.message
        if not delta:
            assert nack.version_info == "1"  # the last good version
        assert nack.error_detail.message.count("lb_policy") == 1  # once, not per worker
        # ... the last good cluster keeps serving (new connections: every worker)
        assert {await asyncio.to_thread(who, lport) for _ in range(20)} == {"alpha"}
        assert await asyncio.to_thread(stat, admin, "cluster_manager.cds.update_rejected") == 1

        # 2. a listener with an unimplemented HCM field: NACKed naming its path
        ads.push(LDS, "2", [listener(lport, http3_protocol_options={})])
        nack = await ads.answer(LDS)
        assert nack.error_detail.code == 3
        assert "ingress" in nack.error_detail.message
        want = "filter_chains[0].filters[0].typed_config.http3_protocol_options"
        assert want in nack.error_detail.message
        assert await asyncio.to_thread(who, lport) == "alpha"
        assert await asyncio.to_thread(stat, admin, "listener_manager.lds.update_rejected") == 1

        # 3. the next good pushes are taken: ACKed with their versions, traffic follows
        ads.push(CDS, "3", [cluster(up.ports["gamma"])])
        ack = await ads.answer(CDS)
        assert ack.error_detail.code == 0 and not ack.error_detail.message
        if not delta:
            assert ack.version_info == "3"
        ads.push(LDS, "3", [listener(lport, server_name="sidecar-test")])
        assert (await ads.answer(LDS)).error_detail.code == 0
        assert {await asyncio.to_thread(who, lport) for _ in range(20)} == {"gamma"}
        assert await asyncio.to_thread(stat, admin, "cluster_manager.cds.update_success") == 2
        assert await asyncio.to_thread(stat, admin, "listener_manager.lds.update_success") == 2
        # one stream, the node sent once (set_node_on_first_message_only)
        with_node = [r for r in ads.requests if r.HasField("node")]
        assert len(with_node) == 1 and with_node[0].node.id.startswith("sidecar~")
    finally:
        await asyncio.to_thread(proxy.stop)
        await server.stop(None)
        up.stop()
