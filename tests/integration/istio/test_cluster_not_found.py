"""`RouteAction.cluster_not_found_response_code` (istiod's gateway routes set
INTERNAL_SERVER_ERROR) as Envoy 1.40 answers: a route naming a cluster that does not exist
(`validate_clusters: false`) gets the configured status, 503 by default, with the same headers,
body and `no_cluster` counter."""

from __future__ import annotations

from tests.integration.http_filters.conftest import comparable, pair  # noqa: F401 (fixture)


def _routes() -> dict:
    def r(prefix: str, code: str | None) -> dict:
        action: dict = {"cluster": "nowhere"}
        if code is not None:
            action["cluster_not_found_response_code"] = code
        return {"match": {"prefix": prefix}, "route": action}

    return {
        "name": "rc",
        "validate_clusters": False,
        "virtual_hosts": [
            {
                "name": "vh",
                "domains": ["*"],
                "routes": [
                    r("/404", "NOT_FOUND"),
                    r("/500", "INTERNAL_SERVER_ERROR"),
                    r("/503", "SERVICE_UNAVAILABLE"),
                    r("/default", None),
                    {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
                ],
            }
        ],
    }


def test_cluster_not_found_response_code_as_envoy(pair):  # noqa: F811 (the fixture)
    envoy, ours = pair(http_filters=[], hcm_extra={"route_config": _routes()})
    got = {}
    for path in ("/404", "/500", "/503", "/default", "/ok"):
        e = envoy.request("GET", path, {"host": "h"})
        o = ours.request("GET", path, {"host": "h"})
        assert comparable(o) == comparable(e), path
        assert o.body == e.body, path
        got[path] = o.status
    assert got == {"/404": 404, "/500": 500, "/503": 503, "/default": 503, "/ok": 200}
    key = "http.ingress.no_cluster"
    assert ours.stats()[key] == envoy.stats()[key] == 4
