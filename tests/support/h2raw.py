"""A raw HTTP/2 client for conformance and attack tests: frames built by hand from RFC 9113
section 4.1 (9-octet header: 24-bit length, type, flags, R + 31-bit stream id), header
blocks from the `hpack` package (an encoder independent of sofamesh's), and a reader that
collects what the server answers until a stop condition.

    c = H2Client(port).handshake()
    c.send(headers(1, c.block(req()), END_STREAM | END_HEADERS))
    o = c.outcome(1)         # Outcome: goaway / rst / response / closed / ping / timeout
    assert o.rst == PROTOCOL_ERROR
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Self

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types (RFC 9113 section 6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0, 1, 2, 3, 4, 5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 6, 7, 8, 9
# flags
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# error codes (section 7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM = 4, 5, 6, 7
CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM = 8, 9, 10, 11
# settings (section 6.5.2)
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 1, 2, 3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 4, 5, 6

TYPE_NAMES = {
    0: "DATA",
    1: "HEADERS",
    2: "PRIORITY",
    3: "RST_STREAM",
    4: "SETTINGS",
    5: "PUSH_PROMISE",
    6: "PING",
    7: "GOAWAY",
    8: "WINDOW_UPDATE",
    9: "CONTINUATION",
}


def frame(
    ftype: int, flags: int, sid: int, payload: bytes = b"", length: int | None = None
) -> bytes:
    """One frame; `length` overrides the length field (to lie about it)."""
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def settings(*pairs: tuple[int, int], ack: bool = False, sid: int = 0) -> bytes:
    return frame(
        SETTINGS, ACK if ack else 0, sid, b"".join(struct.pack(">HI", k, v) for k, v in pairs)
    )


def ping(opaque: bytes = b"h2raw\0\0\0", ack: bool = False, sid: int = 0) -> bytes:
    return frame(PING, ACK if ack else 0, sid, opaque)


def goaway(last: int = 0, code: int = NO_ERROR, sid: int = 0, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, sid, struct.pack(">II", last, code) + debug)


def window_update(sid: int, inc: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", inc))


def rst_stream(sid: int, code: int = CANCEL) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def priority(sid: int, dep: int = 0, weight: int = 15, exclusive: bool = False) -> bytes:
    return frame(PRIORITY, 0, sid, struct.pack(">IB", dep | (exclusive << 31), weight))


def data(sid: int, payload: bytes = b"", flags: int = 0, pad: int | None = None) -> bytes:
    if pad is not None:
        return frame(DATA, flags | PADDED, sid, bytes([pad]) + payload + b"\0" * pad)
    return frame(DATA, flags, sid, payload)


def headers(
    sid: int,
    block: bytes,
    flags: int = END_STREAM | END_HEADERS,
    pad: int | None = None,
    dep: int | None = None,
    weight: int = 15,
) -> bytes:
    body = block
    if dep is not None:
        flags |= PRIORITY_FLAG
        body = struct.pack(">IB", dep, weight) + body
    if pad is not None:
        flags |= PADDED
        body = bytes([pad]) + body + b"\0" * pad
    return frame(HEADERS, flags, sid, body)


def continuation(sid: int, block: bytes, flags: int = END_HEADERS) -> bytes:
    return frame(CONTINUATION, flags, sid, block)


def req(
    method: str = "GET",
    path: str = "/",
    authority: str = "example.com",
    scheme: str = "http",
    **extra: str,
) -> list[tuple[str, str]]:
    """A request's fields; keyword arguments add regular fields (underscores become dashes)."""
    h = [(":method", method), (":scheme", scheme), (":path", path), (":authority", authority)]
    h += [(k.replace("_", "-"), v) for k, v in extra.items()]
    return h


