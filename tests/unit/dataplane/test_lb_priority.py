"""Priority levels and locality-weighted balancing (upstream.pyx Cluster._choose_level):
Envoy's priority load tables, panic, failover and locality effective weights."""

from __future__ import annotations

import collections

import pytest

from sofamesh._core.stats import Store
from sofamesh._core.upstream import Cluster, Host, level_loads


def host(port, prio=0, loc="r/z/", lw=0):
    h = Host("127.0.0.1", port)
    h.priority = prio
    h.locality = loc
    h.locality_weight = lw
    return h


# Envoy's docs (priority levels, overprovisioning 1.4): healthy % per level -> load %
@pytest.mark.parametrize(
    "healthy,loads",
    [
        ((100, 100), [100, 0]),
        ((72, 100), [100, 0]),
        ((71, 100), [99, 1]),
        ((50, 100), [70, 30]),
        ((25, 100), [35, 65]),
        ((0, 100), [0, 100]),
        ((20, 20, 100), [28, 28, 44]),
    ],
)
def test_priority_load_matches_envoys_table(healthy, loads):
    got, panic = level_loads([100] * len(healthy), list(healthy), 140, 0.0)
    assert got == loads and not any(panic)


def test_panic_levels_and_total_panic_by_host_counts():
    # P0 at 40% with P1 healthy: 100% available in all, so no panic (Envoy)
    assert level_loads([10, 10], [4, 10], 140, 50.0) == ([56, 44], [False, False])
    # P0 at 10%, P1 at 60%: 98% available, P0 under the threshold keeps its share (the
    # remainder's point included) but spends it on any of its hosts
    assert level_loads([10, 10], [1, 6], 140, 50.0) == ([15, 85], [True, False])
    # all down: every level in panic, load by host count (Envoy's recalculateLoadInTotalPanic)
    loads, panic = level_loads([3, 1], [0, 0], 140, 50.0)
    assert loads == [75, 25] and all(panic)
    # threshold 0 and nothing healthy: P0 gets the load and no host is chosen
    loads, panic = level_loads([3, 1], [0, 0], 140, 0.0)
    assert loads == [100, 0] and not any(panic)


def test_overprovisioning_factor_changes_the_spill():
    assert level_loads([10, 10], [5, 10], 100, 0.0)[0] == [50, 50]
    assert level_loads([10, 10], [5, 10], 200, 0.0)[0] == [100, 0]


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])
def test_failover_to_p1_and_back(policy):
    c = Cluster("c", Store(), hosts=[host(1), host(2), host(3, 1)], lb_policy=policy)
    assert c.levels is not None
    assert {c.pick().port for _ in range(50)} == {1, 2}
    for h in c.hosts[:2]:
        h.healthy = False
    c.update_health()
    assert {c.pick().port for _ in range(50)} == {3}
    assert c.level_state()[1][1] == 100
    c.hosts[0].healthy = True
    c.update_health()  # P0 50% healthy: 70% of requests there, only to its healthy host
    got = collections.Counter(c.pick().port for _ in range(4000))
    assert set(got) == {1, 3} and 0.64 < got[1] / 4000 < 0.76
    assert c.lb_healthy_panic.value == 0


def test_ring_hash_keeps_one_ring():
    c = Cluster("c", Store(), hosts=[host(1), host(2, 1)], lb_policy="RING_HASH")
    assert c.levels is None  # priorities with RING_HASH are refused at config time


def test_one_level_keeps_the_fast_path():
    c = Cluster("c", Store(), hosts=[host(1), host(2)])
    assert c.levels is None and c.level_state() == []


def test_locality_weighted_split_follows_effective_weight():
    hs = [host(1, loc="a", lw=1), host(2, loc="a", lw=1), host(3, loc="b", lw=3)]
    c = Cluster("c", Store())
    c.locality_weighted = True
    c.set_hosts(hs)
    got = collections.Counter(c.pick().port for _ in range(400))
    assert got[3] == 300 and got[1] == got[2] == 50
    # locality a at 50% healthy: effective 1 x min(1, 1.4 x 0.5) = 0.7 against 3
    c.hosts[1].healthy = False
    c.update_health()
    assert c.level_state()[0][3] == [(1, pytest.approx(0.7)), (3, 3.0)]
    got = collections.Counter(c.pick().port for _ in range(370))
    assert got == {1: 70, 3: 300}


def test_locality_without_weight_gets_nothing():
    hs = [host(1, loc="a", lw=0), host(2, loc="b", lw=2)]
    c = Cluster("c", Store())
    c.locality_weighted = True
    c.set_hosts(hs)
    assert {c.pick().port for _ in range(20)} == {2}
