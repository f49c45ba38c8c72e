"""The fields sofamesh implements, per Envoy message (`IMPLEMENTED`), and the type-name
prefixes the config tables share. Part of `sofamesh.config.support`, which combines it with
NO_EFFECT and the gaps into what validation allows.
"""

from __future__ import annotations

from sofamesh.config.implemented_filters import FILTERS

# Messages checked field by field (issue 2: nothing silently ignored). For each message
# type below, a set field must be one the proxy core reads (IMPLEMENTED), one listed in
# NO_EFFECT with the reason it changes nothing, or one with a Gap (reported with its own
# note); any other set field is refused as `<path>.<field>: <Message>.<field> is not
# implemented by sofamesh`. The lists follow what sofamesh.proxy.server, proxy.routes and
# the filter modules read (docs/ARCHITECTURE.md, "Implemented options"). A data-plane
# change that reads a new field adds it here in the same commit.
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3."
_RT = "envoy.config.route.v3."
_CL = "envoy.config.cluster.v3."
_EP = "envoy.config.endpoint.v3."
_LS = "envoy.config.listener.v3."
_TLS = "envoy.extensions.transport_sockets.tls.v3."
IMPLEMENTED: dict[str, tuple[str, ...]] = {
    "envoy.config.bootstrap.v3.Bootstrap": (
        "typed_dns_resolver_config",  # the clusters' default resolver (proxy/dns.py)
        "dns_resolution_config",
        "node",
        "static_resources",
        "dynamic_resources",
        "admin",
        "layered_runtime",
        "stats_config",  # tag extraction and stats matcher (admin/stats_config.py)
        # global_downstream_max_connections, fixed_heap and its actions (proxy/overload.py)
        "overload_manager",
        "application_log_config",  # text_format: the log line format (proxy/cli.py)
        "cluster_manager",  # checked field by field below
        # envoy.bootstrap.internal_listener only (ALLOWED_IF, BOOTSTRAP_EXTENSIONS): its
        # buffer_size_kb sizes internal connections' socket buffers (proxy/internal_listener.py)
        "bootstrap_extensions",
        "deferred_stat_options",  # cluster traffic stats hidden until used (stats_config.py)
        # tracing.http: the provider of HCMs whose tracing names none (proxy/tracing.py)
        "tracing",
        # envoy.stat_sinks.metrics_service and statsd (proxy/metrics_sink.py, statsd_sink.py)
        "stats_sinks",
        "stats_flush_interval",
    ),
    "envoy.config.metrics.v3.StatsSink": ("name", "typed_config"),
    # UDP only: tcp_cluster_name is refused by statsd_sink.check_config, naming it
    "envoy.config.metrics.v3.StatsdSink": ("address", "prefix", "tcp_cluster_name"),
    "envoy.config.metrics.v3.MetricsServiceConfig": (
        "grpc_service",  # envoy_grpc to a static cluster (proxy/metrics_sink.check_config)
        "transport_api_version",  # V3 (or unset), as Envoy 1.40
        "report_counters_as_deltas",
        "emit_tags_as_labels",
        "histogram_emit_mode",
        "batch_size",
    ),
    # xDS (sofamesh.xds): ADS over one envoy_grpc service, state of the world or Delta;
    # LDS, CDS, EDS and RDS through it, or each through its own api_config_source (GRPC,
    # DELTA_GRPC) or a watched file (path_config_source, the deprecated path).
    "envoy.config.bootstrap.v3.Bootstrap.DynamicResources": (
        "ads_config",
        "cds_config",
        "lds_config",
    ),
    "envoy.config.core.v3.ApiConfigSource": (
        "api_type",  # GRPC or DELTA_GRPC (ALLOWED_IF)
        "transport_api_version",
        "grpc_services",
        "set_node_on_first_message_only",
    ),
    # timeout: the call's deadline where a unary call is made (the OTLP export)
    "envoy.config.core.v3.GrpcService": ("envoy_grpc", "timeout"),
    # authority: the calls' :authority, for every gRPC client (ext_authz, ratelimit, the
    # gRPC access logs, metrics service, RLQS, xDS, LRS, OpenTelemetry, SkyWalking)
    "envoy.config.core.v3.GrpcService.EnvoyGrpc": ("cluster_name", "authority"),
    "envoy.config.core.v3.ConfigSource": (
        "ads",
        "api_config_source",
        "path_config_source",
        "path",
        "resource_api_version",
        "initial_fetch_timeout",
    ),
    "envoy.config.core.v3.PathConfigSource": ("path", "watched_directory"),
    "envoy.config.core.v3.WatchedDirectory": ("path",),
    _CL + "Cluster.EdsClusterConfig": ("eds_config", "service_name"),
    _HCM + "Rds": ("config_source", "route_config_name"),
    _CL + "Cluster.CommonLbConfig": (
        "healthy_panic_threshold",  # panic mode (upstream.pyx Cluster.update_health)
        "update_merge_window",  # read for health check updates (EDS changes apply at once)
        "locality_weighted_lb_config",  # upstream.pyx Cluster._choose_level
        "zone_aware_lb_config",  # proxy/zone_aware.py, _core/zone_aware.pyx
    ),
    _CL + "Cluster.CommonLbConfig.LocalityWeightedLbConfig": (),
    _CL + "Cluster.CommonLbConfig.ZoneAwareLbConfig": (
        "routing_enabled",
        "min_cluster_size",
        "fail_traffic_on_panic",
    ),
    "envoy.config.bootstrap.v3.Bootstrap.StaticResources": ("listeners", "clusters", "secrets"),
    "envoy.config.bootstrap.v3.Admin": ("address", "access_log", "access_log_path", "profile_path"),
    _LS + "Listener": (
        "ignore_global_conn_limit",  # not limited by the overload manager (proxy/overload.py)
        "name",
        "address",
        "stat_prefix",
        "filter_chains",
        "per_connection_buffer_limit_bytes",
        "traffic_direction",
        "listener_filters",  # each judged by the filter registry
        # several chains, TLS and listener filters: proxy/listener_chains.py
        "default_filter_chain",
        "filter_chain_matcher",  # an xds matcher naming the chain (proxy/chain_matcher.py)
        "listener_filters_timeout",
        "continue_on_listener_filters_timeout",
        "bind_to_port",  # true only (ALLOWED_IF)
        "use_original_dst",  # hands a connection to the listener at its original destination
        "enable_reuse_port",  # true only
        # no address: reached by clusters' envoy_internal_address endpoints through an
        # in-process socket pair, per worker (proxy/internal_listener.py)
        "internal_listener",
    ),
    # transport sockets and typed extension options are judged by type URL: an extension
    # must be registered (register_extension) by the module that implements it
    _LS + "FilterChain": ("filters", "transport_socket", "filter_chain_match"),
    # proxy/listener_chains.py: Envoy's order of levels, most specific match per level
    _LS + "FilterChainMatch": (
        "destination_port",
        "prefix_ranges",
        "server_names",
        "transport_protocol",
        "application_protocols",
        "direct_source_prefix_ranges",
        "source_type",
        "source_prefix_ranges",
        "source_ports",
    ),
    # envoy.transport_sockets.tls (proxy/tls.py): OpenSSL through Python's ssl
    _TLS + "DownstreamTlsContext": ("common_tls_context", "require_client_certificate"),
    _TLS + "UpstreamTlsContext": ("common_tls_context", "sni", "max_session_keys"),
    _TLS + "CommonTlsContext": (
        "tls_params",
        "tls_certificates",
        "validation_context",
        "alpn_protocols",
        # SDS (proxy/sds.py): static_resources.secrets or sds_config (ADS, gRPC, a file)
        "tls_certificate_sds_secret_configs",  # one
        "validation_context_sds_secret_config",
        "combined_validation_context",
    ),
    _TLS + "CommonTlsContext.CombinedCertificateValidationContext": (
        "default_validation_context",
        "validation_context_sds_secret_config",
    ),
    _TLS + "SdsSecretConfig": ("name", "sds_config"),
    _TLS + "Secret": ("name", "tls_certificate", "validation_context"),
    _TLS + "TlsParameters": (
        "tls_minimum_protocol_version",
        "tls_maximum_protocol_version",
        "cipher_suites",  # OpenSSL names (Envoy's `[a|b]` groups are listed in order)
    ),
    _TLS + "TlsCertificate": ("certificate_chain", "private_key", "password"),
    _TLS + "CertificateValidationContext": (
        "trusted_ca",
        "match_typed_subject_alt_names",  # checked when OpenSSL finishes the handshake
        "match_subject_alt_names",
        "crl",
        "only_verify_leaf_cert_crl",
    ),
    _TLS + "SubjectAltNameMatcher": ("san_type", "matcher"),  # not OTHER_NAME (ALLOWED_IF)
    _LS + "Filter": ("name", "typed_config"),
    _LS + "ListenerFilter": (
        "name",
        "typed_config",
        "filter_disabled",  # on the inspectors, by destination port (proxy/listener_chains.py)
    ),
    _LS + "ListenerFilterChainMatchPredicate": (
        "or_match",
        "and_match",
        "not_match",
        "any_match",
        "destination_port_range",
    ),
    _LS + "ListenerFilterChainMatchPredicate.MatchSet": ("rules",),
    _HCM + "HttpConnectionManager": (
        "codec_type",
        "stat_prefix",
        "route_config",
        "rds",
        "scoped_routes",  # over ADS, one header fragment (checked by xds/scoped.py)
        "http_filters",
        "access_log",
        "use_remote_address",
        "skip_xff_append",
        "generate_request_id",
        "preserve_external_request_id",
        "always_set_request_id_in_response",
        "via",
        "server_name",
        "server_header_transformation",
        "max_request_headers_kb",
        "common_http_protocol_options",
        "http_protocol_options",
        "http2_protocol_options",  # codecs/http2 settings and flood limits (H2_OPTIONS)
        "tracing",  # envoy.tracers.zipkin, envoy.tracers.opentelemetry (proxy/tracing*.py)
        "drain_timeout",  # HTTP/2's two-step GOAWAY (http2_server.close)
        "upgrade_configs",
        "normalize_path",
        "merge_slashes",
        "strip_any_host_port",
        "request_timeout",
        "request_headers_timeout",  # HTTP/1.1: 408 once a partial head is that old
        "stream_idle_timeout",
        "local_reply_config",
        # KEEP_UNCHANGED / IMPLEMENTATION_SPECIFIC_DEFAULT only (ALLOWED_IF): %2F and %5C
        # stay as they are in the path, as Envoy's default
        "path_with_escaped_slashes_action",
        "request_id_extension",  # envoy.request_id.uuid (the one sofamesh generates)
        "add_user_agent",  # filters/http/hcm_user_agent.py, first in the chain
        "forward_client_cert_details",  # x-forwarded-client-cert (proxy/xfcc.py)
        "set_current_client_cert_details",
    ),
    _HCM + "HttpConnectionManager.SetCurrentClientCertDetails": (
        "subject",
        "cert",
        "chain",  # refused by proxy/xfcc.py: the client's chain is not available
        "dns",
        "uri",
    ),
    _HCM + "RequestIDExtension": ("typed_config",),
    "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig": (),  # NO_EFFECT lists both
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate": (),  # no fields
    _HCM + "HttpFilter": ("name", "typed_config", "is_optional"),
    _HCM + "HttpConnectionManager.Tracing": (
        "provider",
        "random_sampling",
        "overall_sampling",
        "client_sampling",  # x-client-trace-id (_core/http_tracing.pyx)
        "custom_tags",
        "max_path_tag_length",
        "spawn_upstream_span",  # a CLIENT span per upstream request (proxy/tracing.py)
    ),
    "envoy.config.trace.v3.Tracing": ("http",),  # Bootstrap.tracing
    # DNS resolvers (proxy/dns.py): c-ares's settings that sofamesh's resolver follows
    "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig": (
        "resolvers",
        "use_resolvers_as_fallback",
        "dns_resolver_options",
        "query_timeout_seconds",
        "query_tries",
    ),
    "envoy.config.core.v3.DnsResolutionConfig": ("resolvers", "dns_resolver_options"),
    "envoy.config.core.v3.DnsResolverOptions": (
        "use_tcp_for_dns_lookups",
        "no_default_search_domain",
    ),
    "envoy.config.trace.v3.Tracing.Http": ("name", "typed_config"),
    "envoy.config.trace.v3.ZipkinConfig": (
        "collector_cluster",
        "collector_endpoint",
        "collector_endpoint_version",  # HTTP_JSON only (proxy/tracing.py)
        "shared_span_context",
        "trace_id_128bit",
        "collector_hostname",
    ),
    # proxy/tracing_otel.py; resource_detectors, sampler and max_cache_size refused
    "envoy.config.trace.v3.OpenTelemetryConfig": ("grpc_service", "http_service", "service_name"),
    # proxy/tracing_datadog.py; remote_config (Envoy polls the agent's /v0.7/config) refused
    "envoy.config.trace.v3.DatadogConfig": (
        "collector_cluster",
        "service_name",
        "collector_hostname",
    ),
    "envoy.config.core.v3.HttpService": ("http_uri", "request_headers_to_add"),
    "envoy.config.core.v3.HttpUri": ("uri", "cluster", "timeout"),
    "envoy.type.tracing.v3.CustomTag": (
        "tag",
        "literal",
        "request_header",
        "environment",
        "metadata",  # the request's dynamic metadata (proxy/tracing.py dynamic_metadata)
    ),
    "envoy.type.tracing.v3.CustomTag.Metadata": ("kind", "metadata_key", "default_value"),
    # host and cluster: internal_upstream's passthrough_metadata (tracing refuses them itself)
    "envoy.type.metadata.v3.MetadataKind": ("request", "host", "cluster"),
    "envoy.type.metadata.v3.MetadataKind.Request": (),
    "envoy.type.metadata.v3.MetadataKind.Host": (),
    "envoy.type.metadata.v3.MetadataKind.Cluster": (),
    "envoy.type.metadata.v3.MetadataKey": ("key", "path"),
    "envoy.type.metadata.v3.MetadataKey.PathSegment": ("key",),
    "envoy.type.tracing.v3.CustomTag.Literal": ("value",),
    "envoy.type.tracing.v3.CustomTag.Header": ("name", "default_value"),
    "envoy.type.tracing.v3.CustomTag.Environment": ("name", "default_value"),
    _RT + "Decorator": ("operation", "propagate"),  # the span's name; propagate true only
    _HCM + "HttpConnectionManager.UpgradeConfig": ("upgrade_type", "enabled"),
    # as HCM common_http_protocol_options; a cluster's accepts others (IMPLEMENTED_UNDER)
    "envoy.config.core.v3.HttpProtocolOptions": ("idle_timeout", "max_headers_count"),
    # HCM http_protocol_options, and a cluster's explicit HTTP/1 options (below);
    # enable_trailers: the HTTP/1 codec on that side decodes and encodes trailers
    "envoy.config.core.v3.Http1ProtocolOptions": ("accept_http_10", "enable_trailers"),
    # a cluster's typed_extension_protocol_options (UPSTREAM_HTTP_OPTIONS)
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": (
        "explicit_http_config",
        "use_downstream_protocol_config",  # HTTP/2 upstream for HTTP/2 requests only
        "common_http_protocol_options",  # its fields: IMPLEMENTED_UNDER
    ),
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig": (
        "http_protocol_options",
        "http2_protocol_options",
    ),
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig": (
        "http_protocol_options",
        "http2_protocol_options",  # the cluster's pool is HTTP/2 (http2_upstream)
    ),
    # HCM http2_protocol_options (downstream) and a cluster's explicit HTTP/2 options
    "envoy.config.core.v3.Http2ProtocolOptions": (
        # plain CONNECT streams are served with or without it (http2_server._begin_connect);
        # it advertises extended CONNECT (RFC 8441: websocket over HTTP/2, _begin_upgrade)
        "allow_connect",
        "max_concurrent_streams",
        "initial_stream_window_size",
        "initial_connection_window_size",
        "hpack_table_size",
        "max_outbound_frames",
        "max_outbound_control_frames",
        "max_consecutive_inbound_frames_with_empty_payload",
        "max_inbound_priority_frames_per_stream",
        "max_inbound_window_update_frames_per_data_frame_sent",
    ),
    _RT + "RouteConfiguration": (
        "name",
        "virtual_hosts",
        "request_headers_to_add",
        "request_headers_to_remove",
        "response_headers_to_add",
        "response_headers_to_remove",
        "validate_clusters",  # static cluster references are checked unless false
        "max_direct_response_body_size_bytes",  # checked as Envoy does (config/validate.py)
        "ignore_port_in_host_matching",  # proxy/routes.py compile_route_config
        "cluster_specifier_plugins",  # Lua (proxy/lua_cluster.py)
    ),
    _RT + "VirtualHost": (
        "name",
        "domains",
        "routes",
        "request_headers_to_add",
        "request_headers_to_remove",
        "response_headers_to_add",
        "response_headers_to_remove",
        "typed_per_filter_config",
        "cors",  # deprecated; read by envoy.filters.http.cors (filters/http/cors.py)
        "rate_limits",  # read by envoy.filters.http.ratelimit (filters/http/ratelimit.py)
        "include_request_attempt_count",  # x-envoy-attempt-count upstream (http_router.pyx)
        "include_attempt_count_in_response",  # ... and on the response
    ),
    _RT + "Route": (
        "name",
        "match",
        "route",
        "redirect",
        "direct_response",
        "typed_per_filter_config",
        "request_headers_to_add",
        "request_headers_to_remove",
        "response_headers_to_add",
        "response_headers_to_remove",
        "decorator",  # the trace span's name (proxy/tracing.py)
    ),
    _RT + "RouteMatch": (
        "prefix",
        "path",
        "safe_regex",
        "path_separated_prefix",
        "case_sensitive",
        "headers",
        "query_parameters",
        "grpc",  # content-type application/grpc (proxy/routes.py)
        "connect_matcher",  # CONNECT requests only (router.pyx PM_CONNECT)
    ),
    _RT + "RouteMatch.ConnectMatcher": (),
    _RT + "RouteAction.MaxStreamDuration": (
        "grpc_timeout_header_max",
        "grpc_timeout_header_offset",
        # 0s only (ALLOWED_IF): no limit on the route's streams, as the HCM sets none (its
        # max_stream_duration is refused)
        "max_stream_duration",
    ),
    _RT + "RouteAction": (
        "cluster",
        "weighted_clusters",
        "prefix_rewrite",
        "regex_rewrite",
        "host_rewrite_literal",
        "auto_host_rewrite",
        "timeout",
        "retry_policy",
        "upgrade_configs",
        "request_mirror_policies",
        "host_rewrite_header",
        "hash_policy",
        "max_stream_duration",  # grpc_timeout_header_max / _offset (gRPC request timeouts)
        "cors",  # deprecated; read by envoy.filters.http.cors (filters/http/cors.py)
        "rate_limits",  # read by envoy.filters.http.ratelimit (filters/http/ratelimit.py)
        "include_vh_rate_limits",
        "inline_cluster_specifier_plugin",  # Lua (proxy/lua_cluster.py)
        "cluster_specifier_plugin",  # names one of RouteConfiguration.cluster_specifier_plugins
        "max_grpc_timeout",  # a gRPC request's grpc-timeout as its timeout (http_grpc.pyx)
        "grpc_timeout_offset",
        "cluster_not_found_response_code",  # the local reply's status when it is unknown
    ),
    _RT + "RouteAction.HashPolicy": ("header", "terminal"),
    _RT + "RouteAction.HashPolicy.Header": ("header_name",),
    _HCM + "LocalReplyConfig": ("mappers",),
    _HCM + "ResponseMapper": ("filter", "status_code", "body"),
    _RT + "RouteAction.RequestMirrorPolicy": (
        "cluster",
        "cluster_header",  # the request header naming the mirror cluster (http_router.pyx)
        "runtime_fraction",  # its default_value (no runtime layer acts)
        "disable_shadow_host_suffix_append",
    ),
    # connect_config: a CONNECT terminated on a raw TCP upstream (_core/tcp_upstream.pyx)
    _RT + "RouteAction.UpgradeConfig": ("upgrade_type", "enabled", "connect_config"),
    _RT + "RouteAction.UpgradeConfig.ConnectConfig": (),  # allow_post refused in routes.py
    _RT + "RetryPolicy": (
        "retry_on",
        "num_retries",
        "per_try_timeout",
        "retriable_status_codes",
        "retry_back_off",
        "retry_host_predicate",  # envoy.retry_host_predicates.previous_hosts (proxy/routes.py)
        "host_selection_retry_max_attempts",
    ),
    _RT + "RetryPolicy.RetryBackOff": ("base_interval", "max_interval"),
    _RT + "WeightedCluster": ("clusters",),
    _RT + "WeightedCluster.ClusterWeight": ("name", "weight"),
    _RT + "RedirectAction": (
        "https_redirect",
        "scheme_redirect",
        "host_redirect",
        "port_redirect",
        "path_redirect",
        "prefix_rewrite",
        "response_code",
        "strip_query",
    ),
    _RT + "DirectResponseAction": ("status", "body"),
    _RT + "HeaderMatcher": (
        "name",
        "exact_match",
        "safe_regex_match",
        "range_match",
        "present_match",
        "prefix_match",
        "suffix_match",
        "contains_match",
        "string_match",
        "invert_match",
    ),
    _RT + "QueryParameterMatcher": ("name", "string_match", "present_match"),
    "envoy.type.matcher.v3.StringMatcher": (
        "exact",
        "prefix",
        "suffix",
        "safe_regex",
        "contains",
        "ignore_case",
    ),
    "envoy.type.matcher.v3.RegexMatcher": ("regex",),
    "envoy.config.core.v3.HeaderValueOption": ("header", "append", "append_action"),
    _CL + "Cluster.RingHashLbConfig": ("minimum_ring_size",),
    _CL + "Cluster.TransportSocketMatch": ("name", "match", "transport_socket"),
    "envoy.config.bootstrap.v3.Bootstrap.DeferredStatOptions": ("enable_deferred_creation_stats",),
    # the overload manager (issue 13, proxy/overload.py): global_downstream_max_connections,
    # fixed_heap and its actions (proxy/overload_actions.py), threshold or scaled triggers
    "envoy.config.overload.v3.OverloadManager": (
        "resource_monitors",
        "refresh_interval",
        "actions",
    ),
    "envoy.config.overload.v3.ResourceMonitor": ("name", "typed_config"),
    "envoy.config.overload.v3.OverloadAction": ("name", "triggers", "typed_config"),
    "envoy.config.overload.v3.Trigger": ("name", "threshold", "scaled"),
    "envoy.config.overload.v3.ThresholdTrigger": ("value",),
    "envoy.config.overload.v3.ScaledTrigger": ("scaling_threshold", "saturation_threshold"),
    "envoy.config.overload.v3.ScaleTimersOverloadActionConfig": ("timer_scale_factors",),
    "envoy.config.overload.v3.ScaleTimersOverloadActionConfig.ScaleTimer": (
        "timer",
        "min_timeout",
        "min_scale",
    ),
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig": (
        "max_active_downstream_connections",
    ),
    "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig": ("max_heap_size_bytes",),
    "envoy.config.bootstrap.v3.Bootstrap.ApplicationLogConfig": ("log_format",),
    "envoy.config.bootstrap.v3.Bootstrap.ApplicationLogConfig.LogFormat": ("text_format",),
    "envoy.config.bootstrap.v3.ClusterManager": (
        "upstream_bind_config",  # every cluster's default (proxy/upstream_bind.py)
        "local_cluster_name",  # zone-aware routing (proxy/zone_aware.py); a static cluster
        "outlier_detection",
        "load_stats_config",  # the LRS client (proxy/load_stats.py; GRPC, one envoy_grpc)
    ),
    "envoy.config.bootstrap.v3.ClusterManager.OutlierDetection": (
        "event_log_path",  # created at start (proxy/cli.py); outlier detection writes to it
    ),
    # admin/stats_config.py: Envoy's tag extractors (std::regex syntax) and stats matcher
    "envoy.config.metrics.v3.StatsConfig": (
        "stats_tags",
        "use_all_default_tags",
        "stats_matcher",
        "histogram_bucket_settings",  # bounds among the default ones (checked by validate)
    ),
    "envoy.config.metrics.v3.HistogramBucketSettings": ("match", "buckets"),
    "envoy.config.metrics.v3.TagSpecifier": ("tag_name", "regex", "fixed_value"),
    "envoy.config.metrics.v3.StatsMatcher": ("reject_all", "exclusion_list", "inclusion_list"),
    "envoy.type.matcher.v3.ListStringMatcher": ("patterns",),
    _CL + "Cluster.OriginalDstLbConfig": (
        "use_http_header",
        "http_header_name",
        "upstream_port_override",
    ),
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst": (),
    _CL + "Cluster": (
        # ORIGINAL_DST with CLUSTER_PROVIDED (proxy/original_dst.py)
        "original_dst_lb_config",
        "cleanup_interval",
        "alt_stat_name",  # the cluster's stats under cluster.<alt_stat_name>.
        "upstream_bind_config",  # proxy/upstream_bind.py
        "upstream_connection_options",  # tcp_keepalive (proxy/upstream_bind.py Dialer)
        "ring_hash_lb_config",
        "name",
        "type",
        "connect_timeout",
        "lb_policy",
        "load_assignment",
        "circuit_breakers",
        "per_connection_buffer_limit_bytes",
        "max_requests_per_connection",
        "least_request_lb_config",
        "dns_refresh_rate",
        "dns_lookup_family",  # V4_ONLY only (ALLOWED_IF): the resolver asks for A records
        # its own resolvers and the records' TTL as the refresh rate (proxy/dns.py)
        "respect_dns_ttl",
        "typed_dns_resolver_config",  # envoy.network.dns_resolver.cares (proxy/dns.py)
        "dns_resolution_config",
        "wait_for_warm_on_init",  # true only: DNS clusters resolve before listeners start
        "transport_socket",  # by type URL (register_extension)
        "transport_socket_matches",  # by endpoint metadata (proxy/tls.py UpstreamTransport)
        "typed_extension_protocol_options",  # by type URL (register_extension)
        "eds_cluster_config",
        "common_lb_config",
        "health_checks",  # one (proxy/health_check.py)
        "outlier_detection",  # proxy/outlier.py (not with health_checks: refused there)
        # upstream network filters: Istio's own only, passed through (filters/istio.py;
        # config/validate.py refuses any other)
        "filters",
    ),
    # outlier detection (proxy/outlier.py; `monitors` refused there by path)
    _CL + "OutlierDetection": (
        "consecutive_5xx",
        "interval",
        "base_ejection_time",
        "max_ejection_percent",
        "enforcing_consecutive_5xx",
        "enforcing_success_rate",
        "success_rate_minimum_hosts",
        "success_rate_request_volume",
        "success_rate_stdev_factor",
        "consecutive_gateway_failure",
        "enforcing_consecutive_gateway_failure",
        "split_external_local_origin_errors",
        "consecutive_local_origin_failure",
        "enforcing_consecutive_local_origin_failure",
        "enforcing_local_origin_success_rate",
        "failure_percentage_threshold",
        "enforcing_failure_percentage",
        "enforcing_failure_percentage_local_origin",
        "failure_percentage_minimum_hosts",
        "failure_percentage_request_volume",
        "max_ejection_time",
        "max_ejection_time_jitter",
        "always_eject_one_host",
    ),
    # active health checking (proxy/health_check.py, proxy/health_probes.py)
    "envoy.config.core.v3.HealthCheck": (
        "timeout",
        "interval",
        "initial_jitter",
        "interval_jitter",
        "interval_jitter_percent",
        "unhealthy_threshold",
        "healthy_threshold",
        "reuse_connection",
        "alt_port",
        "http_health_check",
        "tcp_health_check",
        "grpc_health_check",
        "no_traffic_interval",
        "no_traffic_healthy_interval",
        "unhealthy_interval",
        "unhealthy_edge_interval",
        "healthy_edge_interval",
        "event_log_path",  # JSON HealthCheckEvent lines
        "always_log_health_check_failures",
        # Envoy 1.40 writes no success events to event_log_path either (checked)
        "always_log_health_check_success",
    ),
    "envoy.config.core.v3.HealthCheck.HttpHealthCheck": (
        "host",
        "path",
        "request_headers_to_add",  # literal values
        "request_headers_to_remove",
        "expected_statuses",
        "retriable_statuses",
        "service_name_matcher",  # x-envoy-upstream-healthchecked-cluster (verify_cluster)
        "codec_client_type",  # HTTP1 only (ALLOWED_IF)
        "method",  # GET only (ALLOWED_IF)
    ),
    "envoy.config.core.v3.HealthCheck.TcpHealthCheck": ("send", "receive"),
    "envoy.config.core.v3.HealthCheck.GrpcHealthCheck": ("service_name", "authority"),
    "envoy.config.core.v3.HealthCheck.Payload": ("text", "binary"),
    _CL + "Cluster.LeastRequestLbConfig": ("choice_count",),
    _CL + "CircuitBreakers": ("thresholds",),
    _CL + "CircuitBreakers.Thresholds": (
        "max_connections",
        "max_pending_requests",
        "max_requests",
        "max_retries",
        "track_remaining",  # circuit_breakers.<priority>.remaining_* gauges (admin/backend.py)
    ),
    _EP + "ClusterLoadAssignment": (
        "endpoints",
        "policy",  # overprovisioning_factor: priority loads, panic, locality weights
    ),
    _EP + "ClusterLoadAssignment.Policy": ("overprovisioning_factor",),
    # priority levels and locality weights (upstream.pyx Cluster._choose_level)
    _EP + "LocalityLbEndpoints": ("lb_endpoints", "priority", "locality", "load_balancing_weight"),
    "envoy.config.core.v3.Locality": ("region", "zone", "sub_zone"),
    _EP + "LbEndpoint": ("endpoint", "load_balancing_weight", "health_status"),
    _EP + "Endpoint": (
        "address",
        "health_check_config",  # port_value: health checks go to that port
        "hostname",  # auto_host_rewrite's host, /clusters hostname
    ),
    _EP + "Endpoint.HealthCheckConfig": ("port_value",),
    "envoy.config.core.v3.SocketAddress": ("address", "port_value", "protocol"),
    # upstream_bind_config (proxy/upstream_bind.py): socket_options, local_address_selector
    # and additional_source_addresses refused
    "envoy.config.core.v3.BindConfig": ("source_address", "freebind", "extra_source_addresses"),
    "envoy.config.core.v3.ExtraSourceAddress": ("address",),
    _CL + "UpstreamConnectionOptions": ("tcp_keepalive",),
    "envoy.config.core.v3.TcpKeepalive": (
        "keepalive_probes",
        "keepalive_time",
        "keepalive_interval",
    ),
    # an internal listener's address: Host envoy://<listener>/<id> (proxy/internal_listener.py)
    "envoy.config.core.v3.EnvoyInternalAddress": ("server_listener_name", "endpoint_id"),
    # envoy.transport_sockets.internal_upstream: its inner transport socket is the pipe's
    # (raw_buffer or TLS); host and cluster metadata pass through (proxy/internal_listener.py)
    "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport": (
        "transport_socket",
        "passthrough_metadata",
    ),
    "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport"
    ".MetadataValueSource": ("kind", "name"),
    # the access loggers and the filters: config/implemented_filters.py
    **FILTERS,
}

# A message whose accepted fields depend on where it sits: (parent message, field) -> the
# fields accepted there, instead of the message's IMPLEMENTED entry. A cluster's
# common_http_protocol_options acts on its upstream connections (proxy/http_options.py
# upstream_common: the pools' idle sweep, max duration timer and request limit); the
# HCM's on downstream ones. max_headers_count, max_stream_duration and
# headers_with_underscores_action of a cluster are refused by name.
IMPLEMENTED_UNDER: dict[tuple[str, str], tuple[str, ...]] = {
    ("envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "common_http_protocol_options"): (
        "idle_timeout",
        "max_requests_per_connection",
        "max_connection_duration",
    ),
}