@dataclass
class Frame:
    type: int
    flags: int
    sid: int
    payload: bytes
    fields: list[tuple[str, str]] | None = None  # decoded HEADERS/CONTINUATION block

    def __repr__(self) -> str:
        extra = ""
        if self.type in (RST_STREAM, GOAWAY) and len(self.payload) >= 4:
            code = struct.unpack(
                ">I", self.payload[4:8] if self.type == GOAWAY else self.payload[:4]
            )[0]
            extra = f" code={code}"
        if self.fields is not None:
            extra = f" {self.fields}"
        return f"<{TYPE_NAMES.get(self.type, self.type)} sid={self.sid} flags={self.flags:#x} len={len(self.payload)}{extra}>"

    @property
    def code(self) -> int:
        if self.type == GOAWAY:
            return struct.unpack(">I", self.payload[4:8])[0]
        return struct.unpack(">I", self.payload[:4])[0]

    @property
    def last_stream_id(self) -> int:
        return struct.unpack(">I", self.payload[:4])[0] & 0x7FFFFFFF


@dataclass
class Outcome:
    """What the server did, read until a stop condition: `kind` is "goaway" (code in
    goaway), "rst" (code in rst), "response" (status), "ping" (the marker PING was acked
    with nothing else decisive before it), "closed" (EOF / reset without GOAWAY) or "timeout"."""

    kind: str
    frames: list[Frame] = field(default_factory=list)
    goaway: int | None = None
    rst: int | None = None
    status: int | None = None
    body: bytes = b""
    trailers: list[tuple[str, str]] | None = None
    response_headers: list[tuple[str, str]] | None = None
    closed: bool = False

    def short(self) -> str:
        return {
            "goaway": f"GOAWAY({self.goaway})",
            "rst": f"RST_STREAM({self.rst})",
            "response": f"response {self.status}",
        }.get(self.kind, self.kind)


MARK = b"h2markX\x01"


