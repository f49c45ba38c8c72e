"""HTTP/2 peers for differential tests, built on the `h2` library (not sofamesh's codec).

H2RecordingUpstream: an h2c server on 127.0.0.1:0 (a thread per connection) that records
every request (headers as received, body, trailers) and answers as the request's
``x-upstream-action`` header says (comma separated):

    status=N    the response status (default 200)
    size=N      a body of N bytes (default: a short text naming method and path)
    trailers    response trailers (``x-upstream-trailer: t``, ``grpc-status: 0``)
    rst         reset the stream (RST_STREAM INTERNAL_ERROR) instead of answering
    rst-mid     send the headers and part of the body, then reset the stream
    goaway      answer, then send GOAWAY(NO_ERROR) and close the connection
    delay=MS    wait before answering

h2_exchange(): one request over a fresh h2c connection, as a client, with its outcome.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


@dataclass
class H2Record:
    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    conn_id: int = 0

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


def _s(v: bytes | str) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else v


class H2RecordingUpstream:
    def __init__(self) -> None:
        self.records: list[H2Record] = []
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stop = False
        self._conns: list[socket.socket] = []
        self._n = 0

    def start(self) -> H2RecordingUpstream:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop = True
        try:
            self._sock.close()
        except OSError:
            pass
        for c in list(self._conns):
            try:
                c.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            self._n += 1
            self._conns.append(c)
            threading.Thread(target=self._serve, args=(c, self._n), daemon=True).start()

    def _serve(self, sock: socket.socket, conn_id: int) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=False, header_encoding=None, validate_inbound_headers=False
            )
        )
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        streams: dict[int, H2Record] = {}
        draining = False
        try:
            while not (draining and not streams):
                data = sock.recv(65536)
                if not data:
                    return
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    sock.sendall(conn.data_to_send())
                    return
                for ev in events:
                    if isinstance(ev, h2.events.RequestReceived):
                        streams[ev.stream_id] = H2Record(
                            [(_s(k), _s(v)) for k, v in ev.headers], conn_id=conn_id
                        )
                    elif isinstance(ev, h2.events.DataReceived):
                        streams[ev.stream_id].body += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.TrailersReceived):
                        streams[ev.stream_id].trailers = [(_s(k), _s(v)) for k, v in ev.headers]
                    elif isinstance(ev, h2.events.StreamEnded):
                        rec = streams.pop(ev.stream_id)
                        with self._lock:
                            self.records.append(rec)
                        draining = self._answer(conn, sock, ev.stream_id, rec) or draining
                sock.sendall(conn.data_to_send())
        except OSError:
            return
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def _answer(
        self, conn: h2.connection.H2Connection, sock: socket.socket, sid: int, rec: H2Record
    ) -> bool:
        action: dict[str, str] = {}
        for part in ",".join(rec.header("x-upstream-action")).split(","):
            k, _, v = part.strip().partition("=")
            if k:
                action[k] = v
        if "delay" in action:
            time.sleep(int(action["delay"]) / 1000)
        if "rst" in action:
            conn.reset_stream(sid, 2)
            return False
        method = dict(rec.headers).get(":method", "")
        path = dict(rec.headers).get(":path", "")
        if "size" in action:
            body = (b"0123456789abcdef" * (int(action["size"]) // 16 + 1))[: int(action["size"])]
        else:
            body = f"h2-upstream method={method} path={path} got={len(rec.body)}\n".encode()
        if method == "HEAD":
            body = b""
        status = action.get("status", "200")
        hdrs = [(":status", status), ("content-type", "text/plain"), ("x-upstream", "h2")]
        if "trailers" not in action and "rst-mid" not in action:
            hdrs.append(("content-length", str(len(body) if method != "HEAD" else 12)))
        end_on_headers = not body and "trailers" not in action
        conn.send_headers(sid, hdrs, end_stream=end_on_headers)
        if "rst-mid" in action:
            self._send_body(conn, sock, sid, body[: len(body) // 2], False)
            sock.sendall(conn.data_to_send())
            time.sleep(0.05)
            conn.reset_stream(sid, 2)
            return False
        if body:
            self._send_body(conn, sock, sid, body, "trailers" not in action)
        if "trailers" in action:
            conn.send_headers(
                sid, [("x-upstream-trailer", "t"), ("grpc-status", "0")], end_stream=True
            )
        if "goaway" in action:
            # graceful: streams already open finish, then the connection closes
            conn.close_connection(last_stream_id=conn.highest_inbound_stream_id)
            sock.sendall(conn.data_to_send())
            return True
        return False

    def _send_body(
        self,
        conn: h2.connection.H2Connection,
        sock: socket.socket,
        sid: int,
        body: bytes,
        end: bool,
    ) -> None:
        """Sends as the peer's windows allow, reading its WINDOW_UPDATEs meanwhile."""
        off = 0
        while off < len(body):
            room = min(
                conn.local_flow_control_window(sid), conn.max_outbound_frame_size, len(body) - off
            )
            if room <= 0:
                sock.sendall(conn.data_to_send())
                data = sock.recv(65536)
                if not data:
                    raise OSError("peer closed")
                conn.receive_data(data)
                continue
            conn.send_data(sid, body[off : off + room])
            off += room
        if end:
            conn.end_stream(sid)

    def wait_case(self, case_id: str, n: int = 1, timeout: float = 1.0) -> list[H2Record]:
        """The records of requests with this x-case-id, once there are n (or at timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                got = [r for r in self.records if case_id in r.header("x-case-id")]
            if len(got) >= n or time.monotonic() > deadline:
                return got
            time.sleep(0.01)


@dataclass
class Exchange:
    """What an h2 client saw for one request."""

    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] | None = None
    reset: int | None = None  # RST_STREAM error code
    goaway: int | None = None  # GOAWAY error code
    closed: bool = False
    frames: int = 0

    def digest(self) -> str:
        return f"{len(self.body)}:{hashlib.sha256(self.body).hexdigest()[:16]}"


def h2_exchange(
    port: int,
    headers: list[tuple[str, str]],
    body: bytes | None = None,
    trailers: list[tuple[str, str]] | None = None,
    *,
    reset_after_headers: bool = False,
    window: int | None = None,
    timeout: float = 10.0,
    chunk: int = 16384,
) -> Exchange:
    """One request on a fresh connection. `window`: the client's initial stream window
    (its flow control: the response waits for the client's WINDOW_UPDATEs, sent as the
    body is consumed)."""
    cfg = h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_inbound_headers=False
    )
    conn = h2.connection.H2Connection(cfg)
    conn.initiate_connection()
    if window is not None:
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out = Exchange()
    try:
        sock.sendall(conn.data_to_send())
        if window is not None:
            # the window applies once the proxy acknowledged it (h2 counts from then)
            acked = 0
            while acked < 2:  # the empty SETTINGS of initiate_connection, then ours
                data = sock.recv(65536)
                if not data:
                    out.closed = True
                    return out
                for ev in conn.receive_data(data):
                    acked += isinstance(ev, h2.events.SettingsAcknowledged)
                sock.sendall(conn.data_to_send())
        sid = conn.get_next_available_stream_id()
        end_on_headers = body is None and trailers is None
        conn.send_headers(sid, headers, end_stream=end_on_headers)
        sock.sendall(conn.data_to_send())
        if reset_after_headers:
            conn.reset_stream(sid, 8)
            sock.sendall(conn.data_to_send())
            time.sleep(0.2)
            # the connection still serves: a second request on it
            sid = conn.get_next_available_stream_id()
            conn.send_headers(
                sid, [h for h in headers if h[0] != "x-upstream-action"], end_stream=True
            )
            sock.sendall(conn.data_to_send())
        pending = body or b""
        off = 0
        done_sending = end_on_headers or reset_after_headers
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not done_sending:
                while off < len(pending):
                    room = min(
                        conn.local_flow_control_window(sid),
                        conn.max_outbound_frame_size,
                        chunk,
                        len(pending) - off,
                    )
                    if room <= 0:
                        break
                    conn.send_data(sid, pending[off : off + room])
                    off += room
                if off >= len(pending):
                    if trailers is not None:
                        conn.send_headers(sid, trailers, end_stream=True)
                    else:
                        conn.end_stream(sid)
                    done_sending = True
                sock.sendall(conn.data_to_send())
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                out.closed = True
                break
            for ev in conn.receive_data(data):
                out.frames += 1
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    out.headers = [(_s(k), _s(v)) for k, v in ev.headers]
                    out.status = int(dict(out.headers)[":status"])
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    out.body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                    out.trailers = [(_s(k), _s(v)) for k, v in ev.headers]
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    out.reset = int(ev.error_code)
                    return out
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    sock.sendall(conn.data_to_send())
                    return out
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    out.goaway = int(ev.error_code)
            sock.sendall(conn.data_to_send())
            if out.goaway is not None and out.goaway != 0:
                return out
        return out
    finally:
        sock.close()


class RawH2Upstream:
    """An HTTP/2 upstream that answers each request with raw frames chosen by the last part
    of its :path (SCRIPTS below): malformed responses, resets, GOAWAY, PUSH_PROMISE... to
    see how a proxy's client side takes them. Frames are written by hand; header blocks
    come from the `hpack` package or are literal bytes."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stop = False
        self._conns: list[socket.socket] = []
        self.paths: list[str] = []

    def start(self) -> RawH2Upstream:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop = True
        for s in [self._sock, *self._conns]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        import hpack

        dec, enc = hpack.Decoder(), hpack.Encoder()
        buf = b""
        blocks: dict[int, bytes] = {}
        try:
            while len(buf) < 24:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
            buf = buf[24:]
            sock.sendall(_frame(4, 0, 0, b""))
            while True:
                while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                    n = int.from_bytes(buf[:3], "big")
                    ftype, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    payload, buf = buf[9 : 9 + n], buf[9 + n :]
                    if ftype == 4 and not flags & 1:
                        sock.sendall(_frame(4, 1, 0, b""))
                    elif ftype == 6 and not flags & 1:
                        sock.sendall(_frame(6, 1, 0, payload))
                    elif ftype in (1, 9):
                        if ftype == 1:
                            p = payload
                            if flags & 0x8:
                                p = p[1 : len(p) - p[0]]
                            if flags & 0x20:
                                p = p[5:]
                            blocks[sid] = p
                        else:
                            blocks[sid] = blocks.get(sid, b"") + payload
                        if flags & 0x4:
                            fields = {
                                _s(k): _s(v) for k, v in dec.decode(blocks.pop(sid), raw=True)
                            }
                            script = fields.get(":path", "/").rsplit("/", 1)[-1]
                            self.paths.append(script)
                            out = SCRIPTS.get(script, SCRIPTS["ok"])(sid, enc)
                            if out:
                                sock.sendall(out)
                            if script.startswith("close"):
                                return
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
        except OSError:
            return
        finally:
            try:
                sock.close()
            except OSError:
                pass


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload
    )


