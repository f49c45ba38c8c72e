"""HttpConnectionManager.add_user_agent against Envoy 1.40: the upstream sees the same
user-agent and x-envoy-downstream-service-cluster/-node headers."""

from __future__ import annotations

import pytest

SEEN = ("user-agent", "x-envoy-downstream-service-cluster", "x-envoy-downstream-service-node")


@pytest.mark.parametrize("node", [{"id": "node-1", "cluster": "svc-a"}, {"cluster": "svc-b"}])
def test_add_user_agent_like_envoy(pair, node):
    envoy, ours = pair(http_filters=[], hcm_extra={"add_user_agent": True}, node=node)
    cases = [
        {},
        {"user-agent": "curl/8"},
        {"user-agent": ""},
        {"x-envoy-downstream-service-cluster": "spoofed", "x-envoy-downstream-service-node": "n"},
    ]
    for h in cases:
        assert ours.request("GET", "/", h).status == envoy.request("GET", "/", h).status == 200

    def seen(side):
        return [
            sorted((k.lower(), v) for k, v in r.headers if k.lower() in SEEN)
            for r in side.upstream.records
        ]

    assert seen(ours) == seen(envoy)
    assert ("user-agent", node["cluster"]) in seen(ours)[0]
