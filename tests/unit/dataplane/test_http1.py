"""The HTTP/1.1 head parser and body framing: fed whole, byte by byte and split at random."""

from __future__ import annotations

import random

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sofamesh._core.codecs import http1

REQ = (
    b"POST /a/b?c=d HTTP/1.1\r\nHost: Example.com\r\nContent-Length: 5\r\n"
    b"Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nExpect: 100-continue\r\n"
    b"X-Forwarded-For: 1.1.1.1\r\nX-Empty:\r\nX-Spaces:   v  \t\r\n\r\nhello"
)


def test_request_head_fields():
    n, h = http1.parse_request_head(REQ)
    assert n == REQ.index(b"\r\n\r\n") + 4
    assert (h.method_bytes, h.target, h.version_minor) == (b"POST", b"/a/b?c=d", 1)
    assert h.get("host") == b"Example.com" and h.get(b"HOST") == b"Example.com"
    assert h.body_length == 5 and not h.is_chunked
    assert h.keep_alive and h.upgrade and h.expects_continue
    assert h.get("x-empty") == b"" and h.get("x-spaces") == b"v"
    assert [k for k, _ in h.headers][:3] == [b"host", b"content-length", b"connection"]


def test_need_more_for_every_prefix():
    end = REQ.index(b"\r\n\r\n") + 4
    for i in range(end):
        assert http1.parse_request_head(REQ[:i])[0] == 0, i
    assert http1.parse_request_head(REQ[:end])[0] == end


def test_leading_empty_lines_and_offset():
    data = b"junk" + b"\r\n\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n"
    n, h = http1.parse_request_head(data, 4)
    assert n == len(data) - 4 and h.target == b"/"


@pytest.mark.parametrize(
    "raw,err",
    [
        (b"GARBAGE\r\n\r\n", http1.E_BAD),
        (b"GET  / HTTP/1.1\r\n\r\n", http1.E_BAD),
        (b"GET / HTTP/1.2\r\n\r\n", http1.E_BAD),
        (b"GET / HTTP/2.0\r\n\r\n", http1.E_BAD),
        (b"GET /a b HTTP/1.1\r\n\r\n", http1.E_BAD),
        (b"G(T / HTTP/1.1\r\n\r\n", http1.E_BAD),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", http1.E_BAD),
        (b"GET / HTTP/1.1\r\n: empty\r\n\r\n", http1.E_BAD),
        (b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n", http1.E_BAD),
        (b"GET / HTTP/1.1\r\n folded: first\r\n\r\n", http1.E_BAD),
        (b"GET / HTTP/1.1\r\nx: a\rb\r\n\r\n", http1.E_BAD),
        (b"GET / HTTP/1.1\r\nx: a\x00b\r\n\r\n", http1.E_BAD),
        (b"GET / HTTP/1.1\r\ncontent-length: 1x\r\n\r\n", http1.E_BAD),
        (b"GET / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", http1.E_BAD),
        (b"GET / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n", http1.E_BAD),
        (b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\nhost: c\r\n\r\n", http1.E_BAD),
        (b"GET / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n", http1.E_BAD),
        (b"GET / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n", http1.E_NOT_IMPL),
    ],
)
def test_malformed_heads(raw, err):
    assert http1.parse_request_head(raw)[0] == err


def test_size_and_count_limits():
    big = b"GET / HTTP/1.1\r\nx: " + b"a" * 2000 + b"\r\n\r\n"
    assert http1.parse_request_head(big, max_bytes=1000)[0] == http1.E_TOO_LARGE
    assert http1.parse_request_head(big[:1500], max_bytes=1000)[0] == http1.E_TOO_LARGE
    many = b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(11)) + b"\r\n"
    assert http1.parse_request_head(many, max_headers=10)[0] == http1.E_TOO_MANY
    assert http1.parse_request_head(many, max_headers=11)[0] == len(many)


@pytest.mark.parametrize(
    "cl",
    [
        b"content-length: 3\r\ncontent-length: 3\r\n",  # identical: Envoy 1.40 refuses it too
        b"content-length: 3\r\ncontent-length: 4\r\n",
        b"content-length: 3, 3\r\n",
    ],
)
def test_repeated_content_length_refused_both_ways(cl):
    assert http1.parse_request_head(b"POST / HTTP/1.1\r\n" + cl + b"\r\n")[0] == http1.E_BAD
    assert http1.parse_response_head(b"HTTP/1.1 200 OK\r\n" + cl + b"\r\n")[0] == http1.E_BAD


def test_response_with_length_and_chunked_refused():
    # passing both on lets a client that reads by length desync (issue 7)
    for te in (b"chunked", b"gzip, chunked"):
        raw = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: " + te + b"\r\n\r\n"
        assert http1.parse_response_head(raw)[0] == http1.E_BAD
    raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"
    assert http1.parse_response_head(raw)[0] == http1.E_BAD


def test_response_heads():
    n, h = http1.parse_response_head(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
    assert n > 0 and h.status_code == 404 and h.reason == b"Not Found"
    n, h = http1.parse_response_head(b"HTTP/1.0 200\r\n\r\n")
    assert n > 0 and h.status_code == 200 and h.version_minor == 0 and h.reason == b""
    assert http1.parse_response_head(b"HTTP/1.1 2x0 OK\r\n\r\n")[0] == http1.E_BAD
    assert http1.parse_response_head(b"ICY 200 OK\r\n\r\n")[0] == http1.E_BAD
    n, h = http1.parse_response_head(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    assert h.is_chunked and not h.keep_alive


CHUNKED = b"5;name=v\r\nhello\r\n1a\r\n" + b"x" * 26 + b"\r\n0\r\ntrailer-a: 1\r\nb: 2\r\n\r\n"


def _feed_in_pieces(data: bytes, cuts: list[int]) -> tuple[int, bool]:
    r = http1.BodyReader()
    r.begin(http1.MODE_CHUNKED)
    used = 0
    prev = 0
    for cut in cuts + [len(data)]:
        piece = data[prev:cut]
        prev = cut
        k = r.feed_bytes(piece)
        if k < 0:
            return k, False
        used += k
        if r.complete:
            break
    return used, r.complete


def test_chunked_whole_bytewise_and_random_splits():
    data = CHUNKED + b"NEXT REQUEST"
    assert _feed_in_pieces(data, []) == (len(CHUNKED), True)
    assert _feed_in_pieces(data, list(range(1, len(data)))) == (len(CHUNKED), True)
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 8)))
        assert _feed_in_pieces(data, cuts) == (len(CHUNKED), True)


