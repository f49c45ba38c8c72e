"""Envoy's gRPC access log for TCP (`envoy.access_loggers.tcp_grpc`, TcpGrpcAccessLogConfig):
one `TCPAccessLogEntry` per closed tcp_proxy connection, sent in `tcp_logs` on the access log
service's stream (`envoy.service.accesslog.v3`, e.g. `sofamesh mixer`).

The buffering, the bounded queue, the drops and the sender are http_grpc's
(`grpc_access_log.GrpcAccessLog`, same `buffer_flush_interval` / `buffer_size_bytes`, same
`access_logs.grpc_access_log.logs_written` / `logs_dropped` counters as Envoy's shared ones);
this module adds what differs: the entry (`TcpDownstream.log_entry`, once per connection
close) and its encoding. Entries are per connection, not per request, so they are built with
the protobuf runtime.

Fields filled as Envoy 1.40 fills them for tcp_proxy: downstream remote / direct remote /
local addresses, start time, duration, upstream remote / local addresses, upstream cluster,
upstream_request_attempt_count, stream_id, the four wire byte counts, access_log_type
TcpConnectionEnd, response flags UF / UH, and connection_properties received / sent bytes.
"""

from __future__ import annotations

import uuid
from typing import Any

from sofamesh.proxy.grpc_access_log import GrpcAccessLog, grpc_target_and_node

TCP_GRPC_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig"
TCP_ENTRY_SIZE = 200  # approximate encoded size of one entry (buffer_size_bytes accounting)
_TCP_CONNECTION_END = 3  # envoy.data.accesslog.v3.AccessLogType.TcpConnectionEnd


def _address(a: Any, addr: tuple) -> None:
    a.socket_address.address = addr[0]
    a.socket_address.port_value = addr[1]


def encode_tcp_logs(batch: list[tuple], identifier: bytes) -> bytes:
    """One StreamAccessLogsMessage (wire bytes): `identifier` (a serialized Identifier, or
    b"" after the stream's first message) and the batch's entries in tcp_logs."""
    from envoy.service.accesslog.v3 import als_pb2

    msg = als_pb2.StreamAccessLogsMessage()
    if identifier:
        msg.identifier.ParseFromString(identifier)
    entries = msg.tcp_logs.log_entry
    for start, dur, peer, local, upstream, up_local, cluster, rx, tx, flags, why in batch:
        e = entries.add()
        c = e.common_properties
        if peer:
            _address(c.downstream_remote_address, peer)
            _address(c.downstream_direct_remote_address, peer)
        if local:
            _address(c.downstream_local_address, local)
        c.start_time.FromNanoseconds(int(start * 1e9))
        c.duration.FromNanoseconds(int(dur * 1e9))
        if cluster:
            c.upstream_cluster = cluster
            c.upstream_request_attempt_count = 1
        if upstream:
            _address(c.upstream_remote_address, upstream)
        if up_local:  # connected
            _address(c.upstream_local_address, up_local)
            c.upstream_wire_bytes_sent = rx
            c.upstream_wire_bytes_received = tx
        if why:
            c.upstream_transport_failure_reason = why
        if flags == "UF":  # and the one connect attempt was the last (Envoy: UF,URX)
            c.response_flags.upstream_connection_failure = True
            c.response_flags.upstream_retry_limit_exceeded = True
        elif flags == "UH":
            c.response_flags.no_healthy_upstream = True
        c.stream_id = str(uuid.uuid4())
        c.downstream_wire_bytes_sent = tx
        c.downstream_wire_bytes_received = rx
        c.access_log_type = _TCP_CONNECTION_END
        e.connection_properties.received_bytes = rx
        e.connection_properties.sent_bytes = tx
    return msg.SerializeToString()


class TcpGrpcAccessLog(GrpcAccessLog):
    """One per tcp_proxy that configures it; `log_tcp(entry)` is what a connection calls when
    it closes."""

    encode = staticmethod(encode_tcp_logs)

    def log_tcp(self, entry: tuple) -> None:
        self.add_entry(entry, TCP_ENTRY_SIZE)

    def log(self, s: Any, duration_ms: float) -> None:
        """Never called: the HTTP connection manager refuses a tcp_grpc logger."""


def build(any_config: Any, loop: Any, server: Any, path: str) -> TcpGrpcAccessLog:
    """The factory the tcp_proxy calls for an `access_log` entry of this type."""
    from envoy.extensions.access_loggers.grpc.v3 import als_pb2

    cfg = als_pb2.TcpGrpcAccessLogConfig()
    any_config.Unpack(cfg)
    target, node = grpc_target_and_node(cfg.common_config, server, path)
    return TcpGrpcAccessLog(cfg, loop, target, node, server.stats)


def _register() -> None:
    from sofamesh.config.support import register_extension
    from sofamesh.proxy import access_loggers

    register_extension(TCP_GRPC_TYPE, "sofamesh.proxy.tcp_grpc_access_log")
    access_loggers.register(TCP_GRPC_TYPE, build)


_register()
