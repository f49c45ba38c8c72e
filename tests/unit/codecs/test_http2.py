"""HTTP/2 codec (RFC 9113): our server end against an `h2` client, our client end against an
`h2` server (bytes passed in memory), raw frames for the error paths, and every attack the
issue lists, each bounded and counted."""

from __future__ import annotations

import random
import struct

import h2.errors
import h2.events as he
import hpack
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from sofamesh._core.codecs import http2 as H
from sofamesh._core.codecs import http2_streams as S

from .h2_helpers import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    REQ,
    SETTINGS,
    RawClient,
    frame,
    frames_of,
    goaway_of,
    h2_client,
    h2_server,
    of,
    pump,
    rst,
    rsts_of,
    settings,
    window_update,
)

SREQ = [(":method", "POST"), (":scheme", "http"), (":path", "/svc/M"), (":authority", "x")]


def served(**kw):
    cli = h2_client()
    srv = H.Connection(client_side=False, **kw)
    ev, pev = pump(cli, srv)
    assert of(ev, H.SettingsReceived) and of(ev, H.SettingsAcked)
    assert any(isinstance(e, he.SettingsAcknowledged) for e in pev)
    return cli, srv


def client(**kw):
    srv = h2_server()
    ours = H.Connection(client_side=True, **kw)
    ev, _ = pump(srv, ours)
    assert of(ev, H.SettingsReceived)
    return srv, ours


# -- handshake ---------------------------------------------------------------------------


def test_server_handshake_settings_applied_on_ack():
    cli, srv = served(max_concurrent_streams=7, initial_stream_window_size=1 << 20)
    assert srv.local_settings[H.MAX_CONCURRENT_STREAMS] == 7
    assert cli.remote_settings.max_concurrent_streams == 7
    assert cli.remote_settings.initial_window_size == 1 << 20
    # Envoy's default connection window (256 MiB) is announced by WINDOW_UPDATE at once
    assert cli.outbound_flow_control_window == 268435456
    assert srv.remote_settings[H.ENABLE_PUSH] == 1


def test_client_preface_and_enable_push_off():
    out = H.Connection(client_side=True).data_to_send()
    assert out.startswith(PREFACE)
    t, f, sid, p = frames_of(out)[0]
    assert (t, f, sid) == (SETTINGS, 0, 0)
    assert (2, 0) in [struct.unpack(">HI", p[i : i + 6]) for i in range(0, len(p), 6)]


# -- requests, responses, bodies, trailers ----------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 7, 1000])
def test_request_response_with_body_and_trailers(chunk):
    cli, srv = served()
    cli.send_headers(1, SREQ)
    cli.send_data(1, b"hello " * 100)
    cli.send_headers(1, [("grpc-timeout", "1S")], end_stream=True)
    ev, _ = pump(cli, srv, chunk=chunk)
    (req,) = of(ev, H.RequestHeaders)
    assert (req.method, req.path, req.scheme, req.authority) == (b"POST", b"/svc/M", b"http", b"x")
    assert b"".join(e.data for e in of(ev, H.Data)) == b"hello " * 100
    assert of(ev, H.Trailers)[0].headers == [(b"grpc-timeout", b"1S")]
    assert srv.stream_state(1) == "half_closed_remote"
    srv.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    srv.send_data(1, b"r" * 70000)
    srv.send_trailers(1, [(b"grpc-status", b"0"), (b"grpc-message", b"ok")])
    _, pev = pump(cli, srv)
    got = b"".join(e.data for e in of(pev, he.DataReceived))
    # 70000 bytes > the h2 client's 65535 window: the rest waits for WINDOW_UPDATE
    assert len(got) == 65535 and srv.outbound_buffered(1) == 70000 - 65535
    for e in of(pev, he.DataReceived):
        cli.acknowledge_received_data(e.flow_controlled_length, 1)
    _, pev2 = pump(cli, srv)
    got += b"".join(e.data for e in of(pev2, he.DataReceived))
    assert got == b"r" * 70000
    assert of(pev2, he.TrailersReceived)[0].headers == [
        (b"grpc-status", b"0"),
        (b"grpc-message", b"ok"),
    ]
    assert of(pev2, he.StreamEnded) and srv.stream_state(1) == "closed"
    assert srv.stats["trailers"] == 1


