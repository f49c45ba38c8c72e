"""Zone-aware routing without sockets: the state Envoy's regenerateLocalityRoutingStructures
computes (proxy/zone_aware.plan) and the per-request locality choice of a Cluster wired as
Server wires it (lb_zone_* counters, recomputed when either cluster's health changes)."""

from __future__ import annotations

import math
from types import SimpleNamespace

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2

from sofamesh._core.stats import Store
from sofamesh._core.upstream import Cluster
from sofamesh._core.zone_aware import DIRECT, NO_ROUTING, RESIDUAL
from sofamesh.proxy import localities, zone_aware


def _hosts(spec: dict[str, int], unhealthy: dict[str, int] | None = None) -> dict:
    out = {}
    for zone, n in spec.items():
        hs = []
        for i in range(n):
            h = SimpleNamespace(healthy=i >= (unhealthy or {}).get(zone, 0), priority=0)
            hs.append(h)
        out[f"/{zone}/"] = hs
    return out


def test_envoy_comment_example_residual_capacity():
    # load_balancer_impl.cc's example: local 40/40/20 %, upstream 25/50/25 % -> the local
    # locality keeps 25/40 of its requests, the rest goes by residual 0, 10, 5 %
    up = _hosts({"a": 1, "b": 2, "c": 1})
    local = _hosts({"a": 2, "b": 2, "c": 1})
    state, lp, residual, order, stat = zone_aware.plan(up, local, "/a/", 0)
    assert (state, lp, stat) == (RESIDUAL, 6250, "")
    assert order == ["/a/", "/b/", "/c/"]
    assert residual == [0, 1000, 1500]


def test_direct_when_the_local_zone_has_its_share():
    st = zone_aware.plan(_hosts({"a": 2, "b": 2}), _hosts({"a": 1, "b": 1}), "/a/", 4)
    assert st[0] == DIRECT


def test_local_first_then_lexicographic():
    st = zone_aware.plan(_hosts({"c": 2, "a": 2, "b": 2}), _hosts({"b": 1, "a": 1}), "/b/", 6)
    assert st[3] == ["/b/", "/a/", "/c/"]


def test_early_exits_and_their_stats():
    up = _hosts({"a": 2, "b": 2, "c": 1})
    # one upstream locality, one local locality: no routing, nothing counted
    assert zone_aware.plan(_hosts({"a": 6}), _hosts({"a": 1, "b": 1}), "/a/", 6)[0] == NO_ROUTING
    assert zone_aware.plan(up, _hosts({"a": 3}), "/a/", 1)[4] == ""
    # the local cluster has no host where this proxy is
    assert zone_aware.plan(up, _hosts({"b": 1, "c": 1}), "/a/", 1)[4] == "lb_local_cluster_not_ok"
    assert zone_aware.plan(up, _hosts({"b": 1, "c": 1}), None, 1)[4] == "lb_local_cluster_not_ok"
    # fewer healthy upstream hosts than min_cluster_size (5 < 6, Envoy's default)
    st = zone_aware.plan(up, _hosts({"a": 1, "b": 1}), "/a/", 6)
    assert st[0] == NO_ROUTING and st[4] == "lb_zone_cluster_too_small"
    assert zone_aware.plan(up, _hosts({"a": 1, "b": 1}), "/a/", 5)[0] != NO_ROUTING


def test_unhealthy_local_zone_upstreams_leave_only_residual():
    # both upstream hosts in a are down: nothing stays local, b and c share by excess
    up = _hosts({"a": 2, "b": 2, "c": 2}, unhealthy={"a": 2})
    state, lp, residual, _, _ = zone_aware.plan(up, _hosts({"a": 1, "b": 1, "c": 1}), "/a/", 3)
    assert (state, lp) == (RESIDUAL, 0)
    assert residual == [0, 1667, 3334]


