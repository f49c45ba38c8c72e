"""Three clusters whose pilots sync in a chain, c1 - c2 - c3 (c1's and c3's pilots never talk):
c1 learns c3's services through c2's pilot, with c2's edge as the next hop, so a call from c1
to a service in c3 goes c1's sidecar -> e1 -> e2 (relaying) -> e3 -> the instance, and back
the other way. tests/support/multicluster.py makes the clusters (namespaces, no routes between
clusters; the edges share one network). sofamesh, then Envoy 1.40, as every sidecar and edge."""

from __future__ import annotations

import json

import pytest

from tests.support.multicluster import addresses, apps, clusters, curl, register, stat, wait_until

pytestmark = pytest.mark.multicluster


def _serve(nets: dict, i: int, service: str) -> None:
    """The test applications in ci, registered as `service` (HTTP 8080) with ci's pilot."""
    ip = addresses(i)[0]
    apps(nets[f"c{i}"], "apps", ip)
    body = {"address": ip, "port": 8080, "protocol": "http", "service_port": 8080}
    register(nets[f"e{i}"], "127.0.0.1", service, "i1", body)


def _call(nets: dict, i: int, service: str) -> tuple[str, str]:
    return curl(nets[f"c{i}"], "-H", f"host: {service}", "http://127.0.0.1:15001/relay")


def _hosts(nets: dict, i: int, cluster: str) -> set[str]:
    """The endpoints of ei's cluster `cluster`, from its /clusters."""
    r = nets[f"e{i}"].run(["curl", "-s", "http://127.0.0.1:15000/clusters"], check=False)
    out = set()
    for line in r.stdout.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] == "cx_total":
            out.add(parts[1])
    return out


@pytest.mark.parametrize("kind", ["sofamesh", "envoy"])
def test_calls_relayed_through_the_middle_cluster_both_ways(tmp_path, kind):
    with clusters(tmp_path, kind, {1: [2], 2: [1, 3], 3: [2]}) as nets:
        _serve(nets, 3, "far")
        _serve(nets, 1, "home")
        for src, service, owner in ((1, "far", 3), (3, "home", 1)):
            wait_until(
                lambda src=src, service=service: _call(nets, src, service)[0] == "200",
                20,
                lambda src=src, service=service: (
                    f"{_call(nets, src, service)}\n"
                    + "\n".join(nets[f"e{j}"].log("edge") for j in (1, 2, 3))
                ),
            )
            code, body = _call(nets, src, service)
            # the instance's caller is its own cluster's edge
            assert code == "200" and f"peer={addresses(owner)[1]}" in body, body
        # c1's edge sends c3's calls to c2's edge (the peer c1 learned c3 from), which relays
        assert _hosts(nets, 1, "edge_out|c3") == {f"{addresses(2)[2]}:15443"}
        assert _hosts(nets, 3, "edge_out|c1") == {f"{addresses(2)[2]}:15443"}
        assert _hosts(nets, 2, "edge_out|c3") == {f"{addresses(3)[2]}:15443"}
        assert stat(nets["e2"], "cluster.edge_out|c3.upstream_cx_total") >= 1
        # what the operator sees: each pilot's edge, and each peer's
        peers = json.loads(nets["e1"].run(["curl", "-s", "http://127.0.0.1:15020/v1/peers"]).stdout)
        assert peers["edge"] == f"{addresses(1)[2]}:15443"
        assert [(p["cluster"], p["edge"]) for p in peers["peers"]] == [
            ("c2", f"{addresses(2)[2]}:15443")
        ]
        assert stat(nets["e2"], "cluster.edge_out|c1.upstream_cx_total") >= 1
