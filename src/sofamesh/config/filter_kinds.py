"""Which filters end a chain, and a filter's Envoy extension name (config validation)."""

from __future__ import annotations

from google.protobuf.message import Message

from sofamesh.config import protos

# Envoy's extension names of filters that end a chain, and network filters that cannot.
TERMINAL = {
    "http": {"envoy.filters.http.router", "envoy.filters.http.upstream_codec"},
    "network": {
        "envoy.filters.network.http_connection_manager",
        "envoy.filters.network.tcp_proxy",
        "envoy.filters.network.redis_proxy",
        "envoy.filters.network.dubbo_proxy",
        "envoy.filters.network.thrift_proxy",
        "envoy.filters.network.echo",
        "envoy.filters.network.direct_response",
        "envoy.filters.network.rocketmq_proxy",
        "envoy.filters.network.generic_proxy",
        "envoy.filters.network.kafka_mesh",
        "envoy.filters.network.bolt_proxy",
    },
}
NON_TERMINAL_NETWORK = {
    f"envoy.filters.network.{n}"
    for n in (
        "rbac",
        "local_ratelimit",
        "ratelimit",
        "ext_authz",
        "connection_limit",
        "mongo_proxy",
        "mysql_proxy",
        "postgres_proxy",
        "kafka_broker",
        "zookeeper_proxy",
        "sni_cluster",
        "client_ssl_auth",
        "wasm",
        "set_filter_state",
        "sni_dynamic_forward_proxy",
    )
}


def _ext_name(flt: Message) -> str:
    """A filter's Envoy extension name from its typed_config type
    (`envoy.extensions.filters.http.cors.v3.Cors` -> `envoy.filters.http.cors`), or from its
    name when it has no typed_config; "" when it cannot be told (TypedStruct, other)."""
    url = flt.typed_config.type_url if flt.HasField("typed_config") else ""
    if not url:
        return flt.name if flt.name.startswith("envoy.filters.") else ""
    parts = protos.type_name(url).split(".")
    if len(parts) >= 6 and parts[:3] == ["envoy", "extensions", "filters"]:
        return ".".join(["envoy", "filters", parts[3], parts[4]])
    return ""
