"""Fuzzing the RPC decoders (hypothesis): random and mutated input, fed in random pieces.
Nothing may escape but frames and counted ProtocolErrors; every frame's lazy accessors
(headers, method, invocation, encode) must also stay within that contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sofamesh._core.codecs import bolt, dubbo, hessian, hsf
from sofamesh._core.codecs.rpcframe import ProtocolError

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "protocols"
CORPUS = Path(__file__).resolve().parent / "corpus"


def seeds(prefix: str) -> list[bytes]:
    files = sorted(GOLDEN.glob(f"{prefix}*.bin")) + sorted(CORPUS.glob(f"{prefix}*.bin"))
    assert files, prefix
    return [f.read_bytes() for f in files]


DECODERS = {
    "bolt": (bolt.BoltDecoder, seeds("bolt")),
    "dubbo": (dubbo.DubboDecoder, seeds("dubbo")),
    "hsf": (hsf.HsfDecoder, seeds("hsf")),
}


@st.composite
def mutated(draw, corpus: list[bytes]) -> bytes:
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(corpus), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "len"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, 0x4F, 0x6F, 0x43, 0x5A, 0x7A]))
        elif op == "cut":
            del data[i : i + draw(st.integers(1, 16))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:  # a length field grown or shrunk
            data[i : i + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    return bytes(data)


def exercise(frame) -> None:
    if isinstance(frame, bolt.BoltFrame):
        frame.headers()
        frame.service()
        frame.method()
        frame.encode()
        bolt.rewrite_request_id(frame, 1)
        bolt.error_response(frame, bolt.STATUS_CODEC_EXCEPTION)
    elif isinstance(frame, dubbo.DubboFrame):
        frame.parse_invocation()
        frame.response_flag()
        frame.error_message()
        frame.encode()
        dubbo.rewrite_request_id(frame, 1)
    elif isinstance(frame, hsf.HsfFrame):
        frame.encode()


def run(proto: str, data: bytes, cuts: list[int]) -> None:
    factory, _ = DECODERS[proto]
    dec = factory(max_frame=1 << 16)
    out = []
    prev = 0
    for c in sorted(set(cuts)) + [len(data)]:
        if c > prev:
            out += dec.feed(data[prev:c])
            prev = c
    errors = [f for f in out if isinstance(f, ProtocolError)]
    assert dec.protocol_errors == len(errors)
    assert sum(e.fatal for e in errors) <= 1
    for f in out:
        if not isinstance(f, ProtocolError):
            exercise(f)
    assert dec.buffered <= len(data)


@pytest.mark.parametrize("proto", sorted(DECODERS))
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_corpus(proto, data):
    blob = data.draw(mutated(DECODERS[proto][1]))
    cuts = data.draw(st.lists(st.integers(0, max(len(blob), 1)), max_size=8))
    run(proto, blob, cuts)


@pytest.mark.parametrize("proto", sorted(DECODERS))
@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=5))
def test_random_bytes(proto, blob, cuts):
    run(proto, blob, cuts)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_hessian_readers_return_codes(blob):
    c = hessian.H2Cursor(blob)
    while c.offset < len(blob) and c.py_skip() == 0:
        pass
    hessian.H2Cursor(blob).py_read_map()
    hessian.H2Cursor(blob).py_read_map_keys((b"group", b"timeout"))
    hessian.H2Cursor(blob).py_read_str()
    h1 = hessian.H1Cursor(blob)
    h1.py_skip()
    hessian.sofa_request_method(blob)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_dubbo_bodies_mutated(data):
    body = data.draw(mutated([s[16:] for s in seeds("dubbo_") if len(s) > 20]))
    f = dubbo.DubboFrame(1, body=body)
    rc = f.parse_invocation()
    assert (rc == 0) == (f.body_error is None)
    g = dubbo.DubboFrame(1, body=body)
    rc2 = g.parse_invocation((b"group", b"timeout"))
    assert (rc2 == 0) == (g.body_error is None)
    if rc == 0:  # the keys-only reader skips (does not decode) the other strings
        assert rc2 == 0


# Regressions found by the atheris campaign (tests/fuzz/atheris_rpc.py)


@pytest.mark.parametrize(
    "blob",
    [
        b"s\x00\x02ab\x01c\x90",  # "ab" in an 's' chunk, "c" compact, then int 0
        b"s\x00\x01as\x00\x01b\x30\x01c\x90",  # two 's' chunks, then a 2-byte-length one
    ],
)
def test_sofa_string_chunk_then_compact_chunk_skips_where_it_reads(blob):
    r = hessian.H1Cursor(blob)
    s = r.py_read_str()
    k = hessian.H1Cursor(blob)
    assert k.py_skip() == 0 and k.offset == r.offset == len(blob) - 1
    assert s == "abc"


@pytest.mark.parametrize("blob", [b"Vl", b"Vn", b"Vl\x00\x00", b"Vt\x00\x01xl\x00"])
def test_sofa_list_with_truncated_length_stays_in_the_span(blob):
    # a 'V' list whose 'n'/'l' length runs past the end: an error, the offset still inside
    c = hessian.H1Cursor(blob)
    assert c.py_skip() == 1  # H_ERR_TRUNCATED
    assert c.offset <= len(blob)
