"""Envoy's gRPC access log (`envoy.access_loggers.http_grpc`): entries batched to an access log
service (`envoy.service.accesslog.v3`, e.g. `sofamesh mixer`) over one client stream.

Hot path (`log`, once per request): copy a few stream fields into a tuple and append it to a
list; nothing else. Every `buffer_flush_interval` (or once `buffer_size_bytes` of entries are
buffered) the list becomes one `StreamAccessLogsMessage` put on a bounded queue; a sender task
writes the queue to the stream, (re)connecting with backoff. When the service is slow or gone
the queue fills, and further batches are dropped and counted (Envoy's
`access_logs.grpc_access_log.logs_dropped`); the request path never waits for the service.

    buffered tuples --flush--> queue of messages (bounded) --sender task--> gRPC stream
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger("sofamesh.access_log")

HTTP_GRPC_TYPE = (
    "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
)
_METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
ENTRY_OVERHEAD = 120  # approximate encoded size of an entry beyond its path and authority
MAX_QUEUED_BATCHES = 64  # bounded: with the service gone, at most this many batches wait
_METHODS = {
    b"GET": 1, b"HEAD": 2, b"POST": 3, b"PUT": 4, b"DELETE": 5, b"CONNECT": 6, b"OPTIONS": 7,
    b"TRACE": 8, b"PATCH": 9,
}  # fmt: skip


def _seconds(d: Any, default: float) -> float:
    return d.ToNanoseconds() / 1e9 if d.ByteSize() else default


class GrpcAccessLog:
    """One per HCM that configures it; `log(stream, duration_ms)` is what the stream calls."""

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

    # -- hot path -----------------------------------------------------------------------------
    def log(self, s: Any, duration_ms: float) -> None:
        if s.resp_flags == "DPE":  # the request head did not parse: nothing to read in it
            method, path, authority = None, b"", b""
        else:
            method, path, authority = s.method, s.path or b"", s.authority or b""
        cl = s.cluster
        self.buffered.append(
            (
                time.time() - duration_ms / 1000.0,
                duration_ms,
                s.resp_status,
                method,
                path,
                authority,
                cl.name if cl is not None else "",
                s.upstream_host,
                s.remote_ip,
                s.bytes_rx,
                s.bytes_tx,
            )
        )
        self.buffered_bytes += ENTRY_OVERHEAD + len(path) + len(authority)
        if self.buffered_bytes >= self.buffer_size:
            self.flush()
        elif self._timer is None:
            self._timer = self.loop.call_later(self.flush_interval, self._tick)

    # -- per batch ------------------------------------------------------------------------------
    def _tick(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        batch, self.buffered, self.buffered_bytes = self.buffered, [], 0
        if self.queue.full():
            self.dropped.value += len(batch)
            return
        self.queue.put_nowait((batch, len(batch)))
        if self._task is None and not self._closed:
            self._task = self.loop.create_task(self._send_loop())

    @staticmethod
    def _message(batch: list[tuple]) -> Any:
        from envoy.service.accesslog.v3 import als_pb2

        msg = als_pb2.StreamAccessLogsMessage()
        entries = msg.http_logs.log_entry
        for start, ms, status, method, path, authority, cluster, up, rip, rx, tx in batch:
            e = entries.add()
            e.protocol_version = 2  # HTTP11
            c = e.common_properties
            c.start_time.FromNanoseconds(int(start * 1e9))
            c.time_to_last_downstream_tx_byte.FromNanoseconds(int(ms * 1e6))
            c.duration.FromNanoseconds(int(ms * 1e6))
            if cluster:
                c.upstream_cluster = cluster
            if up and up != "-":
                host, _, port = up.rpartition(":")
                if port.isdigit():
                    c.upstream_remote_address.socket_address.address = host
                    c.upstream_remote_address.socket_address.port_value = int(port)
            if rip:
                c.downstream_remote_address.socket_address.address = rip.decode("latin-1")
            r = e.request
            r.request_method = _METHODS.get(method or b"", 0)
            r.scheme = "http"
            r.authority = authority.decode("latin-1")
            r.path = path.decode("latin-1")
            r.request_body_bytes = rx
            if status:
                e.response.response_code.value = status
            e.response.response_body_bytes = tx
        return msg

    # -- the stream ---------------------------------------------------------------------------
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
                request_serializer=als_pb2.StreamAccessLogsMessage.SerializeToString,
                response_deserializer=als_pb2.StreamAccessLogsResponse.FromString,
            )()
            first = True
            n = 0
            try:
                while not self._closed:
                    batch, n = await self.queue.get()
                    msg = self._message(batch)
                    if first:
                        msg.identifier.node.CopyFrom(self.node)
                        msg.identifier.log_name = self.log_name
                    await call.write(msg)
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
    from envoy.config.core.v3 import base_pb2
    from envoy.extensions.access_loggers.grpc.v3 import als_pb2

    from sofamesh.proxy.errors import UnsupportedConfig

    cfg = als_pb2.HttpGrpcAccessLogConfig()
    any_config.Unpack(cfg)
    gs = cfg.common_config.grpc_service
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
    return GrpcAccessLog(cfg, loop, target, node, server.stats)


def _register() -> None:
    from sofamesh.config.support import register_extension
    from sofamesh.proxy import access_loggers

    register_extension(HTTP_GRPC_TYPE, "sofamesh.proxy.grpc_access_log")
    access_loggers.register(HTTP_GRPC_TYPE, build)


_register()
