"""envoy.filters.http.csrf against Envoy 1.40, on the policies of Envoy's csrf example: the
filter's policy off, per-route enabled / disabled / shadow / additional origins; origin and
referer against the host; 403 `Invalid origin`; the csrf stats."""

from __future__ import annotations

from tests.integration.http_filters.conftest import comparable, typed

POLICY = "envoy.extensions.filters.http.csrf.v3.CsrfPolicy"


def _pct(n: int) -> dict:
    return {"default_value": {"numerator": n, "denominator": "HUNDRED"}}


def _pf(**fields) -> dict:
    return {"envoy.filters.http.csrf": typed(POLICY, **fields)}


VHOST = {
    "typed_per_filter_config": _pf(filter_enabled=_pct(100), shadow_enabled=_pct(0)),
    "routes": [
        {
            "match": {"prefix": "/csrf/disabled"},
            "route": {"cluster": "backend"},
            "typed_per_filter_config": _pf(filter_enabled=_pct(0)),
        },
        {
            "match": {"prefix": "/csrf/shadow"},
            "route": {"cluster": "backend"},
            "typed_per_filter_config": _pf(filter_enabled=_pct(0), shadow_enabled=_pct(100)),
        },
        {
            "match": {"prefix": "/csrf/additional_origin"},
            "route": {"cluster": "backend"},
            "typed_per_filter_config": _pf(
                filter_enabled=_pct(100),
                additional_origins=[{"suffix": ".trusted.example"}, {"exact": "other:1"}],
            ),
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
    ],
}
FILTER = {"name": "envoy.filters.http.csrf", "typed_config": typed(POLICY, filter_enabled=_pct(0))}


def test_csrf_like_envoy(pair):
    envoy, ours = pair(http_filters=[FILTER], virtual_host=VHOST)
    cases = []
    for path in ("/", "/csrf/disabled", "/csrf/shadow", "/csrf/additional_origin"):
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            cases.append((method, path, {"host": "site.example"}))
        for hdrs in (
            {"origin": "http://site.example"},
            {"origin": "https://site.example/"},
            {"origin": "http://evil.example"},
            {"origin": "http://site.example:8080"},
            {"origin": "null", "referer": "http://site.example/page?x=1"},
            {"origin": "", "referer": "http://evil.example/page"},
            {"referer": "http://site.example/a/b"},
            {"referer": "not a url"},
            {"origin": "http://a.trusted.example"},
            {"origin": "http://other:1"},
        ):
            cases.append(("POST", path, {"host": "site.example", **hdrs}))
    for method, path, hdrs in cases:
        e = envoy.request(method, path, hdrs)
        o = ours.request(method, path, hdrs)
        assert comparable(o) == comparable(e), (method, path, hdrs)
        assert o.body == e.body, (method, path, hdrs)
    st = {k: v for k, v in ours.stats().items() if ".csrf." in k}
    assert st == {k: v for k, v in envoy.stats().items() if ".csrf." in k}
    assert st["http.ingress.csrf.request_invalid"] > 0 and st["http.ingress.csrf.request_valid"] > 0
    assert len(ours.upstream.records) == len(envoy.upstream.records)
    denied = ours.request("POST", "/", {"host": "site.example", "origin": "http://evil.example"})
    assert (denied.status, denied.body) == (403, b"Invalid origin")
