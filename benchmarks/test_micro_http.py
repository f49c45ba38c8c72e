"""Micro-benchmarks (pytest-benchmark) for the HTTP/1.1 hot path: head parsing and routing.

    .venv/bin/python -m pytest benchmarks/test_micro_http.py --benchmark-enable -q

Each also runs llhttp (httptools) or a naive Python equivalent on the same input so the
numbers come with a peer in the same run; nothing here gates on absolute times.
"""

from __future__ import annotations

import re

import httptools
import pytest
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from sofamesh._core.codecs import http1
from sofamesh.proxy.routes import compile_route_config

GET = (
    b"GET /api/v1/users/12345?expand=true HTTP/1.1\r\nHost: api.example.com\r\n"
    b"User-Agent: wrk/4.2\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
    b"X-Request-Id: 3f1c1e1e-0a0b-4c4d-8e8f-000011112222\r\nConnection: keep-alive\r\n\r\n"
)


def test_parse_request_head_sofamesh(benchmark):
    n, _ = benchmark(http1.parse_request_head, GET)
    assert n == len(GET)


class _Sink:
    def on_url(self, u):
        pass

    def on_header(self, k, v):
        pass


def test_parse_request_head_llhttp_peer(benchmark):
    sink = _Sink()

    def run():
        p = httptools.HttpRequestParser(sink)
        p.feed_data(GET)
        return p

    assert benchmark(run).get_method() == b"GET"


def _routes(n_vhosts: int, n_routes: int):
    vhosts = []
    for v in range(n_vhosts):
        routes = [
            {"match": {"prefix": f"/svc{r}/"}, "route": {"cluster": f"c{r}"}}
            for r in range(n_routes)
        ]
        routes.append(
            {
                "match": {"safe_regex": {"regex": "/api/v1/users/[0-9]+"}},
                "route": {"cluster": "users"},
            }
        )
        vhosts.append(
            {"name": f"vh{v}", "domains": [f"host{v}.example.com", f"*.d{v}.com"], "routes": routes}
        )
    vhosts.append(
        {
            "name": "api",
            "domains": ["api.example.com"],
            "routes": [
                {
                    "match": {
                        "prefix": "/api/v1/users/",
                        "headers": [{"name": "accept", "string_match": {"exact": "*/*"}}],
                    },
                    "route": {"cluster": "users"},
                }
            ],
        }
    )
    rc = json_format.ParseDict({"virtual_hosts": vhosts}, route_pb2.RouteConfiguration())
    return compile_route_config(rc)


@pytest.mark.parametrize("size", [(1, 1), (50, 20)], ids=["1x1", "50vh_x_20routes"])
def test_route_match_sofamesh(benchmark, size):
    table = _routes(*size)
    _, head = http1.parse_request_head(GET)
    route = benchmark(table.match, head)
    assert route.cluster == "users"


def test_route_match_python_peer(benchmark):
    """The same 50x20 lookup as naive Python over dicts and lists (what the table replaces)."""
    vhosts = {
        f"host{v}.example.com": [(f"/svc{r}/", f"c{r}") for r in range(20)] for v in range(50)
    }
    vhosts["api.example.com"] = [("/api/v1/users/", "users")]
    rx = re.compile("/api/v1/users/[0-9]+")
    headers = {"host": "api.example.com", "accept": "*/*"}

    def match():
        routes = vhosts.get(headers["host"].lower(), ())
        path = "/api/v1/users/12345?expand=true"
        for prefix, cluster in routes:
            if path.startswith(prefix) and headers.get("accept") == "*/*":
                return cluster
        if rx.fullmatch(path.split("?")[0]):
            return "users"
        return None

    assert benchmark(match) == "users"
