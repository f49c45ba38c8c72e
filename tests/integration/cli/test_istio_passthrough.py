"""Istio's own filters (metadata exchange, stats, as TypedStruct or as istio protos that
xds-protos lacks) do not fail the listener: the sidecar starts, serves through them, and
counts them in `server.passthrough_filters`."""

from __future__ import annotations

import http.client
from http.server import BaseHTTPRequestHandler

import pytest

from tests.conftest import free_port
from tests.integration.admin.helpers import BOOTSTRAP, get, start_sofamesh, stop
from tests.support.threaded_http import serve_http

ISTIO_FILTERS = """          - name: istio.metadata_exchange
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/io.istio.http.peer_metadata.Config
              value: {{upstream_discovery: [{{istio_headers: {{}}}}]}}
          - name: istio.stats
            typed_config:
              "@type": type.googleapis.com/stats.PluginConfig
              disable_host_header_fallback: true
"""


class _Upstream(BaseHTTPRequestHandler):
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
    with serve_http(_Upstream) as port:
        yield port


def test_istio_filters_pass_through(tmp_path, upstream):
    admin = free_port()
    text = BOOTSTRAP.replace(
        "          http_filters:\n", "          http_filters:\n" + ISTIO_FILTERS
    )
    cfg = tmp_path / "istio.yaml"
    cfg.write_text(text.format(admin=admin, port=0, upstream=upstream))
    proc = start_sofamesh(cfg, admin, "--concurrency", "1")
    try:
        port = int(get(admin, "/listeners")[1].strip().rsplit(":", 1)[1])
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/")
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"ok")
        c.close()
        assert get(admin, "/stats?filter=^server\\.passthrough_filters$")[1] == (
            "server.passthrough_filters: 2\n"
        )
    finally:
        stop(proc)
