"""Differential harness: one bootstrap, two proxies (real Envoy, sofamesh), the same raw bytes to both.

A *deployment* is a proxy process plus its own RecordingUpstream (listeners "a" and "b") and
a dead port, so recordings never mix. ``observe(deployment, case)`` sends a case's bytes over
a raw socket and returns an ``Observation``: what the client got (statuses, headers, bodies,
whether the connection stayed usable) and what the upstream received, both normalised by the
rules in ``NORMALISATIONS`` (the only place where differences are forgiven).
"""

from __future__ import annotations

import hashlib
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.http_upstream import Record, RecordingUpstream

HOST = "main.test"
ROUTE_TIMEOUT_MS = (
    15000  # Envoy's default route timeout, sent upstream as x-envoy-expected-rq-timeout-ms
)
SLOW_ROUTE_TIMEOUT_S = 0.5
CLIENT_TIMEOUT_S = (
    3.0  # longest legitimate wait: Envoy's 1 s delayed close, the 0.5 s route timeout
)

# ------------------------------------------------------------------------------------------
# The bootstrap: one listener, one inline route table exercising the routing features, STATIC
# clusters to the recording upstream and one to a port nothing listens on.
# ------------------------------------------------------------------------------------------


def _cluster(name: str, port: int) -> dict:
    return {
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


def _hdr(key: str, value: str, action: str | None = None) -> dict:
    out: dict = {"header": {"key": key, "value": value}}
    if action:
        out["append_action"] = action
    return out


@dataclass
class Feature:
    """Config a proxy might reject at start-up, run in its own small deployment
    (test_feature_same_as_envoy) so one unsupported field fails one named test, not all.
    Routes go first in the main virtual host; `hcm` is merged into the HttpConnectionManager;
    `clusters(ports)` returns extra clusters given the upstream ports {"a": .., "b": ..}."""

    routes: list[dict] = field(default_factory=list)
    hcm: dict = field(default_factory=dict)
    clusters: Callable[[dict[str, int]], list[dict]] | None = None
    http_filters: list[dict] = field(default_factory=list)  # before the router
    access_log: bool = False  # a file access log in Envoy's default format


def _two_endpoint_cluster(
    name: str, ports: dict[str, int], weights: tuple[int, int] | None = None, **extra
) -> dict:
    eps = []
    for i, key in enumerate(("a", "b")):
        ep: dict = {
            "endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[key]}}
            }
        }
        if weights:
            ep["load_balancing_weight"] = weights[i]
        eps.append(ep)
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": eps}]},
        **extra,
    }


_LRL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"


def _local_ratelimit(max_tokens: int | None) -> dict:
    cfg: dict = {"@type": _LRL, "stat_prefix": "diff_rl"}
    if max_tokens is not None:
        cfg.update(
            {
                "token_bucket": {
                    "max_tokens": max_tokens,
                    "tokens_per_fill": max_tokens,
                    "fill_interval": "3600s",
                },
                "filter_enabled": {
                    "default_value": {"numerator": 100, "denominator": "HUNDRED"},
                    "runtime_key": "diff_rl_enabled",
                },
                "filter_enforced": {
                    "default_value": {"numerator": 100, "denominator": "HUNDRED"},
                    "runtime_key": "diff_rl_enforced",
                },
                "response_headers_to_add": [_hdr("x-local-rate-limit", "true")],
            }
        )
    return cfg


_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
_RBAC_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"


def _rbac_policy(permissions: list[dict], principals: list[dict]) -> dict:
    return {"permissions": permissions, "principals": principals}


def _rbac_hdr(name: str, exact: str | None = None) -> dict:
    if exact is None:
        return {"header": {"name": name, "present_match": True}}
    return {"header": {"name": name, "string_match": {"exact": exact}}}


def _rbac_ip(kind: str, prefix: str, plen: int) -> dict:
    return {kind: {"address_prefix": prefix, "prefix_len": plen}}


# The harness's probe request (x-probe) is allowed by every enforced ALLOW rule set.
_RBAC_PROBE = _rbac_policy([_rbac_hdr("x-probe")], [{"any": True}])


def _rbac_filter(rules: dict | None, shadow: dict | None = None, **extra) -> list[dict]:
    cfg: dict = {"@type": _RBAC, **extra}
    if rules is not None:
        cfg["rules"] = rules
    if shadow is not None:
        cfg["shadow_rules"] = shadow
    return [{"name": "envoy.filters.http.rbac", "typed_config": cfg}]


_RBAC_ALLOW = {
    "action": "ALLOW",
    "policies": {
        "probe": _RBAC_PROBE,
        "get-public-from-loopback": _rbac_policy(
            [
                {
                    "and_rules": {
                        "rules": [
                            _rbac_hdr(":method", "GET"),
                            {"url_path": {"path": {"prefix": "/a/public"}}},
                        ]
                    }
                }
            ],
            [_rbac_ip("direct_remote_ip", "127.0.0.1", 32)],
        ),
        "admin-role": _rbac_policy([{"any": True}], [_rbac_hdr("x-role", "admin")]),
        "xff-client-10": _rbac_policy(
            [{"url_path": {"path": {"prefix": "/a/xff"}}}], [_rbac_ip("remote_ip", "10.0.0.0", 8)]
        ),
        "put-not-from-10": _rbac_policy(
            [_rbac_hdr(":method", "PUT")], [{"not_id": _rbac_ip("direct_remote_ip", "10.0.0.0", 8)}]
        ),
        "authority-and-port": _rbac_policy(
            [
                {
                    "and_rules": {
                        "rules": [
                            _rbac_hdr(":authority", "port.test"),
                            {"destination_port_range": {"start": 1, "end": 65536}},
                            _rbac_ip("destination_ip", "127.0.0.0", 8),
                        ]
                    }
                }
            ],
            [{"any": True}],
        ),
        "exact-query-path": _rbac_policy([_rbac_hdr(":path", "/a/q?x=1")], [{"any": True}]),
        "not-path": _rbac_policy(
            [
                {
                    "and_rules": {
                        "rules": [
                            {"not_rule": {"url_path": {"path": {"prefix": "/a/"}}}},
                            _rbac_hdr("x-not", "1"),
                        ]
                    }
                }
            ],
            [{"any": True}],
        ),
    },
}

_UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _http1_options(**http1: object) -> dict:
    return {
        _UPSTREAM_HTTP: {
            "@type": f"type.googleapis.com/{_UPSTREAM_HTTP}",
            "explicit_http_config": {"http_protocol_options": http1},
        }
    }


def _trailer_clusters(ports: dict[str, int]) -> list[dict]:
    opts = _http1_options(enable_trailers=True)
    return [
        {**_cluster("svc_tr", ports["a"]), "typed_extension_protocol_options": opts},
        {**_cluster("svc_tr_b", ports["b"]), "typed_extension_protocol_options": opts},
        {
            **_cluster("svc_plain_options", ports["a"]),
            "typed_extension_protocol_options": _http1_options(),
        },
    ]


_TRAILER_ROUTES = [
    {
        "match": {"prefix": "/tr-retry"},
        "route": {"cluster": "svc_tr", "retry_policy": {"retry_on": "5xx", "num_retries": 1}},
    },
    {
        "match": {"prefix": "/tr-mirror-plain"},
        "route": {"cluster": "svc_tr", "request_mirror_policies": [{"cluster": "svc_b"}]},
    },
    {
        "match": {"prefix": "/tr-mirror"},
        "route": {"cluster": "svc_tr", "request_mirror_policies": [{"cluster": "svc_tr_b"}]},
    },
    {"match": {"prefix": "/tr-off"}, "route": {"cluster": "svc_plain_options"}},
    {"match": {"prefix": "/tr"}, "route": {"cluster": "svc_tr"}},
]

