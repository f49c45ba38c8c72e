"""Fuzzing the HTTP/2 connection and the HPACK decoder (hypothesis): random and mutated
client sessions (seeds in corpus/http2, recorded from an h2 client).

Contract: `feed()` never raises; what comes out is events only; once a ConnectionError is
out, nothing else follows and the connection is closed with its GOAWAY queued; every
error is counted; the events do not depend on how the bytes were split. The HPACK decoder
returns OK or an error code for any block."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sofamesh._core.codecs import hpack
from sofamesh._core.codecs import http2 as H

CORPUS = sorted((Path(__file__).resolve().parent / "corpus" / "http2").glob("*.bin"))
SEEDS = [p.read_bytes() for p in CORPUS]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_corpus_is_there():
    assert len(SEEDS) >= 4 and all(s.startswith(PREFACE) for s in SEEDS)


def test_seeds_parse_cleanly():
    for seed in SEEDS:
        conn = H.Connection(max_concurrent_streams=100)
        evs = conn.feed(seed)
        assert not conn.closed, evs
        assert any(isinstance(e, H.RequestHeaders) for e in evs)


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.integers(0, 4))
        pos = draw(st.integers(len(PREFACE), len(data)))
        if op == 0 and len(data) > len(PREFACE):
            del data[pos % len(data) if pos < len(data) else -1]
        elif op == 1:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        elif op == 2 and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == 3 and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        else:
            # a whole random frame header (length, type, flags, stream id) spliced in
            n = draw(st.integers(0, 40))
            hdr = n.to_bytes(3, "big") + bytes(
                [draw(st.integers(0, 10)), draw(st.integers(0, 255))]
            )
            hdr += draw(st.integers(0, 9)).to_bytes(4, "big")
            data[pos:pos] = hdr + draw(st.binary(min_size=n, max_size=n))
    return bytes(data)


def _summary(events):
    out = []
    for e in events:
        d = {k: getattr(e, k) for k in dir(type(e)) if not k.startswith("_")}
        out.append((type(e).__name__, sorted(d.items(), key=lambda kv: kv[0])))
    return out


def _check(data: bytes, cuts: list[int], client_side: bool = False):
    whole = H.Connection(client_side=client_side, max_concurrent_streams=50)
    ev = whole.feed(data)
    assert all(isinstance(e, H.Event) for e in ev)
    errs = [i for i, e in enumerate(ev) if isinstance(e, H.ConnectionError)]
    if errs:
        assert errs == [len(ev) - 1] and whole.closed
        assert whole.feed(b"\0" * 20) == []
    st_ = whole.stats
    assert st_["connection_errors"] == len(errs)
    assert st_["tx_reset"] >= st_["stream_errors"]
    whole.data_to_send()
    # the same bytes in pieces give the same events (DATA may be re-cut: compare payloads)
    split = H.Connection(client_side=client_side, max_concurrent_streams=50)
    ev2 = []
    prev = 0
    for c in sorted(set(cuts)) + [len(data)]:
        if prev < c <= len(data):
            ev2 += split.feed(data[prev:c])
            prev = c
    assert _summary(ev) == _summary(ev2)
    assert split.stats == whole.stats


def test_where_the_bytes_are_cut_never_changes_the_error():
    """Found by test_mutated_sessions (CI, 2026-12-04): a first frame that is not SETTINGS
    and whose payload length is wrong for its type was "frame length" when cut inside its
    payload and "first frame is not SETTINGS" when whole; likewise a frame other than
    CONTINUATION after a HEADERS without END_HEADERS."""
    not_settings = PREFACE + b"\0\0\x01\x02\0\0\0\0\0\x00" + b"\0\0\x04\x04\0\0\0\0\0" + b"x" * 4
    _check(not_settings, [33])
    headers_open = (
        PREFACE
        + b"\0\0\0\x04\0\0\0\0\0"  # SETTINGS
        + b"\0\0\x01\x01\x00\0\0\0\x01\x82"  # HEADERS stream 1, no END_HEADERS
        + b"\0\0\x07\x06\0\0\0\0\0"
        + b"1234567"  # PING of a wrong length
    )
    for cut in range(len(headers_open) - 9, len(headers_open)):
        _check(headers_open, [cut])


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated(), st.lists(st.integers(1, 4000), max_size=6))
def test_mutated_sessions(data, cuts):
    _check(data, cuts)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=600), st.lists(st.integers(1, 700), max_size=4))
def test_random_frames_after_a_valid_preface(tail, cuts):
    _check(PREFACE + b"\0\0\0\4\0\0\0\0\0" + tail, cuts)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=600), st.lists(st.integers(1, 700), max_size=4))
def test_client_end_on_random_bytes(tail, cuts):
    # what an upstream server might send us: its SETTINGS, then anything
    conn = H.Connection(client_side=True)
    conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")])
    _check(b"\0\0\0\4\0\0\0\0\0" + tail, cuts, client_side=True)
    assert all(isinstance(e, H.Event) for e in conn.feed(b"\0\0\0\4\0\0\0\0\0" + tail))


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_hpack_decoder_never_raises(block):
    d = hpack.Decoder(max_header_list_size=1024)
    out: list = []
    assert d.decode_into(block, out) <= 0
    assert sum(len(n) + len(v) + 32 for n, v in out) <= 1024