def test_our_client_against_h2_server_with_informational_and_trailers():
    peer, ours = client()
    sid = ours.get_next_available_stream_id()
    assert sid == 1
    ours.send_headers(
        sid,
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/u"),
            (b":authority", b"b"),
            (b"te", b"trailers"),
        ],
    )
    ours.send_data(sid, b"q" * 5000, end_stream=True)
    _, pev = pump(peer, ours)
    (rr,) = of(pev, he.RequestReceived)
    assert dict(rr.headers)[b":path"] == b"/u"
    assert b"".join(e.data for e in of(pev, he.DataReceived)) == b"q" * 5000
    assert of(pev, he.StreamEnded)
    peer.send_headers(1, [(":status", "100")])
    peer.send_headers(1, [(":status", "200"), ("content-length", "3")])
    peer.send_data(1, b"abc")
    peer.send_headers(1, [("grpc-status", "0")], end_stream=True)
    ev, _ = pump(peer, ours)
    assert of(ev, H.InformationalResponse)[0].status == 100
    (resp,) = of(ev, H.ResponseHeaders)
    assert (resp.status, resp.content_length, resp.end_stream) == (200, 3, False)
    assert of(ev, H.Data)[0].data == b"abc"
    assert of(ev, H.Trailers)[0].headers == [(b"grpc-status", b"0")]
    assert ours.stream_state(1) == "closed" and ours.open_outbound_streams == 0
    assert ours.get_next_available_stream_id() == 3


def test_head_response_carries_no_body():
    peer, ours = client()
    ours.send_headers(
        1,
        [(b":method", b"HEAD"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"b")],
        end_stream=True,
    )
    pump(peer, ours)
    peer.send_headers(1, [(":status", "200"), ("content-length", "1234")], end_stream=True)
    ev, _ = pump(peer, ours)
    assert of(ev, H.ResponseHeaders)[0].end_stream and not of(ev, H.StreamReset)


def test_large_bodies_both_ways_through_small_windows():
    body = random.Random(1).randbytes(3_000_000)
    cli, srv = served(initial_stream_window_size=65535, initial_connection_window_size=65535)
    cli.send_headers(1, SREQ)
    sent = 0
    got = []
    for _ in range(10_000):
        room = min(cli.local_flow_control_window(1), len(body) - sent, 16384)
        if room > 0:
            cli.send_data(1, body[sent : sent + room], end_stream=sent + room == len(body))
            sent += room
        ev, pev = pump(cli, srv)
        for e in of(ev, H.Data):
            got.append(e.data)
            srv.acknowledge_received_data(1, len(e.data))  # backpressure: consumed -> give back
        if of(ev, H.Data) and ev and of(ev, H.Data)[-1].end_stream:
            break
    assert b"".join(got) == body
    srv.send_headers(1, [(b":status", b"200")])
    srv.send_data(1, body, end_stream=True)
    got = []
    for _ in range(10_000):
        _, pev = pump(cli, srv)
        for e in of(pev, he.DataReceived):
            got.append(e.data)
            cli.acknowledge_received_data(e.flow_controlled_length, 1)
        if of(pev, he.StreamEnded):
            break
    assert b"".join(got) == body
    assert srv.stats["connection_errors"] == 0


def test_window_is_given_back_only_when_consumed():
    cli, srv = served(initial_stream_window_size=65535, initial_connection_window_size=65535)
    cli.send_headers(1, SREQ)
    for i in range(0, 65535, 16384):
        cli.send_data(1, b"x" * min(16384, 65535 - i))
    pump(cli, srv)
    assert cli.local_flow_control_window(1) == 0
    assert srv.inbound_window(1) == 0
    srv.acknowledge_received_data(1, 40000)
    _, pev = pump(cli, srv)
    assert {e.stream_id for e in of(pev, he.WindowUpdated)} == {0, 1}
    assert cli.local_flow_control_window(1) == 40000


def test_padding_is_given_back_at_once():
    c = RawClient(initial_stream_window_size=65535, initial_connection_window_size=65535)
    c.feed(c.headers(1, end_stream=False))
    ev = c.feed(frame(DATA, PADDED, 1, bytes([255]) + b"d" + bytes(255)) * 160)
    assert sum(len(e.data) for e in of(ev, H.Data)) == 160
    assert of(ev, H.Data)[0].flow_controlled_length == 257
    # 160 * 256 padding octets given back without the caller: WINDOW_UPDATEs went out
    assert [t for t, *_ in frames_of(c.last)].count(8) >= 2


def test_zero_window_stall_keeps_data_queued_until_window_update():
    c = RawClient()
    c.feed(settings((4, 0)))  # the peer's SETTINGS_INITIAL_WINDOW_SIZE = 0
    c.feed(c.headers(1))
    c.conn.send_headers(1, [(b":status", b"200")])
    c.conn.send_data(1, b"z" * 1000, end_stream=True)
    out = c.conn.data_to_send()
    assert not [f for f in frames_of(out) if f[0] == DATA]
    assert c.conn.outbound_buffered(1) == 1000 and c.conn.stream_state(1) == "half_closed_remote"
    ev = c.feed(window_update(1, 600))
    assert of(ev, H.WindowUpdated)[0].delta == 600
    assert sum(len(p) for t, _f, _s, p in frames_of(c.last) if t == DATA) == 600
    c.feed(window_update(1, 400))
    datas = [f for f in frames_of(c.last) if f[0] == DATA]
    assert sum(len(p) for *_, p in datas) == 400 and datas[-1][1] & END_STREAM
    assert c.conn.stream_state(1) == "closed"


