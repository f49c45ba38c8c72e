"""RequestMirrorPolicy.cluster_header against Envoy 1.40 (Envoy's route-mirror example): the
request header names the mirror cluster; a missing header or an unknown cluster mirrors
nothing, and the main request is served either way."""

from __future__ import annotations

import time

VHOST = {
    "routes": [
        {
            "match": {"prefix": "/"},
            "route": {
                "cluster": "backend",
                "request_mirror_policies": [{"cluster_header": "x-mirror-cluster"}],
            },
        }
    ]
}


def _settled(side, n: int) -> list[tuple[str, str, str]]:
    deadline = time.monotonic() + 3
    while len(side.upstream.records) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # nothing more arrives
    return sorted((r.method, r.path, ",".join(r.header("host"))) for r in side.upstream.records)


def test_mirror_cluster_header_like_envoy(pair):
    envoy, ours = pair(http_filters=[], virtual_host=VHOST)
    cases = [
        ("/a", {"host": "site.example", "x-mirror-cluster": "backend"}),
        ("/b", {"host": "site.example"}),
        ("/c", {"host": "site.example", "x-mirror-cluster": "no-such-cluster"}),
        (
            "/d",
            [("host", "site.example"), ("X-Mirror-Cluster", "backend"), ("x-mirror-cluster", "x")],
        ),
    ]
    for path, hdrs in cases:
        e = envoy.request("GET", path, hdrs)
        o = ours.request("GET", path, hdrs)
        assert (o.status, o.body) == (e.status, e.body)
    got, want = _settled(ours, 6), _settled(envoy, 6)
    assert got == want
    assert ("GET", "/a", "site.example-shadow") in got and len(got) == 6
