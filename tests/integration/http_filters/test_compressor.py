"""envoy.filters.http.compressor against Envoy 1.40 with gzip, brotli and zstd: the same
decisions (compressed or not, for content type, length, Accept-Encoding with q-values,
etag, cache-control, status), the same response headers (content-encoding, vary, a strong
etag dropped, content-length gone, chunked on HTTP/1.1), bodies that decompress to the same
bytes, and the same compressor stats. The compressed bytes themselves may differ (Envoy
links zlib-ng and its own brotli/zstd builds): they are decompressed and compared."""

from __future__ import annotations

import gzip

import brotli
import pytest
import zstandard

from tests.integration.http_filters.conftest import TEXT, VOLATILE, typed

LIBS = {
    "gzip": (
        typed(
            "envoy.extensions.compression.gzip.compressor.v3.Gzip", memory_level=3, window_bits=10
        ),
        gzip.decompress,
    ),
    "br": (typed("envoy.extensions.compression.brotli.compressor.v3.Brotli"), brotli.decompress),
    "zstd": (
        typed("envoy.extensions.compression.zstd.compressor.v3.Zstd", compression_level=10),
        lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
    ),
}


def _filter(lib: str, **response_direction) -> dict:
    return {
        "name": "envoy.filters.http.compressor",
        "typed_config": typed(
            "envoy.extensions.filters.http.compressor.v3.Compressor",
            response_direction_config=response_direction,
            compressor_library={"name": "text_optimized", "typed_config": LIBS[lib][0]},
        ),
    }


def _headers(r) -> list[tuple[str, str]]:
    return sorted((k, v) for k, v in r.headers if k not in VOLATILE)


CASES = [
    # (path, request headers)
    ("/", {"accept-encoding": "ENC", "x-resp-size": "5000"}),
    ("/", {"accept-encoding": "ENC", "x-resp-size": "5000", "x-resp-chunked": "1"}),
    ("/", {"x-resp-size": "5000"}),  # no accept-encoding
    ("/", {"accept-encoding": "identity", "x-resp-size": "5000"}),
    ("/", {"accept-encoding": "ENC;q=0, identity", "x-resp-size": "5000"}),
    ("/", {"accept-encoding": "ENC;q=0.5, identity;q=0.9", "x-resp-size": "5000"}),
    ("/", {"accept-encoding": "identity;q=0.1, ENC;q=0.8", "x-resp-size": "5000"}),
    ("/", {"accept-encoding": "*", "x-resp-size": "5000"}),
    ("/", {"accept-encoding": "deflate, foo", "x-resp-size": "5000"}),
    ("/", {"accept-encoding": "OTHER", "x-resp-size": "5000"}),  # another known coding
    ("/", {"accept-encoding": "ENC;q=abc", "x-resp-size": "5000"}),
    ("/", {"accept-encoding": "ENC", "x-resp-size": "29"}),  # under min_content_length
    ("/", {"accept-encoding": "ENC", "x-resp-size": "30"}),
    ("/", {"accept-encoding": "ENC", "x-resp-size": "0"}),
    ("/", {"accept-encoding": "ENC", "x-resp-size": "5000", "x-resp-type": "image/png"}),
    ("/", {"accept-encoding": "ENC", "x-resp-size": "5000", "x-resp-type": "none"}),
    (
        "/",
        {
            "accept-encoding": "ENC",
            "x-resp-size": "5000",
            "x-resp-type": "Text/HTML; charset=utf-8",
        },
    ),
    ("/", {"accept-encoding": "ENC", "x-resp-size": "5000", "x-resp-etag": '"abc"'}),
    ("/", {"accept-encoding": "ENC", "x-resp-size": "5000", "x-resp-etag": 'W/"abc"'}),
    ("/", {"accept-encoding": "ENC", "x-resp-size": "5000", "x-resp-header": "vary=Origin"}),
    (
        "/",
        {"accept-encoding": "ENC", "x-resp-size": "5000", "x-resp-header": "vary=accept-encoding"},
    ),
    (
        "/",
        {
            "accept-encoding": "ENC",
            "x-resp-size": "5000",
            "x-resp-header": "cache-control=no-transform",
        },
    ),
    ("/", {"accept-encoding": "ENC", "x-resp-size": "5000", "x-resp-encoding": "gzip"}),
    ("/", {"accept-encoding": "ENC", "x-resp-size": "5000", "x-resp-status": "404"}),
    ("/", {"accept-encoding": "ENC", "x-resp-size": "5000", "x-resp-status": "206"}),
    ("/", {"accept-encoding": "ENC", "x-resp-status": "204"}),
]