def test_settings_initial_window_change_applies_to_open_streams():
    c = RawClient()
    c.feed(settings((4, 10)))
    c.feed(c.headers(1))
    c.conn.send_headers(1, [(b":status", b"200")])
    c.conn.send_data(1, b"z" * 100)
    c.conn.data_to_send()
    c.feed(settings((4, 110)))  # +100 on every stream's window
    assert sum(len(p) for t, _f, _s, p in frames_of(c.last) if t == DATA) == 90
    assert c.feed(settings((4, 2**31)))[-1].error_code == H.FLOW_CONTROL_ERROR


# -- resets, GOAWAY, PING, PRIORITY, PUSH_PROMISE ----------------------------------------


def test_resets_both_ways():
    cli, srv = served()
    cli.send_headers(1, SREQ)
    cli.send_headers(3, SREQ)
    pump(cli, srv)
    cli.reset_stream(1, error_code=h2.errors.ErrorCodes.CANCEL)
    ev, _ = pump(cli, srv)
    (r,) = of(ev, H.StreamReset)
    assert (r.stream_id, r.error_code, r.remote) == (1, H.CANCEL, True)
    srv.reset_stream(3, H.INTERNAL_ERROR)
    _, pev = pump(cli, srv)
    assert of(pev, he.StreamReset)[0].error_code == h2.errors.ErrorCodes.INTERNAL_ERROR
    assert srv.stats["rx_reset"] == 1 and srv.stats["tx_reset"] == 1
    # frames the client sent before it saw our RST_STREAM are ignored
    c = RawClient()
    c.feed(c.headers(1, end_stream=False))
    c.conn.reset_stream(1)
    c.conn.data_to_send()
    ev = c.feed(frame(DATA, 0, 1, b"late"))
    assert ev == [] and not c.last.count(b"\x03")


def test_graceful_goaway_from_server():
    cli, srv = served()
    cli.send_headers(1, SREQ, end_stream=True)
    pump(cli, srv)
    srv.goaway()
    _, pev = pump(cli, srv)
    (t,) = of(pev, he.ConnectionTerminated)
    assert (t.last_stream_id, t.error_code) == (1, 0)
    assert srv.stats["goaway_sent"] == 1
    # streams up to last_stream_id go on; later ones are ignored
    c = RawClient()
    c.feed(c.headers(1))
    c.conn.goaway()
    assert goaway_of(c.conn.data_to_send()) == (1, 0)
    assert c.feed(c.headers(3)) == []
    c.conn.send_headers(1, [(b":status", b"204")], end_stream=True)
    assert [f[0] for f in frames_of(c.conn.data_to_send())] == [HEADERS]
    assert not c.conn.closed and c.conn.open_inbound_streams == 0


def test_goaway_to_client_refuses_streams_above_last_id():
    peer, ours = client()
    for sid in (1, 3, 5):
        ours.send_headers(sid, REQ, end_stream=True)
    pump(peer, ours)
    peer.close_connection(last_stream_id=1)
    ev, _ = pump(peer, ours)
    assert of(ev, H.GoAway)[0].last_stream_id == 1
    assert sorted(e.stream_id for e in of(ev, H.StreamReset)) == [3, 5]
    assert all(e.error_code == H.REFUSED_STREAM and e.remote for e in of(ev, H.StreamReset))
    assert not ours.can_open_stream
    with pytest.raises(H.UsageError):
        ours.send_headers(7, REQ)


def test_ping_both_ways():
    cli, srv = served()
    cli.ping(b"12345678")
    ev, pev = pump(cli, srv)
    assert of(ev, H.PingReceived)[0].data == b"12345678"
    assert of(pev, he.PingAckReceived)[0].ping_data == b"12345678"
    srv.ping(b"abcdefgh")
    ev, _ = pump(cli, srv)
    assert of(ev, H.PingAcked)[0].data == b"abcdefgh"


def test_priority_is_parsed_and_ignored():
    c = RawClient()
    ev = c.feed(frame(PRIORITY, 0, 3, struct.pack(">IB", 1, 16)))
    assert ev == [] and c.conn.stream_state(3) == "closed"
    ev = c.feed(
        frame(
            HEADERS,
            END_HEADERS | END_STREAM | PRIORITY_FLAG,
            5,
            struct.pack(">IB", 0, 200) + c.block(),
        )
    )
    assert of(ev, H.RequestHeaders)[0].stream_id == 5
    # as Envoy 1.40: a self-dependency and stream 0 are ignored too (RFC 9113 would reset
    # the stream / end the connection); only a wrong length ends the connection
    assert c.feed(frame(PRIORITY, 0, 7, struct.pack(">IB", 7, 16))) == []
    assert c.feed(frame(PRIORITY, 0, 0, struct.pack(">IB", 1, 16))) == []
    assert rsts_of(c.last) == {} and not c.conn.closed
    ev = c.feed(frame(PRIORITY, 0, 9, b"\0" * 4))
    assert of(ev, H.ConnectionError)[0].error_code == H.FRAME_SIZE_ERROR