@pytest.mark.parametrize(
    "bad",
    [
        b"z\r\n",
        b"5\r\nhelloX\r\n",
        b"5\nhello",
        b"5\r\nhello\r\r",
        b"\r\n",
        b"fffffffffffffffff\r\n",
        b"5;a\x01\r\n",
    ],
)
def test_chunked_errors(bad):
    assert _feed_in_pieces(bad, [])[0] == -1


def test_content_length_and_eof_framing():
    r = http1.BodyReader()
    r.begin(http1.MODE_LENGTH, 10)
    assert r.feed_bytes(b"12345") == 5 and not r.complete
    assert r.feed_bytes(b"67890EXTRA") == 5 and r.complete
    r.begin(http1.MODE_EOF)
    assert r.feed_bytes(b"abc") == 3 and not r.complete
    r.begin(http1.MODE_NONE)
    assert r.complete and r.feed_bytes(b"x") == 0


TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
VALUE = st.text("abcdefghijklmnopqrstuvwxyz0123456789 ;=,/._-", max_size=30).map(str.strip)


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.text("abcdefghijklmnopqrstuvwxyz0123456789/?=&%-._~", max_size=40),
    headers=st.lists(st.tuples(TOKEN, VALUE), max_size=12),
    split=st.integers(min_value=0, max_value=400),
)
def test_agrees_with_llhttp(method, path, headers, split):
    """Differential: the same bytes through httptools (llhttp) give the same head."""
    headers = [
        (k, v) for k, v in headers if k not in ("content-length", "transfer-encoding", "host")
    ]
    raw = (
        f"{method} /{path} HTTP/1.1\r\nhost: h\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers)
        + "\r\n"
    ).encode()
    seen: dict = {"headers": []}

    class P:
        def on_url(self, u):
            seen["url"] = seen.get("url", b"") + u

        def on_header(self, k, v):
            seen["headers"].append((k.lower(), v))

    hp = httptools.HttpRequestParser(P())
    hp.feed_data(raw)
    split = min(split, len(raw) - 1)
    assert http1.parse_request_head(raw[:split])[0] == 0
    n, h = http1.parse_request_head(raw)
    assert n == len(raw)
    assert h.method_bytes == hp.get_method()
    assert h.target == seen["url"]
    assert h.headers == seen["headers"]


def test_obs_fold_is_unfolded_like_envoy():
    raw = b"GET / HTTP/1.1\r\nhost: a\r\nx-fold: a\r\n  b\r\n\tc\r\nz: 1\r\n\r\nBODY"
    n, h = http1.parse_request_head(raw)
    assert n == http1.E_OBS_FOLD
    fixed = http1.unfold_head(raw, 0, h.head_length)
    assert fixed.endswith(b"\r\n\r\nBODY")
    n, h = http1.parse_request_head(fixed)
    assert n == len(fixed) - 4 and h.get("x-fold") == b"a b c" and h.get("z") == b"1"
    assert http1.parse_response_head(b"HTTP/1.1 200 OK\r\nx: a\r\n b\r\n\r\n")[0] == http1.E_BAD