FEATURES: dict[str, Feature] = {
    "access_log": Feature(access_log=True),
    "request_timeout": Feature(hcm={"request_timeout": "0.5s"}),
    "stream_idle_timeout": Feature(hcm={"stream_idle_timeout": "0.5s"}),
    "fault_abort": Feature(
        http_filters=[
            {
                "name": "envoy.filters.http.fault",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                    "abort": {
                        "http_status": 418,
                        "percentage": {"numerator": 100, "denominator": "HUNDRED"},
                    },
                },
            }
        ]
    ),
    "ring_hash": Feature(
        routes=[
            {
                "match": {"prefix": "/hash"},
                "route": {
                    "cluster": "svc_hash",
                    "hash_policy": [{"header": {"header_name": "x-user"}}],
                },
            }
        ],
        clusters=lambda ports: [_two_endpoint_cluster("svc_hash", ports, lb_policy="RING_HASH")],
    ),
    "host_rewrite_header": Feature(
        routes=[
            {
                "match": {"prefix": "/hrh"},
                "route": {"cluster": "svc_a", "host_rewrite_header": "x-target-host"},
            }
        ]
    ),
    "local_reply_config": Feature(
        hcm={
            "local_reply_config": {
                "mappers": [
                    {
                        "filter": {
                            "status_code_filter": {
                                "comparison": {
                                    "op": "EQ",
                                    "value": {"default_value": 404, "runtime_key": "diff_404"},
                                }
                            }
                        },
                        "status_code": 410,
                        "body": {"inline_string": "gone from here\n"},
                    }
                ]
            }
        }
    ),
    "local_ratelimit_listener_bucket_2": Feature(
        http_filters=[
            {"name": "envoy.filters.http.local_ratelimit", "typed_config": _local_ratelimit(2)}
        ]
    ),
    # The filter in the chain with no bucket of its own; one route carries a per-route bucket.
    "local_ratelimit_per_route_bucket_1": Feature(
        http_filters=[
            {"name": "envoy.filters.http.local_ratelimit", "typed_config": _local_ratelimit(None)}
        ],
        routes=[
            {
                "match": {"prefix": "/limited"},
                "route": {"cluster": "svc_a"},
                "typed_per_filter_config": {
                    "envoy.filters.http.local_ratelimit": _local_ratelimit(1)
                },
            }
        ],
    ),
    "regex_rewrite": Feature(
        routes=[
            {
                "match": {"prefix": "/regex-rewrite/"},
                "route": {
                    "cluster": "svc_a",
                    "regex_rewrite": {
                        "pattern": {"regex": "^/regex-rewrite/([a-z]+)/(\\d+)$"},
                        "substitution": "/items/\\2/\\1",
                    },
                },
            }
        ]
    ),
    "round_robin_2_endpoints": Feature(
        routes=[{"match": {"prefix": "/rr"}, "route": {"cluster": "svc_rr"}}],
        clusters=lambda ports: [_two_endpoint_cluster("svc_rr", ports, lb_policy="ROUND_ROBIN")],
    ),
    "weighted_endpoints_3_1": Feature(
        routes=[{"match": {"prefix": "/wrr"}, "route": {"cluster": "svc_wrr"}}],
        clusters=lambda ports: [
            _two_endpoint_cluster("svc_wrr", ports, (3, 1), lb_policy="ROUND_ROBIN")
        ],
    ),
    "strict_dns_localhost": Feature(
        routes=[{"match": {"prefix": "/dns"}, "route": {"cluster": "svc_dns"}}],
        clusters=lambda ports: [
            {
                "name": "svc_dns",
                "type": "STRICT_DNS",
                "connect_timeout": "1s",
                "dns_lookup_family": "V4_ONLY",
                "load_assignment": {
                    "cluster_name": "svc_dns",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "localhost",
                                                "port_value": ports["a"],
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
    ),
    "circuit_breaker_max_requests_1": Feature(
        routes=[{"match": {"prefix": "/cb"}, "route": {"cluster": "svc_cb"}}],
        clusters=lambda ports: [
            {
                **_cluster("svc_cb", ports["a"]),
                "circuit_breakers": {
                    "thresholds": [{"max_requests": 1, "max_pending_requests": 1}]
                },
            }
        ],
    ),
    "retry_on_reset": Feature(
        routes=[
            {
                "match": {"prefix": "/retry-reset"},
                "route": {
                    "cluster": "svc_a",
                    "retry_policy": {"retry_on": "reset", "num_retries": 2},
                },
            }
        ]
    ),
    "retry_on_gateway_error": Feature(
        routes=[
            {
                "match": {"prefix": "/retry-gw"},
                "route": {
                    "cluster": "svc_a",
                    "retry_policy": {"retry_on": "gateway-error", "num_retries": 1},
                },
            }
        ]
    ),
    "use_remote_address": Feature(hcm={"use_remote_address": True}),
    "via_header": Feature(hcm={"via": "sofa-test"}),
    "no_request_id": Feature(hcm={"generate_request_id": False}),
    "max_request_headers_kb_8": Feature(hcm={"max_request_headers_kb": 8}),
    "max_headers_count_10": Feature(
        hcm={"common_http_protocol_options": {"max_headers_count": 10}}
    ),
    "accept_http_10": Feature(hcm={"http_protocol_options": {"accept_http_10": True}}),
    "normalize_path_merge_slashes": Feature(hcm={"normalize_path": True, "merge_slashes": True}),
    "strip_any_host_port": Feature(hcm={"strip_any_host_port": True}),
    "server_name": Feature(hcm={"server_name": "sofa-edge"}),
    "server_header_pass_through": Feature(hcm={"server_header_transformation": "PASS_THROUGH"}),
    "request_id_in_response": Feature(hcm={"always_set_request_id_in_response": True}),
    "retriable_status_codes": Feature(
        routes=[
            {
                "match": {"prefix": "/retry-418"},
                "route": {
                    "cluster": "svc_a",
                    "retry_policy": {
                        "retry_on": "retriable-status-codes",
                        "retriable_status_codes": [418],
                        "num_retries": 1,
                    },
                },
            }
        ]
    ),
    "per_try_timeout": Feature(
        routes=[
            {
                "match": {"prefix": "/per-try"},
                "route": {
                    "cluster": "svc_a",
                    "timeout": "5s",
                    "retry_policy": {
                        "retry_on": "5xx",
                        "num_retries": 1,
                        "per_try_timeout": "0.3s",
                    },
                },
            }
        ]
    ),
    "header_formatters": Feature(
        routes=[
            {
                "match": {"prefix": "/fmt"},
                "route": {"cluster": "svc_a"},
                "request_headers_to_add": [
                    _hdr("x-client-ip", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
                    _hdr("x-proto", "%PROTOCOL%"),
                ],
                "response_headers_to_add": [
                    _hdr("x-upstream-cluster", "%UPSTREAM_CLUSTER%"),
                    _hdr("x-echo-agent", "%REQ(user-agent)%"),
                ],
            }
        ]
    ),
    "rbac_allow": Feature(http_filters=_rbac_filter(_RBAC_ALLOW)),
    "rbac_deny_shadow": Feature(
        access_log=True,
        http_filters=_rbac_filter(
            {
                "action": "DENY",
                "policies": {
                    "blocked-path": _rbac_policy(
                        [{"url_path": {"path": {"prefix": "/a/blocked"}}}], [{"any": True}]
                    ),
                    "blocked-ua": _rbac_policy(
                        [{"any": True}], [_rbac_hdr("user-agent", "badbot/1")]
                    ),
                },
            },
            {
                "action": "ALLOW",
                "policies": {
                    "shadow-ok": _rbac_policy([_rbac_hdr("x-shadow-ok")], [{"any": True}])
                },
            },
            shadow_rules_stat_prefix="shadow_",
        ),
    ),
    "rbac_log": Feature(
        http_filters=_rbac_filter(
            {"action": "LOG", "policies": {"all": _rbac_policy([{"any": True}], [{"any": True}])}}
        )
    ),
    # The filter allows only admins; one route turns RBAC off, another replaces the rules.
    "rbac_per_route": Feature(
        http_filters=_rbac_filter(
            {
                "action": "ALLOW",
                "policies": {
                    "probe": _RBAC_PROBE,
                    "admin-role": _rbac_policy([{"any": True}], [_rbac_hdr("x-role", "admin")]),
                },
            },
            rules_stat_prefix="rules_",
        ),
        routes=[
            {
                "match": {"prefix": "/rbac-off"},
                "route": {"cluster": "svc_a"},
                "typed_per_filter_config": {"envoy.filters.http.rbac": {"@type": _RBAC_ROUTE}},
            },
            {
                "match": {"prefix": "/rbac-route"},
                "route": {"cluster": "svc_b"},
                "typed_per_filter_config": {
                    "envoy.filters.http.rbac": {
                        "@type": _RBAC_ROUTE,
                        "rbac": {
                            "rules": {
                                "action": "DENY",
                                "policies": {
                                    "deny-flag": _rbac_policy(
                                        [_rbac_hdr("x-deny")], [{"any": True}]
                                    )
                                },
                            }
                        },
                    }
                },
            },
        ],
    ),
    # Trailers (Envoy: the HCM's http_protocol_options.enable_trailers gates the downstream
    # codec, a cluster's HttpProtocolOptions the upstream one; both are needed either way)
    "trailers_enabled": Feature(
        hcm={"http_protocol_options": {"enable_trailers": True}},
        routes=_TRAILER_ROUTES,
        clusters=_trailer_clusters,
    ),
    "trailers_cluster_only": Feature(routes=_TRAILER_ROUTES, clusters=_trailer_clusters),
    # direct responses without a body: Envoy's codec frames them by status and method
    "direct_response_status": Feature(
        routes=[
            {"match": {"prefix": "/d204"}, "direct_response": {"status": 204}},
            {"match": {"prefix": "/d304"}, "direct_response": {"status": 304}},
            {"match": {"prefix": "/d200"}, "direct_response": {"status": 200}},
            {
                "match": {"prefix": "/body200"},
                "direct_response": {"status": 200, "body": {"inline_string": "hello"}},
            },
        ]
    ),
    "request_mirror": Feature(
        routes=[
            {
                "match": {"prefix": "/mirror"},
                "route": {"cluster": "svc_a", "request_mirror_policies": [{"cluster": "svc_b"}]},
            }
        ]
    ),
}


def route_config(extra_routes: list[dict] | None = None) -> dict:
    main_routes = [
        {"match": {"path": "/exact"}, "route": {"cluster": "svc_a"}},
        {"match": {"safe_regex": {"regex": "/regex/[0-9]+"}}, "route": {"cluster": "svc_b"}},
        {
            "match": {
                "prefix": "/hdr",
                "headers": [{"name": "x-variant", "string_match": {"exact": "b"}}],
            },
            "route": {"cluster": "svc_b"},
        },
        {"match": {"prefix": "/hdr"}, "route": {"cluster": "svc_a"}},
        {
            "match": {"prefix": "/rewrite/"},
            "route": {
                "cluster": "svc_a",
                "prefix_rewrite": "/rewritten/",
                "host_rewrite_literal": "rewritten.internal",
            },
        },
        {
            "match": {"prefix": "/headers"},
            "route": {"cluster": "svc_a"},
            "request_headers_to_add": [
                _hdr("x-added", "route-added", "APPEND_IF_EXISTS_OR_ADD"),
                _hdr("x-overwrite", "route-value", "OVERWRITE_IF_EXISTS_OR_ADD"),
                _hdr("x-if-absent", "route-default", "ADD_IF_ABSENT"),
            ],
            "request_headers_to_remove": ["x-remove-me"],
            "response_headers_to_add": [_hdr("x-resp-added", "resp-value")],
            "response_headers_to_remove": ["x-upstream-secret"],
        },
        {
            "match": {"prefix": "/direct"},
            "direct_response": {"status": 403, "body": {"inline_string": "denied by route\n"}},
        },
        {
            "match": {"prefix": "/redirect"},
            "redirect": {"host_redirect": "elsewhere.test", "path_redirect": "/moved"},
        },
        {
            "match": {"prefix": "/weighted-b"},
            "route": {
                "weighted_clusters": {
                    "clusters": [{"name": "svc_a", "weight": 0}, {"name": "svc_b", "weight": 100}]
                }
            },
        },
        {
            "match": {"prefix": "/weighted"},
            "route": {
                "weighted_clusters": {
                    "clusters": [{"name": "svc_a", "weight": 50}, {"name": "svc_b", "weight": 50}]
                }
            },
        },
        {
            "match": {"prefix": "/retry"},
            "route": {"cluster": "svc_a", "retry_policy": {"retry_on": "5xx", "num_retries": 2}},
        },
        {
            "match": {"prefix": "/dead-retry"},
            "route": {
                "cluster": "dead",
                "retry_policy": {"retry_on": "connect-failure", "num_retries": 1},
            },
        },
        {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {
            "match": {"prefix": "/slow"},
            "route": {"cluster": "svc_a", "timeout": f"{SLOW_ROUTE_TIMEOUT_S}s"},
        },
        {"match": {"prefix": "/ws"}, "route": {"cluster": "svc_a"}},
        {
            "match": {
                "prefix": "/qp",
                "query_parameters": [{"name": "v", "string_match": {"exact": "2"}}],
            },
            "route": {"cluster": "svc_b"},
        },
        {"match": {"prefix": "/qp"}, "route": {"cluster": "svc_a"}},
        {"match": {"prefix": "/CaseLess", "case_sensitive": False}, "route": {"cluster": "svc_b"}},
        {
            "match": {"prefix": "/present", "headers": [{"name": "x-flag", "present_match": True}]},
            "route": {"cluster": "svc_b"},
        },
        {"match": {"prefix": "/present"}, "route": {"cluster": "svc_a"}},
        {"match": {"prefix": "/a/"}, "route": {"cluster": "svc_a"}},
    ]
    # A feature's routes go first, so no prefix route above can shadow them.
    main_routes = [*(extra_routes or []), *main_routes]
    return {
        "name": "differential",
        "virtual_hosts": [
            {"name": "main", "domains": [HOST], "routes": main_routes},
            {
                "name": "prefixed",
                "domains": ["pre.*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "svc_b"}}],
                "request_headers_to_add": [_hdr("x-vhost", "prefixed")],
            },
            {
                "name": "wild",
                "domains": ["*.wild.test"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "svc_b"}}],
                "request_headers_to_add": [_hdr("x-vhost", "wild")],
            },
        ],
    }


def bootstrap(
    listen_port: int,
    admin_port: int,
    upstream_ports: dict[str, int],
    dead_port: int,
    extra_http_filters: list[dict] | None = None,
    feature: Feature | None = None,
    access_log_path: str | None = None,
) -> dict:
    feature = feature or Feature()
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "route_config": route_config(feature.routes),
        "http_filters": [
            *(extra_http_filters or []),
            *feature.http_filters,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    hcm.update(feature.hcm)
    if feature.access_log:
        assert access_log_path, "a feature with an access log needs access_log_path"
        hcm["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": access_log_path,
                },
            }
        ]
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
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
                _cluster("svc_a", upstream_ports["a"]),
                _cluster("svc_b", upstream_ports["b"]),
                _cluster("dead", dead_port),
                *(feature.clusters(upstream_ports) if feature.clusters else []),
            ],
        },
    }


