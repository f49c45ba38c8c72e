"""envoy.filters.http.decompressor against Envoy 1.40: gzip request bodies decompressed before
the upstream and gzip responses before the client, content-encoding and content-length as
Envoy leaves them, accept-encoding advertised, cache-control no-transform, and the stats."""

from __future__ import annotations

import gzip

from tests.integration.http_filters.conftest import TEXT, VOLATILE, typed

FILTER = {
    "name": "envoy.filters.http.decompressor",
    "typed_config": typed(
        "envoy.extensions.filters.http.decompressor.v3.Decompressor",
        decompressor_library={
            "name": "upload",
            "typed_config": typed(
                "envoy.extensions.compression.gzip.decompressor.v3.Gzip", max_inflate_ratio=1000
            ),
        },
    ),
}
UPSTREAM_SEEN = ("accept-encoding", "content-encoding", "content-length", "transfer-encoding")


def _headers(r) -> list[tuple[str, str]]:
    return sorted((k, v) for k, v in r.headers if k not in VOLATILE)


def _stats(side) -> dict[str, int]:
    return {k: v for k, v in side.stats().items() if ".decompressor." in k}


def _seen(side) -> list:
    """What the upstream received; header order aside (sofamesh's HTTP/1 codec writes
    transfer-encoding first and a rewritten header last, Envoy keeps places)."""
    return [
        (
            r.method,
            r.body,
            sorted((k.lower(), v) for k, v in r.headers if k.lower() in UPSTREAM_SEEN),
        )
        for r in side.upstream.records
    ]


BODY = gzip.compress(TEXT[:20000])
CASES = [
    # (method, headers, body)
    ("GET", {"x-resp-size": "5000", "x-resp-encoding": "gzip"}, None),
    ("GET", {"x-resp-size": "5000", "x-resp-encoding": "gzip", "accept-encoding": "br"}, None),
    ("GET", {"x-resp-size": "5000", "x-resp-encoding": "gzip", "x-resp-chunked": "1"}, None),
    (
        "GET",
        {
            "x-resp-size": "5000",
            "x-resp-encoding": "gzip",
            "x-resp-header": "cache-control=no-transform",
        },
        None,
    ),
    ("GET", {"x-resp-size": "5000"}, None),
    # says gzip, is not: the client gets what was decompressed (nothing), the error counted
    ("GET", {"x-resp-size": "500", "x-resp-header": "content-encoding=gzip"}, None),
    ("POST", {"content-encoding": "gzip", "x-resp-echo": "1"}, BODY),
    ("POST", {"content-encoding": "GZIP", "x-resp-echo": "1"}, BODY),
    ("POST", {"content-encoding": "gzip, identity", "x-resp-echo": "1"}, BODY),
    ("POST", {"content-encoding": "br", "x-resp-echo": "1"}, BODY),
    (
        "POST",
        {"content-encoding": "gzip", "cache-control": "no-transform", "x-resp-echo": "1"},
        BODY,
    ),
    ("POST", {"x-resp-echo": "1"}, b"plain body"),
]


def test_decompressor_like_envoy(pair):
    envoy, ours = pair(http_filters=[FILTER])
    for method, hdrs, body in CASES:
        e = envoy.request(method, "/", hdrs, body)
        o = ours.request(method, "/", hdrs, body)
        assert (o.status, _headers(o)) == (e.status, _headers(e)), hdrs
        assert o.body == e.body, hdrs
    assert _seen(ours) == _seen(envoy)
    assert _stats(ours) == _stats(envoy)
    # what is compared: Envoy decompressed both ways
    r = envoy.request("POST", "/", {"content-encoding": "gzip", "x-resp-echo": "1"}, BODY)
    assert r.body == TEXT[:20000]
    r = envoy.request("GET", "/", {"x-resp-size": "5000", "x-resp-encoding": "gzip"})
    assert r.body == TEXT[:5000] and r.header("content-encoding") is None


def _gzip(data: bytes, wbits: int) -> bytes:
    import zlib

    z = zlib.compressobj(6, zlib.DEFLATED, 16 + wbits)
    return z.compress(data) + z.flush()


def test_gzip_example_uploads_like_envoy(pair):
    """Envoy's gzip example: window_bits 9, response direction off (no accept-encoding
    advertised); a body written with a larger window, and garbage, are not valid gzip."""
    f = {
        "name": "envoy.filters.http.decompressor",
        "typed_config": typed(
            "envoy.extensions.filters.http.decompressor.v3.Decompressor",
            decompressor_library={
                "name": "upload",
                "typed_config": typed(
                    "envoy.extensions.compression.gzip.decompressor.v3.Gzip",
                    window_bits=9,
                    chunk_size=8192,
                    max_inflate_ratio=1000,
                ),
            },
            response_direction_config={
                "common_config": {"enabled": {"default_value": False, "runtime_key": "k"}}
            },
        ),
    }
    envoy, ours = pair(http_filters=[f])
    cases = [
        ("GET", {"x-resp-size": "100", "x-resp-encoding": "gzip", "accept-encoding": "br"}, None),
        ("POST", {"content-encoding": "gzip", "x-resp-echo": "1"}, _gzip(TEXT[:3000], 9)),
        ("POST", {"content-encoding": "gzip", "x-resp-echo": "1"}, _gzip(TEXT[:3000], 15)),
        ("POST", {"content-encoding": "gzip", "x-resp-echo": "1"}, b"not gzip at all" * 10),
    ]
    for method, hdrs, body in cases:
        e = envoy.request(method, "/", hdrs, body)
        o = ours.request(method, "/", hdrs, body)
        assert (o.status, _headers(o)) == (e.status, _headers(e)), hdrs
        assert o.body == e.body, hdrs
    assert _seen(ours) == _seen(envoy)
    assert _stats(ours) == _stats(envoy)


def test_inflate_ratio_like_envoy(pair):
    """A gzip bomb (2 MB of zeros in 2 KB) under the default max_inflate_ratio (100): Envoy
    passes the output up to the first 4 KiB piece past the ratio, then drops the rest."""
    f = {
        "name": "envoy.filters.http.decompressor",
        "typed_config": typed(
            "envoy.extensions.filters.http.decompressor.v3.Decompressor",
            decompressor_library={
                "name": "upload",
                "typed_config": typed("envoy.extensions.compression.gzip.decompressor.v3.Gzip"),
            },
        ),
    }
    envoy, ours = pair(http_filters=[f])
    bomb = gzip.compress(b"\0" * 2_000_000)
    for side in (envoy, ours):
        r = side.request("POST", "/", {"content-encoding": "gzip", "x-resp-echo": "1"}, bomb)
        assert r.status == 200
    assert _seen(ours) == _seen(envoy)
    assert 0 < len(_seen(envoy)[0][1]) < 2_000_000
    assert _stats(ours) == _stats(envoy)
