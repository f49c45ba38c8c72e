"""HTTP protocol options shared by the listener side (the HCM) and the cluster side:
Envoy's Duration, Http2ProtocolOptions as codec keyword arguments, and a cluster's
typed_extension_protocol_options HttpProtocolOptions (HTTP/1 trailers, or HTTP/2)."""

from __future__ import annotations

from typing import Any


def dur(d: Any) -> float:
    return d.seconds + d.nanos / 1e9


def upstream_trailers(c: Any) -> bool:
    """The cluster's HttpProtocolOptions explicit_http_config.http_protocol_options
    .enable_trailers (config/support.py refuses the rest of the message)."""
    explicit = explicit_http_config(c)
    if explicit is not None and explicit.WhichOneof("protocol_config") == "http_protocol_options":
        return explicit.http_protocol_options.enable_trailers
    return False


def upstream_h2(c: Any) -> tuple | None:
    """(max_concurrent_streams, initial_stream_window_size, initial_connection_window_size)
    of a cluster whose HttpProtocolOptions name HTTP/2 (Envoy's defaults where unset), or
    None: HTTP/1.1."""
    explicit = explicit_http_config(c)
    if explicit is None or explicit.WhichOneof("protocol_config") != "http2_protocol_options":
        return None
    o = h2_options(explicit.http2_protocol_options)
    return (
        o.get("max_concurrent_streams", 2147483647),
        o.get("initial_stream_window_size", 268435456),
        o.get("initial_connection_window_size", 268435456),
    )


def explicit_http_config(c: Any) -> Any:
    if not c.typed_extension_protocol_options:  # PERF(benchmarks/xds_scale.py): most have none
        return None
    from sofamesh.config.support import UPSTREAM_HTTP_OPTIONS

    for anycfg in c.typed_extension_protocol_options.values():
        if anycfg.type_url != UPSTREAM_HTTP_OPTIONS:
            continue
        from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

        opts = http_protocol_options_pb2.HttpProtocolOptions()
        anycfg.Unpack(opts)
        if opts.HasField("explicit_http_config"):
            return opts.explicit_http_config
    return None


# Http2ProtocolOptions fields (wrappers) -> codecs.http2.Connection keyword arguments
H2_OPTIONS = (
    "max_concurrent_streams",
    "initial_stream_window_size",
    "initial_connection_window_size",
    "hpack_table_size",
    "max_outbound_frames",
    "max_outbound_control_frames",
    "max_consecutive_inbound_frames_with_empty_payload",
    "max_inbound_priority_frames_per_stream",
    "max_inbound_window_update_frames_per_data_frame_sent",
)


def h2_options(p: Any) -> dict:
    """The set fields of an Http2ProtocolOptions, as codec keyword arguments."""
    return {f: getattr(p, f).value for f in H2_OPTIONS if p.HasField(f)}
