"""A gRPC client on sofamesh's own sans-IO HTTP/2 codec (`_core/codecs/http2`), in the event
loop: no task, no thread, one HTTP/2 connection per service host, a stream per call.
grpc.aio costs about 250 us of CPU per unary call and, for a client stream, a poller thread
and its wake-ups per message; this costs a few tens of us, and nothing between messages.

Unary calls, made per request (envoy.filters.http.ratelimit's ShouldRateLimit):

    call(path, message bytes, timeout, done) -> done(grpc_status, response bytes | None)

Client streams, for reports batched off the hot path (the access log service's
StreamAccessLogs):

    s = open_stream(path, done); s.write(message bytes) -> bool; s.cancel()

`done` is called exactly once: the response (status 0), the server's grpc-status, or a local
status: DEADLINE_EXCEEDED at `timeout` (the stream is reset), UNAVAILABLE when the connection
cannot be made or is lost, INTERNAL for a malformed answer. Calls made while the connection
is being set up, or over the peer's SETTINGS_MAX_CONCURRENT_STREAMS (or refused with
REFUSED_STREAM for it), wait for a stream; so do a client stream's messages. A client stream's
`write` refuses (returns False: the caller drops and counts) once `max_buffered` bytes wait
for the server's flow-control window, so a slow service never grows the sidecar's memory.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from sofamesh._core.codecs import http2

log = logging.getLogger("sofamesh.grpc")

OK, CANCELLED, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE = 0, 1, 4, 13, 14
Done = Callable[[int, "bytes | None"], None]


class _Call:
    __slots__ = (
        "body",
        "done",
        "finished",
        "headers",
        "on_open",
        "sid",
        "status",
        "stream",
        "timer",
    )

    def __init__(self, headers: list, body: Any, done: Done, stream: bool = False) -> None:
        self.headers = headers
        self.body = body  # a unary call's framed message; a stream's messages not yet sent
        self.done = done
        self.sid = 0
        self.timer: Any = None
        self.status = -1  # grpc-status once seen
        self.finished = False
        self.stream = stream  # a client stream: open until the server ends it or cancel()
        self.on_open: Any = None  # a client stream's: called once its HEADERS are sent


class ClientStream:
    """A client-streaming call: `write` frames a message onto the stream (queued until the
    stream is open), `cancel` resets it. The response, or the status that ended the stream,
    goes to the `done` given to `open_stream`."""

    __slots__ = ("c", "ch", "max_buffered", "queued")

    def __init__(self, ch: GrpcUnaryChannel, c: _Call, max_buffered: int) -> None:
        self.ch = ch
        self.c = c
        self.max_buffered = max_buffered
        self.queued = 0  # bytes of messages waiting for the stream to open

    @property
    def finished(self) -> bool:
        return self.c.finished

    @property
    def is_open(self) -> bool:
        """HEADERS sent and not ended: a write leaves now (as the window allows)."""
        return bool(self.c.sid) and not self.c.finished

    def write(self, message: bytes) -> bool:
        """Sends one message; False (nothing sent) when the stream has ended or `max_buffered`
        bytes already wait to leave."""
        c = self.c
        if c.finished:
            return False
        framed = b"\x00" + len(message).to_bytes(4, "big") + message
        codec = self.ch.codec
        if not c.sid:
            if self.queued >= self.max_buffered:
                return False
            c.body.append(framed)
            self.queued += len(framed)
            return True
        if codec.outbound_buffered(c.sid) >= self.max_buffered:
            return False
        codec.send_data(c.sid, framed)
        self.ch._flush()
        return True

    def cancel(self) -> None:
        self.ch._cancel(self.c)


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
    def _headers(self, path: bytes) -> list[tuple[bytes, bytes]]:
        return [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", self.authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]

    def call(self, path: bytes, message: bytes, timeout: float, done: Done) -> None:
        headers = self._headers(path)
        headers.append((b"grpc-timeout", b"%dm" % max(int(timeout * 1000), 1)))
        c = _Call(headers, b"\x00" + len(message).to_bytes(4, "big") + message, done)
        c.timer = self.loop.call_later(timeout, self._expire, c)
        self._start(c)

    def open_stream(
        self, path: bytes, done: Done, max_buffered: int = 1 << 20, on_open: Any = None
    ) -> ClientStream:
        """A client-streaming call on `path` (no deadline: it lasts until the server ends it,
        the connection is lost, or cancel()). `on_open()` is called once its HEADERS are sent
        (the connection is up and a stream was free)."""
        c = _Call(self._headers(path), [], done, stream=True)
        c.on_open = on_open
        s = ClientStream(self, c, max_buffered)
        self._start(c)
        return s

    def _start(self, c: _Call) -> None:
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
        if c.stream:
            for framed in c.body:
                codec.send_data(sid, framed)
            c.body = []
            on_open, c.on_open = c.on_open, None
            if on_open is not None:
                on_open()
        else:
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
            if c.stream and self.codec is not None:
                # the server answered while our side is still open: close it, so the stream
                # stops counting against the server's concurrent streams
                self._reset(c.sid)
        try:
            c.done(status, data)
        except Exception:  # a caller's bug must not break the connection
            log.exception("gRPC call completion failed")

    def _expire(self, c: _Call) -> None:
        c.timer = None
        if c.finished:
            return
        self._abandon(c, DEADLINE_EXCEEDED)

    def _cancel(self, c: _Call) -> None:
        if not c.finished:
            self._abandon(c, CANCELLED)

    def _abandon(self, c: _Call, status: int) -> None:
        """Ends a call from our side: its stream reset, or taken off the waiting list."""
        if c.sid and self.codec is not None and c.sid in self.calls:
            self._reset(c.sid)
        else:
            try:
                self.waiting.remove(c)
            except ValueError:
                pass
        c.stream = False  # reset already
        self._finish(c, status, None)
        self._drain()

    def _reset(self, sid: int) -> None:
        if self.codec.stream_state(sid) == "closed":
            return
        try:
            self.codec.reset_stream(sid, http2.CANCEL)
        except Exception as e:  # noqa: BLE001 (the stream already ended in the codec)
            log.debug("gRPC %s:%s: reset: %r", self.host, self.port, e)
        self._flush()

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
                if ev.error_code == http2.REFUSED_STREAM and not c.finished and not c.stream:
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
        self._fail_all(UNAVAILABLE)
        if self.transport is not None:
            self.transport.close()


def cluster_target(clusters: dict, name: str, spread: bool = True) -> tuple[str, int] | None:
    """The host of cluster `name` a call goes to: a healthy one (any when none is), at
    random among several when `spread`, else the first; None when the cluster has none."""
    cl = clusters.get(name)
    if cl is None or not cl.hosts:
        return None
    hosts = [h for h in cl.hosts if h.healthy] or list(cl.hosts)
    h = hosts[0] if len(hosts) == 1 or not spread else random.choice(hosts)
    return h.address, h.port


class ChannelCache:
    """One GrpcUnaryChannel per host of a service's cluster (a filter's calls to its
    authorization or rate-limit service); at most MAX kept, as hosts come and go (EDS)."""

    MAX = 16

    def __init__(
        self, loop: Any, clusters: Callable[[], dict], cluster: str, authority: str = ""
    ) -> None:
        self.loop = loop
        self.clusters = clusters
        self.cluster = cluster
        self.authority = authority  # GrpcService.envoy_grpc.authority, when set
        self.channels: dict[tuple[str, int], GrpcUnaryChannel] = {}

    def get(self, addr: tuple[str, int]) -> GrpcUnaryChannel:
        ch = self.channels.get(addr)
        if ch is None:
            if len(self.channels) >= self.MAX:
                self.close()
            cl = self.clusters().get(self.cluster)
            ct = getattr(cl, "connect_timeout", 5.0) or 5.0
            ch = self.channels[addr] = GrpcUnaryChannel(
                self.loop, addr[0], addr[1], ct, self.authority
            )
        return ch

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.channels.clear()
