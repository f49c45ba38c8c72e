"""What sofamesh implements beyond filters: extensions (by typed_config type URL) and
the core fields it does not implement yet.

Filters live in `sofamesh.filters.registry`. Every other Any in a bootstrap (transport
sockets, access loggers, tracers, upstream protocol options, ...) must name a type that a
module has registered here with `register_extension`, or validation reports it as
unsupported, with its field path. The module that implements an extension registers it at
import (and is listed in `sofamesh.filters.__init__`), so the claim and the code move together.
"""

from __future__ import annotations

from dataclasses import dataclass

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
# access log. Keep in step with server.py's HCM_NAMES / ROUTER_NAMES / FILE_LOG_TYPE.
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
        "dynamic_resources",
        "xDS client (LDS/CDS/ADS subscriptions) is not implemented by sofamesh",
    ),
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
        "cluster_manager",
        "cluster_manager options (load stats reporting, outlier log): not implemented by sofamesh",
    ),
    Gap("envoy.config.bootstrap.v3.Bootstrap", "tracing", "tracing is not implemented by sofamesh"),
    Gap(
        "envoy.config.bootstrap.v3.Bootstrap",
        "stats_sinks",
        "stats sinks are not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.cluster.v3.Cluster",
        "type",
        "cluster discovery type is not implemented by sofamesh",
        values=("EDS", "ORIGINAL_DST"),
    ),
    Gap(
        "envoy.config.cluster.v3.Cluster",
        "cluster_type",
        "custom cluster types are not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.cluster.v3.Cluster",
        "health_checks",
        "active health checking is not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.cluster.v3.Cluster",
        "outlier_detection",
        "outlier detection is not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.cluster.v3.Cluster",
        "lb_policy",
        "load balancing policy is not implemented by sofamesh",
        values=("RING_HASH", "MAGLEV", "CLUSTER_PROVIDED", "LOAD_BALANCING_POLICY_CONFIG"),
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
        "tracing",
        "tracing is not implemented by sofamesh",
    ),
    Gap(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "rds",
        "RDS (route discovery) is not implemented by sofamesh",
    ),
    Gap(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "codec_type",
        "HTTP/2 and HTTP/3 downstream codecs are not implemented by sofamesh",
        values=("HTTP2", "HTTP3"),
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
    Gap(
        "envoy.config.core.v3.Address",
        "pipe",
        "unix domain socket (pipe) addresses are not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.core.v3.Address",
        "envoy_internal_address",
        "internal addresses are not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.listener.v3.FilterChain",
        "filter_chain_match",
        "filter chain matching is not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.listener.v3.Listener",
        "listener_filters_timeout",
        "listener filters are not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.accesslog.v3.AccessLog",
        "filter",
        "access log filters are not implemented by sofamesh",
    ),
    Gap(
        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "log_format",
        "access log formats other than Envoy's default are not implemented by sofamesh",
    ),
    Gap(
        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "format",
        "access log formats other than Envoy's default are not implemented by sofamesh",
    ),
    Gap(
        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "json_format",
        "access log formats other than Envoy's default are not implemented by sofamesh",
    ),
    Gap(
        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "typed_json_format",
        "access log formats other than Envoy's default are not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.route.v3.RouteAction",
        "request_mirror_policies",
        "request mirroring is not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.route.v3.RouteAction",
        "cluster_specifier_plugin",
        "cluster specifier plugins are not implemented by sofamesh",
    ),
    Gap(
        "envoy.config.route.v3.RouteAction",
        "hash_policy",
        "hash policies are not implemented by sofamesh",
    ),
]

# Messages checked field by field: a set field not listed here is refused as unsupported.
# (Elsewhere, the Gaps above and the Server's own start-up checks apply.)
SUPPORTED_FIELDS: dict[str, tuple[str, ...]] = {
    "envoy.config.bootstrap.v3.Bootstrap": (
        "node",
        "static_resources",
        "admin",
        "layered_runtime",
        # refused by their own Gap with a specific note:
        "dynamic_resources",
        "hds_config",
        "cluster_manager",
        "tracing",
        "stats_sinks",
        # no effect without a stats sink, which is refused
        "stats_flush_interval",
        "stats_flush_on_admin",
    ),
    "envoy.config.bootstrap.v3.Admin": (
        "address",
        "access_log",
        "access_log_path",
        "profile_path",
    ),
}

_GAPS_BY_MESSAGE: dict[str, list[Gap]] = {}
for _g in GAPS:
    _GAPS_BY_MESSAGE.setdefault(_g.message, []).append(_g)


def gaps_for(message_full_name: str) -> list[Gap]:
    return _GAPS_BY_MESSAGE.get(message_full_name, [])
