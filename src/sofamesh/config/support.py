"""What sofamesh implements beyond filters: extensions (by typed_config type URL) and
the core fields it does not implement yet.

Filters live in `sofamesh.filters.registry`. Every other Any in a bootstrap (transport
sockets, access loggers, tracers, upstream protocol options, ...) must name a type that a
module has registered here with `register_extension`, or validation reports it as
unsupported, with its field path. The module that implements an extension registers it at
import (and is listed in `sofamesh.filters.__init__`), so the claim and the code move together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sofamesh.config.implemented import (
    _CL,
    _EP,
    _HCM,
    _LS,
    _RT,
    _TLS,
    IMPLEMENTED,
    IMPLEMENTED_UNDER,
)

_EXTENSIONS: dict[str, str] = {}  # type URL -> what implements it


def register_extension(type_url: str, implemented_by: str) -> None:
    if not type_url.startswith("type.googleapis.com/"):
        raise ValueError(f"type URL must start with type.googleapis.com/: {type_url!r}")
    _EXTENSIONS[type_url] = implemented_by


def extension_supported(type_url: str) -> bool:
    from sofamesh.filters import registry

    registry._load_builtins()  # filter modules also register their helper extensions
    return type_url in _EXTENSIONS


# Filters and extensions the proxy core (sofamesh.proxy.server) handles natively rather
# than through the filter registry: the HTTP connection manager, the router, the file
# access log. Keep in step with filters/network/http_connection_manager.py's NAMES / ROUTER_NAMES /
# FILE_LOG_TYPE.
CORE_FILTERS: dict[str, tuple[str, ...]] = {
    "network": (
        "envoy.filters.network.http_connection_manager",
        (
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager"
        ),
    ),
    "http": (
        "envoy.filters.http.router",
        "envoy.router",
        "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
    ),
    "listener": (),
}
register_extension(
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
    "sofamesh.proxy.access_log",
)


def core_filter(kind: str, name_or_type_url: str) -> bool:
    return name_or_type_url in CORE_FILTERS.get(kind, ())


# Types whose only job is to carry an opaque config for a pass-through filter.
TYPED_STRUCT_TYPES = (
    "type.googleapis.com/xds.type.v3.TypedStruct",
    "type.googleapis.com/udpa.type.v1.TypedStruct",
)


@dataclass(frozen=True)
class Gap:
    """A core field Envoy implements and sofamesh does not (yet). `when` narrows it to
    a value (e.g. a cluster type) when only some values are missing."""

    message: str  # full proto name
    field: str
    note: str
    values: tuple = ()  # if set: only these values (enum names) are unsupported


# Core features outside the data plane's current scope (docs/ARCHITECTURE.md, issue 2).
# Each is reported by `--mode validate` and refused at start-up rather than ignored.
GAPS: list[Gap] = [
    Gap(
        "envoy.config.bootstrap.v3.Bootstrap",
        "hds_config",
        "health discovery service is not implemented by sofamesh",
    ),
    # static and admin runtime layers are kept and served by /runtime
    Gap(
        "envoy.config.bootstrap.v3.RuntimeLayer",
        "disk_layer",
        "disk runtime layer is not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.bootstrap.v3.RuntimeLayer",
        "rtds_layer",
        "RTDS runtime layer is not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.bootstrap.v3.Bootstrap",
        "stats_flush_on_admin",
        "flushing the stats sinks on admin requests is not implemented by sofamesh (they "
        "flush every stats_flush_interval)",
    ),
    Gap(
        "envoy.config.cluster.v3.Cluster",
        "cluster_type",
        "custom cluster types are not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.cluster.v3.Cluster",
        "lb_policy",
        "load balancing policy is not implemented by sofamesh",
        values=("MAGLEV", "LOAD_BALANCING_POLICY_CONFIG"),
    ),
    Gap(
        "envoy.config.listener.v3.Listener",
        "udp_listener_config",
        "UDP listeners are not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.core.v3.SocketAddress",
        "protocol",
        "UDP sockets are not implemented by sofamesh",
        values=("UDP",),
    ),
    Gap(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "codec_type",
        "the HTTP/3 downstream codec is not implemented by sofamesh",
        values=("HTTP3",),
    ),
    Gap(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        "config_discovery",
        "filter config discovery (ECDS) is not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.listener.v3.Filter",
        "config_discovery",
        "filter config discovery (ECDS) is not implemented by sofamesh",
    ),
]

# Messages checked field by field: IMPLEMENTED (config/implemented.py, with the rules) plus
# NO_EFFECT below, the gaps above; anything else set is refused by name.
_OPAQUE = "opaque metadata: no sofamesh component reads it, and it changes no traffic"
_CHUNK = (
    "the size of the library's output buffer: how the (de)compressed bytes are cut into "
    "pieces, not what they are"
)
_TRACE = (
    "sofamesh's tracer samples new traces at random (not by request id) and marks the "
    "request id of a sampled one (pack_trace_reason's default)"
)
# Set fields accepted although they change nothing in sofamesh, and why.
NO_EFFECT: dict[str, dict[str, str]] = {
    "envoy.config.bootstrap.v3.Bootstrap": {},
    _CL + "OutlierDetection": {
        "successful_active_health_check_uneject_host": "acts only on a cluster with "
        "health_checks, and outlier detection on one is refused",
    },
    "envoy.config.bootstrap.v3.ClusterManager": {
        "enable_deferred_cluster_creation": "only when workers build their copies of clusters "
        "(memory and CPU); traffic, stats and admin output are the same",
    },
    "envoy.extensions.compression.gzip.compressor.v3.Gzip": {"chunk_size": _CHUNK},
    "envoy.extensions.compression.brotli.compressor.v3.Brotli": {"chunk_size": _CHUNK},
    "envoy.extensions.compression.zstd.compressor.v3.Zstd": {"chunk_size": _CHUNK},
    "envoy.extensions.compression.brotli.decompressor.v3.Brotli": {"chunk_size": _CHUNK},
    "envoy.extensions.compression.zstd.decompressor.v3.Zstd": {"chunk_size": _CHUNK},
    _LS + "Listener": {
        "metadata": _OPAQUE,
        "bypass_overload_manager": "sofamesh has no overload manager to bypass",
    },
    _LS + "FilterChain": {
        "name": "a label for xDS updates and config dumps",
        "metadata": _OPAQUE,
    },
    _RT + "RouteConfiguration": {"metadata": _OPAQUE},
    _RT + "VirtualHost": {"metadata": _OPAQUE},
    _RT + "Route": {"metadata": _OPAQUE},
    "envoy.type.matcher.v3.RegexMatcher": {
        "google_re2": "deprecated and empty: RE2 syntax is the only engine either way",
    },
    _RT + "RouteAction.RequestMirrorPolicy": {
        "trace_sampled": "marks a mirrored request's span sampled; sofamesh does not trace "
        "mirrored requests",
    },
    _CL + "Cluster": {
        "metadata": _OPAQUE,
        # act only with a cluster type or lb_policy that is itself refused (a Gap), and
        # have no effect with any other, in Envoy as here
        "maglev_lb_config": "used only by lb_policy MAGLEV, which is refused",
    },
    _CL + "CircuitBreakers.Thresholds": {
        "priority": "HIGH thresholds apply only to HIGH priority routes, which are refused "
        "(RouteAction.priority); DEFAULT thresholds are the ones enforced",
    },
    _EP + "ClusterLoadAssignment": {
        "cluster_name": "names the cluster the assignment belongs to (it is inline)",
    },
    _EP + "LocalityLbEndpoints": {
        "metadata": _OPAQUE,
    },
    _EP + "LbEndpoint": {"metadata": _OPAQUE},
    "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig": {
        "pack_trace_reason": _TRACE,
        "use_request_id_for_trace_sampling": _TRACE,
    },
}


# Bootstrap extensions accepted, by config type (direct or in a TypedStruct), and why.
BOOTSTRAP_EXTENSIONS = {
    "envoy.extensions.bootstrap.internal_listener.v3.InternalListener": (
        "enables internal listeners (Listener.internal_listener, reached by internal "
        "addresses: proxy/internal_listener.py); buffer_size_kb sizes their socket buffers"
    ),
}
# Fields judged whole by their ALLOWED_IF rule: the walk does not judge what is inside.
JUDGED_WHOLE = {("envoy.config.bootstrap.v3.Bootstrap", "bootstrap_extensions")}


def _bootstrap_extension(ext: object) -> str:
    """The config type of a TypedExtensionConfig (the one a TypedStruct names, if so)."""
    tc = ext.typed_config  # type: ignore[attr-defined]
    url = tc.type_url
    if url in TYPED_STRUCT_TYPES:
        from xds.type.v3 import typed_struct_pb2

        ts = typed_struct_pb2.TypedStruct()
        ts.ParseFromString(tc.value)
        url = ts.type_url
    return url.rsplit("/", 1)[-1]


def _known_bootstrap_extensions(exts: object) -> bool:
    return all(_bootstrap_extension(e) in BOOTSTRAP_EXTENSIONS for e in exts)  # type: ignore[attr-defined]


# The global connection limit monitor (proxy/overload.py). Istio's pilot-agent writes it with
# 2147483647: a limit at or above the hard RLIMIT_NOFILE is never reached and changes nothing.
DOWNSTREAM_CONNECTIONS = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
    ".DownstreamConnectionsConfig"
)
register_extension(DOWNSTREAM_CONNECTIONS, "sofamesh.proxy.overload")
# fixed_heap (the process's RSS against max_heap_size_bytes) and its actions, reduce_timeouts'
# timers among them (proxy/overload_actions.py)
register_extension(
    "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
    "sofamesh.proxy.overload_actions",
)
register_extension(
    "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig",
    "sofamesh.proxy.overload_actions",
)


# HCM request_id_extension: Envoy's UUID request ids, which sofamesh generates (x-request-id,
# a random version-4 UUID). Its two options only act when a request is traced.
register_extension(
    "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
    "sofamesh.proxy.server (x-request-id as Envoy's default)",
)

# RetryPolicy.retry_host_predicate: a retry avoids the hosts already tried (http_router.pyx)
register_extension(
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "sofamesh.proxy.routes (previous_hosts)",
)


def _is_true(v: object) -> bool:
    return bool(getattr(v, "value", v))


# Fields implemented for some values only: (predicate on the value, what is implemented).
ALLOWED_IF: dict[tuple[str, str], tuple[Callable[[object], bool], str]] = {
    (_RT + "RouteAction.MaxStreamDuration", "max_stream_duration"): (
        lambda v: v.seconds == 0 and v.nanos == 0,  # type: ignore[attr-defined]
        "only 0s, Istio's value: the route's streams have no duration limit",
    ),
    (_HCM + "HttpConnectionManager", "path_with_escaped_slashes_action"): (
        lambda v: v in (0, 1),
        (
            "only KEEP_UNCHANGED and IMPLEMENTATION_SPECIFIC_DEFAULT (escaped slashes are "
            "kept; rejecting, redirecting or unescaping them is in the HTTP codec's hands)"
        ),
    ),
    ("envoy.config.bootstrap.v3.Bootstrap", "bootstrap_extensions"): (
        _known_bootstrap_extensions,
        (
            "only envoy.bootstrap.internal_listener (internal listeners, which it enables: "
            "proxy/internal_listener.py)"
        ),
    ),
    (_LS + "Listener", "bind_to_port"): (
        _is_true,
        "only true for listeners from LDS (a static listener may be left unbound)",
    ),
    (_LS + "Listener", "enable_reuse_port"): (
        _is_true,
        "only true (SO_REUSEPORT is set whenever there is more than one worker)",
    ),
    (_CL + "Cluster", "dns_lookup_family"): (
        lambda v: v == 1,
        "only V4_ONLY (the resolver asks for IPv4 addresses)",
    ),
    (_CL + "Cluster", "wait_for_warm_on_init"): (
        _is_true,
        "only true (DNS clusters are resolved before listeners start)",
    ),
    (_EP + "LbEndpoint", "health_status"): (
        lambda v: v in (0, 1),
        "only UNKNOWN or HEALTHY in a static cluster",
    ),
    ("envoy.config.core.v3.HealthCheck.HttpHealthCheck", "codec_client_type"): (
        lambda v: v == 0,
        "only HTTP1 (health checks speak HTTP/1.1)",
    ),
    ("envoy.config.core.v3.HealthCheck.HttpHealthCheck", "method"): (
        lambda v: v in (0, 1),
        "only GET",
    ),
    (_TLS + "SubjectAltNameMatcher", "san_type"): (
        lambda v: v in (1, 2, 3, 4),
        "only EMAIL, DNS, URI and IP_ADDRESS",
    ),
    ("envoy.config.core.v3.ApiConfigSource", "api_type"): (
        lambda v: v in (2, 3),
        "only GRPC and DELTA_GRPC",
    ),
    ("envoy.extensions.filters.network.rbac.v3.RBAC", "enforcement_type"): (
        lambda v: v == 0,
        "only ONE_TIME_ON_FIRST_BYTE (a connection is checked once, at its first bytes)",
    ),
    ("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "max_connect_attempts"): (
        lambda v: getattr(v, "value", v) <= 1,  # type: ignore[operator]
        "only 1 (no connect retries)",
    ),
}

# ALLOWED_IF rules that hold for static resources only: an EDS ClusterLoadAssignment's
# health statuses are implemented (unhealthy, draining and timed-out hosts get no traffic).
STATIC_ONLY: set[tuple[str, str]] = {(_EP + "LbEndpoint", "health_status")}
# ALLOWED_IF rules that hold for xDS resources only: a static listener with bind_to_port
# false is built but binds no socket (Server._start_listener), as in Envoy: a
# use_original_dst listener hands it the connections to its address.
DYNAMIC_ONLY: set[tuple[str, str]] = {(_LS + "Listener", "bind_to_port")}

# A cluster's HttpProtocolOptions: explicit HTTP/1 options are read by Server._build_cluster
# (enable_trailers); other fields are refused field by field (IMPLEMENTED). The xDS gRPC
# client's static cluster may ask for HTTP/2 (Istio's xds-grpc does): the client speaks
# HTTP/2 whatever it says.
UPSTREAM_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
register_extension(UPSTREAM_HTTP_OPTIONS, "sofamesh.proxy.server")


def grpc_http_options_ok(opts: object) -> bool:
    fields = [f.name for f, _ in opts.ListFields()]  # type: ignore[attr-defined]
    return fields == ["explicit_http_config"] and (
        opts.explicit_http_config.WhichOneof("protocol_config")  # type: ignore[attr-defined]
        == "http2_protocol_options"
    )


# Kept for callers of the previous name: every field accepted per checked message (gap
# fields are added when checked, see allowed_fields).
SUPPORTED_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(fields) + tuple(NO_EFFECT.get(name, {})) for name, fields in IMPLEMENTED.items()
}


def allowed_fields(
    message_full_name: str, under: tuple[str, str] | None = None
) -> frozenset[str] | None:
    """The set fields accepted for a message type, or None when it is not checked field by
    field. Fields with a Gap are included: the Gap reports them with its own note.
    `under`: the (parent message, field) it was reached through, when IMPLEMENTED_UNDER
    accepts other fields of it there (a cluster's common_http_protocol_options)."""
    if under is not None and under in IMPLEMENTED_UNDER:
        return frozenset(IMPLEMENTED_UNDER[under])
    base = SUPPORTED_FIELDS.get(message_full_name)
    if base is None:
        return None
    return frozenset(base) | {g.field for g in gaps_for(message_full_name)}


_GAPS_BY_MESSAGE: dict[str, list[Gap]] = {}
for _g in GAPS:
    _GAPS_BY_MESSAGE.setdefault(_g.message, []).append(_g)


def gaps_for(message_full_name: str) -> list[Gap]:
    return _GAPS_BY_MESSAGE.get(message_full_name, [])
