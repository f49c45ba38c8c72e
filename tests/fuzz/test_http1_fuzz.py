"""Fuzzing the HTTP/1.1 codec (hypothesis): random and mutated heads and chunked bodies.

Contract: the parser returns a head length, 0 (need more) or one of the E_* codes, never
raises, never reads past what it was given, and is consistent with itself (a complete head
parses the same whatever follows it; a prefix of a valid head is "need more").
The body reader returns a count within the input or -1."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sofamesh._core.codecs import http1

CORPUS = sorted((Path(__file__).resolve().parent / "corpus" / "http1").glob("*.bin"))
SEEDS = [p.read_bytes() for p in CORPUS]
ERRORS = {
    http1.E_BAD,
    http1.E_TOO_LARGE,
    http1.E_TOO_MANY,
    http1.E_NOT_IMPL,
    http1.E_BAD_TARGET,
    http1.E_OBS_FOLD,
}


def test_corpus_is_there():
    assert len(SEEDS) >= 4


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and data:
            del data[pos % len(data)]
        elif op == 1:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == 2 and data:
            data[pos % len(data)] = draw(st.integers(0, 255))
        else:
            data[pos:pos] = draw(
                st.sampled_from(
                    [b"\r\n", b"\n", b":", b" ", b"\t", b"%", b"#", b"\x00", b"\r\n\r\n"]
                )
            )
    return bytes(data)


def _check_head(data: bytes) -> None:
    n, h = http1.parse_request_head(data, max_bytes=4096, max_headers=32)
    assert n in ERRORS or 0 <= n <= len(data)
    if n > 0:
        assert len(h.headers) <= 32
        # the same head followed by anything parses the same way
        n2, h2 = http1.parse_request_head(data + b"GARBAGE AFTER", max_bytes=4096, max_headers=32)
        assert n2 == n and h2.headers == h.headers and h2.target == h.target
    if n == http1.E_OBS_FOLD:
        fixed = http1.unfold_head(data, h.head_start, h.head_length)
        assert http1.parse_request_head(fixed, max_bytes=4096)[0] != http1.E_OBS_FOLD
    nr, _ = http1.parse_response_head(data, max_bytes=4096)
    assert nr in ERRORS or 0 <= nr <= len(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_mutated_heads(data):
    _check_head(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes(data):
    _check_head(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SEEDS), st.integers(1, 200))
def test_prefixes_of_valid_heads_need_more(data, cut):
    n, _ = http1.parse_request_head(data)
    if n > 0 and cut < n:
        assert http1.parse_request_head(data[:cut])[0] == 0


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 300), max_size=6))
def test_chunked_reader_in_pieces(body, cuts):
    r = http1.BodyReader()
    r.begin(http1.MODE_CHUNKED)
    pos = 0
    for cut in sorted({c for c in cuts if c < len(body)}) + [len(body)]:
        piece = body[pos:cut]
        k = r.feed_bytes(piece)
        if k < 0:
            return
        assert 0 <= k <= len(piece)
        assert 0 <= r.forward_length <= k
        if r.complete:
            return
        assert k == len(piece)  # an unfinished body takes the whole piece
        pos = cut


# Regressions found by the atheris campaign (tests/fuzz/atheris_http1.py)


@pytest.mark.parametrize("max_bytes", [12, 13, 14, 15])
def test_response_head_over_max_bytes_is_too_large(max_bytes):
    # a request head over the limit is refused; the same must hold for a response head
    assert http1.parse_request_head(b"GET / HTTP/1.1\r\n\r\n", max_bytes=max_bytes + 2)[0] == (
        http1.E_TOO_LARGE
    )
    head = b"HTTP/1.1 200\r\n\r\n"  # 16 bytes
    assert http1.parse_response_head(head, max_bytes=max_bytes)[0] == http1.E_TOO_LARGE
