"""A gRPC unary client on sofamesh's own sans-IO HTTP/2 codec (`_core/codecs/http2`), for calls
made per request (envoy.filters.http.ratelimit's ShouldRateLimit). grpc.aio costs about 250 us
of CPU per unary call; this costs a few tens: no task, no thread, one HTTP/2 connection per
service host, a stream per call.

    call(path, message bytes, timeout, done) -> done(grpc_status, response bytes | None)

`done` is called exactly once: the response (status 0), the server's grpc-status, or a local
status: DEADLINE_EXCEEDED at `timeout` (the stream is reset), UNAVAILABLE when the connection
cannot be made or is lost, INTERNAL for a malformed answer. Calls made while the connection
is being set up, or over the peer's SETTINGS_MAX_CONCURRENT_STREAMS (or refused with
REFUSED_STREAM for it), wait for a stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from sofamesh._core.codecs import http2

log = logging.getLogger("sofamesh.grpc")

OK, CANCELLED, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE = 0, 1, 4, 13, 14
Done = Callable[[int, "bytes | None"], None]


class _Call:
    __slots__ = ("body", "done", "finished", "headers", "sid", "status", "timer")

    def __init__(self, headers: list, body: bytes, done: Done) -> None:
        self.headers = headers
        self.body = body
        self.done = done
        self.sid = 0
        self.timer: Any = None
        self.status = -1  # grpc-status once seen
        self.finished = False


def _grpc_status(headers: list) -> int:
    for k, v in headers:
        if k == b"grpc-status":
            try:
                return int(v)
            except ValueError:
                return INTERNAL
    return -1


class GrpcUnaryChannel(asyncio.Protocol):
    """Unary calls to one host over one HTTP/2 connection, (re)made on demand."""

    def __init__(
        self, loop: Any, host: str, port: int, connect_timeout: float = 5.0, authority: str = ""
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.authority = (authority or f"{host}:{port}").encode()
        self.codec: Any = None
        self.transport: Any = None
        self.connecting = False
        self.calls: dict[int, _Call] = {}  # open streams
        self.waiting: deque[_Call] = deque()  # not yet sent: connecting, or no stream free
        self.closed = False
        self.ready = False  # the server's first SETTINGS arrived on this connection
        self.body: dict[int, bytearray] = {}

    # -- calls ------------------------------------------------------------------------------
    def call(self, path: bytes, message: bytes, timeout: float, done: Done) -> None:
        ms = max(int(timeout * 1000), 1)
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", self.authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"grpc-timeout", b"%dm" % ms),
        ]
        c = _Call(headers, b"\x00" + len(message).to_bytes(4, "big") + message, done)
        c.timer = self.loop.call_later(timeout, self._expire, c)
        if self.closed:
            self._finish(c, UNAVAILABLE, None)
            return
        if self.transport is None or not self.ready:
            self.waiting.append(c)
            if not self.connecting:
                self.connecting = True
                self.loop.create_task(self._connect())
            return
        self._send(c)
        self._flush()

    def _send(self, c: _Call) -> None:
        codec = self.codec
        if not codec.can_open_stream:
            self.waiting.append(c)
            return
        sid = codec.get_next_available_stream_id()
        c.sid = sid
        self.calls[sid] = c
        codec.send_headers(sid, c.headers)
        codec.send_data(sid, c.body, end_stream=True)

    def _flush(self) -> None:
        if self.transport is not None and self.codec is not None:
            out = self.codec.data_to_send()
            if out:
                self.transport.write(out)

    def _finish(self, c: _Call, status: int, data: bytes | None) -> None:
        if c.finished:
            return
        c.finished = True
        if c.timer is not None:
            c.timer.cancel()
        if c.sid:
            self.calls.pop(c.sid, None)
            self.body.pop(c.sid, None)
        try:
            c.done(status, data)
        except Exception:  # a caller's bug must not break the connection
            log.exception("gRPC call completion failed")

    def _expire(self, c: _Call) -> None:
        c.timer = None
        if c.finished:
            return
        if c.sid and self.codec is not None and c.sid in self.calls:
            try:
                self.codec.reset_stream(c.sid, http2.CANCEL)
            except Exception as e:  # noqa: BLE001 (the stream already ended in the codec)
                log.debug("gRPC %s:%s: reset: %r", self.host, self.port, e)
            self._flush()
        else:
            try:
                self.waiting.remove(c)
            except ValueError:
                pass
        self._finish(c, DEADLINE_EXCEEDED, None)
        self._drain()

    def _drain(self) -> None:
        """Sends waiting calls while the connection has streams free."""
        if self.transport is None or self.codec is None or not self.ready:
            return
        sent = False
        while self.waiting and self.codec.can_open_stream:
            c = self.waiting.popleft()
            if not c.finished:
                self._send(c)
                sent = True
        if sent:
            self._flush()

    # -- the connection ---------------------------------------------------------------------
    async def _connect(self) -> None:
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: self, self.host, self.port),
                self.connect_timeout,
            )
        except (TimeoutError, OSError) as e:
            log.debug("gRPC %s:%s: connect failed: %r", self.host, self.port, e)
            self.connecting = False
            self._fail_all(UNAVAILABLE)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.connecting = False
        self.ready = False  # calls wait for the server's SETTINGS (its stream limit)
        self.codec = http2.Connection(True)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.codec.feed(data)
        except Exception as e:  # noqa: BLE001 (a peer's bad bytes end this connection only)
            log.debug("gRPC %s:%s: %r", self.host, self.port, e)
            self.transport.close()
            return
        for ev in events:
            t = type(ev)
            if t is http2.Data:
                if ev.flow_controlled_length:
                    self.codec.acknowledge_received_data(ev.stream_id, ev.flow_controlled_length)
                if ev.stream_id in self.calls:
                    self.body.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                    if ev.end_stream:  # no trailers: not a gRPC answer
                        self._end(ev.stream_id, -1)
            elif t is http2.ResponseHeaders:
                c = self.calls.get(ev.stream_id)
                if c is None:
                    continue
                if ev.status != 200:
                    self._finish(c, UNAVAILABLE if ev.status in (502, 503, 504) else INTERNAL, None)
                elif ev.end_stream:  # trailers-only: the status is in the headers
                    self._end(ev.stream_id, _grpc_status(ev.headers))
            elif t is http2.Trailers:
                self._end(ev.stream_id, _grpc_status(ev.headers))
            elif t is http2.StreamReset:
                c = self.calls.pop(ev.stream_id, None)
                if c is None:
                    continue
                if ev.error_code == http2.REFUSED_STREAM and not c.finished:
                    # over the server's MAX_CONCURRENT_STREAMS (sent before its SETTINGS
                    # arrived): not processed, so sent again when a stream is free
                    self.body.pop(ev.stream_id, None)
                    c.sid = 0
                    self.waiting.append(c)
                else:
                    self._finish(c, UNAVAILABLE, None)
            elif t is http2.SettingsReceived:
                self.ready = True
            elif t is http2.GoAway or t is http2.ConnectionError:
                self.transport.close()
                break
        self._drain()
        self._flush()

    def _end(self, sid: int, status: int) -> None:
        c = self.calls.get(sid)
        if c is None:
            return
        if status != OK:
            self._finish(c, INTERNAL if status < 0 else status, None)
            return
        body = bytes(self.body.get(sid) or b"")
        if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._finish(c, INTERNAL, None)  # one uncompressed message expected
            return
        self._finish(c, OK, body[5:])

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.codec = None
        self.ready = False
        self._fail_all(UNAVAILABLE)

    def _fail_all(self, status: int) -> None:
        calls = list(self.calls.values()) + list(self.waiting)
        self.calls.clear()
        self.waiting.clear()
        self.body.clear()
        for c in calls:
            self._finish(c, status, None)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self._fail_all(UNAVAILABLE)