def _lit(name: bytes, value: bytes) -> bytes:
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def _resp(sid: int, enc, fields, body: bytes | None = b"ok\n", flags: int = 0) -> bytes:
    blk = enc.encode(fields) if isinstance(fields, list) else fields
    if body is None:
        return _frame(1, 0x5 | flags, sid, blk)
    return _frame(1, 0x4, sid, blk) + _frame(0, 0x1, sid, body)


OK_FIELDS = [(":status", "200"), ("content-type", "text/plain")]

SCRIPTS = {
    "ok": lambda sid, enc: _resp(sid, enc, OK_FIELDS),
    "upper-name": lambda sid, enc: _resp(
        sid, enc, _lit(b":status", b"200") + _lit(b"X-Upper", b"1")
    ),
    "bad-status": lambda sid, enc: _resp(sid, enc, _lit(b":status", b"2x0")),
    "no-status": lambda sid, enc: _resp(sid, enc, _lit(b"content-type", b"text/plain")),
    "connection-field": lambda sid, enc: _resp(
        sid, enc, _lit(b":status", b"200") + _lit(b"connection", b"close")
    ),
    "cl-mismatch": lambda sid, enc: _resp(sid, enc, [*OK_FIELDS, ("content-length", "10")], b"abc"),
    "push": lambda sid, enc: (
        _frame(
            5,
            0x4,
            sid,
            (sid + 1).to_bytes(4, "big")
            + enc.encode(
                [(":method", "GET"), (":scheme", "http"), (":path", "/p"), (":authority", "a")]
            ),
        )
        + _resp(sid, enc, OK_FIELDS)
    ),
    "rst-refused": lambda sid, enc: _frame(3, 0, sid, (7).to_bytes(4, "big")),
    "rst-cancel-after-headers": lambda sid, enc: (
        _frame(1, 0x4, sid, enc.encode(OK_FIELDS)) + _frame(3, 0, sid, (8).to_bytes(4, "big"))
    ),
    "goaway-below": lambda sid, enc: _frame(
        7, 0, 0, (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
    ),
    "close-after-goaway-error": lambda sid, enc: _frame(
        7, 0, 0, sid.to_bytes(4, "big") + (2).to_bytes(4, "big")
    ),
    "informational": lambda sid, enc: (
        _frame(1, 0x4, sid, enc.encode([(":status", "103"), ("link", "</s.css>")]))
        + _resp(sid, enc, OK_FIELDS)
    ),
    "trailers-pseudo": lambda sid, enc: (
        _frame(1, 0x4, sid, enc.encode(OK_FIELDS))
        + _frame(0, 0, sid, b"x")
        + _frame(1, 0x5, sid, _lit(b":status", b"200"))
    ),
    "trailers": lambda sid, enc: (
        _frame(1, 0x4, sid, enc.encode(OK_FIELDS))
        + _frame(0, 0, sid, b"x")
        + _frame(1, 0x5, sid, enc.encode([("grpc-status", "0")]))
    ),
    "window-overflow": lambda sid, enc: (
        _frame(8, 0, sid, (0x7FFFFFFF).to_bytes(4, "big")) + _resp(sid, enc, OK_FIELDS)
    ),
    "bad-hpack": lambda sid, enc: _frame(1, 0x5, sid, b"\x80"),
    "data-after-end": lambda sid, enc: _resp(sid, enc, OK_FIELDS) + _frame(0, 0x1, sid, b"late"),
    "padding": lambda sid, enc: (
        _frame(1, 0x4 | 0x8, sid, b"\x03" + enc.encode(OK_FIELDS) + b"\0\0\0")
        + _frame(0, 0x1 | 0x8, sid, b"\x02ok\n\0\0")
    ),
    "close-before-answer": lambda sid, enc: b"",
    "close-mid-body": lambda sid, enc: (
        _frame(1, 0x4, sid, enc.encode([*OK_FIELDS, ("content-length", "100")]))
        + _frame(0, 0, sid, b"x" * 10)
    ),
    "204-with-body": lambda sid, enc: _resp(sid, enc, [(":status", "204")], b"body"),
    "settings-bad": lambda sid, enc: _frame(
        4, 0, 0, (4).to_bytes(2, "big") + (1 << 31).to_bytes(4, "big")
    ),
}
