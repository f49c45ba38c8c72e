"""The benchmark's Envoy v3 bootstrap, identical for Envoy and sofamesh: local_ratelimit + router."""

from __future__ import annotations

HCM = ("type.googleapis.com/envoy.extensions.filters.network."
       "http_connection_manager.v3.HttpConnectionManager")
LOCAL_RATELIMIT = ("type.googleapis.com/envoy.extensions.filters.http."
                   "local_ratelimit.v3.LocalRateLimit")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
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
            "token_bucket": {"max_tokens": 4000000000, "tokens_per_fill": 4000000000,
                             "fill_interval": "1s"},
            "filter_enabled": _percent("bench_rl_enabled"),
            "filter_enforced": _percent("bench_rl_enforced"),
        },
    }


def bootstrap(listen_port: int, admin_port: int, upstream_port: int) -> dict:
    hcm = {
        "@type": HCM,
        "stat_prefix": "bench",
        # No access_log: the benchmark measures proxying with logging off.
        "route_config": {
            "name": "bench",
            "virtual_hosts": [{
                "name": "bench", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
            }],
        },
        "http_filters": [local_ratelimit(),
                         {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm}]}],
            }],
            "clusters": [{
                "name": "upstream", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": upstream_port}}}}]}]},
            }],
        },
    }
