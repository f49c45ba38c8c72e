"""envoy.filters.http.health_check against Envoy 1.40: health probes answered by the proxy
(pass_through_mode false: 200, or 503 when a cluster of cluster_min_healthy_percentages is
missing or under its minimum) or passed upstream (pass_through_mode true), the
x-envoy-upstream-healthchecked-cluster header on their answers, and after admin POST
/healthcheck/fail a 503 with x-envoy-immediate-health-check-fail; other requests pass."""

from __future__ import annotations

import pytest

from tests.integration.http_filters.conftest import comparable, typed
from tests.support.envoy import admin_get

HC = "envoy.extensions.filters.http.health_check.v3.HealthCheck"
NODE = {"id": "n1", "cluster": "front"}


def _filter(**cfg) -> list[dict]:
    return [{"name": "envoy.filters.http.health_check", "typed_config": typed(HC, **cfg)}]


PROBES = [
    ("GET", "/healthcheck", {}),
    ("GET", "/healthcheck?x=1", {}),
    ("HEAD", "/healthcheck", {}),
    ("GET", "/healthcheck", {"x-probe": "lb"}),
    ("GET", "/other", {"x-probe": "lb"}),
    ("POST", "/healthcheck", {"x-probe": "lb"}),
]


def _compare(envoy, ours) -> list:
    out = []
    for method, path, headers in PROBES:
        e = envoy.request(method, path, {"host": "h", **headers}, b"" if method == "POST" else None)
        o = ours.request(method, path, {"host": "h", **headers}, b"" if method == "POST" else None)
        assert comparable(o) == comparable(e), (method, path, headers)
        assert o.body == e.body, (method, path, headers)
        out.append(o)
    assert sorted(r.path for r in ours.upstream.records) == sorted(
        r.path for r in envoy.upstream.records
    )
    return out


def _fail(side) -> None:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", side.admin, timeout=5)
    c.request("POST", "/healthcheck/fail")
    assert c.getresponse().status == 200
    c.close()


@pytest.mark.parametrize(
    "cfg",
    [
        {"pass_through_mode": False, "headers": [{"name": ":path", "exact_match": "/healthcheck"}]},
        {
            "pass_through_mode": False,
            "headers": [
                {"name": ":path", "string_match": {"prefix": "/healthcheck"}},
                {"name": "x-probe", "present_match": True},
            ],
        },
        {
            "pass_through_mode": False,
            "headers": [{"name": ":path", "exact_match": "/healthcheck"}],
            "cluster_min_healthy_percentages": {"backend": {"value": 100}},
        },
        {
            "pass_through_mode": False,
            "headers": [{"name": ":path", "exact_match": "/healthcheck"}],
            "cluster_min_healthy_percentages": {"backend": {"value": 50}, "nope": {"value": 0}},
        },
        {"pass_through_mode": True, "headers": [{"name": ":path", "exact_match": "/healthcheck"}]},
    ],
    ids=["local", "two-matchers", "min-healthy-ok", "missing-cluster", "pass-through"],
)
def test_health_probes_answered_like_envoy(pair, cfg):
    envoy, ours = pair(http_filters=_filter(**cfg), node=NODE)
    got = _compare(envoy, ours)
    first = got[0]
    if cfg["pass_through_mode"] or "x-probe" not in str(cfg):
        assert first.header("x-envoy-upstream-healthchecked-cluster") == "front"
    if "nope" in str(cfg):
        assert first.status == 503
    # the proxy's health failed: probes answered 503, with the immediate-fail mark
    _fail(envoy)
    _fail(ours)
    got = _compare(envoy, ours)
    if "x-probe" not in str(cfg):
        assert got[0].status == 503
        assert got[0].header("x-envoy-immediate-health-check-fail") == "true"
    _, e_text = admin_get(envoy.admin, "/stats")
    _, o_text = admin_get(ours.admin, "/stats")
    assert "http.ingress.downstream_rq_5xx" in o_text and "http.ingress.downstream_rq_5xx" in e_text
