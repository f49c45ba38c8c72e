"""HCM options istiod sets on every HTTP listener, as Envoy 1.40 acts on them:
`path_with_escaped_slashes_action: KEEP_UNCHANGED` (escaped slashes reach the upstream as
sent, with and without normalize_path) and `request_id_extension` (Envoy's UUID request
ids: a fresh version-4 UUID, a client's kept). Other escaped-slash actions are refused."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import free_port, sofamesh_command
from tests.integration.admin.helpers import start_envoy, start_sofamesh, stop
from tests.support.threaded_http import serve_http

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps(
            {
                "path": self.path,
                "rid": self.headers.get("x-request-id"),
                "host": self.headers.get("host"),
            }
        ).encode()
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


def bootstrap(admin: int, port: int, upstream: int, **hcm_extra) -> dict:
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": "outbound_0.0.0.0_80",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "v",
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
            **hcm_extra,
        },
    }
    addr = {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [hcm]}],
                }
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


def _raw_get(port: int, target: str, rid: str | None = None) -> dict:
    """GET with the target exactly as given (no client-side normalisation)."""
    head = f"GET {target} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n"
    if rid:
        head += f"x-request-id: {rid}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall((head + "\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return {"status": status, **json.loads(data.split(b"\r\n\r\n", 1)[1])}


ISTIO = {
    "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
    "request_id_extension": {
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
            "use_request_id_for_trace_sampling": True,
        }
    },
}
TARGETS = ("/a%2Fb/c", "/a%2fb%5Cc/../d", "/x/%2E%2E/y%2F")


@pytest.mark.parametrize("normalize", [False, True])
def test_istio_hcm_options_as_envoy(tmp_path, upstream, normalize):
    seen = {}
    for who, start in (("envoy", start_envoy), ("sofamesh", start_sofamesh)):
        admin, port = free_port(), free_port()
        cfg = tmp_path / f"{who}.json"
        cfg.write_text(
            json.dumps(bootstrap(admin, port, upstream, normalize_path=normalize, **ISTIO))
        )
        proc = start(cfg, admin, *(("--concurrency", "1") if who == "sofamesh" else ()))
        try:
            got = [_raw_get(port, t) for t in TARGETS]
            kept = _raw_get(port, "/", rid="client-chosen-id")
        finally:
            stop(proc)
        for g in got:
            assert UUID4.match(g.pop("rid")), (who, g)
        seen[who] = (got, kept)
    assert seen["sofamesh"] == seen["envoy"]
    assert seen["envoy"][1]["rid"] == "client-chosen-id"


def test_other_escaped_slash_actions_are_refused(tmp_path):
    cfg = tmp_path / "v.json"
    doc = bootstrap(free_port(), 0, 1, path_with_escaped_slashes_action="UNESCAPE_AND_REDIRECT")
    cfg.write_text(json.dumps(doc))
    r = subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert (
        "HttpConnectionManager.path_with_escaped_slashes_action UNESCAPE_AND_REDIRECT is not "
        "implemented by sofamesh" in r.stderr
    )


class _Slow(_Echo):
    def do_GET(self):
        import time

        time.sleep(1.2)
        super().do_GET()


def test_istio_route_max_stream_duration_zero_as_envoy(tmp_path):
    """istiod's `max_stream_duration: {max_stream_duration: 0s, grpc_timeout_header_max:
    0s}` on every route: no limit, a slow answer arrives through both proxies."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        got = {}
        for who, start in (("envoy", start_envoy), ("sofamesh", start_sofamesh)):
            admin, port = free_port(), free_port()
            doc = bootstrap(admin, port, srv.server_address[1])
            route = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
                "typed_config"
            ]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
            route["timeout"] = "0s"
            route["max_stream_duration"] = {
                "max_stream_duration": "0s",
                "grpc_timeout_header_max": "0s",
            }
            cfg = tmp_path / f"{who}.json"
            cfg.write_text(json.dumps(doc))
            proc = start(cfg, admin, *(("--concurrency", "1") if who == "sofamesh" else ()))
            try:
                got[who] = _raw_get(port, "/slow")
            finally:
                stop(proc)
            got[who].pop("rid")
        assert got["sofamesh"] == got["envoy"]
        assert (got["envoy"]["status"], got["envoy"]["path"]) == (200, "/slow")
    finally:
        srv.shutdown()
        srv.server_close()


def test_route_max_stream_duration_limit_is_refused(tmp_path):
    doc = bootstrap(free_port(), 0, 1)
    route = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    route["max_stream_duration"] = {"max_stream_duration": "5s"}
    cfg = tmp_path / "v.json"
    cfg.write_text(json.dumps(doc))
    r = subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "MaxStreamDuration.max_stream_duration 5s is not implemented by sofamesh" in r.stderr


@pytest.mark.parametrize("ignore", [False, True])
def test_ignore_port_in_host_matching_as_envoy(tmp_path, upstream, ignore):
    """istiod's gateways set RouteConfiguration.ignore_port_in_host_matching: a Host with
    a port matches the port-less domain; the Host sent upstream keeps its port."""
    got = {}
    for who, start in (("envoy", start_envoy), ("sofamesh", start_sofamesh)):
        admin, port = free_port(), free_port()
        doc = bootstrap(admin, port, upstream)
        rc = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"
        ]["route_config"]
        rc["virtual_hosts"][0]["domains"] = ["a.example.com"]
        if ignore:
            rc["ignore_port_in_host_matching"] = True
        cfg = tmp_path / f"{who}.json"
        cfg.write_text(json.dumps(doc))
        proc = start(cfg, admin, *(("--concurrency", "1") if who == "sofamesh" else ()))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(
                    b"GET /p HTTP/1.1\r\nhost: a.example.com:8080\r\nconnection: close\r\n\r\n"
                )
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
        finally:
            stop(proc)
        status = int(data.split(b" ", 2)[1])
        host = json.loads(data.split(b"\r\n\r\n", 1)[1])["host"] if status == 200 else None
        got[who] = (status, host)
    assert got["sofamesh"] == got["envoy"]
    assert got["envoy"] == ((200, "a.example.com:8080") if ignore else (404, None))
