"""What `sofamesh proxy --mode validate` says of priority and locality options Envoy 1.40
accepts: implemented ones load (zone-aware routing too), the rest are refused by name."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import sofamesh_command
from tests.integration.health.helpers import bootstrap


def _validate(tmp_path, doc: dict) -> subprocess.CompletedProcess:
    cfg = tmp_path / "b.json"
    cfg.write_text(json.dumps(doc))
    return subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _doc(lb_policy: str, **common) -> dict:
    b = bootstrap([1000, 1001], {"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1,
                                 "healthy_threshold": 1, "tcp_health_check": {}})  # fmt: skip
    c = b["static_resources"]["clusters"][0]
    c["lb_policy"] = lb_policy
    c["common_lb_config"] = common
    eps = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
    c["load_assignment"]["endpoints"] = [
        {"locality": {"zone": "a"}, "load_balancing_weight": 2, "lb_endpoints": eps[:1]},
        {"locality": {"zone": "b"}, "priority": 1, "lb_endpoints": eps[1:]},
    ]
    c["load_assignment"]["policy"] = {"overprovisioning_factor": 200}
    return b


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])
def test_priorities_and_locality_weights_load(tmp_path, policy):
    r = _validate(tmp_path, _doc(policy, locality_weighted_lb_config={}))
    assert r.returncode == 0, r.stderr


def test_ring_hash_with_priorities_is_refused_by_name(tmp_path):
    r = _validate(tmp_path, _doc("RING_HASH"))
    assert r.returncode == 1
    assert (
        "static_resources.clusters[0].load_assignment: priority levels with RING_HASH are not "
        "implemented by sofamesh"
    ) in r.stderr, r.stderr


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH"])
def test_zone_aware_routing_loads(tmp_path, policy):
    """zone_aware_lb_config and a local cluster load (RING_HASH ignores them, as Envoy's
    ring hash does); a local cluster that is not defined is refused as Envoy refuses it."""
    doc = _doc(
        policy,
        zone_aware_lb_config={
            "routing_enabled": {"value": 50},
            "min_cluster_size": 3,
            "fail_traffic_on_panic": True,
        },
    )
    if policy == "RING_HASH":  # no priority levels with RING_HASH (refused above)
        for e in doc["static_resources"]["clusters"][0]["load_assignment"]["endpoints"]:
            e.pop("priority", None)
    doc["node"] = {"id": "n", "cluster": "c", "locality": {"zone": "a"}}
    doc["cluster_manager"] = {"local_cluster_name": "c"}
    r = _validate(tmp_path, doc)
    assert r.returncode == 0, r.stderr
    doc["cluster_manager"] = {"local_cluster_name": "nope"}
    r = _validate(tmp_path, doc)
    assert r.returncode == 1
    assert "cluster_manager.local_cluster_name: local cluster 'nope' must be defined" in r.stderr