def _cluster(spec: dict[str, int], local: Cluster | None, zcfg: dict | None = None) -> Cluster:
    c = cluster_pb2.Cluster(name="up")
    if zcfg is not None:
        za = c.common_lb_config.zone_aware_lb_config
        if "routing_enabled" in zcfg:
            za.routing_enabled.value = zcfg["routing_enabled"]
        if "min_cluster_size" in zcfg:
            za.min_cluster_size.value = zcfg["min_cluster_size"]
        za.fail_traffic_on_panic = zcfg.get("fail", False)
    port = iter(range(1000, 2000))
    hosts = [
        localities.make_host("127.0.0.1", next(port), 1, (0, f"/{z}/", 0, f"{z}{i}", 0))
        for z, n in spec.items()
        for i in range(n)
    ]
    store = Store()
    cl = Cluster("up", store, hosts=hosts, config=c)
    b = bootstrap_pb2.Bootstrap()
    b.node.locality.zone = "a"
    b.cluster_manager.local_cluster_name = "local"
    srv = SimpleNamespace(bootstrap=b, clusters={"local": local, "up": cl}, stats=store)
    zone_aware.configure(srv, cl, c)
    localities.configure(cl, c)
    zone_aware.link(srv)
    return cl


def _local(spec: dict[str, int]) -> Cluster:
    hosts = [
        localities.make_host("127.0.0.2", 3000 + 10 * k + i, 1, (0, f"/{z}/", 0, "", 0))
        for k, (z, n) in enumerate(spec.items())
        for i in range(n)
    ]
    return Cluster("local", Store(), hosts=hosts)


def _shares(cl: Cluster, n: int) -> dict[str, float]:
    got: dict[str, int] = {}
    for _ in range(n):
        h = cl.pick()
        k = h.hostname[0] if h is not None else "none"
        got[k] = got.get(k, 0) + 1
    return {k: v / n for k, v in got.items()}


def _near(got: float, p: float, n: int) -> bool:
    return abs(got - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-9


def test_sampled_and_cross_zone_shares():
    local = _local({"a": 2, "b": 1, "c": 1})
    cl = _cluster({"a": 2, "b": 2, "c": 2}, local)
    n = 20000
    s = _shares(cl, n)
    # local a 50 % vs upstream 33.33 %: 3333 / 5000 of requests stay; b and c share the rest
    assert _near(s["a"], 0.6666, n) and _near(s["b"], 0.1667, n) and _near(s["c"], 0.1667, n)
    st = zone_aware.state(cl)
    assert st is not None and st["state"] == "residual" and st["local_percent"] == 6666


def test_recomputed_when_either_cluster_changes_health():
    local = _local({"a": 1, "b": 1, "c": 1})
    cl = _cluster({"a": 2, "b": 2, "c": 2}, local, {"min_cluster_size": 3})
    assert _shares(cl, 100) == {"a": 1.0}
    cl.hosts[0].healthy = False  # a0 down: a holds 20 % of upstream, 33 % of local
    cl.update_health()
    st = zone_aware.state(cl)
    assert st is not None and st["state"] == "residual" and st["local_percent"] == 6000
    local.hosts[1].healthy = False  # the local host in b down: local a now 50 %
    local.update_health()
    st = zone_aware.state(cl)
    assert st is not None and st["local_percent"] == 4000
    assert st["residual"] == [0, 4000, 4000]  # c's excess 40 - 50 < 0: all of it to b


def test_local_cluster_panic_and_fail_traffic_on_panic():
    local = _local({"a": 1, "b": 1, "c": 1})
    for h in local.hosts[1:]:
        h.healthy = False  # 33 % healthy < 50 %: the local cluster is in panic
    cl = _cluster({"a": 2, "b": 2, "c": 2}, local)
    s = _shares(cl, 600)
    assert set(s) == {"a", "b", "c"}  # no zone routing for these requests
    cl2 = _cluster({"a": 2, "b": 2, "c": 2}, local, {"fail": True})
    assert _shares(cl2, 10) == {"none": 1.0}


def test_routing_enabled_zero_is_plain_round_robin():
    local = _local({"a": 1, "b": 1, "c": 1})
    cl = _cluster({"a": 2, "b": 2, "c": 2}, local, {"routing_enabled": 0})
    assert _shares(cl, 600) == {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