def test_push_promise_is_refused():
    peer, ours = client()
    ours.send_headers(1, REQ, end_stream=True)
    pump(peer, ours)
    ev = ours.feed(frame(PUSH_PROMISE, END_HEADERS, 1, struct.pack(">I", 2) + b"\x82"))
    assert of(ev, H.ConnectionError)[0].error_code == H.PROTOCOL_ERROR


def test_unknown_frame_types_are_ignored():
    c = RawClient()
    assert c.feed(frame(0xFA, 0xFF, 0, b"whatever")) == []
    assert not c.conn.closed


# -- malformed messages: the connection ends (Envoy's stream_error_on_invalid_http_messaging
# false, its default; RFC 9113 8.1.1 would reset the stream) -------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")],  # no :path
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"")],
        [(b":scheme", b"http"), (b":path", b"/")],  # no :method
        [*REQ, (b":method", b"GET")],  # repeated pseudo-header
        [(b":method", b"GET"), (b"x", b"1"), (b":scheme", b"http"), (b":path", b"/")],
        [*REQ, (b":status", b"200")],
        [*REQ, (b":foo", b"1")],
        [*REQ, (b"X-Upper", b"1")],
        [*REQ, (b"connection", b"keep-alive")],
        [*REQ, (b"transfer-encoding", b"chunked")],
        [*REQ, (b"upgrade", b"h2c")],
        [*REQ, (b"te", b"gzip")],
        [*REQ, (b"x", b"a\r\nb")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"abc")],
        [*REQ, (b"bad name", b"1")],
        [*REQ, (b"content-length", b"1x")],
        [(b":method", b"CONNECT"), (b":path", b"/")],
    ],
)
def test_malformed_requests_end_the_connection(headers):
    c = RawClient()
    ev = c.feed(c.headers(1, headers))
    assert not of(ev, H.RequestHeaders)
    assert of(ev, H.ConnectionError)[0].error_code == H.PROTOCOL_ERROR
    assert goaway_of(c.last)[1] == H.PROTOCOL_ERROR
    assert c.conn.closed and c.conn.stats["rx_messaging_error"] == 1


def test_whitespace_around_a_value_and_options_star_are_taken():
    c = RawClient()
    ev = c.feed(c.headers(1, [*REQ, (b"x", b" padded ")]))
    assert (b"x", b" padded ") in of(ev, H.RequestHeaders)[0].headers
    star = [(b":method", b"OPTIONS"), (b":scheme", b"http"), (b":path", b"*")]
    assert of(c.feed(c.headers(3, star)), H.RequestHeaders)


def test_valid_connect_and_te_trailers():
    c = RawClient()
    ev = c.feed(c.headers(1, [(b":method", b"CONNECT"), (b":authority", b"h:443")], False))
    assert of(ev, H.RequestHeaders)[0].path is None
    ev = c.feed(c.headers(3, [*REQ, (b"te", b"trailers")]))
    assert of(ev, H.RequestHeaders)


def test_content_length_must_match_data():
    c = RawClient()
    c.feed(c.headers(1, [*REQ, (b"content-length", b"5")], end_stream=False))
    c.feed(frame(DATA, END_STREAM, 1, b"abc"))
    assert rsts_of(c.last) == {1: H.PROTOCOL_ERROR}
    c.feed(c.headers(3, [*REQ, (b"content-length", b"2")], end_stream=False))
    c.feed(frame(DATA, 0, 3, b"abc"))
    assert rsts_of(c.last) == {3: H.PROTOCOL_ERROR}


def test_trailers_must_end_the_stream_and_carry_no_pseudo_headers():
    c = RawClient()
    c.feed(c.headers(1, end_stream=False))
    ev = c.feed(c.headers(1, [(b"x-t", b"1")], end_stream=False))
    assert of(ev, H.ConnectionError)[0].error_code == H.PROTOCOL_ERROR
    c = RawClient()
    c.feed(c.headers(3, end_stream=False))
    ev = c.feed(c.headers(3, [(b":path", b"/")], end_stream=True))
    assert of(ev, H.ConnectionError)[0].error_code == H.PROTOCOL_ERROR


def test_frames_after_end_stream():
    # as Envoy 1.40: on a half-closed (remote) stream a connection error STREAM_CLOSED
    # (the RFC asks for a stream error); on a closed stream frames are ignored (the RFC
    # asks for STREAM_CLOSED)
    c = RawClient()
    c.feed(c.headers(3))
    c.conn.send_headers(3, [(b":status", b"200")], end_stream=True)  # closed
    assert c.feed(frame(DATA, 0, 3, b"x")) == []
    assert c.feed(c.headers(3, [(b"x-t", b"1")])) == []
    c.feed(c.headers(5, end_stream=False) + rst(5))  # reset by the peer
    assert c.feed(frame(DATA, 0, 5, b"x")) == [] and not c.conn.closed
    c.feed(c.headers(7))  # half-closed (remote)
    ev = c.feed(frame(DATA, 0, 7, b"x"))
    assert of(ev, H.ConnectionError)[0].error_code == H.STREAM_CLOSED


