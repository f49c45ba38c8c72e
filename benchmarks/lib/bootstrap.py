"""The benchmark's Envoy v3 bootstrap, identical for Envoy and sofamesh: local_ratelimit + router."""

from __future__ import annotations

import json

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network."
    "http_connection_manager.v3.HttpConnectionManager"
)
LOCAL_RATELIMIT = (
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
BENCH_HOST = "bench.local"


def _percent(key: str) -> dict:
    return {"runtime_key": key, "default_value": {"numerator": 100, "denominator": "HUNDRED"}}


def local_ratelimit() -> dict:
    """Enabled and enforced on every request, with a bucket no benchmark can empty."""
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": LOCAL_RATELIMIT,
            "stat_prefix": "bench_rl",
            "token_bucket": {
                "max_tokens": 4000000000,
                "tokens_per_fill": 4000000000,
                "fill_interval": "1s",
            },
            "filter_enabled": _percent("bench_rl_enabled"),
            "filter_enforced": _percent("bench_rl_enforced"),
        },
    }


def rbac(n: int) -> dict:
    """envoy.filters.http.rbac, ALLOW, n policies of which only the last by name lets the
    benchmark's requests through, so every request runs all n. Istio-like shapes: paths,
    methods, tenant headers, client ranges from x-forwarded-for, loopback peers."""
    policies = {}
    for i in range(n - 1):
        if i % 2:
            # the permission matches (GET), the principal does not (no x-forwarded-for)
            perm = {"header": {"name": ":method", "string_match": {"exact": "GET"}}}
            who = [
                {"remote_ip": {"address_prefix": f"10.{i}.0.0", "prefix_len": 16}},
                {"header": {"name": "x-caller", "string_match": {"exact": f"svc-{i}"}}},
            ]
        else:
            # the permission does not match
            perm = {
                "or_rules": {
                    "rules": [
                        {"url_path": {"path": {"prefix": f"/api/v{i}/"}}},
                        {"header": {"name": "x-tenant", "string_match": {"exact": f"tenant-{i}"}}},
                    ]
                }
            }
            who = [{"direct_remote_ip": {"address_prefix": "127.0.0.1", "prefix_len": 32}}]
        policies[f"policy-{i:02d}"] = {"permissions": [perm], "principals": who}
    policies[f"policy-{n - 1:02d}"] = {
        "permissions": [
            {
                "and_rules": {
                    "rules": [
                        {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
                        {"url_path": {"path": {"prefix": "/"}}},
                    ]
                }
            }
        ],
        "principals": [{"direct_remote_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}}],
    }
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {"@type": RBAC, "rules": {"action": "ALLOW", "policies": policies}},
    }


def tracing(percent: float) -> dict:
    """HCM tracing with envoy.tracers.zipkin at `percent` random sampling; spans go to the
    `zipkin` cluster (the benchmark's nginx: it answers the POSTs 405, which both proxies
    count as failed reports; the cost measured is making and sending them)."""
    return {
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": "zipkin",
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_JSON",
            },
        },
        "random_sampling": {"value": percent},
    }


RLQ = (
    "type.googleapis.com/envoy.extensions.filters.http.rate_limit_quota.v3"
    ".RateLimitQuotaFilterConfig"
)
RLQ_BUCKET = (
    "type.googleapis.com/envoy.extensions.filters.http.rate_limit_quota.v3"
    ".RateLimitQuotaBucketSettings"
)
ALS = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
MIXER_POLICY = "quotas:\n  - bucket: {name: bench}\n    requests_per_second: 1000000000\n"


def rate_limit_quota(domain: str) -> dict:
    """envoy.filters.http.rate_limit_quota: every request in bucket {name: bench} of `domain`
    (one per proxy, so the mixer's counters tell them apart), usage reported to the `mixer` cluster each second (MIXER_POLICY's limit is too
    high for any run to reach, so every request is decided locally and admitted)."""
    settings = {
        "@type": RLQ_BUCKET,
        "bucket_id_builder": {"bucket_id_builder": {"name": {"string_value": "bench"}}},
        "reporting_interval": "1s",
    }
    return {
        "name": "envoy.filters.http.rate_limit_quota",
        "typed_config": {
            "@type": RLQ,
            "domain": domain,
            "rlqs_server": {"envoy_grpc": {"cluster_name": "mixer"}},
            "bucket_matchers": {
                "on_no_match": {"action": {"name": "bucket", "typed_config": settings}}
            },
        },
    }


