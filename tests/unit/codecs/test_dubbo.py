"""Dubbo2 codec: golden vectors to the last byte, invocation fields, attachments after
complex arguments, events/heartbeats, response flags and statuses, errors as values."""

from __future__ import annotations

import random

import pytest

from sofamesh._core.codecs import dubbo
from sofamesh._core.codecs.hessian import h2_encode_map, h2_encode_simple
from sofamesh._core.codecs.rpcframe import ProtocolError

from .conftest import feed_chunks, golden, random_cuts

GOLDEN = ["dubbo_benchmarkData.bin", "dubbo_complexData.bin"]


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_decodes_to_last_byte_and_reencodes(name):
    data = golden(name)
    dec = dubbo.DubboDecoder()
    (f,) = dec.feed(data)
    assert dec.buffered == 0 and f.encode() == data
    assert f.parse_invocation() == 0, f.body_error
    # the hessian reader accounted for every byte of the body
    assert f.body_end == len(f.body)
    # the body rebuilt from the decoded fields, the argument bytes and the attachments
    again = dubbo.encode_request(
        f.request_id,
        f.dubbo_version,
        f.service,
        f.version,
        f.method,
        f.param_types,
        bytes(f.body[f.args_start : f.args_end]),
        f.attachments,
    )
    assert again == data


def test_benchmark_vector_fields():
    (f,) = dubbo.DubboDecoder().feed(golden("dubbo_benchmarkData.bin"))
    assert f.is_request and f.two_way and not f.is_event and f.serialization == 2
    assert f.request_id == 76
    f.parse_invocation()
    assert (f.dubbo_version, f.service, f.version, f.method) == (
        "2.6.2",
        "com.raycloud.notify.api.service.NotifyJobRequest",
        "2.0.1-vpc-test",
        "stopNotifyJob",
    )
    assert len(f.attachments) == 8
    assert f.attachments["timeout"] == "5000"
    assert f.attachments["a.s.u"] == "/auth/test"


def test_complex_vector_reaches_attachments_after_class_definitions():
    (f,) = dubbo.DubboDecoder().feed(golden("dubbo_complexData.bin"))
    f.parse_invocation()
    assert f.method == "unitTestByUnit"
    assert dubbo.param_count(f.param_types) == 4
    assert len(f.attachments) == 18
    assert f.attachments["timeout"] == "3000"
    assert f.attachments["remote.flag_code"] is None
    assert f.attachments["dmall_locale"] == "en"


def test_group_version_timeout_any_key_after_complex_args():
    # an object argument (class def + instance), a typed list, a nested map, a ref
    args = (
        b"C\x0bcom.a.Thing\x92\x01a\x01b"  # class def: 2 fields
        b"`\x05hello\x57\x91\x92\x93Z"  # instance: "hello", [1, 2, 3]
        b"\x72\x0a[java.lang\x91\x92"  # typed fixed list of 2
        b"H\x01kH\x01x\x91ZZ"  # {"k": {"x": 1}}
        b"Q\x90"
    )  # ref to object 0
    att = {"group": "g1", "version": "1.2", "timeout": "250", "x-user": "u"}
    data = dubbo.encode_request(
        9,
        "2.0.2",
        "com.a.Svc",
        "1.2",
        "go",
        "Lcom/a/Thing;[Ljava/lang/String;Ljava/util/Map;Ljava/lang/Object;",
        args,
        att,
    )
    (f,) = dubbo.DubboDecoder().feed(data)
    assert f.parse_invocation() == 0, f.body_error
    assert f.attachments == att and f.group == "g1"


def test_splits_whole_byte_by_byte_random():
    vectors = [golden(n) for n in GOLDEN] + [dubbo.heartbeat(5)]
    stream = b"".join(vectors * 3)
    expect = vectors * 3
    dec = dubbo.DubboDecoder()
    assert [f.encode() for f in feed_chunks(dec, stream, list(range(1, len(stream))))] == expect
    rng = random.Random(2)
    for _ in range(100):
        dec = dubbo.DubboDecoder()
        got = feed_chunks(dec, stream, random_cuts(stream, rng, rng.randrange(1, 25)))
        assert [f.encode() for f in got] == expect and dec.buffered == 0


def test_body_is_zero_copy():
    data = golden("dubbo_benchmarkData.bin")
    (f,) = dubbo.DubboDecoder().feed(data)
    assert isinstance(f.body, memoryview) and f.body.obj is data


