"""Istio's own filters, as istiod sends them (shapes from the Istio corpus), pass through as a
no-op: recognised by config type, never by name alone; a warning names each and the gauge
`server.passthrough_filters` counts them; the chain serves exactly as real Envoy serves it
without them (Envoy 1.40 has none of them, so it runs the config with them left out)."""

from __future__ import annotations

import json
import socket
import subprocess
from http.server import BaseHTTPRequestHandler

import pytest

from tests.conftest import FIXTURES, free_port, sofamesh_command
from tests.integration.admin.helpers import get, request, start_envoy, start_sofamesh, stop
from tests.support.threaded_http import serve_http

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
TS = "type.googleapis.com/udpa.type.v1.TypedStruct"
NETWORK_ISTIO = [
    {  # Istio's proto, which xds-protos lacks
        "name": "istio.metadata_exchange",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
            "protocol": "istio-peer-exchange",
        },
    },
    {
        "name": "istio_authn",
        "typed_config": {
            "@type": TS,
            "type_url": "type.googleapis.com/io.istio.network.authn.Config",
        },
    },
    {
        "name": "istio.stats",
        "typed_config": {
            "@type": "type.googleapis.com/stats.PluginConfig",
            "disable_host_header_fallback": True,
        },
    },
]
HTTP_ISTIO = [
    {
        "name": "waypoint_downstream_peer_metadata",
        "typed_config": {
            "@type": TS,
            "type_url": "type.googleapis.com/io.istio.http.peer_metadata.Config",
            "value": {"downstream_discovery": [{"workload_discovery": {}}]},
        },
    },
    {  # Istio <= 1.18: metadata exchange as a Wasm filter on Istio's null VM
        "name": "istio.metadata_exchange",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.null",
                    "code": {"local": {"inline_string": "envoy.wasm.metadata_exchange"}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange"
                },
            },
        },
    },
    {
        "name": "istio.stats",
        "typed_config": {
            "@type": TS,
            "type_url": "type.googleapis.com/stats.PluginConfig",
            "value": {"disable_host_header_fallback": True},
        },
    },
]
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def bootstrap(admin: int, http_port: int, tcp_port: int, upstream: int, istio: bool) -> dict:
    net = NETWORK_ISTIO if istio else []
    http = HTTP_ISTIO if istio else []
    route = {"match": {"prefix": "/"}, "route": {"cluster": "outbound|80||echo"}}
    if istio:
        route["typed_per_filter_config"] = {
            "connect_authority": {
                "@type": TS,
                "type_url": "type.googleapis.com/io.istio.http.connect_authority.Config",
                "value": {"enabled": True},
            }
        }
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": "outbound_0.0.0.0_80",
            "route_config": {
                "name": "80",
                "virtual_hosts": [{"name": "echo", "domains": ["*"], "routes": [route]}],
            },
            "http_filters": [*http, ROUTER],
        },
    }
    tcp = {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "outbound|81||echo",
            "cluster": "outbound|80||echo",
        },
    }
    addr = {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}
    return {
        "node": {"id": "sidecar~127.0.0.1~a.default~default.svc.cluster.local", "cluster": "a"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "http",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": http_port}
                    },
                    "filter_chains": [{"filters": [*net, hcm]}],
                },
                {
                    "name": "tcp",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": tcp_port}},
                    "filter_chains": [{"filters": [*net, tcp]}],
                },
            ],
            "clusters": [
                {
                    "name": "outbound|80||echo",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "outbound|80||echo",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr}}]}],
                    },
                }
            ],
        },
    }


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        seen = sorted(k.lower() for k in self.headers if not k.lower().startswith("x-"))
        body = json.dumps({"path": self.path, "headers": seen}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    with serve_http(_Echo) as port:
        yield port


def _raw_get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /tcp HTTP/1.1\r\nhost: echo\r\nconnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.split(b"\r\n\r\n", 1)[1]


def _run(proc_start, cfg, admin, http_port, tcp_port):
    proc = proc_start(cfg, admin)
    try:
        status, _, body = request(http_port, "GET", "/a/b?c=1")
        return proc, (status, json.loads(body), json.loads(_raw_get(tcp_port)))
    except BaseException:
        stop(proc)
        raise


def test_istio_filters_pass_through_as_envoy_serves(tmp_path, upstream):
    results = {}
    for who, istio, start in (
        ("envoy", False, start_envoy),
        ("sofamesh", True, start_sofamesh),
    ):
        admin, hp, tp = free_port(), free_port(), free_port()
        cfg = tmp_path / f"{who}.json"
        cfg.write_text(json.dumps(bootstrap(admin, hp, tp, upstream, istio)))
        proc, results[who] = _run(start, cfg, admin, hp, tp)
        try:
            if who == "sofamesh":
                # 2 network filters x 2 listeners (istio_authn is implemented: it sets
                # io.istio.peer_principal), 3 HTTP filters, 1 per-route config
                assert get(admin, "/stats?filter=^server\\.passthrough_filters$")[1] == (
                    "server.passthrough_filters: 8\n"
                )
        finally:
            stop(proc)
    assert results["sofamesh"] == results["envoy"]
    assert results["envoy"][0] == 200


def _validate(tmp_path, doc: dict) -> subprocess.CompletedProcess:
    cfg = tmp_path / "v.json"
    cfg.write_text(json.dumps(doc))
    return subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_validate_warns_for_each_istio_filter(tmp_path):
    r = _validate(tmp_path, bootstrap(free_port(), 0, 0, 1, True))
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if "is passed through" in line]
    assert len(warned) == 8, r.stderr
    # istio_authn is implemented (filters/network/set_filter_state.py), not passed through
    assert not any("io.istio.network.authn.Config" in line for line in warned)
    assert any("envoy.wasm.metadata_exchange (Wasm null VM)" in line for line in warned)
    assert any("io.istio.http.connect_authority.Config" in line for line in warned)