def _run(envoy, ours, lib: str, cases, method: str = "GET") -> None:
    other = "br" if lib != "br" else "gzip"
    for path, hdrs in cases:
        h = {k: v.replace("ENC", lib).replace("OTHER", other) for k, v in hdrs.items()}
        e = envoy.request(method, path, h)
        o = ours.request(method, path, h)
        assert o.status == e.status, h
        assert _headers(o) == _headers(e), h
        if e.header("content-encoding") == lib:
            assert LIBS[lib][1](o.body) == LIBS[lib][1](e.body), h
            assert o.body != LIBS[lib][1](o.body) or not o.body
        else:
            assert o.body == e.body, h
    # the upstream saw the same requests (accept-encoding kept: remove_accept_encoding_header off)
    assert [r.header("accept-encoding") for r in ours.upstream.records] == [
        r.header("accept-encoding") for r in envoy.upstream.records
    ]


def _stats(side) -> dict[str, int]:
    """The compressor's counters but the compressed byte count, which depends on the
    library build (checked apart: smaller than the uncompressed count)."""
    st = {k: v for k, v in side.stats().items() if ".compressor." in k}
    for k in [k for k in st if k.endswith(".response.total_compressed_bytes")]:
        assert 0 < st.pop(k) < st[k.replace("total_compressed", "total_uncompressed")]
    return st


@pytest.mark.parametrize("lib", ["gzip", "br", "zstd"])
def test_compressor_like_envoy(pair, lib):
    envoy, ours = pair(http_filters=[_filter(lib, uncompressible_response_codes=[206])])
    _run(envoy, ours, lib, CASES)
    st = _stats(ours)
    assert st == _stats(envoy)
    assert any(k.endswith(".compressed") and v > 0 for k, v in st.items())
    # what the comparison is about: a compressed, chunked, weakened response from Envoy
    r = envoy.request(
        "GET", "/", {"accept-encoding": lib, "x-resp-size": "5000", "x-resp-etag": '"e"'}
    )
    assert r.header("content-encoding") == lib and r.header("content-length") is None
    assert r.header("transfer-encoding") == "chunked" and r.header("etag") is None
    assert LIBS[lib][1](r.body) == TEXT[:5000]


def test_compressor_options_like_envoy(pair):
    """min_content_length, content_type, disable_on_etag_header and
    remove_accept_encoding_header as the gzip example sets them; HEAD requests."""
    f = _filter(
        "gzip",
        common_config={"min_content_length": 100, "content_type": ["application/json"]},
        disable_on_etag_header=True,
        remove_accept_encoding_header=True,
    )
    envoy, ours = pair(http_filters=[f])
    cases = [
        ("/", {"accept-encoding": "gzip", "x-resp-size": "99", "x-resp-type": "application/json"}),
        ("/", {"accept-encoding": "gzip", "x-resp-size": "100", "x-resp-type": "application/json"}),
        ("/", {"accept-encoding": "gzip", "x-resp-size": "5000", "x-resp-type": "text/plain"}),
        (
            "/",
            {
                "accept-encoding": "gzip",
                "x-resp-size": "5000",
                "x-resp-type": "application/json",
                "x-resp-etag": '"x"',
            },
        ),
    ]
    _run(envoy, ours, "gzip", cases)
    _run(envoy, ours, "gzip", cases[1:2], method="HEAD")
    assert _stats(ours) == _stats(envoy)


def test_two_compressors_choose_like_envoy(pair):
    """gzip and brotli in one chain: one decision per response over both (q-values, the
    first of equals, * the first of the chain, a coding ruled out by q=0 or by its filter's
    content types), the other compressor overshadowed."""
    gz = _filter("gzip")
    br = _filter("br", common_config={"content_type": ["application/json"]})
    br["typed_config"]["compressor_library"]["name"] = "brotli_lib"
    envoy, ours = pair(http_filters=[gz, br])
    cases = []
    for ae in (
        "gzip, br",
        "br, gzip",
        "br;q=0.9, gzip;q=0.8",
        "*",
        "br",
        "br;q=0, *",
        "identity, br;q=0.5",
    ):
        for ctype in ("text/plain", "application/json"):
            cases.append(
                ("/", {"accept-encoding": ae, "x-resp-size": "5000", "x-resp-type": ctype})
            )
    for path, h in cases:
        e = envoy.request("GET", path, h)
        o = ours.request("GET", path, h)
        assert (o.status, _headers(o)) == (e.status, _headers(e)), h
        enc = e.header("content-encoding")
        if enc:
            assert LIBS[enc][1](o.body) == LIBS[enc][1](e.body) == TEXT[:5000], h
        else:
            assert o.body == e.body, h
    assert _stats(ours) == _stats(envoy)
    assert envoy.request("GET", "/", cases[1][1]).header("content-encoding") == "gzip"


