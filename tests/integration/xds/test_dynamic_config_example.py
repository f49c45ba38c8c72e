"""Envoy's dynamic-config-cp example as given (ADS for listeners and clusters, the control
plane at xds_cluster, an HTTP/2 static cluster) served by Envoy 1.40 and `sofamesh proxy`,
each fed the same resources by a scripted ADS server in place of the example's
go-control-plane: the same requests get the same answers, the node reaches the control
plane the same, and the upstream gets the same requests."""

from __future__ import annotations

import asyncio
import http.client

import grpc
import yaml
from envoy.service.discovery.v3 import ads_pb2_grpc

from tests.conftest import FIXTURES, envoy_binary, sofamesh_command
from tests.integration.http_filters.conftest import VOLATILE, ScriptedUpstream, _distinct
from tests.integration.xds.test_sidecar_nack import CDS, LDS, cluster, listener
from tests.support.envoy import ProxyProcess
from tests.support.xds_server import ScriptedAds

REQUESTS = [
    ("GET", "/", {}),
    ("GET", "/a?b=c", {"x-resp-status": "503"}),
    ("POST", "/echo", {"x-resp-echo": "1"}),
    ("GET", "/big", {"x-resp-size": "70000"}),
]


def _get(port: int, method: str, path: str, headers: dict) -> tuple:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = b"hello" if method == "POST" else None
        c.request(method, path, body=body, headers={"host": "example.com", **headers})
        r = c.getresponse()
        data = r.read()
        hs = sorted((k.lower(), v) for k, v in r.getheaders() if k.lower() not in VOLATILE)
        return r.status, hs, data
    finally:
        c.close()


async def _serve(kind: str, tmp_path) -> tuple:
    up = ScriptedUpstream().start()
    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    lport, admin = _distinct(2, {up.port, xds_port})
    ads.push(CDS, "c1", [cluster(up.port)])
    ads.push(LDS, "l1", [listener(lport)])
    boot = yaml.safe_load(
        (FIXTURES / "envoy-examples" / "dynamic-config-cp_envoy.yaml").read_text()
    )
    sa = boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][
        0
    ]["endpoint"]["address"]["socket_address"]
    sa.update(address="127.0.0.1", port_value=xds_port)
    boot["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=admin)
    work = tmp_path / kind
    if kind == "envoy":
        proxy = ProxyProcess.envoy(envoy_binary(), boot, work)
    else:
        proxy = ProxyProcess.sofamesh(sofamesh_command(), boot, work)
    # the proxy's listeners come over ADS: start() cannot wait for them to accept
    proxy.bootstrap = {"admin": boot["admin"], "static_resources": {"listeners": []}}
    try:
        await asyncio.to_thread(proxy.start)
        await ads.acked(LDS)
        answers = []
        for method, path, headers in REQUESTS:
            for _ in range(50):
                try:
                    answers.append(await asyncio.to_thread(_get, lport, method, path, headers))
                    break
                except ConnectionRefusedError:  # the listener is being bound
                    await asyncio.sleep(0.1)
        node = ads.requests[0].node
        seen = sorted((r.method, r.path) for r in up.records)
        return answers, (node.id, node.cluster), seen
    finally:
        proxy.stop()
        await server.stop(0)
        up.stop()


async def test_dynamic_config_cp_example_served_like_envoy(tmp_path):
    e = await _serve("envoy", tmp_path)
    o = await _serve("sofamesh", tmp_path)
    assert len(e[0]) == len(REQUESTS)
    assert o[0] == e[0]
    assert o[1] == e[1] == ("test-id", "test-cluster")
    assert o[2] == e[2] and len(o[2]) == len(REQUESTS)
