"""Micro-benchmarks (pytest-benchmark) for the HTTP/1.1 hot path: head parsing and routing.

    .venv/bin/python -m pytest benchmarks/test_micro_http.py --benchmark-enable -q

Each also runs llhttp (httptools) or a naive Python equivalent on the same input so the
numbers come with a peer in the same run; nothing here gates on absolute times.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httptools
import pytest

from sofamesh._core.codecs import http1

sys.path.insert(0, str(Path(__file__).parent / "lib"))
from perf_workloads import GET, route_table  # the gate's inputs (perf_gate.py)


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


@pytest.mark.parametrize("size", [(1, 1), (50, 20)], ids=["1x1", "50vh_x_20routes"])
def test_route_match_sofamesh(benchmark, size):
    table = route_table(*size)
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
