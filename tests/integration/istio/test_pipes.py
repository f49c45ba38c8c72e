"""Pipe (Unix socket) addresses, as Istio uses them: a listener on a Unix socket (served and
counted as Envoy 1.40 serves and counts it: the file replaced, `mode` applied, /listeners
and listener.<path>.* stats), and the xDS gRPC cluster on the pilot-agent's Unix socket
(`xds-grpc` -> ./etc/istio/proxy/XDS): the sidecar takes its config over it. A pipe where
sofamesh cannot carry traffic (a data-plane cluster's endpoint) is refused by path."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import stat
import subprocess
from http.server import BaseHTTPRequestHandler

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.admin.helpers import get, start_envoy, start_sofamesh, stop
from tests.integration.pilot.conftest import ads_bootstrap
from tests.integration.xds.test_sidecar_nack import LDS, listener
from tests.support.envoy import ProxyProcess
from tests.support.threaded_http import serve_http
from tests.support.xds_server import ScriptedAds

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        names = sorted(k.lower() for k in self.headers if k.lower() != "x-request-id")
        body = json.dumps({"path": self.path, "headers": names}).encode()
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


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(self.unix_path)
        self.sock = s


def _get(path: str) -> tuple[int, dict]:
    c = _UnixHTTP(path)
    try:
        c.request("GET", "/over/uds")
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def bootstrap(admin: int, sock: str, upstream: int, mode: int | None) -> dict:
    pipe: dict = {"path": sock}
    if mode is not None:
        pipe["mode"] = mode
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": "uds",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "a",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                }
            ],
        },
    }
    addr = {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {"name": "uds", "address": {"pipe": pipe}, "filter_chains": [{"filters": [hcm]}]}
            ],
            "clusters": [
                {
                    "name": "c",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "c",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr}}]}],
                    },
                }
            ],
        },
    }


@pytest.mark.parametrize("mode", [None, 0o660])
def test_pipe_listener_as_envoy(tmp_path, upstream, mode):
    seen = {}
    for who, start in (("envoy", start_envoy), ("sofamesh", start_sofamesh)):
        admin = free_port()
        sock = str(tmp_path / f"{who}.sock")
        with open(sock, "w") as f:  # a stale file where the socket goes: replaced
            f.write("stale")
        cfg = tmp_path / f"{who}.json"
        cfg.write_text(json.dumps(bootstrap(admin, sock, upstream, mode)))
        proc = start(cfg, admin, *(("--concurrency", "1") if who == "sofamesh" else ()))
        try:
            st = os.stat(sock)
            assert stat.S_ISSOCK(st.st_mode), who
            perms = stat.S_IMODE(st.st_mode)
            status, body = _get(sock)
            listeners = get(admin, "/listeners")[1]
            lj = json.loads(get(admin, "/listeners?format=json")[1])
            cx = get(admin, f"/stats?filter=^listener\\.{sock}\\.downstream_cx_total$")[1]
        finally:
            stop(proc)
        assert listeners == f"uds::{sock}\n", who
        assert lj["listener_statuses"][0]["local_address"] == {"pipe": {"path": sock}}, who
        assert cx == f"listener.{sock}.downstream_cx_total: 1\n", who
        seen[who] = (status, body, perms if mode is not None else None)
    assert seen["sofamesh"] == seen["envoy"]
    assert seen["envoy"][0] == 200


async def test_xds_over_the_agents_unix_socket(tmp_path, upstream):
    """Istio's xds-grpc cluster is the pilot-agent's Unix socket: Envoy and the sidecar
    both take their listeners from an ADS server listening there."""
    sock = str(tmp_path / "XDS")
    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    server.add_insecure_port(f"unix:{sock}")
    await server.start()
    try:
        for kind in ("envoy", "sofamesh"):
            lport, admin = free_port(), free_port()
            ads.push(LDS, f"l-{kind}", [listener(lport, route_config=_direct_routes())])
            boot = ads_bootstrap(0, admin, delta=True)
            xds = boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
            xds["lb_endpoints"][0]["endpoint"]["address"] = {"pipe": {"path": sock}}
            if kind == "envoy":
                proxy = ProxyProcess.envoy(envoy_binary(), boot, tmp_path)
            else:
                proxy = ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path, concurrency=1)
            try:
                await asyncio.to_thread(proxy.start)
                await ads.acked(LDS)
                status, body = await asyncio.to_thread(_http_get, lport)
                assert (status, body) == (200, b"over the agent's socket"), kind
            finally:
                await asyncio.to_thread(proxy.stop)
    finally:
        await server.stop(None)


def _direct_routes() -> dict:
    return {
        "name": "r",
        "virtual_hosts": [
            {
                "name": "v",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "direct_response": {
                            "status": 200,
                            "body": {"inline_string": "over the agent's socket"},
                        },
                    }
                ],
            }
        ],
    }


def _http_get(port: int) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/")
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _validate(tmp_path, doc: dict) -> subprocess.CompletedProcess:
    cfg = tmp_path / "v.json"
    cfg.write_text(json.dumps(doc))
    return subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _pipe_cluster(name: str, path: str) -> dict:
    """Istio's sds-grpc / xds-grpc shape: HTTP/2, endpoints on a Unix socket, keepalive."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                ".HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 300}},
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": path}}}}]}],
        },
    }


def test_cluster_of_pipes_accepted_unless_traffic_goes_to_it(tmp_path, upstream):
    """Istio's sds-grpc (named by SDS configs that arrive later): accepted; a route to a
    cluster of pipes, or a pipe beside TCP endpoints, refused by path."""
    doc = bootstrap(free_port(), str(tmp_path / "x.sock"), upstream, None)
    doc["static_resources"]["clusters"].append(_pipe_cluster("sds-grpc", "./sds.sock"))
    r = _validate(tmp_path, doc)
    assert r.returncode == 0, r.stderr

    route = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    route["cluster"] = "sds-grpc"
    r = _validate(tmp_path, doc)
    assert r.returncode == 1
    assert (
        "routes[0].route.cluster: traffic to cluster 'sds-grpc', whose endpoints are pipes "
        "(Unix sockets), is not implemented by sofamesh" in r.stderr
    )

    route["cluster"] = "c"
    eps = doc["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
    eps["lb_endpoints"].append({"endpoint": {"address": {"pipe": {"path": "./up.sock"}}}})
    r = _validate(tmp_path, doc)
    assert r.returncode == 1
    assert (
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[1].endpoint"
        ".address.pipe: unix domain socket (pipe) addresses are implemented for static "
        "listeners and clusters of pipes only" in r.stderr
    )
