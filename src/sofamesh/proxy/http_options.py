"""HTTP protocol options shared by the listener side (the HCM) and the cluster side:
Envoy's Duration, Http2ProtocolOptions as codec keyword arguments, and a cluster's
typed_extension_protocol_options HttpProtocolOptions (HTTP/1 trailers, or HTTP/2)."""

from __future__ import annotations

from typing import Any


def dur(d: Any) -> float:
    return d.seconds + d.nanos / 1e9


def upstream_trailers(c: Any) -> bool:
    """The cluster's HttpProtocolOptions http_protocol_options.enable_trailers (explicit, or
    for HTTP/1 under use_downstream_protocol_config; config/support.py refuses the rest)."""
    opts = http_protocol_options(c)
    if opts is None:
        return False
    kind = opts.WhichOneof("upstream_protocol_options")
    inner = (
        getattr(opts, kind)
        if kind in ("explicit_http_config", "use_downstream_protocol_config")
        else None
    )
    if inner is not None and inner.HasField("http_protocol_options"):
        return inner.http_protocol_options.enable_trailers
    return False


def upstream_h2(c: Any) -> tuple | None:
    """(max_concurrent_streams, initial_stream_window_size, initial_connection_window_size,
    only_for_h2_downstream) of a cluster that speaks HTTP/2 upstream: always
    (explicit_http_config.http2_protocol_options), or when the request came over HTTP/2
    (use_downstream_protocol_config); Envoy's defaults where unset. None: HTTP/1.1 only."""
    opts = http_protocol_options(c)
    if opts is None:
        return None
    kind = opts.WhichOneof("upstream_protocol_options")
    if kind == "explicit_http_config":
        if opts.explicit_http_config.WhichOneof("protocol_config") != "http2_protocol_options":
            return None
        o, downstream = h2_options(opts.explicit_http_config.http2_protocol_options), False
    elif kind == "use_downstream_protocol_config":
        o, downstream = h2_options(opts.use_downstream_protocol_config.http2_protocol_options), True
    else:
        return None
    return (
        o.get("max_concurrent_streams", 2147483647),
        o.get("initial_stream_window_size", 268435456),
        o.get("initial_connection_window_size", 268435456),
        downstream,
    )


# Envoy's idle_timeout of an upstream HTTP connection when the cluster sets none
UPSTREAM_IDLE_TIMEOUT = 3600.0


def upstream_common(c: Any) -> dict[str, Any]:
    """Cluster keyword arguments from the cluster's HttpProtocolOptions
    .common_http_protocol_options (Envoy 1.40): idle_timeout (an hour when unset, 0
    disables it), max_connection_duration (none when unset or 0) and
    max_requests_per_connection, which stands for the cluster's deprecated field (both set
    at once is refused by config/validate.py, as Envoy refuses it)."""
    kw: dict[str, Any] = {"idle_timeout": UPSTREAM_IDLE_TIMEOUT}
    if c.HasField("max_requests_per_connection"):
        kw["max_requests_per_connection"] = c.max_requests_per_connection.value
    opts = http_protocol_options(c)
    if opts is None or not opts.HasField("common_http_protocol_options"):
        return kw
    common = opts.common_http_protocol_options
    if common.HasField("idle_timeout"):
        kw["idle_timeout"] = dur(common.idle_timeout)
    if common.HasField("max_connection_duration"):
        kw["max_connection_duration"] = dur(common.max_connection_duration)
    if common.HasField("max_requests_per_connection"):
        kw["max_requests_per_connection"] = common.max_requests_per_connection.value
    return kw


def http_protocol_options(c: Any) -> Any:
    """The cluster's typed_extension_protocol_options HttpProtocolOptions, or None."""
    from sofamesh.config.support import UPSTREAM_HTTP_OPTIONS

    for anycfg in c.typed_extension_protocol_options.values():
        if anycfg.type_url != UPSTREAM_HTTP_OPTIONS:
            continue
        from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

        opts = http_protocol_options_pb2.HttpProtocolOptions()
        anycfg.Unpack(opts)
        return opts
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
