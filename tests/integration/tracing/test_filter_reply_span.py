"""A request a filter answers before the router (here local_ratelimit's 429 and RBAC's 403)
is still traced with the route's cluster: Envoy 1.40 routes before its filters run, so its
span names `upstream_cluster` though no upstream was tried. The same bootstrap and requests
through real Envoy and `sofamesh proxy` (Zipkin); the spans' tags must be the same."""

from __future__ import annotations

import http.client
import json
import time

from tests.integration.http2.conftest import _cluster, proxies  # noqa: F401
from tests.integration.tracing.test_request_id_sampling import zipkin_tracing

ZIPKIN = zipkin_tracing(100)
ROUTES = [
    {"match": {"prefix": "/deny"}, "route": {"cluster": "h1"}},
    {"match": {"prefix": "/"}, "route": {"cluster": "h1"}},
]
RBAC = {
    "name": "envoy.filters.http.rbac",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {
            "action": "DENY",
            "policies": {
                "no-deny": {
                    "permissions": [{"url_path": {"path": {"prefix": "/deny"}}}],
                    "principals": [{"any": True}],
                }
            },
        },
    },
}
LIMIT = {
    "name": "envoy.filters.http.local_ratelimit",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3"
        ".LocalRateLimit",
        "stat_prefix": "rl",
        "token_bucket": {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "3600s"},
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
    },
}
SEEN: dict = {}


def collected_spans(p, n: int) -> list:
    """The Zipkin spans the proxy posted to its upstream, once `n` arrived or 15 s passed
    (Envoy flushes every 5 s or 5 spans)."""
    spans: list = []
    deadline = time.monotonic() + 15
    while len(spans) < n and time.monotonic() < deadline:
        time.sleep(0.2)
        spans = [
            s
            for r in p.upstream.snapshot()
            if r.target == "/api/v2/spans"
            for s in json.loads(r.body)
        ]
    return spans


def test_filter_replies_traced_with_the_route_cluster_as_envoy(proxies):  # noqa: F811
    p = proxies(
        hcm={"tracing": ZIPKIN},
        routes=ROUTES,
        filters=[RBAC, LIMIT],
        clusters=lambda grpc_port, h1_port: [_cluster("zipkin", h1_port, False)],
    )
    statuses = []
    for path in ("/a", "/b", "/c", "/deny"):  # 200, 200, 429 (bucket empty), 403
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        conn.request("GET", path, headers={"host": "svc.local"})
        statuses.append(conn.getresponse().status)
        conn.close()
    assert statuses == [200, 200, 429, 403]
    spans = collected_spans(p, 4)
    assert len(spans) == 4
    out = {}
    for s in spans:
        t = s["tags"]
        url = t["http.url"]
        out[url] = {
            k: v
            for k, v in t.items()
            if k in ("upstream_cluster", "upstream_cluster.name", "http.status_code", "error")
            or k == "response_flags"
        }
    assert out["http://svc.local/c"]["upstream_cluster"] == "h1"
    assert out["http://svc.local/deny"]["upstream_cluster"] == "h1"
    SEEN[p.kind] = out
    if len(SEEN) == 2:
        assert SEEN["envoy"] == SEEN["sofamesh"]
