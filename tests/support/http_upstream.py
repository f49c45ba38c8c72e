"""A recording HTTP/1.1 upstream for proxy tests: threads on 127.0.0.1:0, raw bytes, scripted replies.

Each named listener (``RecordingUpstream(["a", "b"])``) is a separate port, so a test can tell
which cluster a proxy picked. Every request that arrives is recorded exactly as the upstream
saw it (header names with their case, order and repeats; the body de-framed; how it was
framed), and the reply is scripted by the request's ``x-upstream-action`` header, a comma
separated list of ``key`` or ``key=value``:

    status=N       reply with status N (default 200)
    delay=MS       sleep MS milliseconds before replying
    fail=N         the first N attempts with this ``x-case-id`` get 503, later ones the reply
    size=N         reply body of N bytes (default: a short text naming listener, method, path)
    chunked        reply with a chunked body (three chunks)
    close          reply with ``connection: close`` and close the connection
    eof-body       reply without content-length or chunked: the body ends when we close
    close-mid      promise content-length 1000, send 100 bytes, then close (a reset mid-body)
    close-early    close the connection without replying at all
    ws             reply 101 Switching Protocols and echo raw bytes until the peer closes
    secret         add an ``x-upstream-secret`` response header (for response_headers_to_remove)
    garbage-reply  answer bytes that are not HTTP, then close
    huge-headers=N add N KiB of response headers
    interim-100    send ``100 Continue`` before the final response
    trailers       reply chunked with a trailer field (``x-upstream-trailer: t``)
    cl-and-chunked reply chunked (three chunks) and also say ``content-length: 5`` (desync bait)
    dup-cl         send the content-length line twice, same value
    dup-cl-differ  send two content-length lines, the second one larger by one
    cl-list        one content-length line holding the value twice (``content-length: N, N``)

Attempts per listener and ``x-case-id`` are counted (``attempts(case_id)``), and each reply
says which attempt it answers (``x-upstream-attempt``), so retries are visible.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Self

MAX_HEAD = 256 * 1024


@dataclass
class Record:
    """One request as the upstream received it."""

    listener: str
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]  # raw names (case kept), in arrival order
    body: bytes
    framing: str  # "content-length", "chunked" or "none"
    trailers: list[tuple[str, str]] = field(default_factory=list)
    conn_id: int = 0

    def header(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


class _BadRequest(Exception):
    pass


class _Conn:
    """Buffered reader over a blocking socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def read_until(self, sep: bytes, limit: int) -> bytes | None:
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise _BadRequest("head too large")
            if not self._fill():
                if self.buf:
                    raise _BadRequest("eof inside a message")
                return None

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise _BadRequest("eof inside a body")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def _parse_headers(lines: list[bytes]) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(f"bad header line {line!r}")
        out.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return out


def _read_chunked(conn: _Conn) -> tuple[bytes, list[tuple[str, str]]]:
    body = bytearray()
    while True:
        line = conn.read_until(b"\r\n", 4096)
        if line is None:
            raise _BadRequest("eof in chunk size")
        size_text = line[:-2].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _BadRequest(f"bad chunk size {size_text!r}") from None
        if size == 0:
            trailer_block = conn.read_until(b"\r\n", 65536)
            lines = []
            while trailer_block not in (b"\r\n", None):
                lines.append(trailer_block[:-2])
                trailer_block = conn.read_until(b"\r\n", 65536)
            return bytes(body), _parse_headers(lines)
        body += conn.read_exact(size)
        if conn.read_exact(2) != b"\r\n":
            raise _BadRequest("chunk not followed by CRLF")


