"""Bolt v1/v2 codec: golden vectors, splits, CRC, heartbeats, statuses, errors as values."""

from __future__ import annotations

import random
import zlib

import pytest

from sofamesh._core.codecs import bolt
from sofamesh._core.codecs.rpcframe import ProtocolError

from .conftest import feed_chunks, golden, local, random_cuts

GOLDEN = ["bolt_py_0.bin", "bolt_py_1.bin", "bolt_node_0.bin", "bolt_node_1.bin"]


def all_vectors() -> list[bytes]:
    return [golden(n) for n in GOLDEN] + [local("sofa_rpc_node_request_v1.bin")]


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_decodes_to_last_byte_and_reencodes(name):
    data = golden(name)
    dec = bolt.BoltDecoder()
    frames = dec.feed(data)
    assert len(frames) == 1 and isinstance(frames[0], bolt.BoltFrame)
    assert dec.buffered == 0 and dec.protocol_errors == 0
    f = frames[0]
    assert bytes(f.raw) == data
    assert f.encode() == data
    # a frame rebuilt from its parsed fields (not the raw header map) gives the same bytes
    g = bolt.BoltFrame(
        proto=f.proto,
        type=f.type,
        cmdcode=f.cmdcode,
        request_id=f.request_id,
        codec=f.codec,
        timeout=f.timeout,
        status=f.status,
        class_name=f.class_name,
        headers=f.headers(),
        content=bytes(f.content),
        ver1=f.ver1,
        ver2=f.ver2,
        switch=f.switch,
    )
    assert g.encode() == data


def test_golden_fields():
    f = bolt.BoltDecoder().feed(golden("bolt_py_1.bin"))[0]
    assert (f.proto, f.type, f.cmdcode, f.request_id, f.codec, f.timeout) == (1, 1, 1, 109, 11, 100)
    hdrs = f.headers()
    assert len(hdrs) == 16
    assert f.service() == "com.alipay.rpc.common.service.facade.pb.SampleServicePb:1.0"
    assert f.method() == "hello"
    assert f.header("sofa_head_target_app") == "bar1"
    assert f.header("rpc_trace_context.zproxyUID") == ""
    node = bolt.BoltDecoder().feed(golden("bolt_node_0.bin"))[0]
    assert (node.proto, node.ver1, node.switch, node.status) == (2, 2, 1, 0)
    assert node.crc == int.from_bytes(golden("bolt_node_0.bin")[-4:], "big")
    err = bolt.BoltDecoder().feed(golden("bolt_node_1.bin"))[0]
    assert err.status == bolt.STATUS_SERVER_EXCEPTION == 2
    assert err.class_name == bolt.SERVER_EXCEPTION_CLASS


def test_method_from_sofarequest_content_when_only_service_is_sent():
    f = bolt.BoltDecoder().feed(local("sofa_rpc_node_request_v1.bin"))[0]
    assert [k for k, _ in f.headers()] == ["service"]
    assert f.service() == "com.nodejs.test.TestService:1.0"
    assert f.method() == "plus"


def test_content_is_a_zero_copy_slice_of_the_input():
    data = golden("bolt_py_1.bin")
    f = bolt.BoltDecoder().feed(data)[0]
    assert isinstance(f.content, memoryview) and f.content.obj is data
    assert bytes(f.content) == data[-3:]


def test_many_frames_in_one_read_whole_byte_by_byte_and_random_splits():
    stream = b"".join(all_vectors() * 3)
    expect = [bytes(v) for v in all_vectors() * 3]
    whole = bolt.BoltDecoder().feed(stream)
    assert [bytes(f.raw) for f in whole] == expect
    dec = bolt.BoltDecoder()
    one = feed_chunks(dec, stream, list(range(1, len(stream))))
    assert [f.encode() for f in one] == expect and dec.buffered == 0
    rng = random.Random(4)
    for _ in range(100):
        dec = bolt.BoltDecoder()
        got = feed_chunks(dec, stream, random_cuts(stream, rng, rng.randrange(1, 30)))
        assert [f.encode() for f in got] == expect
        assert dec.buffered == 0 and dec.protocol_errors == 0


def test_a_large_frame_split_in_many_reads():
    content = bytes(range(256)) * 4096  # 1 MiB
    data = bolt.BoltFrame(
        request_id=7,
        class_name=bolt.SOFA_REQUEST_CLASS,
        headers={"service": "a.B:1.0"},
        content=content,
    ).encode()
    dec = bolt.BoltDecoder()
    frames = feed_chunks(dec, data, list(range(1000, len(data), 1000)))
    assert len(frames) == 1 and bytes(frames[0].content) == content


@pytest.mark.parametrize("status", sorted(bolt.STATUS_NAMES))
@pytest.mark.parametrize("proto,ver1,switch", [(1, 1, 0), (2, 1, 0), (2, 2, 1), (2, 2, 0)])
def test_every_response_status_round_trips(status, proto, ver1, switch):
    f = bolt.BoltFrame(
        proto=proto,
        ver1=ver1,
        switch=switch,
        type=0,
        cmdcode=2,
        request_id=99,
        status=status,
        class_name=bolt.SOFA_RESPONSE_CLASS,
        content=b"\x91",
    )
    data = f.encode()
    assert len(data) == (20 if proto == 1 else 22) + len(bolt.SOFA_RESPONSE_CLASS) + 1 + (
        4 if (ver1 == 2 and switch & 1) else 0
    )
    g = bolt.BoltDecoder().feed(data)[0]
    assert (g.status, g.request_id, g.proto, g.type, g.is_request) == (status, 99, proto, 0, False)
    assert g.encode() == data


