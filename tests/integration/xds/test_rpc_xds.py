"""RPC listeners and clusters over xDS: dubbo_proxy, bolt_proxy, tcp_proxy and auto listeners
arrive by LDS, their clusters by CDS and endpoints by EDS, and real peers (sofa-rpc-node's
Bolt client, dubbo-remoting) call through the sofamesh sidecar; then a Dubbo provider
registered in real ZooKeeper is reached through a sidecar fed only by `sofamesh pilot`."""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import quote_plus

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import json_format
from kazoo.client import KazooClient

from tests.conftest import free_port, sofamesh_command
from tests.integration.pilot.conftest import PilotProcess, ads_bootstrap
from tests.integration.rpc.conftest import (
    SERVICE,
    NodeServer,
    RawUpstream,
    bolt_filter,
    cluster,
    dubbo_filter,
    listener,
    node_client,
    route_config,
    tcp_filter,
)
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.wait import wait_until
from tests.support.xds_server import ScriptedAds

pytestmark = pytest.mark.timeout(120)

_T = "type.googleapis.com/envoy."
CDS = _T + "config.cluster.v3.Cluster"
EDS = _T + "config.endpoint.v3.ClusterLoadAssignment"
LDS = _T + "config.listener.v3.Listener"
AUTO_TYPE = "type.googleapis.com/sofamesh.filters.network.auto.v1.Auto"


def eds_cluster(name: str) -> cluster_pb2.Cluster:
    d = {
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
    }
    return json_format.ParseDict(d, cluster_pb2.Cluster())


def assignment(name: str, ports: list[int]) -> endpoint_pb2.ClusterLoadAssignment:
    return json_format.ParseDict(
        cluster(name, ports)["load_assignment"], endpoint_pb2.ClusterLoadAssignment()
    )


def dubbo_any(cluster_name: str) -> dict:
    any_method = {"method": {"name": {"safe_regex": {"regex": ".*"}}}}
    return dubbo_filter(
        [
            {
                "name": "d",
                "interface": SERVICE,
                "routes": [{"match": any_method, "route": {"cluster": cluster_name}}],
            }
        ]
    )


def listeners(ports: dict[str, int], which: tuple[str, ...]) -> list:
    """Listener protos (built by sofamesh's own config loader: it knows the sofamesh types)."""
    from sofamesh.config import load_bootstrap

    defs = {
        "dubbo": listener("dubbo", ports["dubbo"], [dubbo_any("dubbo_up")]),
        "bolt": listener("bolt", ports["bolt"], [bolt_filter([route_config(SERVICE, "bolt_up")])]),
        "tcp": listener("tcp", ports["tcp"], [tcp_filter("raw")]),
        "auto": listener(
            "auto",
            ports["auto"],
            [
                {
                    "name": "sofamesh.filters.network.auto",
                    "typed_config": {
                        "@type": AUTO_TYPE,
                        "filters": [
                            bolt_filter(
                                [route_config(SERVICE, "bolt_up")], stat_prefix="auto_bolt"
                            ),
                            dubbo_any("dubbo_up"),
                        ],
                    },
                }
            ],
        ),
    }
    boot = {  # the referenced clusters exist, so the loader's reference checks pass
        "static_resources": {
            "listeners": [defs[w] for w in which],
            "clusters": [cluster(n, [1]) for n in ("dubbo_up", "bolt_up", "raw")],
        }
    }
    return list(load_bootstrap(None, config_yaml=json.dumps(boot)).static_resources.listeners)