# ------------------------------------------------------------------------------------------
# Normalisations: the ONLY differences forgiven between Envoy and sofamesh. Each has a reason.
# ------------------------------------------------------------------------------------------

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _uuid(v: str) -> str:
    # A malformed id is left as is, so it shows up as a divergence.
    return "<uuid4>" if UUID_RE.match(v) else v


def _expected_timeout(v: str) -> str:
    # On a retry Envoy sends the route budget minus the time already spent (whole ms, so
    # sometimes the full budget); that elapsed part is timing.
    if v.isdigit():
        for budget in (int(SLOW_ROUTE_TIMEOUT_S * 1000), ROUTE_TIMEOUT_MS):
            if budget - 1000 < int(v) <= budget:
                return f"<{budget} minus elapsed>"
    return v


def _retry_records(records: list[dict]) -> list[dict]:
    """Apply the x-envoy-expected-rq-timeout-ms rule to every upstream request but the first."""
    out = records[:1]
    for rec in records[1:]:
        hdrs = [
            (k, _expected_timeout(v) if k == "x-envoy-expected-rq-timeout-ms" else v)
            for k, v in rec["headers"]
        ]
        out.append({**rec, "headers": hdrs})
    return out


NORMALISATIONS: dict[str, tuple[str, Callable]] = {
    "header-name-case": (
        "Field names are case-insensitive (RFC 9110 5.1); Envoy's HTTP/1 codec lower-cases them.",
        str.lower,
    ),
    "header-order-across-names": (
        (
            "Only the order of field lines sharing a name is significant (RFC 9110 5.3); lines are "
            "sorted by name with a stable sort, so same-name order is still compared."
        ),
        lambda headers: sorted(headers, key=lambda h: h[0]),
    ),
    "x-request-id": (
        "A fresh random UUID per request; we check it is a version-4 UUID, not which one.",
        _uuid,
    ),
    "x-envoy-expected-rq-timeout-ms": (
        (
            "On upstream requests after the first in a case (retries): the route timeout minus time "
            "already spent, so timing; the first request's value (the configured budget) is exact."
        ),
        _expected_timeout,
    ),
    "weighted-50-50": (
        (
            "Random weighted picks: for the 50/50 route we compare the set of clusters seen over "
            "40 requests (and each distinct upstream request), not which request went where."
        ),
        None,
    ),
    "lb-starting-point": (
        (
            "A load balancer's starting host may be random, and a hash ring depends on the hosts' "
            "ports (each proxy has its own upstream): over 40 requests we compare the pick pattern "
            "with hosts relabelled by frequency, rotated to a canonical start, not which host."
        ),
        None,
    ),
    "mirror-arrival-order": (
        (
            "A mirrored request is fire-and-forget: whether it reaches its upstream before or "
            "after the main one is a race, so those cases sort upstream requests by listener."
        ),
        None,
    ),
    "access-log": (
        (
            "Access log lines in Envoy's default format are compared field by field except the "
            "start time, the duration and the upstream service time (timing), with the request id "
            "checked as a UUID and upstream ports named by cluster (each proxy has its own)."
        ),
        None,
    ),
    "date": ("Wall-clock time of the reply.", lambda v: "<date>"),
    "server": (
        (
            "The product's default name (`envoy` / `sofamesh`) is masked; presence is still "
            "compared, and any other value (server_name, an upstream's own) exactly."
        ),
        lambda v: "<server>" if v in ("envoy", "sofamesh") else v,
    ),
    "x-envoy-upstream-service-time": (
        "Milliseconds the upstream took: timing, not behaviour; presence is still compared.",
        lambda v: "<ms>" if v.isdigit() else v,
    ),
    "large-body": (
        "Bodies over 512 bytes are compared by length and SHA-256 so a diff stays readable.",
        lambda b: (
            b if len(b) <= 512 else f"<{len(b)} bytes sha256:{hashlib.sha256(b).hexdigest()[:16]}>"
        ),
    ),
    "upstream-chunk-boundaries": (
        (
            "A proxy may re-chunk a chunked body; the upstream's de-framed bytes and the fact that "
            "it was chunked are compared, not where chunks split."
        ),
        None,
    ),
    "upstream-connection-reuse": (
        "Which pooled upstream connection served a request is a pool detail; not compared.",
        None,
    ),
}


