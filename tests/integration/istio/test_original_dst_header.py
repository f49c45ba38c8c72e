"""An ORIGINAL_DST cluster (CLUSTER_PROVIDED) with `original_dst_lb_config.use_http_header`:
the upstream is the address in `x-envoy-original-dst-host` (or `http_header_name`), and
`upstream_port_override` replaces its port, as Envoy 1.40 chooses it. Two upstreams, one
proxy; the same requests get the same answers, upstream by upstream, and an unusable header
gets Envoy's 503. (Without the header the destination is the connection's own: the
interception test, test_interception.py, covers that path.)"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

import pytest

from tests.conftest import free_port
from tests.integration.admin.helpers import start_envoy, start_sofamesh, stop
from tests.integration.istio.test_hcm_options import bootstrap
from tests.support.threaded_http import serve_http


def _echo(name: str) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = f"{name} {self.path}".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return H


@pytest.fixture
def two():
    with serve_http(_echo("a")) as a, serve_http(_echo("b")) as b:
        yield a, b


def _config(admin: int, port: int, b_port: int) -> dict:
    doc = bootstrap(admin, port, 1)
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"] = [
        {"match": {"prefix": "/override"}, "route": {"cluster": "od_port"}},
        {"match": {"prefix": "/custom"}, "route": {"cluster": "od_custom"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "od"}},
    ]

    def od(name: str, **lb) -> dict:
        return {
            "name": name,
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": "1s",
            "original_dst_lb_config": {"use_http_header": True, **lb},
        }

    doc["static_resources"]["clusters"] = [
        od("od"),
        od("od_port", upstream_port_override=b_port),
        od("od_custom", http_header_name="x-target"),
    ]
    return doc


def _get(port: int, path: str, headers: dict) -> str:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"host": "h", **headers})
        r = conn.getresponse()
        body = r.read().decode()
        return f"{r.status} {body if r.status == 200 else ''}".strip()
    finally:
        conn.close()


def test_header_chooses_the_upstream_as_envoy(tmp_path, two):
    a, b = two
    cases = [
        ("/one", {"x-envoy-original-dst-host": f"127.0.0.1:{a}"}),
        ("/two", {"x-envoy-original-dst-host": f"127.0.0.1:{b}"}),
        ("/again", {"x-envoy-original-dst-host": f"127.0.0.1:{a}"}),
        ("/override", {"x-envoy-original-dst-host": f"127.0.0.1:{a}"}),  # port replaced: b
        ("/custom", {"x-target": f"127.0.0.1:{b}"}),
        ("/bad", {"x-envoy-original-dst-host": "not-an-address"}),
        ("/name", {"x-envoy-original-dst-host": f"localhost:{a}"}),  # a name: not an IP
    ]
    got = {}
    for who, start in (("envoy", start_envoy), ("sofamesh", start_sofamesh)):
        admin, port = free_port(), free_port()
        cfg = tmp_path / f"{who}.json"
        cfg.write_text(json.dumps(_config(admin, port, b)))
        proc = start(cfg, admin, *(("--concurrency", "1") if who == "sofamesh" else ()))
        try:
            got[who] = [_get(port, p, h) for p, h in cases]
        finally:
            stop(proc)
    assert got["sofamesh"] == got["envoy"]
    assert got["envoy"][:5] == ["200 a /one", "200 b /two", "200 a /again", "200 b /override",
                                "200 b /custom"]  # fmt: skip