def grpc_access_log() -> dict:
    """envoy.access_loggers.http_grpc to the `mixer` cluster with Envoy's default buffering
    (16 KiB or 1 s, whichever first)."""
    return {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": ALS,
            "common_config": {
                "log_name": "bench",
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "mixer"}},
            },
        },
    }


def bootstrap(
    listen_port: int,
    admin_port: int,
    upstream_port: int,
    rbac_policies: int = 0,
    tracing_percent: float | None = None,
    mixer_port: int | None = None,
    node: str = "bench",
) -> dict:
    """The benchmark bootstrap; with mixer_port, the mixer-in-the-sidecar set: RBAC of
    rbac_policies policies, rate_limit_quota and the batched gRPC access log, the last two
    talking to `sofamesh mixer` at mixer_port."""
    hcm = {
        "@type": HCM,
        "stat_prefix": "bench",
        # No access_log: the benchmark measures proxying with logging off.
        "route_config": {
            "name": "bench",
            "virtual_hosts": [
                {
                    "name": "bench",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                }
            ],
        },
        "http_filters": [
            *([rbac(rbac_policies)] if rbac_policies else []),
            *([rate_limit_quota(node)] if mixer_port is not None else []),
            local_ratelimit(),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
    }
    if tracing_percent is not None:
        hcm["tracing"] = tracing(tracing_percent)
    if mixer_port is not None:
        hcm["access_log"] = [grpc_access_log()]
    boot = {
        "node": {"id": node, "cluster": node},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": listen_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "upstream",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "upstream",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": upstream_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }
    if tracing_percent is not None:
        zipkin = json.loads(json.dumps(boot["static_resources"]["clusters"][0]))
        zipkin["name"] = zipkin["load_assignment"]["cluster_name"] = "zipkin"
        boot["static_resources"]["clusters"].append(zipkin)
    if mixer_port is not None:
        boot["static_resources"]["clusters"].append(_static_cluster("mixer", mixer_port, True))
    return boot


GRPC_SERVICE = "bench.Echo"
H2_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _static_cluster(name: str, port: int, http2: bool) -> dict:
    c: dict = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if http2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": H2_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return c


def h2_bootstrap(
    listen_port: int,
    admin_port: int,
    h1_port: int,
    h2_port: int,
    grpc_port: int,
    fast_grpc_service: str = "bench.Fast",
) -> dict:
    """benchmarks/h2_bench.py: one listener, HCM codec_type AUTO (h2c by prior knowledge),
    local_ratelimit then the router (as bootstrap()), routes: gRPC requests for bench.Echo
    (`grpc: {}` match) -> cluster grpc (HTTP/2 to the grpcio server), gRPC requests for
    fast_grpc_service -> cluster grpc_nginx (HTTP/2 to nginx's canned gRPC reply), /h2/ ->
    cluster h2 (HTTP/2 to nginx's h2c port), the rest -> cluster h1 (HTTP/1.1 to nginx)."""
    boot = bootstrap(listen_port, admin_port, h1_port)
    listener = boot["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["codec_type"] = "AUTO"
    hcm["route_config"]["virtual_hosts"][0]["routes"] = [
        {
            "match": {"prefix": f"/{GRPC_SERVICE}/", "grpc": {}},
            "route": {"cluster": "grpc"},
        },
        {
            "match": {"prefix": f"/{fast_grpc_service}/", "grpc": {}},
            "route": {"cluster": "grpc_nginx"},
        },
        {"match": {"prefix": "/h2/"}, "route": {"cluster": "h2"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "h1"}},
    ]
    boot["static_resources"]["clusters"] = [
        _static_cluster("h1", h1_port, False),
        _static_cluster("h2", h2_port, True),
        _static_cluster("grpc", grpc_port, True),
        _static_cluster("grpc_nginx", h2_port, True),
    ]
    return boot
