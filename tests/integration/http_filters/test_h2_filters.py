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


def test_decompressor_over_h2_like_envoy(pair):
    """A gzip request body over HTTP/2 reaches the upstream decompressed (in two DATA
    frames), and a gzip response reaches the client decompressed."""
    from tests.integration.http_filters.test_decompressor import FILTER
    from tests.support.h2raw import data

    envoy, ours = pair(http_filters=[FILTER])
    body = gzip.compress(TEXT[:8000])

    def post(side):
        with H2Client(side.port) as c:
            c.handshake()
            fields = req("POST", "/", "site.example", content_encoding="gzip", x_resp_echo="1")
            c.send(headers(1, c.block(fields), END_HEADERS))
            c.send(data(1, body[:100]), data(1, body[100:], END_STREAM))
            o = c.outcome(1)
        assert o.kind == "response", o
        return sorted((k, v) for k, v in o.response_headers or [] if k not in VOLATILE), o.body

    got = post(ours)
    assert got == post(envoy)
    assert got[1] == TEXT[:8000]
    up = [
        (r.body, sorted((k.lower(), v) for k, v in r.headers if k.lower().startswith("content-")))
        for r in ours.upstream.records
    ]
    assert up == [
        (r.body, sorted((k.lower(), v) for k, v in r.headers if k.lower().startswith("content-")))
        for r in envoy.upstream.records
    ]
    assert _h2(ours, {"x_resp_size": "5000", "x_resp_encoding": "gzip"}) == _h2(
        envoy, {"x_resp_size": "5000", "x_resp_encoding": "gzip"}
    )
