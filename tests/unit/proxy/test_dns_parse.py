"""proxy/dns.py's answer parser on what a resolver may send: a CNAME chain before the A
records (names compressed), NXDOMAIN, a failure code, an answer to another query, and
truncated or garbage bytes (a DnsError, never an exception of another kind)."""

from __future__ import annotations

import socket
import struct

import pytest

from sofamesh.proxy.dns import DnsError, parse, query


def _answer(qid: int, rcode: int = 0, records: list[bytes] | None = None) -> bytes:
    q = query("api.example.test", qid)[12:]
    records = records or []
    head = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, len(records), 0, 0)
    return head + q + b"".join(records)


def _cname(target: bytes) -> bytes:
    return struct.pack(">HHHIH", 0xC00C, 5, 1, 300, len(target)) + target


def _a(ip: str, ttl: int, name: bytes = struct.pack(">H", 0xC00C)) -> bytes:
    return name + struct.pack(">HHIH", 1, 1, ttl, 4) + socket.inet_aton(ip)


def test_a_records_after_a_cname():
    target = b"\x04real\x07example\x04test\x00"
    cname = _cname(target)
    offset = 12 + len(query("api.example.test", 1)[12:]) + 12  # the CNAME's rdata
    pointer = struct.pack(">H", 0xC000 | offset)
    got = parse(
        _answer(7, records=[cname, _a("10.0.0.1", 30, pointer), _a("10.0.0.2", 5, pointer)]), 7
    )
    assert got == [("10.0.0.1", 30), ("10.0.0.2", 5)]


def test_nxdomain_is_no_address():
    assert parse(_answer(3, rcode=3), 3) == []


@pytest.mark.parametrize(
    ("data", "qid", "why"),
    [
        (_answer(9, rcode=2), 9, "rcode 2"),  # SERVFAIL
        (_answer(9, records=[_a("10.0.0.1", 1)]), 8, "not the answer"),
        (_answer(9, records=[_a("10.0.0.1", 1)])[:-3], 9, "malformed"),
        (b"\x00\x09\x81", 9, "malformed"),
        (query("api.example.test", 9), 9, "not the answer"),  # a query, not an answer
    ],
)
def test_bad_answers_are_dns_errors(data, qid, why):
    with pytest.raises(DnsError, match=why):
        parse(data, qid)


def test_query_shape():
    q = query("api.example.test.", 0x1234)
    assert q[:12] == struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    assert q[12:] == b"\x03api\x07example\x04test\x00" + struct.pack(">HH", 1, 1)
