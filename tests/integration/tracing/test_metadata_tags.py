"""Tracing `custom_tags` of kind `metadata` (request dynamic metadata), as istiod writes them
for AuthorizationPolicy dry runs: two RBAC filters with only `shadow_rules` (an ALLOW and a
DENY, Istio's `istio_dry_run_allow_` / `istio_dry_run_deny_` prefixes) set
`envoy.filters.http.rbac` metadata (`<prefix>shadow_engine_result`, and
`<prefix>shadow_effective_policy_id` when a policy matched), and the spans carry them as tags,
a missing key its `default_value`. Real Envoy and `sofamesh proxy` (Zipkin): the same tags."""

from __future__ import annotations

import http.client

from tests.integration.http2.conftest import _cluster, proxies  # noqa: F401
from tests.integration.tracing.test_filter_reply_span import collected_spans
from tests.integration.tracing.test_request_id_sampling import zipkin_tracing

RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"


def _meta_tag(tag: str, key: str, default: str = "", ns: str = "envoy.filters.http.rbac") -> dict:
    m: dict = {"kind": {"request": {}}, "metadata_key": {"key": ns, "path": [{"key": key}]}}
    if default:
        m["default_value"] = default
    return {"tag": tag, "metadata": m}


ZIPKIN = {
    **zipkin_tracing(100),
    "custom_tags": [
        _meta_tag("dry_run.allow.name", "istio_dry_run_allow_shadow_effective_policy_id"),
        _meta_tag("dry_run.allow.result", "istio_dry_run_allow_shadow_engine_result"),
        _meta_tag("dry_run.deny.name", "istio_dry_run_deny_shadow_effective_policy_id"),
        _meta_tag("dry_run.deny.result", "istio_dry_run_deny_shadow_engine_result"),
        _meta_tag("missing.with.default", "nothing_here", "none"),
        _meta_tag("other.namespace", "x", ns="envoy.filters.http.nothing"),
    ],
}


def _shadow(action: str, prefix: str, policy: str, path: str) -> dict:
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": RBAC,
            "shadow_rules": {
                "action": action,
                "policies": {
                    policy: {
                        "permissions": [{"url_path": {"path": {"prefix": path}}}],
                        "principals": [{"any": True}],
                    }
                },
            },
            "shadow_rules_stat_prefix": prefix,
        },
    }


FILTERS = [
    _shadow("ALLOW", "istio_dry_run_allow_", "ns[default]-policy[allow-a]-rule[0]", "/a"),
    _shadow("DENY", "istio_dry_run_deny_", "ns[default]-policy[deny-b]-rule[0]", "/b"),
]
SEEN: dict = {}


def test_metadata_custom_tags_as_envoy(proxies):  # noqa: F811
    p = proxies(
        hcm={"tracing": ZIPKIN},
        routes=[{"match": {"prefix": "/"}, "route": {"cluster": "h1"}}],
        filters=FILTERS,
        clusters=lambda grpc_port, h1_port: [_cluster("zipkin", h1_port, False)],
    )
    for path in ("/a", "/b", "/c"):
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        conn.request("GET", path, headers={"host": "svc.local"})
        assert conn.getresponse().status == 200  # shadow rules only: nothing is denied
        conn.close()
    spans = collected_spans(p, 3)
    assert len(spans) == 3
    out = {
        s["tags"]["http.url"]: {
            k: v for k, v in s["tags"].items() if k.startswith(("dry_run.", "missing.", "other."))
        }
        for s in spans
    }
    assert out["http://svc.local/a"]["dry_run.allow.name"] == "ns[default]-policy[allow-a]-rule[0]"
    SEEN[p.kind] = out
    if len(SEEN) == 2:
        assert SEEN["envoy"] == SEEN["sofamesh"]
