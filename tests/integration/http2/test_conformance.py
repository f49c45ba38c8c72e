"""HTTP/2 conformance of the h2c listener, Envoy 1.40 and `sofamesh proxy` on one bootstrap.

An independent suite in the shape of h2spec's section list (RFC 9113 and RFC 7541), written
from the RFCs: each case opens its own connection, sends raw frames (tests/support/h2raw:
frame header by hand, header blocks from the `hpack` package) and checks the outcome the
RFC mandates: a connection error (GOAWAY with its code), a stream error (RST_STREAM with
its code), a normal response, or the frame ignored (a PING sent after it is answered).

Where the RFC allows several outcomes the expectation names the one Envoy picks, so
sofamesh must answer as Envoy does; where Envoy departs from the RFC, the case says so
(`note`) and expects Envoy's answer. After a stream error the same connection must still
serve a request.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.h2raw import (
    ACK,
    CANCEL,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    S_ENABLE_PUSH,
    S_HEADER_TABLE_SIZE,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_FRAME_SIZE,
    SETTINGS,
    WINDOW_UPDATE,
    H2Client,
    Outcome,
    continuation,
    data,
    frame,
    goaway,
    headers,
    ping,
    priority,
    req,
    rst_stream,
    settings,
    window_update,
)

from .harness import KINDS, alive, started

MAX_STREAMS = 5  # the listener's http2_protocol_options.max_concurrent_streams

HCM = {"http2_protocol_options": {"max_concurrent_streams": MAX_STREAMS}}


@pytest.fixture(scope="module", params=KINDS)
def proxy(request: Any, tmp_path_factory: Any):
    yield from started(request.param, tmp_path_factory, hcm=HCM)


Case = Callable[[H2Client], Outcome]
CASES: dict[str, tuple[Case, set[str], str]] = {}


def case(name: str, *expect: str, note: str = "") -> Callable[[Case], Case]:
    """Registers a case: `expect` lists the accepted outcomes ("goaway:CODE", "rst:CODE",
    "response:STATUS", "ping" = ignored, "closed")."""

    def deco(fn: Case) -> Case:
        assert name not in CASES
        CASES[name] = (fn, set(expect), note)
        return fn

    return deco


def label(o: Outcome) -> str:
    if o.kind == "goaway":
        return f"goaway:{o.goaway}"
    if o.kind == "rst":
        return f"rst:{o.rst}"
    if o.kind == "response":
        return f"response:{o.status}"
    return o.kind


def lit(name: bytes, value: bytes) -> bytes:
    """A literal field without indexing, new name, no Huffman (RFC 7541 6.2.2): raw bytes
    whatever they are (so invalid names and values reach the server as written)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def raw_req(*fields: tuple[bytes, bytes]) -> bytes:
    return b"".join(lit(k, v) for k, v in fields)


