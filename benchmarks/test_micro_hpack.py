"""Micro-benchmarks (pytest-benchmark): sofamesh's compiled HPACK beside the pure-Python
`hpack` package on the same header lists, in the same run.

    .venv/bin/python -m pytest benchmarks/test_micro_hpack.py --benchmark-enable -q \
        --benchmark-columns=mean,median,ops --benchmark-sort=name

A "steady" case encodes/decodes the same request block repeatedly (a proxy's hot path:
most fields come out of the dynamic table); a "cold" case uses a fresh codec each time
(every string is a Huffman literal). Nothing here gates on absolute times.
"""

from __future__ import annotations

import hpack
import pytest

from sofamesh._core.codecs import hpack as ours

REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"api.example.com"),
    (b":path", b"/api/v1/users/12345?expand=true"),
    (b"user-agent", b"grpc-python/1.62.0 grpc-c/39.0.0 (linux; chttp2)"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"x-request-id", b"3f1c1e1e-0a0b-4c4d-8e8f-000011112222"),
    (b"x-forwarded-proto", b"http"),
    (b"authorization", b"Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc"),
]

IMPLS = ["sofamesh", "hpack_peer"]


def _encoder(impl):
    return ours.Encoder() if impl == "sofamesh" else hpack.Encoder()


def _encode(impl, e):
    return e.encode_block(REQUEST) if impl == "sofamesh" else e.encode(REQUEST)


def _decoder(impl):
    return ours.Decoder() if impl == "sofamesh" else hpack.Decoder()


def _decode(impl, d, block):
    return d.decode(block) if impl == "sofamesh" else d.decode(block, raw=True)


@pytest.mark.parametrize("impl", IMPLS)
def test_encode_steady(benchmark, impl):
    e = _encoder(impl)
    _encode(impl, e)
    benchmark(_encode, impl, e)


@pytest.mark.parametrize("impl", IMPLS)
def test_encode_cold(benchmark, impl):
    benchmark(lambda: _encode(impl, _encoder(impl)))


@pytest.mark.parametrize("impl", IMPLS)
def test_decode_steady(benchmark, impl):
    # blocks as a peer steadily sends them: the second block of the same request
    e = hpack.Encoder()
    e.encode(REQUEST)
    first = hpack.Encoder().encode(REQUEST)
    block = e.encode(REQUEST)
    d = _decoder(impl)
    _decode(impl, d, first)

    def run():
        return _decode(impl, d, block)

    assert [tuple(h) for h in benchmark(run)] == REQUEST


@pytest.mark.parametrize("impl", IMPLS)
def test_decode_cold(benchmark, impl):
    block = hpack.Encoder().encode(REQUEST)

    def run():
        return _decode(impl, _decoder(impl), block)

    assert [tuple(h) for h in benchmark(run)] == REQUEST
