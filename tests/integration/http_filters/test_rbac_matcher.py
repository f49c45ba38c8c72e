"""The matcher form of envoy.filters.http.rbac (`matcher` / `shadow_matcher`: xds matcher
lists over request headers) against Envoy 1.40: the same requests get the same answers
(403 `RBAC: access denied` or the upstream's) and the same allowed/denied counters."""

from __future__ import annotations

from tests.integration.http_filters.conftest import comparable, typed

RBAC = "envoy.extensions.filters.http.rbac.v3.RBAC"


def _header(name: str, **value_match) -> dict:
    return {
        "single_predicate": {
            "input": {
                "name": "envoy.matching.inputs.request_headers",
                "typed_config": typed(
                    "envoy.type.matcher.v3.HttpRequestHeaderMatchInput", header_name=name
                ),
            },
            "value_match": value_match,
        }
    }


def _action(name: str, action: str) -> dict:
    return {
        "action": {
            "name": "action",
            "typed_config": typed("envoy.config.rbac.v3.Action", name=name, action=action),
        }
    }


REFERER = {"safe_regex": {"google_re2": {}, "regex": "https?://(www.)?envoyproxy.io/docs/envoy.*"}}


def _filter(cfg: dict) -> list[dict]:
    return [{"name": "envoy.filters.http.rbac", "typed_config": typed(RBAC, **cfg)}]


def _rbac_stats(side) -> dict[str, int]:
    return {k: v for k, v in side.stats().items() if ".rbac." in k}


CASES = [
    [],
    [("referer", "https://envoyproxy.io/docs/envoy/latest")],
    [("referer", "http://www.envoyproxy.io/docs/envoy")],
    [("referer", "https://example.com/docs/envoy")],
    [("referer", "https://envoyproxy.io/docs/envoy"), ("referer", "x")],
    [("x-role", "admin")],
    [("x-role", "admin"), ("x-team", "ops")],
    [("x-role", "guest"), ("x-team", "ops")],
    [("x-team", "sales")],
    [("x-role", "ADMIN")],
    # sent twice: the matcher form's header input is the values joined by "," (Envoy's),
    # unlike a policy's header rule, which takes either value (test_rbac_index.py)
    [("x-role", "admin"), ("x-role", "guest"), ("x-team", "ops")],
    [("x-role", "guest"), ("x-role", "admin")],
    [("x-team", "ops"), ("x-team", "sales")],
]


def _compare(envoy, ours, paths=("/", "/a")) -> None:
    for hs in CASES:
        for path in paths:
            e = envoy.request("GET", path, [("host", "h"), *hs])
            o = ours.request("GET", path, [("host", "h"), *hs])
            assert comparable(o) == comparable(e), hs
            assert o.body == e.body, hs


def test_envoy_example_matcher_denies_bad_referers(pair):
    """rbac_envoy.yaml's matcher: DENY unless the referer is an envoyproxy.io docs page."""
    cfg = {
        "matcher": {
            "matcher_list": {
                "matchers": [
                    {
                        "predicate": {"not_matcher": _header("referer", **REFERER)},
                        "on_match": _action("illegal-referer", "DENY"),
                    }
                ]
            },
            "on_no_match": _action("all-pass", "ALLOW"),
        }
    }
    envoy, ours = pair(http_filters=_filter(cfg))
    _compare(envoy, ours)
    st = _rbac_stats(ours)
    assert st == _rbac_stats(envoy)
    assert st["http.ingress.rbac.allowed"] > 0 and st["http.ingress.rbac.denied"] > 0
    assert ours.request("GET", "/", {"host": "h"}).status == 403
    r = ours.request("GET", "/", {"host": "h", "referer": "https://envoyproxy.io/docs/envoy/x"})
    assert r.status == 200


def test_matcher_combinators_default_deny_log_and_shadow(pair):
    """and/or predicates, LOG (allows), no on_no_match (denies), a shadow matcher counted
    only, and rules ignored beside a matcher."""
    cfg = {
        "rules": {"action": "DENY", "policies": {}},
        "matcher": {
            "matcher_list": {
                "matchers": [
                    {
                        "predicate": {
                            "and_matcher": {
                                "predicate": [
                                    _header("x-role", exact="admin"),
                                    _header("x-team", prefix="op"),
                                ]
                            }
                        },
                        "on_match": _action("admin-ops", "ALLOW"),
                    },
                    {
                        "predicate": {
                            "or_matcher": {
                                "predicate": [
                                    _header("x-role", exact="guest"),
                                    _header("x-team", suffix="les"),
                                ]
                            }
                        },
                        "on_match": _action("logged", "LOG"),
                    },
                    {
                        "predicate": _header("x-role", exact="admin", ignore_case=True),
                        "on_match": _action("admin-alone", "DENY"),
                    },
                ]
            }
        },
        "shadow_matcher": {
            "matcher_list": {
                "matchers": [
                    {
                        "predicate": _header("x-role", contains="dmi"),
                        "on_match": _action("shadow", "ALLOW"),
                    }
                ]
            },
            "on_no_match": _action("shadow-deny", "DENY"),
        },
        "shadow_rules_stat_prefix": "sh_",
    }
    envoy, ours = pair(http_filters=_filter(cfg))
    _compare(envoy, ours)
    st = _rbac_stats(ours)
    assert st == _rbac_stats(envoy)
    assert st["http.ingress.rbac.sh_.shadow_allowed"] > 0
    assert st["http.ingress.rbac.sh_.shadow_denied"] > 0
    # no matcher matched and no on_no_match: denied
    assert ours.request("GET", "/", {"host": "h"}).status == 403
    assert ours.request("GET", "/", {"host": "h", "x-team": "sales"}).status == 200


def test_per_route_matcher_replaces_the_filters(pair):
    deny_all = {"matcher": {"on_no_match": _action("none", "DENY")}}
    allow_admin = {
        "rbac": {
            "matcher": {
                "matcher_list": {
                    "matchers": [
                        {
                            "predicate": _header("x-role", exact="admin"),
                            "on_match": _action("admin", "ALLOW"),
                        }
                    ]
                }
            }
        }
    }
    vh = {
        "routes": [
            {
                "match": {"prefix": "/a"},
                "route": {"cluster": "backend"},
                "typed_per_filter_config": {
                    "envoy.filters.http.rbac": typed(
                        "envoy.extensions.filters.http.rbac.v3.RBACPerRoute", **allow_admin
                    )
                },
            },
            {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
        ]
    }
    envoy, ours = pair(http_filters=_filter(deny_all), virtual_host=vh)
    _compare(envoy, ours)
    assert _rbac_stats(ours) == _rbac_stats(envoy)
    assert ours.request("GET", "/a", {"host": "h", "x-role": "admin"}).status == 200
    assert ours.request("GET", "/", {"host": "h", "x-role": "admin"}).status == 403