def tcp_roundtrip(port: int, data: bytes) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(data)
            out = b""
            while len(out) < len(data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
            return out
    except OSError:
        return None


def who(port: int, mode: str) -> str | None:
    res = node_client(port, [{"method": "who"}], mode=mode)
    return res[0].get("result") if res and res[0].get("ok") else None


@pytest.mark.parametrize("mode", ["sotw", "delta"])
async def test_rpc_listeners_and_clusters_over_xds(tmp_path, mode):
    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ports = {k: free_port() for k in ("dubbo", "bolt", "tcp", "auto")}
    admin = free_port()
    with (
        NodeServer(tag="b1") as b1,
        NodeServer(dubbo=True, tag="d1") as d1,
        NodeServer(dubbo=True, tag="d2") as d2,
        RawUpstream("echo") as raw,
    ):
        ads.push(CDS, "1", [eds_cluster(n) for n in ("dubbo_up", "bolt_up", "raw")])
        ads.push(
            EDS,
            "1",
            [
                assignment("dubbo_up", [d1.port]),
                assignment("bolt_up", [b1.port]),
                assignment("raw", [raw.port]),
            ],
        )
        ads.push(LDS, "1", listeners(ports, ("dubbo", "bolt", "tcp", "auto")))
        proxy = ProxyProcess.sofamesh(
            sofamesh_command(), ads_bootstrap(xds_port, admin, mode == "delta"), tmp_path / "s"
        )
        try:
            await asyncio.to_thread(proxy.start)
            assert (await ads.answer(LDS)).error_detail.code == 0
            call = asyncio.to_thread
            assert await call(who, ports["dubbo"], "dubbo") == "d1"
            assert await call(who, ports["bolt"], "bolt") == "b1"
            assert await call(who, ports["auto"], "dubbo") == "d1"
            assert await call(who, ports["auto"], "bolt") == "b1"
            assert await call(tcp_roundtrip, ports["tcp"], b"raw bytes") == b"raw bytes"

            # EDS moves the Dubbo service to another provider: new calls go there
            ads.push(
                EDS,
                "2",
                [
                    assignment("dubbo_up", [d2.port]),
                    assignment("bolt_up", [b1.port]),
                    assignment("raw", [raw.port]),
                ],
            )
            await ads.acked(EDS)
            assert await call(who, ports["dubbo"], "dubbo") == "d2"
            assert await call(who, ports["auto"], "dubbo") == "d2"

            # LDS without the tcp_proxy listener: it stops accepting; the others stay
            ads.push(LDS, "2", listeners(ports, ("dubbo", "bolt", "auto")), removed=["tcp"])
            await ads.acked(LDS)
            await call(wait_until, lambda: tcp_roundtrip(ports["tcp"], b"x") is None, 5, "tcp gone")
            assert await call(who, ports["bolt"], "bolt") == "b1"

            _, text = await call(admin_get, admin, "/stats")
            s = dict(ln.split(": ", 1) for ln in text.splitlines() if ": " in ln)
            assert s["listener_manager.lds.update_rejected"] == "0"
            assert s["cluster_manager.cds.update_rejected"] == "0"
            assert int(s["dubbo.dubbo_in.request"]) >= 2  # per-request Dubbo stats
            assert int(s["bolt.bolt_in.request"]) >= 2
            assert s["listener_manager.listener_removed"] == "1"
        finally:
            await asyncio.to_thread(proxy.stop)
            await server.stop(None)


def test_dubbo_consumer_to_zookeeper_provider_through_pilot_fed_sidecar(zookeeper, tmp_path):
    """dubbo-remoting (sofa-rpc-node's Dubbo client) -> sofamesh sidecar (its config only from
    `sofamesh pilot`, which reads the provider from ZooKeeper) -> sofa-rpc-node Dubbo provider."""
    listen = free_port()
    with NodeServer(dubbo=True, tag="zk-provider") as provider:
        zk = KazooClient(hosts=zookeeper.hosts, timeout=2.0)
        zk.start(timeout=10)
        root = "/xds/dubbo"
        url = (
            f"dubbo://127.0.0.1:{provider.port}/{SERVICE}?anyhost=false&application=node"
            f"&dubbo=2.0.2&interface={SERVICE}&methods=who,plus,echo&pid=1&side=provider"
            f"&timestamp=1700000000000"
        )
        node = f"{root}/{SERVICE}/providers/{quote_plus(url, safe='*')}"
        zk.ensure_path(f"{root}/{SERVICE}/providers")
        zk.create(node, b"", ephemeral=True)
        cfg = tmp_path / "pilot.yaml"
        cfg.write_text(
            json.dumps(
                {
                    # the provider's port, moved to a free one for the sidecar's listener
                    "tcp_port_offset": listen - provider.port,
                    "registries": [{"type": "zookeeper", "hosts": zookeeper.hosts, "root": root}],
                }
            )
        )
        pilot = PilotProcess(tmp_path / "pilot", extra=["--config", str(cfg)])
        admin = free_port()
        side = ProxyProcess.sofamesh(
            sofamesh_command(), ads_bootstrap(pilot.xds_port, admin, True), tmp_path / "side"
        )
        try:
            pilot.start()
            side.start()
            pilot.wait_config("lds", lambda c: f"127.0.0.1_{listen}" in c, 15)
            res = wait_until(
                lambda: (
                    node_client(
                        listen,
                        [{"method": "who"}, {"method": "plus", "args": [2, 3]}],
                        mode="dubbo",
                    )
                    if tcp_roundtrip(listen, b"") is not None
                    else None
                ),
                15,
                "the sidecar's Dubbo listener",
            )
            assert res == [{"ok": True, "result": "zk-provider"}, {"ok": True, "result": 5}], res
            _, text = admin_get(admin, f"/stats?filter=outbound.{provider.port}..{SERVICE}")
            assert f"cluster.outbound|{provider.port}||{SERVICE}.upstream_cx_total: " in text

            # the provider leaves ZooKeeper: the sidecar's listener and cluster go
            zk.delete(node)
            wait_until(lambda: tcp_roundtrip(listen, b"x") is None, 10, "listener removed")
        finally:
            side.stop()
            pilot.stop()
            zk.stop()
            zk.close()