def test_v2_crc_written_on_encode_and_checked_on_decode():
    f = bolt.BoltFrame(
        proto=2,
        ver1=2,
        switch=1,
        request_id=5,
        class_name=bolt.SOFA_REQUEST_CLASS,
        headers=[("service", "x:1.0")],
        content=b"abc",
    )
    data = f.encode()
    assert int.from_bytes(data[-4:], "big") == zlib.crc32(data[:-4])
    assert isinstance(bolt.BoltDecoder().feed(data)[0], bolt.BoltFrame)
    bad = bytearray(data)
    bad[-5] ^= 0xFF  # flip a content byte
    dec = bolt.BoltDecoder()
    out = dec.feed(bytes(bad) + data)
    assert isinstance(out[0], ProtocolError) and not out[0].fatal
    assert out[0].request_id == 5 and "CRC" in out[0].reason
    assert isinstance(out[1], bolt.BoltFrame)  # framing intact: the next frame decodes
    assert dec.protocol_errors == 1


def test_rewrite_request_id_keeps_crc_valid():
    f = bolt.BoltDecoder().feed(golden("bolt_node_0.bin"))[0]
    out = bolt.rewrite_request_id(f, 0xDEADBEEF)
    g = bolt.BoltDecoder().feed(out)[0]
    assert isinstance(g, bolt.BoltFrame) and g.request_id == 0xDEADBEEF
    assert bytes(g.content) == bytes(f.content)
    v1 = bolt.BoltDecoder().feed(golden("bolt_py_1.bin"))[0]
    assert bolt.BoltDecoder().feed(bolt.rewrite_request_id(v1, 3))[0].request_id == 3


@pytest.mark.parametrize("proto", [1, 2])
def test_heartbeat_and_ack(proto):
    hb = bolt.BoltDecoder().feed(bolt.heartbeat(77, proto=proto))[0]
    assert hb.is_heartbeat and hb.is_request and hb.request_id == 77
    ack = bolt.BoltDecoder().feed(bolt.heartbeat_ack(hb))[0]
    assert (ack.cmdcode, ack.type, ack.status, ack.request_id, ack.proto) == (0, 0, 0, 77, proto)
    assert not ack.is_request


def test_error_response_carries_request_id_status_and_version():
    req = bolt.BoltDecoder().feed(golden("bolt_py_1.bin"))[0]
    r = bolt.BoltDecoder().feed(bolt.error_response(req, bolt.STATUS_NO_PROCESSOR))[0]
    assert (r.request_id, r.status, r.type, r.cmdcode, r.codec) == (109, 6, 0, 2, 11)


def test_null_header_values_round_trip():
    f = bolt.BoltFrame(headers=[("a", None), ("b", ""), ("c", "ü")], class_name=b"X")
    g = bolt.BoltDecoder().feed(f.encode())[0]
    assert g.headers() == [("a", None), ("b", ""), ("c", "ü")]


def test_malformed_header_map_is_a_value_and_the_stream_goes_on():
    good = golden("bolt_py_1.bin")
    bad = bytearray(good)
    bad[0x42:0x46] = (0x7FFFFFF0).to_bytes(4, "big")  # a key length past the header map
    dec = bolt.BoltDecoder()
    out = dec.feed(bytes(bad) + good)
    assert isinstance(out[0], ProtocolError) and out[0].request_id == 109 and not out[0].fatal
    assert isinstance(out[1], bolt.BoltFrame) and out[1].service()
    assert dec.protocol_errors == 1


def test_bad_protocol_byte_is_fatal_and_counted():
    dec = bolt.BoltDecoder()
    out = dec.feed(golden("bolt_py_0.bin") + b"\x09garbage")
    assert isinstance(out[0], bolt.BoltFrame)
    assert isinstance(out[1], ProtocolError) and out[1].fatal
    assert dec.failed and dec.protocol_errors == 1
    assert dec.feed(golden("bolt_py_0.bin")) == []


def test_size_limit_checked_from_the_header_before_buffering():
    hdr = bytearray(golden("bolt_py_1.bin")[:22])
    hdr[18:22] = (1 << 30).to_bytes(4, "big")  # claims a 1 GiB content
    dec = bolt.BoltDecoder(max_frame=1 << 20)
    out = dec.feed(bytes(hdr))
    assert len(out) == 1 and out[0].fatal and "limit" in out[0].reason
    assert dec.buffered == 0


def test_unknown_cmdcode_is_a_counted_error_with_the_request_id():
    f = bolt.BoltFrame(cmdcode=9, request_id=12, class_name=b"X").encode()
    out = bolt.BoltDecoder().feed(f)
    assert isinstance(out[0], ProtocolError) and out[0].request_id == 12


def test_single_header_lookup_agrees_with_the_full_map():
    data = golden("bolt_py_1.bin")
    full = bolt.BoltDecoder().feed(data)[0].headers()
    for k, v in full:
        # a fresh frame: the lookup reads the wire bytes, not the decoded list
        assert bolt.BoltDecoder().feed(data)[0].header(k) == v
    assert bolt.BoltDecoder().feed(data)[0].header("absent") is None


def test_bad_utf8_in_a_header_is_replaced_not_fatal():
    f = bolt.BoltFrame(headers=[("service", "a.B:1.0"), ("k", "v")], class_name=b"X").encode()
    bad = f.replace(b"\x00\x00\x00\x01v", b"\x00\x00\x00\x01\xff")
    g = bolt.BoltDecoder().feed(bad)[0]
    assert g.service() == "a.B:1.0" and g.header("k") == "\ufffd"