# -- connection errors -------------------------------------------------------------------


def _fresh(after_settings: bytes):
    conn = H.Connection()
    return conn.feed(PREFACE + settings() + after_settings), conn


@pytest.mark.parametrize(
    "data,code",
    [
        (frame(DATA, 0, 0, b"x"), H.PROTOCOL_ERROR),
        (frame(DATA, 0, 1, b"x"), H.PROTOCOL_ERROR),  # idle stream
        (frame(HEADERS, END_HEADERS, 2, b"\x82"), H.PROTOCOL_ERROR),  # even id from a client
        (frame(HEADERS, END_HEADERS, 0, b"\x82"), H.PROTOCOL_ERROR),
        (frame(HEADERS, END_HEADERS, 1, b"\xbf"), H.COMPRESSION_ERROR),
        (frame(HEADERS, END_HEADERS | PADDED, 1, b"\x09\x82"), H.PROTOCOL_ERROR),
        (frame(CONTINUATION, END_HEADERS, 1, b"\x82"), H.PROTOCOL_ERROR),
        (frame(HEADERS, 0, 1, b"\x82") + frame(DATA, 0, 1, b"x"), H.PROTOCOL_ERROR),
        (
            frame(HEADERS, 0, 1, b"\x82") + frame(CONTINUATION, END_HEADERS, 3, b""),
            H.PROTOCOL_ERROR,
        ),
        (frame(SETTINGS, 0, 1, b""), H.PROTOCOL_ERROR),
        (frame(SETTINGS, 0, 0, b"\0" * 5), H.FRAME_SIZE_ERROR),
        (frame(SETTINGS, ACK, 0, b"\0" * 6), H.FRAME_SIZE_ERROR),
        (settings((2, 2)), H.PROTOCOL_ERROR),
        (settings((4, 2**31)), H.FLOW_CONTROL_ERROR),
        (settings((5, 16383)), H.PROTOCOL_ERROR),
        (settings((5, 2**24)), H.PROTOCOL_ERROR),
        (settings((8, 2)), H.PROTOCOL_ERROR),
        (frame(PING, 0, 0, b"\0" * 7), H.FRAME_SIZE_ERROR),
        (frame(PING, 0, 1, b"\0" * 8), H.PROTOCOL_ERROR),
        (frame(GOAWAY, 0, 0, b"\0" * 7), H.FRAME_SIZE_ERROR),
        (frame(GOAWAY, 0, 1, b"\0" * 8), H.PROTOCOL_ERROR),
        (window_update(0, 0), H.PROTOCOL_ERROR),
        (window_update(0, 2**31 - 1), H.FLOW_CONTROL_ERROR),
        (frame(8, 0, 0, b"\0" * 3), H.FRAME_SIZE_ERROR),
        (window_update(1, 1), H.PROTOCOL_ERROR),  # idle stream
        (rst(0), H.PROTOCOL_ERROR),
        (rst(1), H.PROTOCOL_ERROR),  # idle stream
        (frame(3, 0, 1, b"\0" * 3), H.FRAME_SIZE_ERROR),
        (frame(PRIORITY, 0, 1, b"\0" * 4), H.FRAME_SIZE_ERROR),
        (frame(GOAWAY, 0, 0, b"\0\0\0\1" + b"\0" * 4), H.PROTOCOL_ERROR),  # names a client id
        (frame(DATA, 0, 1, b"x" * 16385), H.FRAME_SIZE_ERROR),
        (frame(SETTINGS, ACK, 0) * 2, H.PROTOCOL_ERROR),  # one more ACK than SETTINGS sent
    ],
)
def test_connection_errors_send_goaway(data, code):
    ev, conn = _fresh(frame(SETTINGS, ACK, 0) + data)
    errs = of(ev, H.ConnectionError)
    assert len(errs) == 1 and errs[0].error_code == code, (ev, errs)
    assert conn.closed and goaway_of(conn.data_to_send())[1] == code
    assert conn.feed(b"anything at all") == []
    assert conn.stats["connection_errors"] == 1


def test_bad_preface_and_first_frame():
    conn = H.Connection()
    assert of(conn.feed(b"GET / HTTP/1.1\r\n"), H.ConnectionError)
    conn = H.Connection()
    assert of(conn.feed(PREFACE + frame(PING, 0, 0, b"\0" * 8)), H.ConnectionError)
    # the preface byte by byte is fine
    conn = H.Connection()
    ev = []
    for b in PREFACE + settings():
        ev += conn.feed(bytes([b]))
    assert not conn.closed and of(ev, H.SettingsReceived)


def test_window_update_errors_on_a_stream_end_the_connection():
    # as Envoy 1.40 (the RFC asks for stream errors)
    c = RawClient()
    c.feed(c.headers(1, end_stream=False))
    ev = c.feed(window_update(1, 2**31 - 1))
    assert of(ev, H.ConnectionError)[0].error_code == H.FLOW_CONTROL_ERROR
    c = RawClient()
    c.feed(c.headers(3, end_stream=False))
    ev = c.feed(window_update(3, 0))
    assert of(ev, H.ConnectionError)[0].error_code == H.PROTOCOL_ERROR


