"""Built-in filters. Each import below registers one filter (see registry.py); a new filter
adds one line here and touches no other file."""

import importlib

_BUILTIN = [
    "sofamesh.filters.network.http_connection_manager",
    "sofamesh.filters.http.router",
    "sofamesh.filters.http.local_ratelimit",
    "sofamesh.filters.http.fault",
    "sofamesh.filters.http.rbac",
    "sofamesh.filters.http.rate_limit_quota",
    "sofamesh.filters.http.ratelimit",
    "sofamesh.filters.http.ext_authz",
    "sofamesh.filters.http.grpc_stats",
    "sofamesh.filters.http.cors",
    "sofamesh.filters.http.compressor",
    "sofamesh.filters.http.decompressor",
    "sofamesh.filters.http.csrf",
    "sofamesh.filters.http.grpc_http1_bridge",
    "sofamesh.filters.http.health_check",
    "sofamesh.filters.network.dubbo_proxy",
    "sofamesh.filters.network.bolt_proxy",
    "sofamesh.filters.network.tcp_proxy",
    "sofamesh.filters.network.auto",
    "sofamesh.filters.network.rbac",
    "sofamesh.filters.network.connection_limit",
    "sofamesh.filters.network.set_filter_state",  # and Istio's istio_authn
    "sofamesh.filters.http.set_filter_state",
    "sofamesh.filters.http.set_metadata",
    "sofamesh.filters.istio",
    "sofamesh.filters.listener.inspectors",  # tls_inspector, http_inspector
    "sofamesh.proxy.tls",  # transport sockets envoy.transport_sockets.tls / raw_buffer
    "sofamesh.proxy.internal_listener",  # transport socket internal_upstream
    "sofamesh.proxy.grpc_access_log",  # access logger envoy.access_loggers.http_grpc
    "sofamesh.proxy.tcp_grpc_access_log",  # envoy.access_loggers.tcp_grpc (tcp_proxy)
    "sofamesh.proxy.stream_access_log",  # envoy.access_loggers.stdout / stderr
    "sofamesh.proxy.tracing_skywalking",  # tracer envoy.tracers.skywalking
    "sofamesh.proxy.tracing_datadog",  # tracer envoy.tracers.datadog
    "sofamesh.proxy.metrics_sink",  # stats sink envoy.stat_sinks.metrics_service
    "sofamesh.proxy.statsd_sink",  # stats sink envoy.stat_sinks.statsd (UDP)
    "sofamesh.proxy.tracing",  # tracer envoy.tracers.zipkin
    "sofamesh.proxy.dns",  # DNS resolver envoy.network.dns_resolver.cares
    "sofamesh.proxy.chain_matcher",  # Listener.filter_chain_matcher's inputs and action
    "sofamesh.proxy.lua_cluster",  # cluster specifier envoy.router.cluster_specifier_plugin.lua
]

for _name in _BUILTIN:
    importlib.import_module(_name)
