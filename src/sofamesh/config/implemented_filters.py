"""The fields sofamesh implements of the access loggers' and the network and HTTP filters'
messages: part of `IMPLEMENTED` (config/implemented.py, which merges this table and
explains the rules)."""

from __future__ import annotations

_RT = "envoy.config.route.v3."
_CORS_POLICY = (
    "allow_origin_string_match",
    "allow_methods",
    "allow_headers",
    "expose_headers",
    "max_age",
    "allow_credentials",
    "filter_enabled",  # its default_value (no runtime layer acts)
    "shadow_enabled",  # its default_value
    "allow_private_network_access",
    "forward_not_matching_preflights",
)
_CMP = "envoy.extensions.filters.http.compressor.v3.Compressor"
_DCMP = "envoy.extensions.filters.http.decompressor.v3.Decompressor"

FILTERS: dict[str, tuple[str, ...]] = {
    # access loggers and their filters (proxy/access_log_config.py, log_filter.py)
    "envoy.config.accesslog.v3.AccessLog": ("name", "typed_config", "filter"),
    "envoy.config.accesslog.v3.AccessLogFilter": (
        "status_code_filter",
        "duration_filter",
        "not_health_check_filter",
        "traceable_filter",
        "runtime_filter",  # the default fraction: no runtime layer overrides it
        "and_filter",
        "or_filter",
        "header_filter",
        "response_flag_filter",
        "grpc_status_filter",
    ),
    "envoy.config.accesslog.v3.StatusCodeFilter": ("comparison",),
    "envoy.config.accesslog.v3.DurationFilter": ("comparison",),
    "envoy.config.accesslog.v3.ComparisonFilter": ("op", "value"),
    "envoy.config.core.v3.RuntimeUInt32": ("default_value", "runtime_key"),
    "envoy.config.accesslog.v3.RuntimeFilter": (
        "runtime_key",
        "percent_sampled",
        "use_independent_randomness",
    ),
    "envoy.config.accesslog.v3.AndFilter": ("filters",),
    "envoy.config.accesslog.v3.OrFilter": ("filters",),
    "envoy.config.accesslog.v3.HeaderFilter": ("header",),
    "envoy.config.accesslog.v3.ResponseFlagFilter": ("flags",),
    "envoy.config.accesslog.v3.GrpcStatusFilter": ("statuses", "exclude"),
    # file / stdout / stderr formats (proxy/log_format.py); format, json_format and
    # typed_json_format are FileAccessLog's deprecated forms, which Envoy 1.40 still takes
    "envoy.extensions.access_loggers.file.v3.FileAccessLog": (
        "path",
        "log_format",
        "format",
        "json_format",
        "typed_json_format",
    ),
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog": ("log_format",),
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog": ("log_format",),
    "envoy.config.core.v3.SubstitutionFormatString": (
        "text_format",
        "text_format_source",  # inline_string, inline_bytes, filename
        "json_format",
        "omit_empty_values",
        "content_type",  # what a local reply body would carry; nothing for a log line
    ),
    # envoy.access_loggers.http_grpc (sofamesh.proxy.grpc_access_log)
    "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig": ("common_config",),
    "envoy.extensions.access_loggers.grpc.v3.CommonGrpcAccessLogConfig": (
        "log_name",
        "grpc_service",
        "transport_api_version",  # V3 only (the only version Envoy 1.40 has)
        "buffer_flush_interval",
        "buffer_size_bytes",
    ),  # grpc_service: envoy_grpc.cluster_name (GrpcService is listed above, for ADS)
    # envoy.access_loggers.tcp_grpc (sofamesh.proxy.tcp_grpc_access_log)
    "envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig": ("common_config",),
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy": (
        "stat_prefix",
        "access_log",  # file, stdout, stderr, tcp_grpc (proxy/access_log_config.py)
        "cluster",
        "weighted_clusters",
        "idle_timeout",
        "max_connect_attempts",  # 1 only
        "tunneling_config",  # CONNECT / POST over the cluster's HTTP/2 or HTTP/1.1 pool
    ),
    # _core/tcp_tunnel.pyx; hostname and header values with %DOWNSTREAM_LOCAL_ADDRESS%,
    # %DOWNSTREAM_LOCAL_PORT%, %DOWNSTREAM_REMOTE_ADDRESS% (filters/network/tcp_proxy.py)
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.TunnelingConfig": (
        "hostname",
        "use_post",
        "post_path",
        "headers_to_add",
    ),
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster": ("clusters",),
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight": (
        "name",
        "weight",
    ),
    # RBAC (sofamesh.filters.http.rbac, sofamesh.filters.network.rbac): sourced_metadata,
    # matcher trees, CEL conditions and audit logging are refused by path
    "envoy.extensions.filters.http.rbac.v3.RBAC": (
        "rules",
        "rules_stat_prefix",
        "shadow_rules",
        "shadow_rules_stat_prefix",
        "matcher",  # matcher lists on request headers (filters/http/rbac_matcher.py)
        "shadow_matcher",
    ),
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute": ("rbac",),
    "envoy.extensions.filters.network.rbac.v3.RBAC": (
        "rules",
        "shadow_rules",
        "shadow_rules_stat_prefix",
        "stat_prefix",
        "enforcement_type",  # ONE_TIME_ON_FIRST_BYTE only (ALLOWED_IF)
    ),
    # filters/network/connection_limit.py (runtime_enabled refused; --concurrency 1 only)
    "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit": (
        "stat_prefix",
        "max_connections",
        "delay",
    ),
    "envoy.config.rbac.v3.RBAC": ("action", "policies"),
    "envoy.config.rbac.v3.Policy": ("permissions", "principals"),
    "envoy.config.rbac.v3.Permission": (
        "and_rules",
        "or_rules",
        "any",
        "header",
        "url_path",
        "destination_ip",
        "destination_port",
        "destination_port_range",
        "not_rule",
        "requested_server_name",  # the TLS SNI (empty for plaintext)
        "metadata",  # the request's dynamic metadata (proxy/metadata_match.py)
    ),
    "envoy.config.rbac.v3.Permission.Set": ("rules",),
    "envoy.config.rbac.v3.Principal": (
        "and_ids",
        "or_ids",
        "any",
        "source_ip",
        "direct_remote_ip",
        "remote_ip",
        "header",
        "url_path",
        "not_id",
        "authenticated",  # a verified peer certificate (mTLS)
        "metadata",  # the request's dynamic metadata (proxy/metadata_match.py)
        # the stream's and the connection's filter state (proxy/filter_state.py)
        "filter_state",
    ),
    "envoy.type.matcher.v3.FilterStateMatcher": ("key", "string_match"),
    "envoy.type.matcher.v3.MetadataMatcher": ("filter", "path", "value", "invert"),
    "envoy.config.rbac.v3.Principal.Set": ("ids",),
    "envoy.config.rbac.v3.Principal.Authenticated": ("principal_name",),
    "envoy.type.matcher.v3.PathMatcher": ("path",),
    "envoy.config.core.v3.CidrRange": ("address_prefix", "prefix_len"),
    "envoy.type.v3.Int32Range": ("start", "end"),
    # envoy.filters.http.cors (filters/http/cors.py): the filter has no options; the policy
    # is per route / virtual host (typed_per_filter_config, or the deprecated `cors` fields)
    "envoy.extensions.filters.http.cors.v3.Cors": (),
    "envoy.extensions.filters.http.cors.v3.CorsPolicy": _CORS_POLICY,
    _RT + "CorsPolicy": _CORS_POLICY,
    # envoy.filters.http.compressor (filters/http/compressor.py, compression.py): response
    # compression; request_direction_config, choose_first, status_header_enabled and the
    # deprecated top-level twins are refused
    _CMP: ("compressor_library", "response_direction_config"),
    _CMP + ".ResponseDirectionConfig": (
        "common_config",
        "disable_on_etag_header",
        "remove_accept_encoding_header",
        "uncompressible_response_codes",
    ),
    _CMP + ".CommonDirectionConfig": ("enabled", "min_content_length", "content_type"),
    _CMP + "PerRoute": ("disabled",),
    "envoy.extensions.compression.gzip.compressor.v3.Gzip": (
        "memory_level",
        "compression_level",
        "compression_strategy",
        "window_bits",
    ),
    "envoy.extensions.compression.brotli.compressor.v3.Brotli": (
        "quality",
        "encoder_mode",
        "window_bits",
        "input_block_bits",
    ),
    "envoy.extensions.compression.zstd.compressor.v3.Zstd": (
        "compression_level",
        "enable_checksum",
    ),
    # envoy.filters.http.csrf (filters/http/csrf.py): filter config and per-route policy
    "envoy.extensions.filters.http.csrf.v3.CsrfPolicy": (
        "filter_enabled",  # its default_value (no runtime layer acts)
        "shadow_enabled",  # its default_value
        "additional_origins",
    ),
    # envoy.filters.http.decompressor (filters/http/decompressor.py)
    _DCMP: ("decompressor_library", "request_direction_config", "response_direction_config"),
    _DCMP + ".RequestDirectionConfig": ("common_config", "advertise_accept_encoding"),
    _DCMP + ".ResponseDirectionConfig": ("common_config",),
    _DCMP + ".CommonDirectionConfig": ("enabled", "ignore_no_transform_header"),
    "envoy.extensions.compression.gzip.decompressor.v3.Gzip": (
        "window_bits",
        "max_inflate_ratio",
        "chunk_size",  # the output piece max_inflate_ratio is checked after
    ),
    "envoy.extensions.compression.brotli.decompressor.v3.Brotli": (),
    # envoy.filters.http.grpc_http1_bridge (filters/http/grpc_http1_bridge.py): the
    # application/x-protobuf upgrade options are refused
    "envoy.extensions.filters.http.grpc_http1_bridge.v3.Config": (),
    # envoy.filters.http.health_check (filters/http/health_check.py): cache_time refused
    # set_filter_state (filters/network/set_filter_state.py, filters/http/set_filter_state.py)
    # and set_metadata (filters/http/set_metadata.py)
    "envoy.extensions.filters.network.set_filter_state.v3.Config": ("on_new_connection",),
    "envoy.extensions.filters.http.set_filter_state.v3.Config": ("on_request_headers",),
    "envoy.extensions.filters.common.set_filter_state.v3.FilterStateValue": (
        "object_key",
        "factory_key",  # string objects only (proxy/filter_state.py)
        "format_string",
        "read_only",
        "skip_if_empty",
        # to an internal listener's connection (network filter; refused on HTTP)
        "shared_with_upstream",
    ),
    "envoy.extensions.filters.http.set_metadata.v3.Config": (
        "metadata_namespace",
        "value",
        "metadata",
    ),
    "envoy.extensions.filters.http.set_metadata.v3.Metadata": (
        "metadata_namespace",
        "allow_overwrite",
        "value",
    ),
    "envoy.extensions.filters.http.health_check.v3.HealthCheck": (
        "pass_through_mode",
        "cluster_min_healthy_percentages",
        "headers",
    ),
    "envoy.extensions.compression.zstd.decompressor.v3.Zstd": (),
    # envoy.filters.http.ext_authz (filters/http/ext_authz.py, ext_authz_http.py): the
    # authorization service's Check (gRPC) or HTTP call; other fields refused by path
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz": (
        "grpc_service",  # envoy_grpc only
        "http_service",
        "transport_api_version",  # V3 (or unset)
        "failure_mode_allow",
        "failure_mode_allow_header_add",
        "with_request_body",
        "status_on_error",
        "metadata_context_namespaces",  # the request's dynamic metadata, as a Struct
        "filter_enabled",  # its default_value (no runtime layer acts)
        "filter_enabled_metadata",  # string, bool and present matches
        "deny_at_disable",  # its default_value
        "stat_prefix",
        "allowed_headers",
        "disallowed_headers",
        "charge_cluster_response_stats",
    ),
    "envoy.extensions.filters.http.ext_authz.v3.BufferSettings": (
        "max_request_bytes",
        "allow_partial_message",
        "pack_as_bytes",
    ),
    "envoy.extensions.filters.http.ext_authz.v3.HttpService": (
        "server_uri",
        "path_prefix",
        "authorization_request",
        "authorization_response",
    ),
    "envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest": (
        "allowed_headers",
        "headers_to_add",
    ),
    "envoy.extensions.filters.http.ext_authz.v3.AuthorizationResponse": (
        "allowed_upstream_headers",
        "allowed_upstream_headers_to_append",
        "allowed_client_headers",
        "allowed_client_headers_on_success",
    ),
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute": ("disabled", "check_settings"),
    # with_request_body, grpc_service and http_service refused by path
    "envoy.extensions.filters.http.ext_authz.v3.CheckSettings": (
        "context_extensions",
        "disable_request_body_buffering",
    ),
    # envoy.filters.http.ratelimit (filters/http/ratelimit.py): the rate-limit service call
    "envoy.extensions.filters.http.ratelimit.v3.RateLimit": (
        "domain",
        "stage",
        "request_type",
        "timeout",
        "failure_mode_deny",
        "rate_limit_service",
        "enable_x_ratelimit_headers",
        "disable_x_envoy_ratelimited_header",
        "rate_limited_status",
        "response_headers_to_add",
        "status_on_error",
        "rate_limits",
    ),
    "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute": (
        "vh_rate_limits",
        "rate_limits",
        "domain",
    ),
    "envoy.config.ratelimit.v3.RateLimitServiceConfig": ("grpc_service", "transport_api_version"),
    _RT + "RateLimit": ("stage", "actions"),
    _RT + "RateLimit.Action": (
        "source_cluster",
        "destination_cluster",
        "request_headers",
        "query_parameters",
        "remote_address",
        "masked_remote_address",
        "generic_key",
        "header_value_match",
    ),
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit": (
        "stat_prefix",
        "status",
        "token_bucket",
        # RPC calls by service and method (filters/network/rpc_quota.py); the HTTP filter
        # refuses them at load (_core/ratelimit.pyx LocalRateLimit.from_proto)
        "descriptors",
        "filter_enabled",
        "filter_enforced",
        "response_headers_to_add",
    ),
}