def test_initial_window_size_overflowing_a_stream_resets_it():
    # as Envoy 1.40: the stream is reset FLOW_CONTROL_ERROR (the RFC ends the connection)
    c = RawClient()
    c.feed(c.headers(1, end_stream=False))
    c.conn.send_headers(1, [(b":status", b"200")])
    c.feed(window_update(1, 2**31 - 1 - 65535))
    c.feed(settings((4, 65536)))
    assert rsts_of(c.last) == {1: H.FLOW_CONTROL_ERROR} and not c.conn.closed


def test_data_beyond_the_window():
    c = RawClient(initial_stream_window_size=100)
    c.feed(c.headers(1, end_stream=False))
    c.feed(frame(DATA, 0, 1, b"x" * 101))
    assert rsts_of(c.last) == {1: H.FLOW_CONTROL_ERROR}
    c = RawClient(initial_connection_window_size=65535)
    c.feed(c.headers(1, end_stream=False) + c.headers(3, end_stream=False))
    c.feed(frame(DATA, 0, 1, b"x" * 16384) * 3)
    ev = c.feed(frame(DATA, 0, 3, b"x" * 16384))
    assert of(ev, H.ConnectionError)[0].error_code == H.FLOW_CONTROL_ERROR


# -- limits and attacks ------------------------------------------------------------------


def test_max_concurrent_streams_refuses_extra_streams():
    # before our SETTINGS are acknowledged the peer may not know the limit: REFUSED_STREAM
    enc = hpack.Encoder()
    conn = H.Connection(max_concurrent_streams=2)
    hd = [
        frame(HEADERS, END_HEADERS | (0 if s < 5 else END_STREAM), s, enc.encode(REQ))
        for s in (1, 3, 5, 7)
    ]
    ev = conn.feed(PREFACE + settings() + hd[0] + hd[1] + hd[2])
    assert [e.stream_id for e in of(ev, H.RequestHeaders)] == [1, 3]
    assert rsts_of(conn.data_to_send()) == {5: H.REFUSED_STREAM}
    assert conn.stats["stream_refused_errors"] == 1
    conn.reset_stream(1)
    assert of(conn.feed(hd[3]), H.RequestHeaders)
    # once acknowledged, going over it ends the connection, as Envoy 1.40 does
    c = RawClient(max_concurrent_streams=2)
    ev = c.feed(c.headers(1, end_stream=False) + c.headers(3, end_stream=False) + c.headers(5))
    assert [e.stream_id for e in of(ev, H.RequestHeaders)] == [1, 3]
    assert of(ev, H.ConnectionError)[0].error_code == H.PROTOCOL_ERROR


def test_rapid_reset_is_detected_and_counted():
    """CVE-2023-44487: open and reset streams at once; max_concurrent_streams never binds."""
    c = RawClient(max_concurrent_streams=100)
    burst = b"".join(c.headers(sid, end_stream=False) + rst(sid) for sid in range(1, 2000, 2))
    ev = c.feed(burst)
    errs = of(ev, H.ConnectionError)
    assert errs and errs[0].reason == "too_many_premature_resets"
    assert errs[0].error_code == H.ENHANCE_YOUR_CALM
    assert len(of(ev, H.RequestHeaders)) == 500  # premature_reset_total_stream_count
    assert c.conn.stats["too_many_premature_resets"] == 1


def test_streams_answered_before_reset_are_not_premature():
    c = RawClient(premature_reset_total_stream_count=10)
    for sid in range(1, 60, 2):
        c.feed(c.headers(sid, end_stream=False))
        c.conn.send_headers(sid, [(b":status", b"200")])
        c.feed(rst(sid))
    assert not c.conn.closed


def test_continuation_flood_is_bounded():
    """CVE-2024-27316: HEADERS then CONTINUATION frames that never end. Past
    max_header_block_size the stream is reset INTERNAL_ERROR (as Envoy 1.40 does) and the
    rest is decoded piece by piece, nothing kept: memory stays bounded, the connection
    serves on and the HPACK table stays in step."""
    c = RawClient(max_header_list_size=8192)
    assert c.conn.max_header_block_size == 8192 + 16384
    ev = c.feed(frame(HEADERS, 0, 1, c.block()))
    chunk = frame(CONTINUATION, 0, 1, b"\x40\x01a\x01b" * 2000)  # 12 KB, each field indexed
    out = b""
    for _ in range(400):  # 4.8 MB
        ev += c.feed(chunk)
        out += c.last
    assert not c.conn.closed and not of(ev, H.ConnectionError)
    assert rsts_of(out) == {1: H.INTERNAL_ERROR}
    assert c.conn.stats["continuation_flood"] == 1
    assert c.conn.stats["header_list_size_too_large"] == 1
    # the block ends with one more indexed field; the table took every field of it
    ev = c.feed(frame(CONTINUATION, END_HEADERS, 1, b"\x40\x01a\x01c"))
    assert not of(ev, H.RequestHeaders) and not c.conn.closed
    lit = b"".join(b"\x00" + bytes([len(k)]) + k + bytes([len(v)]) + v for k, v in REQ)
    ev = c.feed(frame(HEADERS, END_HEADERS | END_STREAM, 3, lit + b"\xbe"))  # index 62
    assert of(ev, H.RequestHeaders)[0].headers[-1] == (b"a", b"c")