def test_istio_name_alone_is_not_istio(tmp_path):
    """A filter named like Istio's but configured as something else is judged by its type."""
    doc = bootstrap(free_port(), 0, 0, 1, False)
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["http_filters"].insert(
        0,
        {
            "name": "istio.stats",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": 1024,
            },
        },
    )
    r = _validate(tmp_path, doc)
    assert r.returncode == 1
    assert "http_filters[0].typed_config: http filter type.googleapis.com/envoy.extensions." in (
        r.stderr
    )
    assert "Buffer is not implemented by sofamesh" in r.stderr


def test_wasm_other_than_istio_null_vm_is_refused(tmp_path):
    doc = bootstrap(free_port(), 0, 0, 1, False)
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    wasm = json.loads(json.dumps(HTTP_ISTIO[1]))
    wasm["typed_config"]["config"]["vm_config"]["runtime"] = "envoy.wasm.runtime.v8"
    hcm["typed_config"]["http_filters"].insert(0, wasm)
    r = _validate(tmp_path, doc)
    assert r.returncode == 1
    assert "wasm.v3.Wasm is not implemented by sofamesh" in r.stderr


def test_istio_upstream_filter_on_a_cluster(tmp_path):
    """Cluster.filters with Istio's metadata exchange (outbound clusters) pass through; any
    other upstream filter is refused by name."""
    src = json.loads((FIXTURES / "istio" / "source" / "describe_http_config.json").read_text())
    dumped = src["configs"][1]["dynamic_active_clusters"][0]["cluster"]["filters"]
    doc = bootstrap(free_port(), 0, 0, 1, False)
    doc["static_resources"]["clusters"][0]["filters"] = dumped
    r = _validate(tmp_path, doc)
    assert r.returncode == 0, r.stderr
    assert "istio.metadata_exchange (envoy.tcp.metadataexchange.config.MetadataExchange)" in (
        r.stderr
    )
    doc["static_resources"]["clusters"][0]["filters"] = [
        {
            "name": "envoy.filters.network.upstream.metadata_exchange",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                "stat_prefix": "x",
            },
        }
    ]
    r = _validate(tmp_path, doc)
    assert r.returncode == 1
    assert "clusters[0].filters[0].typed_config: upstream network filter" in r.stderr