GET = ((b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a.test"))
SLOW = req(x_upstream_action="delay=400")  # the upstream answers after 400 ms


def hs(c: H2Client, *pairs: tuple[int, int]) -> H2Client:
    return c.handshake(*pairs)


# -- 3.4 (RFC 9113) / 3.5 (RFC 7540): connection preface --------------------------------


@case("3.4/1 valid preface: the server sends SETTINGS first", "ping")
def _(c):
    c.send(PREFACE, settings())
    f = c.read_frame()
    assert f is not None and f.type == SETTINGS and not f.flags & ACK, c.seen
    return c.outcome(ping_mark=True)


@case(
    "3.4/2 invalid preface: the connection is closed",
    "goaway:1",
    "closed",
    note="with codec_type AUTO a connection that does not open with the preface is HTTP/1's, "
    "which closes it on this request line (no GOAWAY: not HTTP/2)",
)
def _(c):
    c.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", settings())
    return c.outcome()


@case("3.4/3 preface not followed by SETTINGS: PROTOCOL_ERROR", "conn:1")
def _(c):
    c.send(PREFACE, ping())
    return c.outcome()


# -- 4.1 frame format ----------------------------------------------------------------------


@case("4.1/1 frame of unknown type is ignored", "ping")
def _(c):
    hs(c).send(frame(0x20, 0, 0, b"xyz"), frame(0xFF, 0xFF, 1, b"abc"))
    return c.outcome(ping_mark=True)


@case("4.1/2 undefined flags are ignored", "response:200")
def _(c):
    hs(c).send(headers(1, c.block(req()), END_STREAM | END_HEADERS | 0x10 | 0x40 | 0x80))
    return c.outcome(1)


@case("4.1/3 reserved bit of the stream id is ignored", "response:200")
def _(c):
    blk = c.block(req())
    f = bytearray(headers(1, blk))
    f[5] |= 0x80
    hs(c).send(bytes(f))
    return c.outcome(1)


@case("4.1/4 PING with undefined flags still answered", "ping")
def _(c):
    hs(c).send(frame(PING, 0xFE, 0, b"12345678"))
    return c.outcome(ping_mark=True)


# -- 4.2 frame size --------------------------------------------------------------------


@case("4.2/1 DATA of 2^14 octets is accepted", "response:200")
def _(c):
    hs(c).send(headers(1, c.block(req("POST")), END_HEADERS), data(1, b"x" * 16384, END_STREAM))
    return c.outcome(1)


@case(
    "4.2/2 DATA over SETTINGS_MAX_FRAME_SIZE: FRAME_SIZE_ERROR",
    "conn:6",
    note="a frame over the limit is a connection error whatever its type",
)
def _(c):
    hs(c).send(headers(1, c.block(req("POST")), END_HEADERS), data(1, b"x" * 16385, END_STREAM))
    return c.outcome(1)


@case("4.2/3 HEADERS over SETTINGS_MAX_FRAME_SIZE: connection FRAME_SIZE_ERROR", "conn:6")
def _(c):
    blk = c.block(req()) + lit(b"x-pad", b"p" * 100) * 170
    assert len(blk) > 16384
    hs(c).send(headers(1, blk))
    return c.outcome(1)


@case("4.2/4 SETTINGS frame too large: FRAME_SIZE_ERROR", "conn:6")
def _(c):
    hs(c).send(frame(SETTINGS, 0, 0, b"\0\x09\0\0\0\0" * 3000))
    return c.outcome()


@case("4.2/5 a PING whose length field says 20: FRAME_SIZE_ERROR without waiting", "conn:6")
def _(c):
    hs(c).send(frame(PING, 0, 0, b"12345678", length=20))
    return c.outcome()


# -- 4.3 header compression -------------------------------------------------------------


@case("4.3/1 invalid header block: COMPRESSION_ERROR", "conn:9")
def _(c):
    hs(c).send(headers(1, b"\x80"))  # indexed field with index 0
    return c.outcome(1)


@case("4.3/2 PRIORITY in the middle of a header block: PROTOCOL_ERROR", "conn:1")
def _(c):
    blk = c.block(req())
    hs(c).send(headers(1, blk[:3], END_STREAM), priority(1, 0), continuation(1, blk[3:]))
    return c.outcome(1)


@case("4.3/3 HEADERS on another stream in the middle of a block: PROTOCOL_ERROR", "conn:1")
def _(c):
    blk = c.block(req())
    hs(c).send(headers(1, blk[:3], END_STREAM), headers(3, blk))
    return c.outcome(1)


@case("4.3/4 header blocks decoded in order keep the dynamic table in step", "response:200")
def _(c):
    hs(c)
    for sid in (1, 3, 5):
        c.send(headers(sid, c.block(req(x_same="same-value-indexed"))))
        o = c.outcome(sid)
        assert label(o) == "response:200", o.frames
    return o


# -- 5.1 stream states --------------------------------------------------------------------


@case("5.1/1 idle: DATA: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(data(1, b"x", END_STREAM))
    return c.outcome(1)


@case("5.1/2 idle: RST_STREAM: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(rst_stream(1))
    return c.outcome(1)


@case("5.1/3 idle: WINDOW_UPDATE: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(window_update(1, 100))
    return c.outcome(1)


@case("5.1/4 idle: CONTINUATION: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(continuation(1, c.block(req())))
    return c.outcome(1)


@case(
    "5.1/5 half-closed (remote): DATA: STREAM_CLOSED",
    "conn:5",
    note="the RFC asks for a stream error STREAM_CLOSED; Envoy 1.40 ends the connection with STREAM_CLOSED",
)
def _(c):
    hs(c).send(headers(1, c.block(SLOW)), data(1, b"x", END_STREAM))
    return c.outcome(1)


@case(
    "5.1/6 half-closed (remote): HEADERS: STREAM_CLOSED",
    "conn:5",
    note="the RFC asks for a stream error STREAM_CLOSED; Envoy 1.40 ends the connection",
)
def _(c):
    hs(c).send(headers(1, c.block(SLOW)), headers(1, c.block([("x-t", "1")])))
    return c.outcome(1)


@case("5.1/7 half-closed (remote): CONTINUATION: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(headers(1, c.block(SLOW)), continuation(1, c.block([("x-t", "1")])))
    return c.outcome(1)


@case("5.1/8 half-closed (remote): WINDOW_UPDATE and PRIORITY are allowed", "response:200")
def _(c):
    hs(c).send(headers(1, c.block(SLOW)), window_update(1, 1000), priority(1, 0, 100))
    return c.outcome(1)


@case(
    "5.1/9 closed after RST_STREAM: DATA: STREAM_CLOSED",
    "ping",
    note="RFC 9113 5.1/6.1: STREAM_CLOSED; Envoy 1.40 ignores frames on closed streams",
)
def _(c):
    hs(c).send(headers(1, c.block(req("POST")), END_HEADERS), rst_stream(1))
    time.sleep(0.1)
    c.send(data(1, b"x", END_STREAM))
    return c.outcome(1, ping_mark=True)


@case(
    "5.1/10 closed after RST_STREAM: HEADERS: STREAM_CLOSED",
    "ping",
    note="RFC 9113 5.1: STREAM_CLOSED; Envoy 1.40 ignores frames on closed streams",
)
def _(c):
    hs(c).send(headers(1, c.block(req("POST")), END_HEADERS), rst_stream(1))
    time.sleep(0.1)
    c.send(headers(1, c.block([("x-t", "1")])))
    return c.outcome(1, ping_mark=True)


@case(
    "5.1/11 closed after END_STREAM both ways: DATA: STREAM_CLOSED",
    "ping",
    note="RFC 9113 5.1/6.1: STREAM_CLOSED; Envoy 1.40 ignores frames on closed streams",
)
def _(c):
    hs(c).request(1)
    assert label(c.outcome(1)) == "response:200"
    c.send(data(1, b"x", END_STREAM))
    return c.outcome(1, ping_mark=True)


@case(
    "5.1/12 closed after END_STREAM both ways: HEADERS: STREAM_CLOSED",
    "ping",
    note="RFC 9113 5.1: STREAM_CLOSED; Envoy 1.40 ignores frames on closed streams",
)
def _(c):
    hs(c).request(1)
    assert label(c.outcome(1)) == "response:200"
    c.send(headers(1, c.block([("x-t", "1")])))
    return c.outcome(1, ping_mark=True)


@case("5.1/13 closed: PRIORITY is allowed", "ping")
def _(c):
    hs(c).request(1)
    assert label(c.outcome(1)) == "response:200"
    c.send(priority(1, 0, 20))
    return c.outcome(ping_mark=True)


@case("5.1/14 closed: WINDOW_UPDATE just after close is allowed", "ping")
def _(c):
    hs(c).request(1)
    assert label(c.outcome(1)) == "response:200"
    c.send(window_update(1, 10))
    return c.outcome(ping_mark=True)


@case("5.1/15 closed: RST_STREAM is allowed", "ping")
def _(c):
    hs(c).request(1)
    assert label(c.outcome(1)) == "response:200"
    c.send(rst_stream(1))
    return c.outcome(ping_mark=True)


# -- 5.1.1 stream identifiers ------------------------------------------------------------


@case("5.1.1/1 even stream id from a client: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(headers(2, c.block(req())))
    return c.outcome(2)


@case(
    "5.1.1/2 stream id lower than a previous one: PROTOCOL_ERROR",
    "ping",
    note="RFC 9113 5.1.1: connection error PROTOCOL_ERROR; Envoy 1.40 ignores the HEADERS",
)
def _(c):
    hs(c).send(headers(5, c.block(SLOW)), headers(3, c.block(req())))
    return c.outcome(3, ping_mark=True)


@case(
    "5.1.1/3 skipped stream ids are closed implicitly: a lower id is refused",
    "ping",
    note="RFC 9113 5.1.1: connection error PROTOCOL_ERROR; Envoy 1.40 ignores the HEADERS",
)
def _(c):
    hs(c).request(7)
    assert label(c.outcome(7)) == "response:200"
    c.send(headers(1, c.block(req())))
    return c.outcome(1, ping_mark=True)


@case("5.1.1/4 stream ids may skip numbers", "response:200")
def _(c):
    hs(c).request(101)
    return c.outcome(101)


# -- 5.1.2 stream concurrency ------------------------------------------------------------


@case(
    "5.1.2/1 over SETTINGS_MAX_CONCURRENT_STREAMS: REFUSED_STREAM",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR or REFUSED_STREAM; Envoy 1.40 ends the connection once its SETTINGS are acknowledged",
)
def _(c):
    hs(c)
    assert c.server_settings.get(3) == MAX_STREAMS, c.server_settings
    for i in range(MAX_STREAMS):
        c.send(headers(1 + 2 * i, c.block(req("POST")), END_HEADERS))
    sid = 1 + 2 * MAX_STREAMS
    c.send(headers(sid, c.block(req())))
    o = c.outcome(sid)
    c.send(*[rst_stream(1 + 2 * i) for i in range(MAX_STREAMS)])
    return o


# -- 5.3 priority (RFC 7540 priorities; RFC 9113 5.3.1 keeps the self-dependency rule) ----


@case(
    "5.3.1/1 HEADERS depending on itself: stream PROTOCOL_ERROR",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 ends the connection",
)
def _(c):
    hs(c).send(headers(1, c.block(req()), dep=1))
    return c.outcome(1)


@case(
    "5.3.1/2 PRIORITY depending on itself: stream PROTOCOL_ERROR",
    "ping",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 ignores PRIORITY",
)
def _(c):
    hs(c).send(priority(3, 3))
    return c.outcome(3, ping_mark=True)


@case("5.3/3 PRIORITY for an idle stream is allowed", "ping")
def _(c):
    hs(c).send(priority(9, 0, 200))
    return c.outcome(ping_mark=True)


# -- 5.4 error handling -------------------------------------------------------------------


@case("5.4.1/1 invalid PING (stream id): GOAWAY then the connection closes", "conn:1")
def _(c):
    hs(c).send(ping(sid=1))
    o = c.outcome()
    assert o.closed, o.frames
    return o


@case("5.4.1/2 GOAWAY last-stream-id names the last stream processed", "conn:1")
def _(c):
    hs(c).request(3)
    assert label(c.outcome(3)) == "response:200"
    c.send(ping(sid=5))
    o = c.outcome()
    for g in [f for f in o.frames if f.type == GOAWAY]:  # Envoy 1.40 closes without one
        assert g.last_stream_id == 3, o.frames
    return o


# -- 5.5 extensions -------------------------------------------------------------------------


@case("5.5/1 unknown extension frame is ignored", "ping")
def _(c):
    hs(c).send(frame(0x16, 0, 0, b"\0" * 16))
    return c.outcome(ping_mark=True)


@case("5.5/2 unknown frame inside a header block: PROTOCOL_ERROR", "conn:1")
def _(c):
    blk = c.block(req())
    hs(c).send(headers(1, blk[:3], END_STREAM), frame(0x16, 0, 0, b"x"), continuation(1, blk[3:]))
    return c.outcome(1)


# -- 6.1 DATA -----------------------------------------------------------------------------


@case("6.1/1 DATA on stream 0: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(data(0, b"x"))
    return c.outcome()


@case("6.1/2 DATA with padding is accepted, padding not forwarded", "response:200")
def _(c):
    hs(c).send(headers(1, c.block(req("POST")), END_HEADERS), data(1, b"abc", END_STREAM, pad=10))
    return c.outcome(1)


@case("6.1/3 DATA with pad length >= frame length: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(
        headers(1, c.block(req("POST")), END_HEADERS),
        frame(0, END_STREAM | PADDED, 1, bytes([10]) + b"abc"),
    )
    return c.outcome(1)


@case("6.1/4 empty DATA with END_STREAM ends the request", "response:200")
def _(c):
    hs(c).send(headers(1, c.block(req("POST")), END_HEADERS), data(1, b"", END_STREAM))
    return c.outcome(1)


# -- 6.2 HEADERS --------------------------------------------------------------------------


@case("6.2/1 HEADERS with padding and priority is accepted", "response:200")
def _(c):
    hs(c).send(headers(1, c.block(req()), pad=20, dep=0, weight=200))
    return c.outcome(1)


@case("6.2/2 HEADERS without END_HEADERS then PRIORITY: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(headers(1, c.block(req()), END_STREAM), priority(1, 0))
    return c.outcome(1)


@case("6.2/3 HEADERS on stream 0: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(headers(0, c.block(req())))
    return c.outcome()


@case("6.2/4 HEADERS with pad length too large: PROTOCOL_ERROR", "conn:1")
def _(c):
    blk = c.block(req())
    hs(c).send(frame(HEADERS, END_STREAM | END_HEADERS | PADDED, 1, bytes([len(blk) + 5]) + blk))
    return c.outcome(1)


@case("6.2/5 HEADERS with the PRIORITY flag but no room for it: FRAME_SIZE_ERROR", "conn:6")
def _(c):
    hs(c).send(frame(HEADERS, END_STREAM | END_HEADERS | PRIORITY_FLAG, 1, b"\0\0"))
    return c.outcome(1)


# -- 6.3 PRIORITY -------------------------------------------------------------------------


@case(
    "6.3/1 PRIORITY on stream 0: PROTOCOL_ERROR",
    "ping",
    note="RFC: connection error PROTOCOL_ERROR; Envoy 1.40 ignores PRIORITY",
)
def _(c):
    hs(c).send(priority(0, 1))
    return c.outcome(ping_mark=True)


@case(
    "6.3/2 PRIORITY of length 4: stream FRAME_SIZE_ERROR",
    "conn:6",
    note="RFC: stream error FRAME_SIZE_ERROR; Envoy 1.40 ends the connection",
)
def _(c):
    hs(c).send(frame(2, 0, 1, b"\0\0\0\0"))
    return c.outcome(1)


# -- 6.4 RST_STREAM -----------------------------------------------------------------------


@case("6.4/1 RST_STREAM on stream 0: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(rst_stream(0))
    return c.outcome()


@case("6.4/2 RST_STREAM on an idle stream: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(rst_stream(9))
    return c.outcome()


@case("6.4/3 RST_STREAM of length 3: FRAME_SIZE_ERROR", "conn:6")
def _(c):
    hs(c).send(headers(1, c.block(req("POST")), END_HEADERS), frame(RST_STREAM, 0, 1, b"\0\0\0"))
    return c.outcome(1)


@case("6.4/4 RST_STREAM cancels the stream: nothing more is sent on it", "ping")
def _(c):
    hs(c).send(headers(1, c.block(SLOW)), rst_stream(1, CANCEL))
    time.sleep(0.6)
    o = c.outcome(ping_mark=True)
    assert not [f for f in o.frames if f.sid == 1], o.frames
    return o


# -- 6.5 SETTINGS -------------------------------------------------------------------------


@case("6.5/1 SETTINGS ACK with a payload: FRAME_SIZE_ERROR", "conn:6")
def _(c):
    hs(c).send(frame(SETTINGS, ACK, 0, b"\0\1\0\0\0\0"))
    return c.outcome()


@case("6.5/2 SETTINGS on a stream: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(settings((S_HEADER_TABLE_SIZE, 4096), sid=1))
    return c.outcome()


@case("6.5/3 SETTINGS length not a multiple of 6: FRAME_SIZE_ERROR", "conn:6")
def _(c):
    hs(c).send(frame(SETTINGS, 0, 0, b"\0\1\0\0\x10\0\0"))
    return c.outcome()


@case("6.5/4 SETTINGS is acknowledged", "ping")
def _(c):
    hs(c).send(settings((S_HEADER_TABLE_SIZE, 2048)))
    o = c.outcome(ping_mark=True)
    assert [f for f in o.frames if f.type == SETTINGS and f.flags & ACK and not f.payload], o.frames
    return o


@case("6.5.2/1 SETTINGS_ENABLE_PUSH of 2: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(settings((S_ENABLE_PUSH, 2)))
    return c.outcome()


@case("6.5.2/2 SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1: FLOW_CONTROL_ERROR", "conn:3")
def _(c):
    hs(c).send(settings((S_INITIAL_WINDOW_SIZE, 1 << 31)))
    return c.outcome()


@case("6.5.2/3 SETTINGS_MAX_FRAME_SIZE below 2^14: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(settings((S_MAX_FRAME_SIZE, 16383)))
    return c.outcome()


@case("6.5.2/4 SETTINGS_MAX_FRAME_SIZE over 2^24-1: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(settings((S_MAX_FRAME_SIZE, 1 << 24)))
    return c.outcome()


@case("6.5.2/5 unknown SETTINGS identifier is ignored", "ping")
def _(c):
    hs(c).send(settings((0xF0F0, 7), (0x10, 1)))
    return c.outcome(ping_mark=True)


@case("6.5.2/6 SETTINGS_ENABLE_PUSH 0 and 1 are both valid from a client", "ping")
def _(c):
    hs(c, (S_ENABLE_PUSH, 1)).send(settings((S_ENABLE_PUSH, 0)))
    return c.outcome(ping_mark=True)


@case("6.5.3/1 the last value of a repeated setting applies", "response:200")
def _(c):
    hs(c, (S_INITIAL_WINDOW_SIZE, 100), (S_INITIAL_WINDOW_SIZE, 1))
    c.request(1)
    f = c.read_frame()
    while f is not None and not (f.type == 0 and f.sid == 1):
        f = c.read_frame()
    assert f is not None and len(f.payload) == 1, c.seen
    c.send(settings((S_INITIAL_WINDOW_SIZE, 65535)))
    return c.outcome(1)


# -- 6.6 PUSH_PROMISE -----------------------------------------------------------------------


@case("6.6/1 PUSH_PROMISE from a client: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(
        headers(1, c.block(SLOW)), frame(PUSH_PROMISE, END_HEADERS, 1, b"\0\0\0\2" + c.block(req()))
    )
    return c.outcome(1)


# -- 6.7 PING -------------------------------------------------------------------------------


@case("6.7/1 PING is answered with an ACK carrying the same payload", "ping")
def _(c):
    hs(c).send(ping(b"\x01\x02\x03\x04\x05\x06\x07\x08"))
    o = c.outcome(ping_mark=True)
    assert [
        f
        for f in o.frames
        if f.type == PING and f.flags & ACK and f.payload == b"\x01\x02\x03\x04\x05\x06\x07\x08"
    ]
    return o


@case("6.7/2 PING with ACK is not answered", "ping")
def _(c):
    hs(c).send(ping(b"ackedack", ack=True))
    o = c.outcome(ping_mark=True)
    assert not [f for f in o.frames if f.type == PING and f.payload == b"ackedack"], o.frames
    return o


@case("6.7/3 PING on a stream: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(ping(sid=1))
    return c.outcome()


@case("6.7/4 PING of length 6: FRAME_SIZE_ERROR", "conn:6")
def _(c):
    hs(c).send(frame(PING, 0, 0, b"123456"))
    return c.outcome()


# -- 6.8 GOAWAY -----------------------------------------------------------------------------


@case("6.8/1 GOAWAY on a stream: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(goaway(sid=1))
    return c.outcome()


@case("6.8/2 after the client's GOAWAY(last 0), a stream it opened completes", "response:200")
def _(c):
    hs(c).send(headers(1, c.block(SLOW)), goaway(0))
    return c.outcome(1)


@case(
    "6.8/3 the client's GOAWAY naming its own stream id 1 as last",
    "conn:1",
    note="a client's last-stream-id counts server-pushed streams; Envoy 1.40 closes the "
    "connection when it names a client stream (any open one is lost), where the RFC has no rule",
)
def _(c):
    hs(c).send(headers(1, c.block(SLOW)), goaway(1))
    return c.outcome(1)


# -- 6.9 WINDOW_UPDATE ------------------------------------------------------------------------


@case("6.9/1 WINDOW_UPDATE of 0 on the connection: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(window_update(0, 0))
    return c.outcome()


@case(
    "6.9/2 WINDOW_UPDATE of 0 on a stream: stream PROTOCOL_ERROR",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 ends the connection",
)
def _(c):
    hs(c).send(headers(1, c.block(req("POST")), END_HEADERS), window_update(1, 0))
    return c.outcome(1)


@case("6.9/3 WINDOW_UPDATE of length 3: FRAME_SIZE_ERROR", "conn:6")
def _(c):
    hs(c).send(frame(WINDOW_UPDATE, 0, 0, b"\0\0\1"))
    return c.outcome()


@case("6.9.1/1 connection window over 2^31-1: FLOW_CONTROL_ERROR", "conn:3")
def _(c):
    hs(c).send(window_update(0, 0x7FFFFFFF))
    return c.outcome()


@case(
    "6.9.1/2 stream window over 2^31-1: stream FLOW_CONTROL_ERROR",
    "conn:3",
    note="RFC: stream error FLOW_CONTROL_ERROR; Envoy 1.40 ends the connection",
)
def _(c):
    hs(c).send(headers(1, c.block(req("POST")), END_HEADERS), window_update(1, 0x7FFFFFFF))
    return c.outcome(1)


@case("6.9.2/1 SETTINGS_INITIAL_WINDOW_SIZE 0: no DATA until the window opens", "response:200")
def _(c):
    hs(c, (S_INITIAL_WINDOW_SIZE, 0)).request(1)
    t = time.monotonic() + 0.5
    while time.monotonic() < t:
        f = c.read_frame(0.1)
        assert f is None or not (f.type == 0 and f.payload), c.seen
    c.send(window_update(1, 100000))
    return c.outcome(1)


@case("6.9.2/2 SETTINGS_INITIAL_WINDOW_SIZE 1: DATA of one octet", "response:200")
def _(c):
    hs(c, (S_INITIAL_WINDOW_SIZE, 1)).request(1)
    f = c.read_frame()
    while f is not None and not (f.type == 0 and f.sid == 1):
        f = c.read_frame()
    assert f is not None and len(f.payload) == 1, c.seen
    c.send(window_update(1, 100000))
    return c.outcome(1)


@case("6.9.2/3 a new SETTINGS_INITIAL_WINDOW_SIZE changes open streams' windows", "response:200")
def _(c):
    hs(c, (S_INITIAL_WINDOW_SIZE, 0)).request(1)
    time.sleep(0.3)
    c.send(settings((S_INITIAL_WINDOW_SIZE, 3)))
    f = c.read_frame()
    while f is not None and not (f.type == 0 and f.sid == 1):
        f = c.read_frame()
    assert f is not None and len(f.payload) == 3, c.seen
    c.send(settings((S_INITIAL_WINDOW_SIZE, 65535)))
    return c.outcome(1)


@case(
    "6.9.2/4 SETTINGS_INITIAL_WINDOW_SIZE pushing a stream window over 2^31-1: FLOW_CONTROL_ERROR",
    "rst:3",
    note="RFC: connection error FLOW_CONTROL_ERROR; Envoy 1.40 resets the stream",
)
def _(c):
    hs(c, (S_INITIAL_WINDOW_SIZE, 0)).send(headers(1, c.block(req("POST")), END_HEADERS))
    c.send(window_update(1, 0x7FFFFFFF))
    time.sleep(0.05)
    c.send(settings((S_INITIAL_WINDOW_SIZE, 1)))
    return c.outcome(1)


@case(
    "6.9.2/5 a negative stream window is allowed and DATA waits until it is positive",
    "response:200",
)
def _(c):
    hs(c, (S_INITIAL_WINDOW_SIZE, 0)).request(1)
    time.sleep(0.2)
    c.send(settings((S_INITIAL_WINDOW_SIZE, 10)), settings((S_INITIAL_WINDOW_SIZE, 0)))
    time.sleep(0.2)
    c.send(settings((S_INITIAL_WINDOW_SIZE, 65535)))
    return c.outcome(1)


# -- 6.10 CONTINUATION --------------------------------------------------------------------------


@case("6.10/1 HEADERS + several CONTINUATION frames", "response:200")
def _(c):
    blk = c.block(req(x_long="v" * 300))
    hs(c).send(
        headers(1, blk[:5], END_STREAM),
        continuation(1, blk[5:50], 0),
        continuation(1, blk[50:60], 0),
        continuation(1, blk[60:]),
    )
    return c.outcome(1)


@case("6.10/2 CONTINUATION then a non-CONTINUATION frame: PROTOCOL_ERROR", "conn:1")
def _(c):
    blk = c.block(req())
    hs(c).send(headers(1, blk[:3], END_STREAM), continuation(1, blk[3:6], 0), data(1, b"x"))
    return c.outcome(1)


@case("6.10/3 CONTINUATION on stream 0: PROTOCOL_ERROR", "conn:1")
def _(c):
    blk = c.block(req())
    hs(c).send(headers(1, blk[:3], END_STREAM), continuation(0, blk[3:]))
    return c.outcome(1)


@case("6.10/4 CONTINUATION after HEADERS with END_HEADERS: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(headers(1, c.block(SLOW)), continuation(1, c.block([("x-t", "1")])))
    return c.outcome(1)


@case("6.10/5 CONTINUATION after CONTINUATION with END_HEADERS: PROTOCOL_ERROR", "conn:1")
def _(c):
    blk = c.block(SLOW)
    hs(c).send(
        headers(1, blk[:3], END_STREAM),
        continuation(1, blk[3:]),
        continuation(1, lit(b"x-a", b"1")),
    )
    return c.outcome(1)


@case("6.10/6 CONTINUATION after DATA: PROTOCOL_ERROR", "conn:1")
def _(c):
    hs(c).send(
        headers(1, c.block(req("POST")), END_HEADERS),
        data(1, b"x"),
        continuation(1, lit(b"x-a", b"1")),
    )
    return c.outcome(1)


@case("6.10/7 CONTINUATION on another stream inside a block: PROTOCOL_ERROR", "conn:1")
def _(c):
    blk = c.block(req())
    hs(c).send(headers(1, blk[:3], END_STREAM), continuation(3, blk[3:]))
    return c.outcome(1)


# -- 8.1 HTTP message framing (RFC 9113 8.1) ----------------------------------------------------


@case(
    "8.1/1 second HEADERS without END_STREAM (not trailers): malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(
        headers(1, c.block(req("POST")), END_HEADERS),
        headers(1, c.block([("x-t", "1")]), END_HEADERS),
    )
    return c.outcome(1)


@case("8.1/2 request with trailers is accepted", "response:200")
def _(c):
    hs(c).send(
        headers(1, c.block(req("POST")), END_HEADERS),
        data(1, b"body"),
        headers(1, c.block([("x-trailer", "t")])),
    )
    return c.outcome(1)


@case("8.1/3 content-length larger than the DATA: malformed", "rst:1")
def _(c):
    hs(c).send(
        headers(1, c.block(req("POST", content_length="10")), END_HEADERS),
        data(1, b"abc", END_STREAM),
    )
    return c.outcome(1)


@case("8.1/4 content-length smaller than the DATA (two frames): malformed", "rst:1")
def _(c):
    hs(c).send(
        headers(1, c.block(req("POST", content_length="4")), END_HEADERS),
        data(1, b"abc"),
        data(1, b"def", END_STREAM),
    )
    return c.outcome(1)


@case("8.1/5 content-length matching the DATA is accepted", "response:200")
def _(c):
    hs(c).send(
        headers(1, c.block(req("POST", content_length="6")), END_HEADERS),
        data(1, b"abc"),
        data(1, b"def", END_STREAM),
    )
    return c.outcome(1)


@case(
    "8.1/6 trailers containing a pseudo-header: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(
        headers(1, c.block(req("POST")), END_HEADERS),
        data(1, b"x"),
        headers(1, c.block([(":method", "GET")])),
    )
    return c.outcome(1)


@case(
    "8.1/7 trailers without END_STREAM: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(
        headers(1, c.block(req("POST")), END_HEADERS),
        data(1, b"x"),
        headers(1, c.block([("x-trailer", "t")]), END_HEADERS),
    )
    return c.outcome(1)


@case(
    "8.1/8 HEADERS with END_STREAM and content-length 5: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, c.block(req("POST", content_length="5"))))
    return c.outcome(1)


@case(
    "8.1/9 content-length that is not a number: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(
        headers(1, c.block(req("POST", content_length="abc")), END_HEADERS),
        data(1, b"abc", END_STREAM),
    )
    return c.outcome(1)


@case(
    "8.1/10 two different content-length values: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    blk = raw_req(*GET[1:], (b":method", b"POST"))
    blk = raw_req(
        (b":method", b"POST"), *GET[1:], (b"content-length", b"3"), (b"content-length", b"4")
    )
    hs(c).send(headers(1, blk, END_HEADERS), data(1, b"abc", END_STREAM))
    return c.outcome(1)


# -- 8.2 fields ------------------------------------------------------------------------------------


@case(
    "8.2/1 upper-case field name: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b"X-Upper", b"1"))))
    return c.outcome(1)


@case(
    "8.2/2 field name with a space: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b"x bad", b"1"))))
    return c.outcome(1)


@case(
    "8.2/3 field name with a colon inside: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b"x:bad", b"1"))))
    return c.outcome(1)


@case(
    "8.2/4 empty field name: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b"", b"1"))))
    return c.outcome(1)


@case(
    "8.2/5 field value with LF: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b"x-v", b"a\nb"))))
    return c.outcome(1)


@case(
    "8.2/6 field value with CR: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b"x-v", b"a\rb"))))
    return c.outcome(1)


@case(
    "8.2/7 field value with NUL: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b"x-v", b"a\0b"))))
    return c.outcome(1)


@case(
    "8.2/8 field value with leading/trailing whitespace: accepted",
    "response:200",
    note="RFC 9113 8.2.1 calls the message malformed; Envoy 1.40 serves it",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b"x-v", b" padded "))))
    return c.outcome(1)


@case(
    "8.2.2/1 connection-specific field 'connection': malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b"connection", b"keep-alive"))))
    return c.outcome(1)


@case(
    "8.2.2/2 'te' other than trailers: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b"te", b"gzip"))))
    return c.outcome(1)


@case("8.2.2/3 'te: trailers' is allowed", "response:200")
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b"te", b"trailers"))))
    return c.outcome(1)


@case(
    "8.2.2/4 'transfer-encoding': malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b"transfer-encoding", b"chunked"))))
    return c.outcome(1)


@case(
    "8.2.2/5 'upgrade': malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b"upgrade", b"websocket"))))
    return c.outcome(1)


@case(
    "8.2.2/6 'keep-alive': malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b"keep-alive", b"timeout=5"))))
    return c.outcome(1)


@case(
    "8.2.2/7 'proxy-connection': malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b"proxy-connection", b"keep-alive"))))
    return c.outcome(1)


# -- 8.3 pseudo-header fields ----------------------------------------------------------------


@case(
    "8.3/1 unknown pseudo-header: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b":foo", b"bar"))))
    return c.outcome(1)


@case(
    "8.3/2 response pseudo-header in a request: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET, (b":status", b"200"))))
    return c.outcome(1)


@case(
    "8.3/3 pseudo-header after a regular field: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET[:3], (b"x-a", b"1"), GET[3])))
    return c.outcome(1)


@case(
    "8.3.1/1 empty :path: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(GET[0], GET[1], (b":path", b""), GET[3])))
    return c.outcome(1)


@case(
    "8.3.1/2 no :method: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(*GET[1:])))
    return c.outcome(1)


@case(
    "8.3.1/3 no :scheme: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(GET[0], GET[2], GET[3])))
    return c.outcome(1)


@case(
    "8.3.1/4 no :path: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(GET[0], GET[1], GET[3])))
    return c.outcome(1)


@case(
    "8.3.1/5 duplicated :method: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(GET[0], *GET)))
    return c.outcome(1)


@case(
    "8.3.1/6 duplicated :scheme: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(GET[0], GET[1], GET[1], GET[2], GET[3])))
    return c.outcome(1)


@case(
    "8.3.1/7 duplicated :path: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(GET[0], GET[1], GET[2], GET[2], GET[3])))
    return c.outcome(1)


@case(
    "8.3.1/9 :path that is not origin-form nor '*'",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(headers(1, raw_req(GET[0], GET[1], (b":path", b"abc"), GET[3])))
    return c.outcome(1)


@case("8.3.1/8 no :authority but a host field is accepted", "response:200")
def _(c):
    hs(c).send(headers(1, raw_req(*GET[:3], (b"host", b"a.test"))))
    return c.outcome(1)


@case(
    "8.5/1 CONNECT with :scheme and :path: malformed",
    "conn:1",
    note="RFC: stream error PROTOCOL_ERROR; Envoy 1.40 (stream_error_on_invalid_http_messaging false, its default) ends the connection",
)
def _(c):
    hs(c).send(
        headers(
            1, raw_req((b":method", b"CONNECT"), GET[1], GET[2], (b":authority", b"a.test:443"))
        )
    )
    return c.outcome(1)


# -- 8.4 server push -------------------------------------------------------------------------


@case("8.4/1 the server never pushes (a client's ENABLE_PUSH 1 changes nothing)", "response:200")
def _(c):
    hs(c, (S_ENABLE_PUSH, 1)).request(1)
    o = c.outcome(1)
    assert not [f for f in o.frames if f.type == PUSH_PROMISE], o.frames
    return o


# -- RFC 7541 (HPACK) ------------------------------------------------------------------------


@case("hpack 2.3.3/1 indexed field beyond both tables: COMPRESSION_ERROR", "conn:9")
def _(c):
    hs(c).send(headers(1, b"\xc6" + raw_req(*GET)))  # index 70, the dynamic table is empty
    return c.outcome(1)


@case("hpack 2.3.3/2 literal with a name index beyond both tables: COMPRESSION_ERROR", "conn:9")
def _(c):
    hs(c).send(headers(1, raw_req(*GET) + b"\x7f\x07\x01a"))  # name index 70
    return c.outcome(1)


@case("hpack 4.2/1 dynamic table size update at the end of a block: COMPRESSION_ERROR", "conn:9")
def _(c):
    hs(c).send(headers(1, raw_req(*GET) + b"\x20"))
    return c.outcome(1)


@case("hpack 4.2/2 size update at the start of a block is accepted", "response:200")
def _(c):
    hs(c).send(headers(1, b"\x3f\xe1\x1f" + raw_req(*GET)))  # size 4096
    return c.outcome(1)


@case(
    "hpack 4.2/3 two size updates at the start (smaller then larger) are accepted", "response:200"
)
def _(c):
    hs(c).send(headers(1, b"\x20\x3f\xe1\x1f" + raw_req(*GET)))
    return c.outcome(1)


@case("hpack 5.2/1 Huffman string containing EOS: COMPRESSION_ERROR", "conn:9")
def _(c):
    hs(c).send(headers(1, raw_req(*GET) + b"\x00\x85\xff\xff\xff\xff\xff\x01a"))
    return c.outcome(1)


@case("hpack 5.2/2 Huffman padding longer than 7 bits: COMPRESSION_ERROR", "conn:9")
def _(c):
    hs(c).send(headers(1, raw_req(*GET) + b"\x00\x82\x1f\xff\x01a"))  # "a" + 11 one-bits
    return c.outcome(1)


@case("hpack 5.2/3 Huffman padding not of EOS's 1 bits: COMPRESSION_ERROR", "conn:9")
def _(c):
    hs(c).send(headers(1, raw_req(*GET) + b"\x00\x81\x18\x01a"))  # "a" + 000
    return c.outcome(1)


@case("hpack 5.2/4 string length beyond the block: COMPRESSION_ERROR", "conn:9")
def _(c):
    hs(c).send(headers(1, raw_req(*GET) + b"\x00\x05ab"))
    return c.outcome(1)


@case("hpack 5.1/1 integer overflowing (endless continuation bytes): COMPRESSION_ERROR", "conn:9")
def _(c):
    hs(c).send(headers(1, b"\xff" + b"\xff" * 12 + b"\x01" + raw_req(*GET)))
    return c.outcome(1)


@case("hpack 6.1/1 indexed field with index 0: COMPRESSION_ERROR", "conn:9")
def _(c):
    hs(c).send(headers(1, b"\x80" + raw_req(*GET)))
    return c.outcome(1)


@case("hpack 6.3/1 size update above SETTINGS_HEADER_TABLE_SIZE: COMPRESSION_ERROR", "conn:9")
def _(c):
    hs(c).send(headers(1, b"\x3f\xe2\x1f" + raw_req(*GET)))  # 4097
    return c.outcome(1)


@case("hpack 6.2/1 literal never-indexed and without-indexing fields are accepted", "response:200")
def _(c):
    blk = raw_req(*GET) + b"\x10\x03x-n\x01v" + b"\x00\x03x-w\x01v"
    hs(c).send(headers(1, blk))
    return c.outcome(1)


@case("hpack 6.2/2 indexed dynamic entries across streams (incremental indexing)", "response:200")
def _(c):
    ins = b"\x40\x05x-dyn\x03one"  # literal with incremental indexing: becomes index 62
    hs(c).send(headers(1, raw_req(*GET) + ins))
    assert label(c.outcome(1)) == "response:200"
    c.send(headers(3, raw_req(*GET) + b"\xbe"))  # index 62
    return c.outcome(3)


@case("hpack 6.2/3 static table names with Huffman values", "response:200")
def _(c):
    hs(c).send(headers(1, c.block(req(user_agent="h2raw/1.0 conformance"), huffman=True)))
    return c.outcome(1)


# -- generic: requests the server must serve --------------------------------------------------


@case("generic/1 GET with END_STREAM on HEADERS", "response:200")
def _(c):
    hs(c).request(1)
    return c.outcome(1)


@case("generic/2 POST with a body in several DATA frames", "response:200")
def _(c):
    hs(c).send(
        headers(1, c.block(req("POST")), END_HEADERS),
        data(1, b"a" * 1000),
        data(1, b"b" * 1000),
        data(1, b"", END_STREAM),
    )
    return c.outcome(1)


@case("generic/3 HEAD: the response has no body", "response:200")
def _(c):
    hs(c).request(1, req("HEAD"))
    o = c.outcome(1)
    assert o.body == b"", o.frames
    return o


@case("generic/4 several concurrent streams all answered", "response:200")
def _(c):
    hs(c)
    for sid in (1, 3, 5):
        c.send(headers(sid, c.block(req(path=f"/s{sid}"))))
    got = {}
    for _ in range(200):
        f = c.read_frame()
        if f is None:
            break
        if f.type == 0 and f.flags & END_STREAM:
            got[f.sid] = True
        if len(got) == 3:
            break
    assert set(got) == {1, 3, 5}, c.seen
    c.request(7)
    return c.outcome(7)


@case("generic/5 PING answered while a request is in flight", "ping")
def _(c):
    hs(c).send(headers(1, c.block(SLOW)))
    o = c.outcome(ping_mark=True)
    assert not [f for f in o.frames if f.sid == 1], o.frames
    return o


@case("generic/6 a route to a cluster with no upstream: local 503", "response:503")
def _(c):
    hs(c).request(1, req(path="/dead/x"))
    return c.outcome(1)


def accepted(expect: set[str], kind: str) -> set[str]:
    """ "conn:CODE" is a connection error: GOAWAY with the code, or (Envoy 1.40 only, which
    often closes without its GOAWAY; RFC 9113 5.4.1 makes GOAWAY a SHOULD) the connection
    closed without one. sofamesh must send the GOAWAY."""
    out = set()
    for e in expect:
        if e.startswith("conn:"):
            out.add("goaway:" + e[5:])
            if kind == "envoy":
                out.add("closed")
        else:
            out.add(e)
    return out


def run_case(port: int, kind: str, name: str) -> str:
    """One case on its own connection: "" when it gave an accepted outcome, else why not."""
    fn, tokens, note = CASES[name]
    expect = accepted(tokens, kind)
    try:
        with H2Client(port) as c:
            o = fn(c)
            got = label(o)
            if got not in expect:
                return f"got {got}, expected {sorted(expect)} ({note})\n{o.frames}"
            if got.startswith("rst:"):
                # a stream error leaves the connection serving
                after = c.still_alive(1001)
                if label(after) != "response:200":
                    return f"after the stream error: {after.frames}"
    except Exception:  # noqa: BLE001  (an assertion inside the case, a socket error)
        return traceback.format_exc()
    return ""


@pytest.fixture(scope="module")
def results(proxy: Any) -> dict[str, str]:
    """Every case against this proxy, 12 connections at a time (Envoy takes 1 s to close
    after a connection error: one by one the suite would take minutes)."""
    with ThreadPoolExecutor(max_workers=12) as pool:
        futs = {name: pool.submit(run_case, proxy.port, proxy.kind, name) for name in CASES}
        out = {name: f.result() for name, f in futs.items()}
    alive(proxy)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_conformance(proxy: Any, results: dict[str, str], name: str) -> None:
    assert not results[name], f"{proxy.kind}: {name}: {results[name]}"


def test_case_count() -> None:
    assert len(CASES) >= 80


def test_server_settings_as_envoy(proxy: Any) -> None:
    """The SETTINGS a client gets, in order: Envoy 1.40's (the header table size and
    extended CONNECT said at their defaults, no MAX_HEADER_LIST_SIZE), on both proxies."""
    with H2Client(proxy.port) as c:
        c.handshake()
        got = list(c.server_settings.items())
    assert got == [(1, 4096), (8, 0), (3, MAX_STREAMS), (4, 16 * 1024 * 1024)], got