def lb_pattern(seq: list[str]) -> str:
    """NORMALISATIONS["lb-starting-point"]: hosts relabelled by how often they were picked
    (H most, then L...), the sequence rotated to its smallest rotation."""
    order = sorted(set(seq), key=lambda h: (-seq.count(h), seq.index(h)))
    text = "".join("HLMNOP"[order.index(h)] for h in seq)
    return min(text[i:] + text[:i] for i in range(len(text))) if text else text


_VALUE_RULES = {
    "x-request-id": _uuid,
    "date": NORMALISATIONS["date"][1],
    "server": NORMALISATIONS["server"][1],
    "x-envoy-upstream-service-time": NORMALISATIONS["x-envoy-upstream-service-time"][1],
}


def norm_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for k, v in headers:
        k = k.lower()
        rule = _VALUE_RULES.get(k)
        out.append((k, rule(v) if rule else v))
    return NORMALISATIONS["header-order-across-names"][1](out)


def norm_body(body: bytes) -> bytes | str:
    return NORMALISATIONS["large-body"][1](body)


# ------------------------------------------------------------------------------------------
# Raw HTTP/1.1 client
# ------------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool  # False: the connection ended inside the body
    framing: str
    trailers: list[tuple[str, str]] = field(default_factory=list)  # a chunked body's trailer fields

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