def test_local_replies_pass_the_compressor_like_envoy(pair):
    """Envoy passes its own responses through the encode filters: a direct_response body
    long enough is compressed, a short one and a 404 are not, a CORS preflight answer gets
    vary; the CORS headers reach a local reply of a later filter's too."""
    from tests.integration.http_filters.test_cors import CORS_FILTER

    long_body = "direct response body " * 20
    vhost = {
        "typed_per_filter_config": {
            "envoy.filters.http.cors": typed(
                "envoy.extensions.filters.http.cors.v3.CorsPolicy",
                allow_origin_string_match=[{"exact": "http://a.example"}],
                allow_methods="GET",
            )
        },
        "routes": [
            {
                "match": {"prefix": "/long"},
                "direct_response": {"status": 200, "body": {"inline_string": long_body}},
            },
            {
                "match": {"prefix": "/short"},
                "direct_response": {"status": 503, "body": {"inline_string": "no"}},
            },
            {"match": {"prefix": "/up"}, "route": {"cluster": "backend"}},
        ],
    }
    envoy, ours = pair(http_filters=[CORS_FILTER, _filter("gzip")], virtual_host=vhost)
    cases = [
        ("GET", "/long", {"accept-encoding": "gzip"}),
        ("GET", "/long", {}),
        ("HEAD", "/long", {"accept-encoding": "gzip"}),
        ("GET", "/short", {"accept-encoding": "gzip"}),
        ("GET", "/nowhere", {"accept-encoding": "gzip"}),
        ("OPTIONS", "/up", {"origin": "http://a.example", "access-control-request-method": "GET"}),
        (
            "GET",
            "/up",
            {"origin": "http://a.example", "accept-encoding": "gzip", "x-resp-size": "100"},
        ),
    ]
    for method, path, h in cases:
        e = ours_e = envoy.request(method, path, h)
        o = ours.request(method, path, h)
        assert (o.status, _headers(o)) == (e.status, _headers(e)), (method, path, h)
        if ours_e.header("content-encoding") == "gzip":
            assert (
                gzip.decompress(o.body) == gzip.decompress(e.body) == long_body.encode()
                or path == "/up"
            )
        else:
            assert o.body == e.body
    assert _stats(ours) == _stats(envoy)


def test_compressed_body_ends_before_trailers_like_envoy(pair):
    """A chunked response with trailers (forwarded with enable_trailers): the compressed
    stream's end goes out before the trailers, which arrive as Envoy sends them."""
    import socket

    envoy, ours = pair(
        http_filters=[_filter("gzip")],
        hcm_extra={"http_protocol_options": {"enable_trailers": True}},
        cluster_extra={
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    explicit_http_config={"http_protocol_options": {"enable_trailers": True}},
                )
            }
        },
    )

    def raw(side) -> tuple[bytes, bytes]:
        req = (
            b"GET / HTTP/1.1\r\nhost: x\r\naccept-encoding: gzip\r\nx-resp-size: 5000\r\n"
            b"x-resp-trailers: 1\r\nconnection: close\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", side.port), timeout=5) as c:
            c.sendall(req)
            out = b""
            while chunk := c.recv(65536):
                out += chunk
        head, _, rest = out.partition(b"\r\n\r\n")
        body, trailers = b"", b""
        while True:  # de-chunk
            size_line, _, rest = rest.partition(b"\r\n")
            n = int(size_line.split(b";")[0], 16)
            if n == 0:
                trailers = rest
                break
            body, rest = body + rest[:n], rest[n + 2 :]
        assert b"content-encoding: gzip" in head.lower()
        return gzip.decompress(body), trailers

    e, o = raw(envoy), raw(ours)
    assert o == e
    assert e[0] == TEXT[:5000] and b"x-trailer: t" in e[1]
