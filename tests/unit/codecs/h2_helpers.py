"""Helpers for the HTTP/2 codec tests: raw frames, and pumping bytes between our
connection and an `h2` peer (the interop oracle) in memory."""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import hpack

from sofamesh._core.codecs import http2 as H

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = range(9)
CONTINUATION = 9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

REQ = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def settings(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def window_update(sid: int, inc: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", inc))


def rst(sid: int, code: int = 8) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def goaway_of(data: bytes) -> tuple[int, int] | None:
    """(last stream id, error code) of the first GOAWAY in data, or None."""
    for t, _f, _sid, p in frames_of(data):
        if t == GOAWAY:
            return struct.unpack(">II", p[:8])
    return None


def frames_of(data: bytes):
    out = []
    data = data.removeprefix(PREFACE)
    i = 0
    while i + 9 <= len(data):
        n = int.from_bytes(data[i : i + 3], "big")
        t, f = data[i + 3], data[i + 4]
        sid = int.from_bytes(data[i + 5 : i + 9], "big") & 0x7FFFFFFF
        out.append((t, f, sid, data[i + 9 : i + 9 + n]))
        i += 9 + n
    return out


def rsts_of(data: bytes) -> dict[int, int]:
    return {sid: struct.unpack(">I", p)[0] for t, _f, sid, p in frames_of(data) if t == RST_STREAM}


class RawClient:
    """A hand-driven client: its own HPACK encoder, frames written by the test."""

    def __init__(self, **kw):
        self.enc = hpack.Encoder()
        self.conn = H.Connection(client_side=False, **kw)
        self.out = self.conn.data_to_send()
        evs = self.conn.feed(PREFACE + settings() + frame(SETTINGS, ACK, 0))
        assert not any(isinstance(e, H.ConnectionError) for e in evs), evs
        self.out += self.conn.data_to_send()

    def block(self, headers=REQ) -> bytes:
        return self.enc.encode(headers)

    def headers(self, sid, headers=REQ, end_stream=True, flags=0) -> bytes:
        return frame(
            HEADERS,
            flags | END_HEADERS | (END_STREAM if end_stream else 0),
            sid,
            self.block(headers),
        )

    def feed(self, data: bytes):
        evs = self.conn.feed(data)
        self.last = self.conn.data_to_send()
        return evs


def h2_client(**kw):
    c = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None, **kw)
    )
    c.initiate_connection()
    return c


def h2_server(**kw):
    c = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None, **kw)
    )
    c.initiate_connection()
    return c


def pump(peer, ours, rounds: int = 200, chunk: int | None = None):
    """Move bytes both ways until quiet; (our events, peer events)."""
    ours_ev, peer_ev = [], []
    for _ in range(rounds):
        a = peer.data_to_send()
        if a:
            if chunk:
                for i in range(0, len(a), chunk):
                    ours_ev += ours.feed(a[i : i + chunk])
            else:
                ours_ev += ours.feed(a)
        b = ours.data_to_send()
        if b:
            peer_ev += peer.receive_data(b)
        if not a and not b:
            break
    return ours_ev, peer_ev


def of(events, cls):
    return [e for e in events if isinstance(e, cls)]