class H2Client:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 3.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.dec.max_header_list_size = 1 << 30
        self.eof = False
        self.server_settings: dict[int, int] = {}
        self.seen: list[Frame] = []
        self._block: dict[int, bytearray] = {}

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, *chunks: bytes) -> None:
        try:
            self.sock.sendall(b"".join(chunks))
        except (BrokenPipeError, ConnectionResetError):
            self.eof = True

    def block(self, fields: list[tuple[str, str]], huffman: bool = True) -> bytes:
        return self.enc.encode(fields, huffman=huffman)

    def handshake(self, *pairs: tuple[int, int]) -> H2Client:
        """Preface + our SETTINGS; waits for the server's SETTINGS and ACKs it, and for the
        ACK of ours."""
        self.send(PREFACE, settings(*pairs))
        got_settings = got_ack = False
        deadline = time.monotonic() + 5
        while not (got_settings and got_ack):
            f = self.read_frame(max(0.05, deadline - time.monotonic()))
            if f is None:
                raise AssertionError(f"no handshake: {self.seen}")
            if f.type == SETTINGS and not f.flags & ACK:
                for i in range(0, len(f.payload), 6):
                    k, v = struct.unpack(">HI", f.payload[i : i + 6])
                    self.server_settings[k] = v
                self.send(settings(ack=True))
                got_settings = True
            elif f.type == SETTINGS:
                got_ack = True
        return self

    def _fill(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_frame(self, timeout: float = 3.0) -> Frame | None:
        """The next frame; None on EOF or timeout (self.eof tells which)."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + n:
                    hdr, payload = bytes(self.buf[:9]), bytes(self.buf[9 : 9 + n])
                    del self.buf[: 9 + n]
                    f = Frame(
                        hdr[3], hdr[4], struct.unpack(">I", hdr[5:9])[0] & 0x7FFFFFFF, payload
                    )
                    self._decode(f)
                    self.seen.append(f)
                    return f
            left = deadline - time.monotonic()
            if self.eof or left <= 0 or not self._fill(left):
                return None

    def _decode(self, f: Frame) -> None:
        if f.type == HEADERS:
            p = f.payload
            if f.flags & PADDED:
                p = p[1 : len(p) - p[0]]
            if f.flags & PRIORITY_FLAG:
                p = p[5:]
            self._block[f.sid] = bytearray(p)
        elif f.type == CONTINUATION:
            self._block.setdefault(f.sid, bytearray()).extend(f.payload)
        else:
            return
        if f.flags & END_HEADERS:
            raw = bytes(self._block.pop(f.sid))
            f.fields = [
                (
                    k.decode() if isinstance(k, bytes) else k,
                    v.decode() if isinstance(v, bytes) else v,
                )
                for k, v in self.dec.decode(raw, raw=True)
            ]

    def outcome(
        self, sid: int | None = None, *, ping_mark: bool = False, timeout: float = 3.0
    ) -> Outcome:
        """Reads until: GOAWAY with an error (then until EOF, briefly), RST_STREAM on `sid`,
        the end of the response on `sid`, EOF, or (with ping_mark: a PING with MARK is sent
        first) the marker's ACK. A GOAWAY(NO_ERROR) is recorded and reading goes on."""
        if ping_mark:
            self.send(ping(MARK))
        out = Outcome("timeout")
        deadline = time.monotonic() + timeout
        body = bytearray()
        resp: list[tuple[str, str]] | None = None
        while True:
            f = self.read_frame(max(0.0, deadline - time.monotonic()))
            if f is None:
                if self.eof:
                    out.kind, out.closed = ("closed" if out.kind == "timeout" else out.kind), True
                break
            out.frames.append(f)
            if f.type == GOAWAY:
                out.goaway = f.code
                if f.code != NO_ERROR:
                    out.kind = "goaway"
                    # the connection should close after it; wait a little to see it
                    while self.read_frame(0.5) is not None:
                        pass
                    out.closed = self.eof
                    break
            elif f.type == RST_STREAM and f.sid == sid:
                out.kind, out.rst = "rst", f.code
                if resp is not None:
                    out.status = int(dict(resp).get(":status", "0"))
                break
            elif f.type == PING and f.flags & ACK and f.payload == MARK and ping_mark:
                out.kind = "ping"
                break
            elif f.type == HEADERS and f.sid == sid and f.fields is not None:
                if resp is None:
                    resp = f.fields
                    if int(dict(resp).get(":status", "0")) < 200:
                        resp = None
                        continue
                    out.response_headers = resp
                else:
                    out.trailers = f.fields
                if f.flags & END_STREAM:
                    out.kind, out.status = "response", int(dict(resp).get(":status", "0"))
                    break
            elif f.type == DATA and f.sid == sid:
                body += f.payload
                if f.payload:
                    # keep the server's windows open so bodies can finish
                    self.send(window_update(0, len(f.payload)), window_update(sid, len(f.payload)))
                if f.flags & END_STREAM:
                    out.kind = "response"
                    out.status = int(dict(resp or []).get(":status", "0"))
                    break
            elif f.type == PING and not f.flags & ACK:
                self.send(ping(f.payload, ack=True))
        out.body = bytes(body)
        if out.kind in ("response", "rst") and out.status is None or out.status == 0:
            # the response head may have been read before outcome() was called
            for f in self.seen:
                if (
                    f.type == HEADERS
                    and f.sid == sid
                    and f.fields
                    and dict(f.fields).get(":status", "1")[0] != "1"
                ):
                    out.status = int(dict(f.fields)[":status"])
                    out.response_headers = out.response_headers or f.fields
                    break
        return out

    def request(
        self, sid: int, fields: list[tuple[str, str]] | None = None, body: bytes | None = None
    ) -> None:
        blk = self.block(fields or req())
        if body is None:
            self.send(headers(sid, blk))
        else:
            self.send(headers(sid, blk, END_HEADERS), data(sid, body, END_STREAM))

    def still_alive(self, sid: int, fields: list[tuple[str, str]] | None = None) -> Outcome:
        """After a stream error the connection must still serve: a new request on `sid`."""
        self.request(sid, fields)
        return self.outcome(sid)
