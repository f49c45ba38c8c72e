"""envoy.filters.http.cors against Envoy 1.40: preflights answered, CORS headers on proxied and
local responses, policies from the virtual host and the route (typed_per_filter_config, and
the deprecated `cors` fields), origin matchers, and the origin_valid/invalid stats."""

from __future__ import annotations

from tests.integration.http_filters.conftest import comparable, typed

CORS_FILTER = {
    "name": "envoy.filters.http.cors",
    "typed_config": typed("envoy.extensions.filters.http.cors.v3.Cors"),
}
POLICY = "envoy.extensions.filters.http.cors.v3.CorsPolicy"


def _pf(**fields) -> dict:
    return {"envoy.filters.http.cors": typed(POLICY, **fields)}


VHOST = {
    "typed_per_filter_config": _pf(
        allow_origin_string_match=[
            {"exact": "http://a.example"},
            {"prefix": "https://", "ignore_case": True},
            {"safe_regex": {"regex": r"http://[a-z]+\.b\.example"}},
        ],
        allow_methods="GET, PUT",
        allow_headers="x-custom, content-type",
        expose_headers="x-exposed",
        max_age="600",
        allow_credentials=True,
    ),
    "routes": [
        {
            "match": {"prefix": "/wild"},
            "route": {"cluster": "backend"},
            # every origin; methods and headers echoed; credentials off (overrides the vhost)
            "typed_per_filter_config": _pf(
                allow_origin_string_match=[{"exact": "*"}],
                allow_methods="*",
                allow_headers="*",
                allow_credentials=False,
                allow_private_network_access=True,
            ),
        },
        {
            "match": {"prefix": "/strict"},
            "route": {"cluster": "backend"},
            "typed_per_filter_config": _pf(forward_not_matching_preflights=False),
        },
        {
            "match": {"prefix": "/shadow"},
            "route": {"cluster": "backend"},
            "typed_per_filter_config": _pf(
                filter_enabled={"default_value": {"numerator": 0}},
                shadow_enabled={"default_value": {"numerator": 100}},
            ),
        },
        {
            "match": {"prefix": "/direct"},
            "direct_response": {"status": 200, "body": {"inline_string": "hi"}},
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
    ],
}

PREFLIGHT = {"access-control-request-method": "PUT"}

CASES = [
    # (method, path, headers)
    ("GET", "/", {}),  # no origin: not CORS
    ("GET", "/", {"origin": "http://a.example"}),
    ("GET", "/", {"origin": "HTTPS://x.example"}),  # prefix, ignore_case
    ("GET", "/", {"origin": "http://q.b.example"}),  # regex
    ("GET", "/", {"origin": "http://evil.example"}),
    ("GET", "/", {"origin": ""}),
    (
        "GET",
        "/",
        [("origin", "http://a.example"), ("x-resp-header", "access-control-allow-origin=up")],
    ),  # the upstream's own header is replaced
    (
        "GET",
        "/",
        [("origin", "http://evil.example"), ("x-resp-header", "access-control-allow-origin=up")],
    ),  # not CORS: the upstream's is kept
    ("OPTIONS", "/", {"origin": "http://a.example", **PREFLIGHT}),
    ("OPTIONS", "/", {"origin": "http://a.example"}),  # no request method: proxied
    ("OPTIONS", "/", {"origin": "http://evil.example", **PREFLIGHT}),  # forwarded
    ("OPTIONS", "/", {**PREFLIGHT}),  # no origin: forwarded
    (
        "OPTIONS",
        "/wild/x",
        {
            "origin": "http://anyone.example",
            "access-control-request-method": "PATCH",
            "access-control-request-headers": "x-a, x-b",
            "access-control-request-private-network": "true",
        },
    ),
    ("GET", "/wild/x", {"origin": "http://anyone.example"}),
    ("OPTIONS", "/strict", {"origin": "http://evil.example", **PREFLIGHT}),
    ("OPTIONS", "/strict", {"origin": "http://a.example", **PREFLIGHT}),
    ("OPTIONS", "/shadow", {"origin": "http://a.example", **PREFLIGHT}),
    ("GET", "/shadow", {"origin": "http://evil.example"}),
    ("GET", "/direct", {"origin": "http://a.example"}),
    ("POST", "/direct", {"origin": "http://evil.example"}),
]


def _check_same(envoy, ours, cases) -> None:
    for method, path, headers in cases:
        e = envoy.request(method, path, headers)
        o = ours.request(method, path, headers)
        assert comparable(o) == comparable(e), (method, path, headers)
        assert o.body == e.body, (method, path, headers)


def _cors_stats(side) -> dict[str, int]:
    return {k: v for k, v in side.stats().items() if ".cors." in k}


def test_cors_policies_like_envoy(pair):
    envoy, ours = pair(http_filters=[CORS_FILTER], virtual_host=VHOST)
    _check_same(envoy, ours, CASES)
    # preflights answered by the proxy never reach the upstream; the others do
    assert [(r.method, r.path) for r in ours.upstream.records] == [
        (r.method, r.path) for r in envoy.upstream.records
    ]
    st = _cors_stats(ours)
    assert st == _cors_stats(envoy)
    # what Envoy does, so the comparison above is about something
    pre = envoy.request("OPTIONS", "/", {"origin": "http://a.example", **PREFLIGHT})
    assert pre.status == 200 and pre.header("access-control-max-age") == "600"
    assert pre.header("access-control-allow-methods") == "GET, PUT"
    assert pre.header("access-control-allow-credentials") == "true"
    wild = ours.request(
        "OPTIONS",
        "/wild/x",
        {"origin": "http://o.example", "access-control-request-method": "PATCH"},
    )
    assert wild.header("access-control-allow-methods") == "PATCH"
    assert wild.header("access-control-allow-credentials") is None
    got = ours.request("GET", "/", {"origin": "http://a.example"})
    assert got.header("access-control-allow-origin") == "http://a.example"
    assert got.header("access-control-expose-headers") == "x-exposed"
    assert st["http.ingress.cors.origin_valid"] > 0 and st["http.ingress.cors.origin_invalid"] > 0


def test_deprecated_cors_fields_like_envoy(pair):
    """VirtualHost.cors / RouteAction.cors (deprecated, still read by Envoy 1.40) apply when no
    typed_per_filter_config policy does; the route's fills in from the virtual host's."""
    vhost = {
        "cors": {
            "allow_origin_string_match": [{"exact": "http://a.example"}],
            "allow_methods": "GET",
            "max_age": "30",
        },
        "routes": [
            {
                "match": {"prefix": "/r"},
                "route": {
                    "cluster": "backend",
                    "cors": {
                        "allow_origin_string_match": [{"suffix": ".c.example"}],
                        "expose_headers": "x-r",
                    },
                },
            },
            {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
        ],
    }
    envoy, ours = pair(http_filters=[CORS_FILTER], virtual_host=vhost)
    _check_same(
        envoy,
        ours,
        [
            ("OPTIONS", "/", {"origin": "http://a.example", **PREFLIGHT}),
            ("GET", "/", {"origin": "http://a.example"}),
            ("OPTIONS", "/r", {"origin": "http://a.example", **PREFLIGHT}),
            ("OPTIONS", "/r", {"origin": "http://x.c.example", **PREFLIGHT}),
            ("GET", "/r", {"origin": "http://x.c.example"}),
        ],
    )
    assert _cors_stats(ours) == _cors_stats(envoy)
