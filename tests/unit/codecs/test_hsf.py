"""HSF v1 framing: the golden request, responses, heartbeats, splits, errors."""

from __future__ import annotations

import random

from sofamesh._core.codecs import hsf
from sofamesh._core.codecs.rpcframe import ProtocolError

from .conftest import feed_chunks, golden, random_cuts


def test_golden_request_to_last_byte_and_back():
    data = golden("hsf_mosn2018_req.bin")
    dec = hsf.HsfDecoder()
    (f,) = dec.feed(data)
    assert dec.buffered == 0 and f.encode() == data
    assert f.kind == hsf.HSF_REQUEST and f.serialization == 4 and f.timeout == 2000
    assert f.service == "com.test.pandora.hsf.HelloService:1.0.0.daily"
    assert f.method == "sayHello"
    assert [bytes(t) for t in f.types] == [b"java.lang.String"]
    assert [bytes(a) for a in f.args] == [b"\x05world"]
    assert bytes(f.props).startswith(b"H") and bytes(f.props).endswith(b"Z")
    g = hsf.HsfFrame(
        service=f.service,
        method=f.method,
        types=f.types,
        args=f.args,
        props=bytes(f.props),
        timeout=2000,
        ext=f.ext,
        request_id=f.request_id,
    )
    assert g.encode() == data


def test_response_and_heartbeat_round_trip_and_split():
    resp = hsf.HsfFrame(kind=hsf.HSF_RESPONSE, request_id=9, status=20, body=b"\x91").encode()
    hb = hsf.HsfFrame(kind=hsf.HSF_HEARTBEAT, request_id=11).encode()
    assert len(resp) == 21 and len(hb) == 18
    stream = (golden("hsf_mosn2018_req.bin") + resp + hb) * 2
    rng = random.Random(1)
    for _ in range(50):
        dec = hsf.HsfDecoder()
        got = feed_chunks(dec, stream, random_cuts(stream, rng, 10))
        assert b"".join(f.encode() for f in got) == stream
    kinds = [f.kind for f in hsf.HsfDecoder().feed(stream)]
    assert kinds == [hsf.HSF_REQUEST, hsf.HSF_RESPONSE, hsf.HSF_HEARTBEAT] * 2
    ids = [f.request_id for f in hsf.HsfDecoder().feed(resp + hb)]
    assert ids == [9, 11]


def test_bad_magic_and_argc_are_fatal():
    out = hsf.HsfDecoder().feed(b"\x99" + bytes(40))
    assert isinstance(out[0], ProtocolError) and out[0].fatal
    bad = bytearray(golden("hsf_mosn2018_req.bin"))
    bad[27:31] = (100000).to_bytes(4, "big")
    assert hsf.HsfDecoder().feed(bytes(bad))[0].fatal


def test_size_limit():
    bad = bytearray(golden("hsf_mosn2018_req.bin"))
    bad[19:23] = (1 << 30).to_bytes(4, "big")
    dec = hsf.HsfDecoder(max_frame=1 << 20)
    out = dec.feed(bytes(bad))
    assert out[0].fatal and "limit" in out[0].reason and dec.buffered == 0


def test_byte_by_byte():
    data = golden("hsf_mosn2018_req.bin")
    hb = hsf.HsfFrame(kind=hsf.HSF_HEARTBEAT, request_id=9).encode()
    stream = data + hb + data
    dec = hsf.HsfDecoder()
    got = feed_chunks(dec, stream, list(range(1, len(stream))))
    assert [f.encode() for f in got] == [data, hb, data] and dec.buffered == 0
