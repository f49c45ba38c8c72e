"""The control plane as the sidecar reports it, compared with Envoy 1.40 fed by the same
server: the text readout `control_plane.identifier` (the server's
DiscoveryResponse.control_plane.identifier) and the accepted versions
`cluster_manager.cds.version_text` / `listener_manager.lds.version_text`, in /stats
(text, JSON, `type=TextReadouts`) and /stats/prometheus?text_readouts."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.pilot.conftest import ads_bootstrap
from tests.integration.xds.test_sidecar_nack import CDS, LDS, cluster, listener
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.xds_server import ScriptedAds


@pytest.mark.parametrize("mode", ["sotw", "delta"])
@pytest.mark.parametrize("kind", ["envoy", "sofamesh", "sofamesh-2-workers"])
async def test_control_plane_identifier_and_versions(tmp_path, kind, mode):
    delta = mode == "delta"
    ads = ScriptedAds()
    ads.identifier = 'pilot-7 "east"'
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    admin, lport = free_port(), free_port()
    ads.push(CDS, "c1", [cluster(free_port())])
    ads.push(LDS, "l1", [listener(lport)])
    boot = ads_bootstrap(xds_port, admin, delta)
    if kind == "envoy":
        proxy = ProxyProcess.envoy(envoy_binary(), boot, tmp_path)
    else:
        workers = 2 if kind.endswith("workers") else 1
        proxy = ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path, concurrency=workers)

    def get(path: str) -> str:
        status, body = admin_get(admin, path)
        assert status == 200, (path, body)
        return body

    try:
        await asyncio.to_thread(proxy.start)
        await ads.acked(LDS)
        text = await asyncio.to_thread(get, "/stats?type=TextReadouts")
        assert text.splitlines() == [
            'cluster_manager.cds.version_text: "c1"',
            'control_plane.identifier: "pilot-7 "east""',
            'listener_manager.lds.version_text: "l1"',
        ]
        # text readouts come first in /stats, then counters and gauges
        lines = (await asyncio.to_thread(get, "/stats?filter=^control_plane")).splitlines()
        assert lines[0] == 'control_plane.identifier: "pilot-7 "east""'
        assert "control_plane.connected_state: 1" in lines
        doc = json.loads(await asyncio.to_thread(get, "/stats?format=json&filter=identifier"))
        assert doc["stats"][0] == {"name": "control_plane.identifier", "value": 'pilot-7 "east"'}
        prom = await asyncio.to_thread(get, "/stats/prometheus?text_readouts")
        assert 'envoy_control_plane_identifier{text_value="pilot-7 \\"east\\""} 0' in prom
        assert "control_plane_identifier" not in await asyncio.to_thread(
            get, "/stats/prometheus"
        )  # only when asked for

        # a new accepted version, and a rejected one that leaves it
        ads.push(CDS, "c2", [cluster(free_port())])
        await ads.acked(CDS)
        ads.push(CDS, "c3", [cluster(free_port(), lb_policy="LOAD_BALANCING_POLICY_CONFIG")])
        assert (await ads.answer(CDS)).error_detail.code != 0
        text = await asyncio.to_thread(get, "/stats?type=TextReadouts&filter=cds")
        assert text == 'cluster_manager.cds.version_text: "c2"\n'
    finally:
        await asyncio.to_thread(proxy.stop)
        await server.stop(None)