def test_continuation_flood_with_one_endless_field_ends_the_connection():
    c = RawClient(max_header_list_size=8192)
    c.feed(frame(HEADERS, 0, 1, c.block()))
    # a literal announcing a 1 MB value: no piece can be decoded before it ends
    ev = c.feed(frame(CONTINUATION, 0, 1, b"\x00\x01a\x7f\xc1\xff\x3f"))
    for _ in range(100):
        ev += c.feed(frame(CONTINUATION, 0, 1, b"v" * 16000))
        if c.conn.closed:
            break
    assert of(ev, H.ConnectionError)[0].error_code == H.ENHANCE_YOUR_CALM


def test_hpack_bomb_resets_the_stream_and_keeps_the_table():
    c = RawClient(max_header_list_size=16384)
    # a 4000-octet entry inserted once, then referenced 1000 times (1 octet each)
    big = b"\x40\x06x-bomb\x7f\xa1\x1e" + b"a" * 4000
    blk = c.block() + big + b"\xbe" * 1000
    ev = c.feed(frame(HEADERS, END_HEADERS | END_STREAM, 1, blk))
    assert not of(ev, H.RequestHeaders)
    # as Envoy 1.40: RST_STREAM INTERNAL_ERROR, counted as header_list_size_too_large
    assert rsts_of(c.last) == {1: H.INTERNAL_ERROR}
    assert c.conn.stats["header_list_size_too_large"] == 1 and not c.conn.closed
    # the peer's encoder and our decoder still agree: the entry is index 62 (after the
    # four request fields the oracle encoder added)
    ev = c.feed(frame(HEADERS, END_HEADERS | END_STREAM, 3, c.block() + b"\xbe"))
    assert of(ev, H.RequestHeaders)[0].headers[-1] == (b"x-bomb", b"a" * 4000)


def test_too_many_headers_is_header_overflow():
    c = RawClient(max_headers_count=10)
    c.feed(c.headers(1, REQ + [(b"x-%d" % i, b"v") for i in range(10)]))
    assert rsts_of(c.last) == {1: H.INTERNAL_ERROR} and c.conn.stats["header_overflow"] == 1


@pytest.mark.parametrize("flood", ["settings", "ping"])
def test_settings_and_ping_floods_are_bounded(flood):
    c = RawClient()
    one = settings((3, 100)) if flood == "settings" else frame(PING, 0, 0, b"\0" * 8)
    ev = c.feed(one * 5000)
    errs = of(ev, H.ConnectionError)
    assert errs and errs[0].reason == "outbound_control_flood"
    assert c.conn.stats["outbound_control_flood"] == 1
    assert len(c.last) < 1001 * 17 + 200  # at most max_outbound_control_frames answers
    # a peer that reads its answers is fine
    c = RawClient()
    for _ in range(50):
        c.feed(one * 100)
    assert not c.conn.closed


def test_empty_data_frames_flood():
    c = RawClient()
    c.feed(c.headers(1, end_stream=False))
    assert of(c.feed(frame(DATA, 0, 1)), H.Data)[0].data == b""
    ev = c.feed(frame(DATA, 0, 1))
    assert of(ev, H.ConnectionError)[0].reason == "inbound_empty_frames_flood"
    assert c.conn.stats["inbound_empty_frames_flood"] == 1
    # an empty DATA with END_STREAM is normal
    c = RawClient()
    c.feed(c.headers(1, end_stream=False))
    c.feed(frame(DATA, END_STREAM, 1) + c.headers(3, end_stream=False) + frame(DATA, 0, 3, b"x"))
    assert not c.conn.closed


def test_priority_flood():
    c = RawClient()
    ev = c.feed(frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 1)) * 101)
    assert of(ev, H.ConnectionError)[0].reason == "inbound_priority_frames_flood"


def test_window_update_flood():
    c = RawClient()
    c.feed(c.headers(1, end_stream=False))
    ev = c.feed(window_update(1, 1) * 100)
    assert of(ev, H.ConnectionError)[0].reason == "inbound_window_update_frames_flood"
    assert c.conn.stats["inbound_window_update_frames_flood"] == 1


