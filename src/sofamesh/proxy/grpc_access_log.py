"""Envoy's gRPC access log (`envoy.access_loggers.http_grpc`): entries batched to an access log
service (`envoy.service.accesslog.v3`, e.g. `sofamesh mixer`) over one client stream.

Hot path (`log`, once per request, in Cython: `_core/als_wire.HttpLogBuffer`): the stream's
HTTPAccessLogEntry is encoded straight to protobuf wire bytes into a buffer (no tuple, no
protobuf object: those cost more than the proxying). Every `buffer_flush_interval` (or once
`buffer_size_bytes` of entries are buffered) the buffer becomes one batch on a bounded queue;
a sender task wraps each batch as one `StreamAccessLogsMessage` and writes it to the stream,
(re)connecting with backoff. When the service is slow or gone the queue fills, and further
batches are dropped and counted (Envoy's `access_logs.grpc_access_log.logs_dropped`); the
request path never waits for the service.

    encoded entries --flush--> queue of batches (bounded) --sender task--> gRPC stream

Subclasses that log something else (tcp_grpc_access_log) buffer entry tuples with `add_entry`
and their own `encode`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sofamesh._core.als_wire import HttpLogBuffer, with_identifier

log = logging.getLogger("sofamesh.access_log")

HTTP_GRPC_TYPE = (
    "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
)
_METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
MAX_QUEUED_BATCHES = 64  # bounded: with the service gone, at most this many batches wait


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
        self.queue: asyncio.Queue[tuple[Any, int]] = asyncio.Queue(MAX_QUEUED_BATCHES)
        self.written = stats.counter("access_logs.grpc_access_log.logs_written")
        self.dropped = stats.counter("access_logs.grpc_access_log.logs_dropped")
        self._timer: Any = None
        self._task: asyncio.Task | None = None
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
        if self.queue.full():
            self.dropped.value += n
            return
        self.queue.put_nowait((batch, n))
        if self._task is None and not self._closed:
            self._task = self.loop.create_task(self._send_loop())

    # -- the stream ---------------------------------------------------------------------------
    def _identifier(self) -> bytes:
        """The serialized Identifier that opens each stream (node and log_name)."""
        from envoy.service.accesslog.v3 import als_pb2

        ident = als_pb2.StreamAccessLogsMessage.Identifier(log_name=self.log_name)
        ident.node.CopyFrom(self.node)
        return ident.SerializeToString()

    async def _send_loop(self) -> None:
        import grpc
        from envoy.service.accesslog.v3 import als_pb2

        backoff = 0.1
        while not self._closed:
            addr = self.target()
            if addr is None:  # no such cluster (yet): batches queue up, then are dropped
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            channel = grpc.aio.insecure_channel(f"{addr[0]}:{addr[1]}")
            call = channel.stream_unary(
                _METHOD,
                request_serializer=None,  # self.encode makes the message's bytes
                response_deserializer=als_pb2.StreamAccessLogsResponse.FromString,
            )()
            first = True
            n = 0
            try:
                while not self._closed:
                    batch, n = await self.queue.get()
                    await call.write(self.encode(batch, self._identifier() if first else b""))
                    first = False
                    self.written.value += n
                    backoff = 0.1
            except Exception as e:  # noqa: BLE001 (any stream failure: drop, reconnect)
                if not isinstance(e, (grpc.aio.AioRpcError, grpc.aio.UsageError)):
                    log.warning("access log service %s:%s: %r", *addr, e)
                elif not first:
                    log.debug("access log service %s:%s: stream ended: %s", *addr, e)
                self.dropped.value += n  # the batch in hand when the write failed
            finally:
                call.cancel()
                await channel.close()
            await asyncio.sleep(backoff)  # batches keep queueing meanwhile (bounded)
            backoff = min(backoff * 2, 5.0)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

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