def _parse_action(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in value.split(","):
        part = part.strip()
        if part:
            k, _, v = part.partition("=")
            out[k.strip()] = v.strip()
    return out


class RecordingUpstream:
    """HTTP/1.1 server on one loopback port per name; records requests, replies as scripted."""

    def __init__(self, names: list[str] | tuple[str, ...] = ("a",)):
        self.names = list(names)
        self.ports: dict[str, int] = {}
        self.records: list[Record] = []
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._listeners: list[socket.socket] = []
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._next_conn = 0
        self.connections_accepted = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> RecordingUpstream:
        for name in self.names:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(128)
            self.ports[name] = s.getsockname()[1]
            self._listeners.append(s)
            t = threading.Thread(target=self._accept_loop, args=(name, s), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stopping = True
        for s in self._listeners:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        for t in self._threads:
            t.join(timeout=2)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what tests read ---------------------------------------------------------------------
    def clear(self) -> None:
        with self._lock:
            self.records.clear()
            self._attempts.clear()

    def snapshot(self) -> list[Record]:
        with self._lock:
            return list(self.records)

    def attempts(self, case_id: str, listener: str | None = None) -> int:
        with self._lock:
            return sum(
                n
                for key, n in self._attempts.items()
                if key.partition("/")[2] == case_id
                and (listener is None or key.partition("/")[0] == listener)
            )

    def wait_records(self, n: int, timeout: float = 2.0) -> list[Record]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.records) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.records)

    # -- serving -----------------------------------------------------------------------------
    def _accept_loop(self, name: str, lsock: socket.socket) -> None:
        while not self._stopping:
            try:
                sock, _ = lsock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(sock)
                self._next_conn += 1
                conn_id = self._next_conn
                self.connections_accepted += 1
            t = threading.Thread(target=self._serve, args=(name, sock, conn_id), daemon=True)
            t.start()

    def _serve(self, name: str, sock: socket.socket, conn_id: int) -> None:
        conn = _Conn(sock)
        try:
            # (inside the try: stop() may have closed the socket before this thread ran)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while not self._stopping:
                if not self._serve_one(name, conn, conn_id):
                    break
        except (_BadRequest, OSError):
            pass
        finally:
            with self._lock:
                self._conns.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    def _serve_one(self, name: str, conn: _Conn, conn_id: int) -> bool:
        head = conn.read_until(b"\r\n\r\n", MAX_HEAD)
        if head is None:
            return False
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ")
        if len(parts) != 3:
            raise _BadRequest(f"bad request line {lines[0]!r}")
        method, target, version = parts
        headers = _parse_headers(lines[1:])
        lower = [(k.lower(), v) for k, v in headers]
        te = ",".join(v for k, v in lower if k == "transfer-encoding").lower()
        cl = [v for k, v in lower if k == "content-length"]
        trailers: list[tuple[str, str]] = []
        if "chunked" in te:
            body, trailers = _read_chunked(conn)
            framing = "chunked"
        elif cl:
            body = conn.read_exact(int(cl[0]))
            framing = "content-length"
        else:
            body, framing = b"", "none"
        action = _parse_action(",".join(v for k, v in lower if k == "x-upstream-action"))
        case_id = next((v for k, v in lower if k == "x-case-id"), "")
        rec = Record(name, method, target, version, headers, body, framing, trailers, conn_id)
        with self._cond:
            self.records.append(rec)
            key = f"{name}/{case_id}"  # per listener: a mirrored copy is not an attempt
            attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
            self._cond.notify_all()
        return self._reply(name, conn, rec, action, attempt)

    def _reply(
        self, name: str, conn: _Conn, rec: Record, action: dict[str, str], attempt: int
    ) -> bool:
        sock = conn.sock
        if "delay" in action:
            time.sleep(int(action["delay"]) / 1000)
        if "close-early" in action:
            return False
        if "garbage-reply" in action:
            sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
            return False
        if "interim-100" in action:
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        status = int(action.get("status", "200"))
        if "fail" in action and attempt <= int(action["fail"]):
            status = 503
        if "ws" in action:
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                b"connection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            )
            sock.sendall(bytes(conn.buf))
            conn.buf.clear()
            while True:
                data = sock.recv(65536)
                if not data:
                    return False
                sock.sendall(b"echo:" + data)
        if "size" in action:
            body = (b"0123456789abcdef" * (int(action["size"]) // 16 + 1))[: int(action["size"])]
        else:
            body = f"upstream={name} method={rec.method} target={rec.target} attempt={attempt}\n".encode()
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
            "server: recording-upstream",
            "content-type: text/plain",
            f"x-upstream-name: {name}",
            f"x-upstream-attempt: {attempt}",
        ]
        if "secret" in action:
            head.append("x-upstream-secret: hide-me")
        for i in range(int(action.get("huge-headers", "0"))):
            head.append(f"x-big-{i}: " + "h" * 1000)
        keep = rec.version == "HTTP/1.1" and "close" not in [
            v.lower() for v in rec.header("connection")
        ]
        if "close" in action:
            keep = False
        if not keep:
            head.append("connection: close")
        if status in (204, 304):
            payload = b""  # no body and no framing headers (RFC 9110 6.4.1)
        elif rec.method == "HEAD":
            if "cl-and-chunked" in action:
                head += ["content-length: 5", "transfer-encoding: chunked"]
            else:
                head.append(f"content-length: {len(body)}")
            payload = b""
        elif "close-mid" in action:
            head.append("content-length: 1000")
            payload = body[:100].ljust(100, b"x")
            keep = False
        elif "eof-body" in action:
            payload = body
            keep = False
        elif "trailers" in action:
            head.append("transfer-encoding: chunked")
            payload = b"%x\r\n%s\r\n0\r\nx-upstream-trailer: t\r\n\r\n" % (len(body), body)
        elif "chunked" in action or "cl-and-chunked" in action:
            if "cl-and-chunked" in action:
                head.append("content-length: 5")
            head.append("transfer-encoding: chunked")
            thirds = [
                body[: len(body) // 3],
                body[len(body) // 3 : 2 * len(body) // 3],
                body[2 * len(body) // 3 :],
            ]
            payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in thirds if c) + b"0\r\n\r\n"
        elif "dup-cl" in action:
            head += [f"content-length: {len(body)}"] * 2
            payload = body
        elif "dup-cl-differ" in action:
            head += [f"content-length: {len(body)}", f"content-length: {len(body) + 1}"]
            payload = body
        elif "cl-list" in action:
            head.append(f"content-length: {len(body)}, {len(body)}")
            payload = body
        else:
            head.append(f"content-length: {len(body)}")
            payload = body
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
        return keep


_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    400: "Bad Request",
    404: "Not Found",
    418: "I'm a teapot",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