class Reader:
    def __init__(self, sock: socket.socket, timeout: float):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = bytearray()
        self.eof = False
        self.error = ""

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(262144)
        except TimeoutError:
            self.error = "timeout"
            self.eof = True
            return False
        except OSError as e:  # reset
            self.error = type(e).__name__
            self.eof = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def until_peek(self) -> bool:
        """Wait (up to the socket timeout) for bytes, without consuming them."""
        if self.buf:
            return True
        ok = self._fill()
        if not ok and self.error == "timeout":
            self.eof = False  # a timeout here only means nothing came (no interim response)
            self.error = ""
        return ok

    def until(self, sep: bytes) -> bytes | None:
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if not self._fill():
                return None

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                break
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def rest(self) -> bytes:
        while self._fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out


def read_response(r: Reader, method: str = "GET") -> Response | None:
    head = r.until(b"\r\n\r\n")
    if head is None:
        return None
    lines = head[:-4].split(b"\r\n")
    version, _, rest = lines[0].decode("latin-1").partition(" ")
    code, _, reason = rest.partition(" ")
    if not code.isdigit():  # a proxy that answers garbage is a divergence, not a harness crash
        return Response(
            0, f"unparsable status line {lines[0][:200]!r}", version, [], b"", False, "none"
        )
    headers = []
    for line in lines[1:]:
        k, _, v = line.decode("latin-1").partition(":")
        headers.append((k, v.strip()))
    resp = Response(int(code), reason, version, headers, b"", True, "none")
    lower = {k.lower(): v for k, v in headers}
    if method == "HEAD" or resp.status < 200 or resp.status in (204, 304):
        return resp
    if "chunked" in lower.get("transfer-encoding", "").lower():
        resp.framing = "chunked"
        body = bytearray()
        while True:
            line = r.until(b"\r\n")
            if line is None:
                resp.complete = False
                break
            try:
                size = int(line[:-2].split(b";")[0], 16)
            except ValueError:
                resp.complete = False
                break
            if size == 0:
                while True:
                    line = r.until(b"\r\n")
                    if line in (b"\r\n", None):
                        break
                    name, _, value = line[:-2].decode("latin-1").partition(":")
                    resp.trailers.append((name.strip(), value.strip()))
                break
            chunk = r.exact(size + 2)
            body += chunk[:size]
            if len(chunk) < size + 2:
                resp.complete = False
                break
        resp.body = bytes(body)
    elif "content-length" in lower:
        resp.framing = "content-length"
        n = int(lower["content-length"]) if lower["content-length"].isdigit() else 0
        resp.body = r.exact(n)
        resp.complete = len(resp.body) == n
    else:
        resp.framing = "eof"
        resp.body = r.rest()
    return resp


# ------------------------------------------------------------------------------------------
# Cases and observations
# ------------------------------------------------------------------------------------------


