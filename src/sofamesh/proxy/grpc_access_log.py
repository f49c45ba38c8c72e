"""Envoy's gRPC access log (`envoy.access_loggers.http_grpc`): entries batched to an access log
service (`envoy.service.accesslog.v3`, e.g. `sofamesh mixer`) over one client stream.

Hot path (`log`, once per request, in Cython: `_core/als_wire.HttpLogBuffer`): the stream's
HTTPAccessLogEntry is encoded straight to protobuf wire bytes into a buffer (no tuple, no
protobuf object: those cost more than the proxying). Every `buffer_flush_interval` (or once
`buffer_size_bytes` of entries are buffered) the buffer becomes one batch, wrapped as one
`StreamAccessLogsMessage` and written to the stream, in the event loop, on sofamesh's own
HTTP/2 client (`grpc_unary.GrpcUnaryChannel.open_stream`): no task, no thread, nothing between
batches (grpc.aio's poller thread and wake-ups cost about 2 us a request here).

While the stream is (re)connecting, with backoff, batches wait on a bounded queue; when the
service is slow (its flow-control window stays shut) or gone, further batches are dropped and
counted (Envoy's `access_logs.grpc_access_log.logs_dropped`); the request path never waits
for the service.

    encoded entries --flush--> stream open? write : queue of batches (bounded) --open--> write

Subclasses that log something else (tcp_grpc_access_log) buffer entry tuples with `add_entry`
and their own `encode`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from sofamesh._core.als_wire import HttpLogBuffer, with_identifier
from sofamesh.proxy.grpc_unary import ClientStream, GrpcUnaryChannel

log = logging.getLogger("sofamesh.access_log")

HTTP_GRPC_TYPE = (
    "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
)
_METHOD = b"/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
MAX_QUEUED_BATCHES = 64  # bounded: with the service gone or slow, at most this many wait


def _seconds(d: Any, default: float) -> float:
    return d.ToNanoseconds() / 1e9 if d.ByteSize() else default


class GrpcAccessLog(HttpLogBuffer):
    """One per HCM that configures it; `log(stream, duration_ms)` (HttpLogBuffer's) is what
    the stream calls."""

    # (batch, serialized Identifier or b"") -> one StreamAccessLogsMessage's bytes; the TCP
    # logger (tcp_grpc_access_log) has its own
    encode = staticmethod(with_identifier)

    def __init__(
        self,
        config: Any,  # envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig
        loop: asyncio.AbstractEventLoop,
        target: Any,  # () -> (host, port) | None: where the service is now
        node: Any,  # envoy.config.core.v3.Node, sent in the stream's first message
        stats: Any,  # sofamesh._core.stats.Store
    ):
        common = config.common_config
        self.log_name = common.log_name
        self.loop = loop
        self.target = target
        self.node = node
        self.flush_interval = _seconds(common.buffer_flush_interval, 1.0)  # Envoy: 1 s
        self.buffer_size = (
            common.buffer_size_bytes.value if common.HasField("buffer_size_bytes") else 16384
        )
        self.buffered: list[tuple] = []
        self.buffered_bytes = 0
        self.queue: deque[tuple[Any, int]] = deque()  # batches waiting for a stream
        self.written = stats.counter("access_logs.grpc_access_log.logs_written")
        self.dropped = stats.counter("access_logs.grpc_access_log.logs_dropped")
        self._timer: Any = None
        self._channel: GrpcUnaryChannel | None = None
        # GrpcService.envoy_grpc.authority: the calls' :authority when set
        self.authority = common.grpc_service.envoy_grpc.authority
        self._stream: ClientStream | None = None
        self._first = True  # the stream's next message is its first (carries the Identifier)
        self._retry: Any = None  # the reconnect timer while backing off
        self._backoff = 0.1
        self._closed = False

    # -- hot path: HttpLogBuffer.log (Cython) ----------------------------------------------
    def arm(self) -> None:
        """The first entry since a flush: flush it within buffer_flush_interval."""
        if self._timer is None:
            self._timer = self.loop.call_later(self.flush_interval, self._tick)

    def add_entry(self, entry: tuple, nbytes: int) -> None:
        """Buffers one entry tuple of `nbytes` (approximately, encoded) for the next batch,
        for subclasses whose `encode` takes a list of tuples."""
        self.buffered.append(entry)
        self.buffered_bytes += nbytes
        if self.buffered_bytes >= self.buffer_size:
            self.flush()
        else:
            self.arm()

    # -- per batch ------------------------------------------------------------------------------
    def _tick(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        if self.count:  # entries encoded by log()
            batch, n = self.take_message()
        elif self.buffered:  # entry tuples from add_entry()
            batch, n = self.buffered, len(self.buffered)
            self.buffered, self.buffered_bytes = [], 0
        else:
            return
        if self._stream is not None and self._stream.is_open:
            self._write(batch, n)
            return
        if len(self.queue) >= MAX_QUEUED_BATCHES:
            self.dropped.value += n
            return
        self.queue.append((batch, n))
        self._connect()

    # -- the stream ---------------------------------------------------------------------------
    def _identifier(self) -> bytes:
        """The serialized Identifier that opens each stream (node and log_name)."""
        from envoy.service.accesslog.v3 import als_pb2

        ident = als_pb2.StreamAccessLogsMessage.Identifier(log_name=self.log_name)
        ident.node.CopyFrom(self.node)
        return ident.SerializeToString()

    def _write(self, batch: Any, n: int) -> None:
        msg = self.encode(batch, self._identifier() if self._first else b"")
        if self._stream is not None and self._stream.write(msg):
            self._first = False
            self.written.value += n
        else:  # the service's window has been shut for MAX_QUEUED_BATCHES batches
            self.dropped.value += n

    def _connect(self) -> None:
        """Opens the stream, unless it is open or opening, or a retry is pending."""
        if self._closed or self._retry is not None:
            return
        if self._stream is not None and not self._stream.finished:
            return
        addr = self.target()
        if addr is None:  # no such cluster (yet): batches queue up, then are dropped
            self._back_off()
            return
        ch = self._channel
        if ch is None or (ch.host, ch.port) != addr or ch.closed:
            if ch is not None:
                ch.close()
            ch = self._channel = GrpcUnaryChannel(
                self.loop, addr[0], addr[1], authority=self.authority
            )
        self._first = True
        limit = MAX_QUEUED_BATCHES * max(self.buffer_size, 1024)
        s = self._stream = ch.open_stream(_METHOD, self._ended, limit, self._opened)
        if s.is_open:  # the connection was up: opened at once, before it was assigned
            self._opened()

    def _opened(self) -> None:
        self._backoff = 0.1
        while self.queue and self._stream is not None and self._stream.is_open:
            self._write(*self.queue.popleft())

    def _ended(self, status: int, _response: bytes | None) -> None:
        """The stream ended: the service answered, refused, or was lost (or never reached)."""
        if self._closed:
            return
        ch = self._channel
        if ch is not None:
            log.debug("access log service %s:%s: stream ended, status %d", ch.host, ch.port, status)
        self._stream = None
        self._back_off()

    def _back_off(self) -> None:
        """Reconnects after the backoff (doubling to 5 s), if batches wait by then."""
        self._retry = self.loop.call_later(self._backoff, self._retry_now)
        self._backoff = min(self._backoff * 2, 5.0)

    def _retry_now(self) -> None:
        self._retry = None
        if self.queue:
            self._connect()

    def close(self) -> None:
        self._closed = True
        for t in (self._timer, self._retry):
            if t is not None:
                t.cancel()
        self._timer = self._retry = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._stream = None

    def reopen(self) -> None:
        """Nothing to reopen (POST /reopen_logs is for files)."""


def build(
    any_config: Any, loop: asyncio.AbstractEventLoop, server: Any, path: str
) -> GrpcAccessLog:
    """The factory the Server calls for an HCM `access_log` entry of this type."""
    from envoy.extensions.access_loggers.grpc.v3 import als_pb2

    cfg = als_pb2.HttpGrpcAccessLogConfig()
    any_config.Unpack(cfg)
    target, node = grpc_target_and_node(cfg.common_config, server, path)
    return GrpcAccessLog(cfg, loop, target, node, server.stats)


def grpc_target_and_node(common: Any, server: Any, path: str) -> tuple[Any, Any]:
    """(target, node) of a CommonGrpcAccessLogConfig (http_grpc's and tcp_grpc's): where the
    service is now (() -> (host, port) | None, from its envoy_grpc cluster) and the Node its
    stream's first message names."""
    from envoy.config.core.v3 import base_pb2

    from sofamesh.proxy.errors import UnsupportedConfig

    gs = common.grpc_service
    if gs.WhichOneof("target_specifier") != "envoy_grpc":
        raise UnsupportedConfig(
            f"{path}.typed_config.common_config.grpc_service: only envoy_grpc is supported"
        )
    cluster_name = gs.envoy_grpc.cluster_name

    def target() -> tuple[str, int] | None:
        cl = server.clusters.get(cluster_name)
        if cl is None or not cl.hosts:
            return None
        hosts = [h for h in cl.hosts if h.healthy] or list(cl.hosts)
        return hosts[0].address, hosts[0].port

    node = base_pb2.Node()
    node.CopyFrom(server.bootstrap.node)
    opts = getattr(server, "options", None)
    if opts is not None:
        node.id = getattr(opts, "service_node", "") or node.id
        node.cluster = getattr(opts, "service_cluster", "") or node.cluster
    return target, node


def _register() -> None:
    from sofamesh.config.support import register_extension
    from sofamesh.proxy import access_loggers

    register_extension(HTTP_GRPC_TYPE, "sofamesh.proxy.grpc_access_log")
    access_loggers.register(HTTP_GRPC_TYPE, build)


_register()
