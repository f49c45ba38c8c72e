"""Fuzzing the over-limit header block path of the HTTP/2 codec (hypothesis): a block past
max_header_block_size resets its stream and is decoded piece by piece only to keep the
HPACK table in step (codecs/http2_conn.pyx _discard_block, hpack Decoder.decode_block with
`done`). Whatever the fields and however the block is cut into CONTINUATION frames, the
next request on the connection, encoded by the `hpack` package against the table it
believes in, must decode to exactly what it encoded.

SOFAMESH_FUZZ_EXAMPLES=N makes a long campaign (the default keeps the suite quick):
    SOFAMESH_FUZZ_EXAMPLES=400 .venv/bin/python -m pytest tests/fuzz/test_h2_continuation_fuzz.py
(2026-12-03: 400 examples, 151 s, passed; the default 15 take a few seconds.)
"""

from __future__ import annotations

import os
import struct

import hpack as oracle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sofamesh._core.codecs import http2 as H

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EXAMPLES = int(os.environ.get("SOFAMESH_FUZZ_EXAMPLES", "15"))
REQ = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a.test")]


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([ftype, flags])
        + struct.pack(">I", sid)
        + payload
    )


names = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(str.encode)
values = st.binary(max_size=300).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")
)
fields = st.lists(st.tuples(names, values), min_size=1, max_size=60)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    fields,
    st.lists(st.integers(1, 5000), min_size=1, max_size=40),
    st.integers(64, 4096),
    st.booleans(),
    fields,
)
def test_over_limit_block_keeps_hpack_in_step(big, cuts, table, huffman, after):
    conn = H.Connection(max_header_list_size=256, hpack_table_size=4096)
    enc = oracle.Encoder()
    ev = conn.feed(PREFACE + frame(4, 0, 0, b"") + frame(4, 1, 0, b""))
    assert not any(isinstance(e, H.ConnectionError) for e in ev)
    # the encoder may shrink its table (a size update at the start of the block)
    enc.header_table_size = table
    # enough fields that the block is past max_header_block_size (256 + 16384)
    padded = list(big)
    while sum(len(k) + len(v) for k, v in padded) < 20000:
        padded += big
    block = enc.encode(REQ + padded, huffman=huffman)
    pieces = []
    off = 0
    for c in cuts:
        if off >= len(block):
            break
        pieces.append(block[off : off + min(c, 16384)])
        off += min(c, 16384)
    while off < len(block):
        pieces.append(block[off : off + 16384])
        off += 16384
    data = frame(1, 1, 1, pieces[0])  # HEADERS, END_STREAM
    for i, p in enumerate(pieces[1:], 1):
        data += frame(9, 4 if i == len(pieces) - 1 else 0, 1, p)
    if len(pieces) == 1:
        data = frame(1, 5, 1, pieces[0])
    ev = conn.feed(data)
    assert not any(isinstance(e, H.ConnectionError) for e in ev), ev
    assert not any(isinstance(e, H.RequestHeaders) for e in ev)
    if len(block) > 256 + 16384:
        assert conn.stats["header_list_size_too_large"] == 1
    # the table agrees with the oracle's: a small request using it decodes exactly
    small = REQ + after[:3]
    ev = conn.feed(frame(1, 5, 3, enc.encode(small, huffman=huffman)))
    got = [e for e in ev if isinstance(e, H.RequestHeaders)]
    if sum(len(k) + len(v) + 32 for k, v in small) <= 256:
        assert got, ev
        assert got[0].headers == small