def request(
    method: str,
    path: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    host: str | None = HOST,
    chunked: bool = False,
    version: str = "HTTP/1.1",
    content_length: bool | None = None,
) -> bytes:
    lines = [f"{method} {path} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    for k, v in headers or []:
        lines.append(f"{k}: {v}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        if content_length or (content_length is None and (body or method in ("POST", "PUT"))):
            lines.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


PROBE = request("GET", "/a/probe", [("x-probe", "1")])


@dataclass
class Case:
    id: str
    send: bytes | list[bytes]  # a list is sent piece by piece, 50 ms apart
    expect: list[int | None]  # what Envoy must answer, None: no response (checks the case itself)
    methods: list[str] = field(default_factory=list)  # per response, for HEAD framing
    probe: bool = True  # after the responses, does the connection still serve a request?
    kind: str = "plain"  # plain | expect100 | websocket | weighted | sequence | concurrent
    shut_wr: bool = False  # half-close our side after sending
    upstream_requests: int = 0  # wait (up to 2 s) until the upstream has seen this many
    unordered_upstream: bool = False  # NORMALISATIONS["mirror-arrival-order"]
    access_log_lines: int = 0  # with an access log: wait (up to 3 s; 11 s for several: Envoy flushes every 10 s) for this many lines
    note: str = ""

    @property
    def n(self) -> int:
        return len(self.expect)


@dataclass
class Observation:
    responses: list  # per response: status line, normalised headers, body, completeness
    connection: str  # "open" (a probe request got an answer) or "closed"
    upstream: list  # normalised Records, in arrival order
    extra: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # non-zero deltas of COMPARED_STATS over the case

    def statuses(self) -> list[int]:
        return [r["status"] if r is not None else None for r in self.responses]


def norm_response(resp: Response | None) -> dict | None:
    if resp is None:
        return None
    return {
        "status": resp.status,
        "status_line": f"{resp.version} {resp.status} {resp.reason}",
        "headers": norm_headers(resp.headers),
        "body": norm_body(resp.body),
        "complete": resp.complete,
        "framing": resp.framing,
        "trailers": norm_headers(resp.trailers),
    }


def norm_record(rec: Record) -> dict:
    return {
        "listener": rec.listener,
        "request_line": f"{rec.method} {rec.target} {rec.version}",
        "headers": norm_headers(rec.headers),
        "body": norm_body(rec.body),
        "framing": rec.framing,
        "trailers": norm_headers(rec.trailers),
    }


@dataclass
class Deployment:
    name: str
    port: int
    upstream: RecordingUpstream
    proxy: object  # tests.support.envoy.ProxyProcess
    access_log: Path | None = None

    def connect(self, timeout: float = 5.0) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s


def _send(sock: socket.socket, data: bytes | list[bytes]) -> None:
    pieces = data if isinstance(data, list) else [data]
    for i, piece in enumerate(pieces):
        if i:
            time.sleep(0.05)
        try:
            sock.sendall(piece)
        except OSError:
            return  # the proxy may close on a bad request before we finish writing


def _probe(sock: socket.socket, r: Reader) -> str:
    """Whether the connection still serves a request after the case's responses."""
    if r.eof:
        return "closed"
    try:
        sock.sendall(PROBE)
    except OSError:
        return "closed"
    resp = read_response(r)
    if resp is None:
        return "closed"
    return "open" if resp.status == 200 and resp.complete else f"probe-got-{resp.status}"


# Envoy stat names whose change over a case must match (operators alert on these). Cluster
# stats of svc_a and svc_b are summed (the 50/50 weighted route picks at random; which cluster
# served a request is already compared through the upstream records).
COMPARED_STATS = [
    *(
        f"http.ingress.{n}"
        for n in (
            "downstream_rq_total",
            "downstream_rq_1xx",
            "downstream_rq_2xx",
            "downstream_rq_3xx",
            "downstream_rq_4xx",
            "downstream_rq_5xx",
            "no_route",
            "rq_direct_response",
            "rq_redirect",
            "downstream_cx_protocol_error",
        )
    ),
    *(
        f"cluster.svc.{n}"
        for n in (
            "upstream_rq_total",
            "upstream_rq_2xx",
            "upstream_rq_4xx",
            "upstream_rq_5xx",
            "upstream_rq_retry",
            "upstream_rq_retry_success",
            "upstream_rq_timeout",
            "upstream_rq_502",
            "upstream_cx_protocol_error",
        )
    ),
    "cluster.dead.upstream_cx_connect_fail",
    "cluster.dead.upstream_rq_retry",
    *(f"diff_rl.http_local_rate_limit.{n}" for n in ("enabled", "enforced", "ok", "rate_limited")),
    *(
        f"http.ingress.rbac.{n}"
        for n in (
            "allowed",
            "denied",
            "shadow_allowed",
            "shadow_denied",
            "rules_.allowed",
            "rules_.denied",
            "shadow_.shadow_allowed",
            "shadow_.shadow_denied",
        )
    ),
]


def stats_snapshot(dep: Deployment) -> dict[str, int]:
    from tests.support.envoy import admin_get, admin_port

    status, text = admin_get(admin_port(dep.proxy.bootstrap), "/stats")
    if status != 200:
        raise OSError(f"{dep.name} admin /stats answered {status}")
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if not sep or not value.strip().isdigit():
            continue
        name = name.replace("cluster.svc_a.", "cluster.svc.").replace(
            "cluster.svc_b.", "cluster.svc."
        )
        out[name] = out.get(name, 0) + int(value)
    return {k: out.get(k, 0) for k in COMPARED_STATS}


# Envoy's default access log format (FileAccessLog without a format): one request a line.
ACCESS_LOG_RE = re.compile(
    r'^\[(?P<start>[^\]]+)\] "(?P<request>[^"]*)" (?P<code>\d+) (?P<flags>\S+) '
    r"(?P<bytes_received>\d+) (?P<bytes_sent>\d+) (?P<duration>\d+) (?P<service_time>\S+) "
    r'"(?P<xff>[^"]*)" "(?P<user_agent>[^"]*)" "(?P<request_id>[^"]*)" "(?P<authority>[^"]*)" '
    r'"(?P<upstream_host>[^"]*)"$'
)


def norm_access_log(line: str, dep: Deployment) -> dict | str:
    """NORMALISATIONS["access-log"]; a line not in Envoy's default format stays raw."""
    m = ACCESS_LOG_RE.match(line)
    if not m:
        return line
    out = m.groupdict()
    del out["start"], out["duration"]
    out["service_time"] = "<ms>" if out["service_time"].isdigit() else out["service_time"]
    out["request_id"] = _uuid(out["request_id"])
    for cluster in dep.proxy.bootstrap["static_resources"]["clusters"]:  # type: ignore[attr-defined]
        eps = [
            ep for group in cluster["load_assignment"]["endpoints"] for ep in group["lb_endpoints"]
        ]
        for i, ep in enumerate(eps):
            port = ep["endpoint"]["address"]["socket_address"]["port_value"]
            if out["upstream_host"] == f"127.0.0.1:{port}":
                out["upstream_host"] = f"<{cluster['name']}[{i}]>"
    return out


def _access_log_lines(dep: Deployment) -> list[str]:
    try:
        return dep.access_log.read_text().splitlines()  # type: ignore[union-attr]
    except FileNotFoundError:
        return []


def observe(dep: Deployment, case: Case) -> Observation:
    before = stats_snapshot(dep)
    log_before = len(_access_log_lines(dep)) if dep.access_log else 0
    obs = _observe(dep, case)
    if dep.access_log:
        # Envoy writes its access log file from a flush thread: the first line of a fresh
        # proxy comes at once, later ones up to its flush interval (10 s by default) later.
        # Our probe request's line is not the case's and is left out.
        deadline = time.monotonic() + (3 if case.access_log_lines <= 1 else 11)
        while True:
            lines = [x for x in _access_log_lines(dep)[log_before:] if '"GET /a/probe ' not in x]
            if len(lines) >= case.access_log_lines or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        obs.extra["access_log"] = [norm_access_log(x, dep) for x in lines]
    after = stats_snapshot(dep)
    if case.upstream_requests:
        # Background upstream requests (mirrors) finish after the client's answer: wait until
        # the counters stop moving.
        for _ in range(20):
            time.sleep(0.1)
            again = stats_snapshot(dep)
            if again == after:
                break
            after = again
    obs.stats = {k: after[k] - before[k] for k in COMPARED_STATS if after[k] != before[k]}
    return obs


def _observe(dep: Deployment, case: Case) -> Observation:
    dep.upstream.clear()
    extra: dict = {}
    with dep.connect() as sock:
        r = Reader(sock, timeout=CLIENT_TIMEOUT_S)
        if case.kind == "expect100":
            head, body = case.send  # type: ignore[misc]
            sock.sendall(head)
            r.sock.settimeout(1.0)
            interim = read_response(r, "GET") if r.until_peek() else None
            r.sock.settimeout(CLIENT_TIMEOUT_S)
            extra["interim"] = norm_response(interim)
            sock.sendall(body)
            responses = [read_response(r, "POST")]
        elif case.kind == "websocket":
            sock.sendall(case.send)  # type: ignore[arg-type]
            resp = read_response(r, "GET")
            responses = [resp]
            if resp is not None and resp.status == 101:
                sock.sendall(b"ping-1")
                got = r.exact(len(b"echo:ping-1"))
                sock.sendall(b"ping-2")
                got += r.exact(len(b"echo:ping-2"))
                extra["tunnel"] = got
            sock.shutdown(socket.SHUT_WR)
            extra["after_close"] = r.rest()
        elif case.kind == "concurrent":
            # send[0] on this connection, then send[1] on a second one while the first is in
            # flight; responses are [second, first] in the order they are read.
            first, second = case.send  # type: ignore[misc]
            sock.sendall(first)
            time.sleep(0.2)
            with dep.connect() as sock2:
                r2 = Reader(sock2, timeout=CLIENT_TIMEOUT_S)
                sock2.sendall(second)
                responses = [read_response(r2)]
            responses.append(read_response(r))
        elif case.kind == "sequence":
            # Which endpoint served each of 40 requests on one connection, relabelled by order
            # of first appearance (a load balancer's starting point may be random).
            labels: dict[str, str] = {}
            seq = []
            responses = []
            for _ in range(40):
                sock.sendall(case.send)  # type: ignore[arg-type]
                resp = read_response(r)
                responses.append(resp)
                name = (resp.header("x-upstream-name") or ["-"])[0] if resp else "none"
                seq.append(labels.setdefault(name, f"h{len(labels) + 1}"))
            extra["sequence"] = lb_pattern(seq)
            extra["counts"] = sorted(seq.count(v) for v in set(seq))
            responses = [
                {"status": x.status, "complete": x.complete} if x else None for x in responses
            ]
        elif case.kind == "weighted":
            seen = []
            responses = []
            for _ in range(40):
                sock.sendall(case.send)  # type: ignore[arg-type]
                resp = read_response(r)
                responses.append(resp)
                seen += resp.header("x-upstream-name") if resp else []
            extra["clusters_seen"] = sorted(set(seen))
            # Which cluster served the first request is random: keep only what must match.
            responses = [
                {"status": x.status, "complete": x.complete} if x else None for x in responses
            ]
        else:
            _send(sock, case.send)
            if case.shut_wr:
                sock.shutdown(socket.SHUT_WR)
            methods = case.methods or ["GET"] * case.n
            responses = [read_response(r, m) for m in methods]
        if case.kind == "websocket":
            connection = "closed" if r.eof else "open"
        elif case.kind == "concurrent":
            connection = "not-probed"
        elif case.probe:
            connection = _probe(sock, r)
        else:
            connection = "not-probed"
        extra_reader_error = r.error
    if case.upstream_requests:
        dep.upstream.wait_records(case.upstream_requests + (connection == "open"))
    records = dep.upstream.snapshot()
    # The probe request is ours, not the case's.
    records = [rec for rec in records if not rec.header("x-probe")]
    if case.unordered_upstream:
        records.sort(key=lambda rec: (rec.listener, repr(rec.headers)))
    if case.kind in ("weighted", "sequence"):
        normed = [norm_record(rec) for rec in records]
        if case.kind == "sequence":  # NORMALISATIONS["lb-starting-point"]: hosts are relabelled
            normed = [{k: v for k, v in rec.items() if k != "listener"} for rec in normed]
        dedup = {repr(rec): rec for rec in normed}
        return Observation(responses, connection, [dedup[k] for k in sorted(dedup)], extra)
    if extra_reader_error == "timeout":
        extra["client_timeout"] = True
    return Observation(
        [norm_response(x) for x in responses],
        connection,
        _retry_records([norm_record(rec) for rec in records]),
        extra,
    )
