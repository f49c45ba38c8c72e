"""The response-rewriting filters over HTTP/2 downstream against Envoy 1.40: compressor (gzip)
and CORS on one chain, the same response headers and decompressed bodies; a CORS preflight
answer passes the compressor too (Envoy passes every response through the encode
filters: it gets `vary: Accept-Encoding`)."""

from __future__ import annotations

import gzip

from tests.integration.http_filters.conftest import TEXT, VOLATILE
from tests.integration.http_filters.test_compressor import _filter as compressor
from tests.integration.http_filters.test_cors import CORS_FILTER, VHOST
from tests.support.h2raw import END_HEADERS, END_STREAM, H2Client, headers, req


def _h2(side, extra: dict[str, str], method: str = "GET", path: str = "/"):
    with H2Client(side.port) as c:
        c.handshake()
        c.send(
            headers(
                1, c.block(req(method, path, "site.example", **extra)), END_STREAM | END_HEADERS
            )
        )
        o = c.outcome(1)
    assert o.kind == "response", o
    hs = sorted((k, v) for k, v in o.response_headers or [] if k not in VOLATILE)
    return hs, o.body


def test_compressor_and_cors_over_h2_like_envoy(pair):
    envoy, ours = pair(http_filters=[CORS_FILTER, compressor("gzip")], virtual_host=VHOST)
    cases = [
        ({"accept_encoding": "gzip", "x_resp_size": "5000", "origin": "http://a.example"}, "GET"),
        ({"accept_encoding": "gzip", "x_resp_size": "5000", "x_resp_chunked": "1"}, "GET"),
        ({"accept_encoding": "br", "x_resp_size": "5000"}, "GET"),
        ({"x_resp_size": "10", "origin": "http://evil.example"}, "GET"),
        ({"origin": "http://a.example", "access_control_request_method": "PUT"}, "OPTIONS"),
    ]
    for extra, method in cases:
        eh, eb = _h2(envoy, extra, method)
        oh, ob = _h2(ours, extra, method)
        assert oh == eh, extra
        if ("content-encoding", "gzip") in eh:
            assert gzip.decompress(ob) == gzip.decompress(eb) == TEXT[:5000]
        else:
            assert ob == eb, extra