def test_outbound_flood_when_the_caller_does_not_drain():
    c = RawClient(max_outbound_frames=100)
    for sid in range(1, 40, 2):
        c.feed(c.headers(sid))
    for sid in range(1, 40, 2):
        if c.conn.closed:
            break
        c.conn.send_headers(sid, [(b":status", b"200")])
        for _ in range(10):
            if not c.conn.closed:
                c.conn.send_data(sid, b"x")
    assert c.conn.closed and c.conn.stats["outbound_flood"] == 1
    assert of(c.feed(b""), H.ConnectionError)[0].reason == "outbound_flood"


def test_stream_id_exhaustion_on_the_client():
    peer, ours = client()
    ours.send_headers(1, REQ, end_stream=True)
    pump(peer, ours)
    # jump to the last ids (a long-lived upstream connection)
    ours.send_headers(2**31 - 3, REQ, end_stream=True)
    ours.send_headers(2**31 - 1, REQ, end_stream=True)
    assert ours.stream_ids_exhausted and not ours.can_open_stream
    with pytest.raises(H.UsageError):
        ours.get_next_available_stream_id()
    _, pev = pump(peer, ours)
    assert len(of(pev, he.RequestReceived)) == 2


def test_client_stream_id_rules():
    _peer, ours = client()
    with pytest.raises(H.UsageError):
        ours.send_headers(2, REQ)
    ours.send_headers(5, REQ)
    with pytest.raises(H.UsageError):
        ours.send_headers(3, REQ)
    # a server must not open streams; a stream we never opened is idle
    ev = ours.feed(frame(HEADERS, END_HEADERS, 2, b"\x88"))
    assert of(ev, H.ConnectionError)[0].error_code == H.PROTOCOL_ERROR


def test_remote_max_concurrent_streams_limits_our_client():
    srv = h2_server()
    srv.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    ours = H.Connection(client_side=True)
    pump(srv, ours)
    ours.send_headers(1, REQ)
    assert not ours.can_open_stream
    with pytest.raises(H.UsageError):
        ours.send_headers(3, REQ)


def test_usage_errors():
    c = RawClient()
    c.feed(c.headers(1))
    with pytest.raises(H.UsageError):
        c.conn.send_data(1, b"before headers")
    c.conn.send_headers(1, [(b":status", b"200")], end_stream=True)
    with pytest.raises(H.UsageError):
        c.conn.send_data(1, b"x")
    with pytest.raises(H.UsageError):
        c.conn.send_headers(9, [(b":status", b"200")])  # servers do not open streams


# -- the state table ---------------------------------------------------------------------

STATES = range(5)
INPUTS = range(9)


@hsettings(max_examples=200, deadline=None)
@given(st.sampled_from(list(STATES)), st.sampled_from(list(INPUTS)))
def test_every_state_input_pair_has_a_defined_outcome(state, event):
    nxt, act = S.transition_for(state, event)
    assert nxt in STATES and act in (0, 1, 2, 3, 4)
    if act != 0:
        assert nxt == state or act == 3
    if event <= 3:  # local sends never become a protocol error
        assert act in (0, 3, 4)
    else:
        assert act != 4


def test_table_matches_rfc_9113_figure_2():
    t = S.transition_for
    assert t(0, 4) == (1, 0)  # idle, recv H -> open
    assert t(1, 6) == (3, 0)  # open, recv ES -> half-closed (remote)
    assert t(1, 2) == (2, 0)  # open, send ES -> half-closed (local)
    assert t(2, 6) == (4, 0)
    assert t(3, 2) == (4, 0)
    assert t(3, 5)[1] == 1  # half-closed (remote), recv DATA: STREAM_CLOSED
    assert t(0, 5)[1] == 2  # idle, recv DATA: connection PROTOCOL_ERROR
    assert t(2, 1)[1] == 4  # half-closed (local), send DATA: usage error


def test_our_client_uploads_through_h2_server_windows_on_three_streams():
    """Queued DATA on several streams leaves as the h2 server's WINDOW_UPDATEs arrive."""
    peer, ours = client()
    bodies = {sid: bytes([sid]) * (150_000 + sid) for sid in (1, 3, 5)}
    for sid, body in bodies.items():
        ours.send_headers(sid, [(b":method", b"PUT"), *REQ[1:]])
        ours.send_data(sid, body, end_stream=True)
    got: dict[int, list[bytes]] = {1: [], 3: [], 5: []}
    ended = set()
    for _ in range(500):
        _, pev = pump(peer, ours)
        for e in pev:
            if isinstance(e, he.DataReceived):
                got[e.stream_id].append(e.data)
                peer.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, he.StreamEnded):
                ended.add(e.stream_id)
        if ended == {1, 3, 5}:
            break
    assert {sid: b"".join(v) for sid, v in got.items()} == bodies
    assert all(ours.stream_state(sid) == "half_closed_local" for sid in bodies)
    for sid in bodies:
        peer.send_headers(sid, [(":status", "201")], end_stream=True)
    ev, _ = pump(peer, ours)
    assert [e.status for e in of(ev, H.ResponseHeaders)] == [201, 201, 201]
    assert ours.open_outbound_streams == 0
