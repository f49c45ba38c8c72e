"""Thresholds.track_remaining (Istio sets it on every outbound cluster): the
circuit_breakers.<priority>.remaining_* gauges read as Envoy 1.40's, before traffic and
with a connection held in the pool after a request."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

import pytest

from tests.conftest import free_port
from tests.integration.admin.helpers import get, request, start_envoy, start_sofamesh, stop
from tests.support.threaded_http import serve_http

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    with serve_http(_Ok) as port:
        yield port


def bootstrap(admin: int, port: int, upstream: int) -> dict:
    def cluster(name: str, thresholds: list) -> dict:
        addr = {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}
        return {
            "name": name,
            "connect_timeout": "1s",
            "circuit_breakers": {"thresholds": thresholds},
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr}}]}],
            },
        }

    istio = {  # what istiod writes on outbound clusters
        "max_connections": 4294967295,
        "max_pending_requests": 4294967295,
        "max_requests": 4294967295,
        "max_retries": 4294967295,
        "track_remaining": True,
    }
    small = {
        "max_connections": 7,
        "max_pending_requests": 8,
        "max_requests": 9,
        "max_retries": 2,
        "track_remaining": True,
    }
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": "in",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "v",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "small"}}],
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
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "in",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [hcm]}],
                }
            ],
            "clusters": [
                cluster("istio", [istio]),
                cluster("small", [small, {"priority": "HIGH", "track_remaining": True}]),
                cluster("untracked", [{"max_connections": 5}]),
            ],
        },
    }


def _remaining(admin: int) -> list[str]:
    text = get(admin, "/stats?filter=circuit_breakers\\..*\\.remaining_")[1]
    return text.splitlines()


def test_track_remaining_as_envoy(tmp_path, upstream):
    seen = {}
    for who, start in (("envoy", start_envoy), ("sofamesh", start_sofamesh)):
        admin, port = free_port(), free_port()
        cfg = tmp_path / f"{who}.json"
        cfg.write_text(json.dumps(bootstrap(admin, port, upstream)))
        proc = start(cfg, admin, *(("--concurrency", "1") if who == "sofamesh" else ()))
        try:
            before = _remaining(admin)
            assert request(port, "GET", "/")[0] == 200  # leaves a pooled connection
            after = _remaining(admin)
        finally:
            stop(proc)
        seen[who] = (before, after)
    assert seen["sofamesh"] == seen["envoy"]
    before, after = seen["envoy"]
    assert "cluster.small.circuit_breakers.default.remaining_cx: 7" in before
    assert "cluster.small.circuit_breakers.default.remaining_cx: 6" in after
    assert not any(line.startswith("cluster.untracked.") for line in after)