def test_heartbeat_event_and_reply():
    (hb,) = dubbo.DubboDecoder().feed(dubbo.heartbeat(1 << 40))
    assert hb.is_event and hb.is_heartbeat and hb.request_id == 1 << 40
    (r,) = dubbo.DubboDecoder().feed(dubbo.heartbeat_response(hb))
    assert r.is_event and not r.is_request and r.status == dubbo.DUBBO_OK
    assert r.request_id == 1 << 40 and bytes(r.body) == b"N"


def test_readonly_event_is_not_a_heartbeat():
    f = dubbo.DubboFrame(3, request=True, two_way=False, event=True, body=b"\x01R")
    (g,) = dubbo.DubboDecoder().feed(f.encode())
    assert g.is_event and not g.is_heartbeat


@pytest.mark.parametrize("status", sorted(dubbo.STATUS_NAMES))
def test_every_status_round_trips(status):
    req = dubbo.DubboDecoder().feed(golden("dubbo_benchmarkData.bin"))[0]
    if status == dubbo.DUBBO_OK:
        data = dubbo.encode_response(76, h2_encode_simple("ok"), flag=1)
        (r,) = dubbo.DubboDecoder().feed(data)
        assert r.response_flag() == 1 and r.error_message() is None
    else:
        data = dubbo.error_response(req, status, f"failed: {status}")
        (r,) = dubbo.DubboDecoder().feed(data)
        assert r.error_message() == f"failed: {status}" and r.response_flag() is None
    assert (r.status, r.request_id, r.is_request) == (status, 76, False)
    assert r.encode() == data


@pytest.mark.parametrize("flag", [0, 1, 2, 3, 4, 5])
def test_response_flags(flag):
    value = b"" if flag in (2, 5) else h2_encode_simple("v")
    if flag >= 3:
        value += h2_encode_map({"k": "v"})
    (r,) = dubbo.DubboDecoder().feed(dubbo.encode_response(1, value, flag=flag))
    assert r.response_flag() == flag


def test_rewrite_request_id():
    (f,) = dubbo.DubboDecoder().feed(golden("dubbo_complexData.bin"))
    (g,) = dubbo.DubboDecoder().feed(dubbo.rewrite_request_id(f, 2**63 + 5))
    assert g.request_id == 2**63 + 5 and bytes(g.body) == bytes(f.body)


def test_bad_magic_is_fatal():
    dec = dubbo.DubboDecoder()
    out = dec.feed(b"\xda\xbc" + bytes(14))
    assert len(out) == 1 and isinstance(out[0], ProtocolError) and out[0].fatal
    assert dec.protocol_errors == 1


def test_size_limit_and_negative_length():
    hdr = bytearray(golden("dubbo_benchmarkData.bin")[:16])
    hdr[12:16] = (64 << 20).to_bytes(4, "big")
    dec = dubbo.DubboDecoder(max_frame=1 << 20)
    out = dec.feed(bytes(hdr))
    assert out[0].fatal and "limit" in out[0].reason and dec.buffered == 0
    hdr[12:16] = b"\xff\xff\xff\xf0"
    assert dubbo.DubboDecoder().feed(bytes(hdr))[0].fatal


def test_truncated_body_is_a_value_not_an_exception():
    data = bytearray(golden("dubbo_complexData.bin"))
    cut = bytes(data[: 16 + 700])
    f = dubbo.DubboFrame(10, body=cut[16:])
    assert f.parse_invocation() != 0 and f.body_error
    f2 = dubbo.DubboFrame(10, body=b"\x05\x32\x2e\x30\x2e\x32\xff\xff")
    assert f2.parse_invocation() != 0


def test_unsupported_serialization_is_reported():
    f = dubbo.DubboFrame(1, serialization=6, body=b"{}")
    assert f.parse_invocation() != 0 and "serialization" in f.body_error


@pytest.mark.parametrize("name", GOLDEN)
def test_wanted_attachments_only(name):
    (full,) = dubbo.DubboDecoder().feed(golden(name))
    full.parse_invocation()
    (f,) = dubbo.DubboDecoder().feed(golden(name))
    assert f.parse_invocation((b"timeout", b"group", b"interface", b"nope")) == 0
    want = {k: v for k, v in full.attachments.items() if k in ("timeout", "group", "interface")}
    assert f.attachments == want and "timeout" in want
    assert f.body_end == len(f.body)