async def test_istio_filters_over_lds_are_acked_and_pass_through(tmp_path):
    """As istiod sends them over LDS: Anys of istio protos (raw bytes; xds-protos cannot
    decode them), TypedStructs, a Wasm null-VM filter. The sidecar ACKs the listener and
    serves through it."""
    import asyncio
    import http.client as hc

    import grpc
    from envoy.extensions.filters.http.wasm.v3 import wasm_pb2  # noqa: F401 - for json_format
    from envoy.service.discovery.v3 import ads_pb2_grpc
    from google.protobuf import any_pb2, json_format, wrappers_pb2  # noqa: F401
    from xds.type.v3 import typed_struct_pb2

    from tests.integration.pilot.conftest import ads_bootstrap
    from tests.integration.xds.test_sidecar_nack import CDS, LDS, listener
    from tests.support.envoy import ProxyProcess
    from tests.support.xds_server import ScriptedAds

    port, admin = free_port(), free_port()
    lst = listener(
        port,
        route_config={
            "name": "r",
            "virtual_hosts": [
                {
                    "name": "v",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                        }
                    ],
                }
            ],
        },
    )
    chain = lst.filter_chains[0]
    hcm_filter = type(chain.filters[0])()
    hcm_filter.CopyFrom(chain.filters[0])
    del chain.filters[:]
    raw = chain.filters.add(name="istio.metadata_exchange")
    raw.typed_config.CopyFrom(
        any_pb2.Any(
            type_url="type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
            value=b"\n\x13istio-peer-exchange",
        )
    )
    authn = chain.filters.add(name="istio_authn")
    authn.typed_config.Pack(
        typed_struct_pb2.TypedStruct(type_url="type.googleapis.com/io.istio.network.authn.Config")
    )
    chain.filters.add().CopyFrom(hcm_filter)
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    hcm = hcm_pb2.HttpConnectionManager()
    chain.filters[2].typed_config.Unpack(hcm)
    router = type(hcm.http_filters[0])()
    router.CopyFrom(hcm.http_filters[0])
    del hcm.http_filters[:]
    for f in HTTP_ISTIO:  # TypedStruct peer metadata, Wasm null VM, TypedStruct stats
        hf = hcm.http_filters.add()
        json_format.ParseDict(
            {
                "name": f["name"],
                "typed_config": _as_proto_json(f["typed_config"]),
            },
            hf,
        )
    hcm.http_filters.add().CopyFrom(router)
    chain.filters[2].typed_config.Pack(hcm)

    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ads.push(CDS, "c1", [])
    ads.push(LDS, "l1", [lst])
    proxy = ProxyProcess.sofamesh(
        sofamesh_command(), ads_bootstrap(xds_port, admin, delta=True), tmp_path
    )
    try:
        await asyncio.to_thread(proxy.start)
        await ads.acked(LDS)

        def fetch() -> tuple[int, bytes]:
            c = hc.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                c.request("GET", "/")
                r = c.getresponse()
                return r.status, r.read()
            finally:
                c.close()

        assert await asyncio.to_thread(fetch) == (200, b"ok")
        stats = get(admin, "/stats?filter=listener_manager.lds.update_(success|rejected)")[1]
        assert "listener_manager.lds.update_rejected: 0" in stats
        log = proxy.log_text()
        for what in (
            "filter istio.metadata_exchange (envoy.tcp.metadataexchange.config.MetadataExchange)",
            "filter istio.metadata_exchange (envoy.wasm.metadata_exchange (Wasm null VM))",
            "filter waypoint_downstream_peer_metadata (io.istio.http.peer_metadata.Config)",
        ):
            assert what in log, log
    finally:
        await asyncio.to_thread(proxy.stop)
        await server.stop(None)


def _as_proto_json(tc: dict) -> dict:
    """A typed_config dict as protobuf's JSON mapping reads it (TypedStruct value stays a
    Struct; the Wasm configuration's Any is packed empty)."""
    out = json.loads(json.dumps(tc))
    if out["@type"].endswith("udpa.type.v1.TypedStruct"):
        out["@type"] = "type.googleapis.com/xds.type.v3.TypedStruct"
    conf = out.get("config", {})
    if "configuration" in conf:
        conf["configuration"] = {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": "{}",
        }
    return out
