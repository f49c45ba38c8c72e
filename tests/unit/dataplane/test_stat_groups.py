"""Stats kept as groups (a cluster's ~35 stats): named only when read, same values and
names as stats made one by one, one object per name whoever asks."""

from __future__ import annotations

from sofamesh._core.stats import StatGroup, Store
from sofamesh._core.upstream import CLUSTER_COUNTERS, CLUSTER_GAUGES, Cluster


def test_a_clusters_stats_read_like_named_ones():
    s = Store()
    cl = Cluster("outbound|80||a", s)
    cl.upstream_rq_total.value += 3
    cl.upstream_rq_total.used = True
    cl.upstream_rq_time.add(2.0)
    snap = s.snapshot()
    assert snap["counters"]["cluster.outbound|80||a.upstream_rq_total"] == 3
    assert "cluster.outbound|80||a.upstream_rq_total" in snap["used"]
    assert snap["counters"]["cluster.outbound|80||a.upstream_cx_total"] == 0
    assert "cluster.outbound|80||a.upstream_cx_total" not in snap["used"]
    assert snap["histograms"]["cluster.outbound|80||a.upstream_rq_time"]["count"] == 1
    assert snap["gauges"]["cluster.outbound|80||a.membership_total"] == 0
    names = {n for n in snap["counters"] if n.startswith("cluster.outbound|80||a.")}
    assert names == {f"cluster.outbound|80||a.{n}" for n in CLUSTER_COUNTERS}
    assert set(s.counters()) >= names
    assert {f"cluster.outbound|80||a.{n}" for n in CLUSTER_GAUGES} <= set(s.gauges())


def test_asking_by_name_gives_the_clusters_own_object():
    s = Store()
    cl = Cluster("c", s)
    assert s.counter("cluster.c.upstream_rq_total") is cl.upstream_rq_total
    assert s.gauge("cluster.c.upstream_cx_active") is cl.upstream_cx_active
    assert s.histogram("cluster.c.upstream_rq_time") is cl.upstream_rq_time
    # a stat of the cluster outside the group is an ordinary named one
    extra = s.counter("cluster.c.upstream_rq_200")
    assert extra.name == "cluster.c.upstream_rq_200"
    assert s.counter("cluster.c.upstream_rq_200") is extra


def test_a_stat_made_by_name_first_is_adopted():
    s = Store()
    early = s.counter("cluster.c.upstream_rq_total")
    early.value = 7
    cl = Cluster("c", s)
    assert cl.upstream_rq_total is early
    snap = s.snapshot()
    assert snap["counters"]["cluster.c.upstream_rq_total"] == 7
    assert list(snap["counters"]).count("cluster.c.upstream_rq_total") == 1


def test_a_cluster_rebuilt_under_its_name_keeps_counting():
    s = Store()
    a = Cluster("c", s)
    a.upstream_rq_total.value = 5
    b = Cluster("c", s)
    assert b.upstream_rq_total is a.upstream_rq_total
    assert s.snapshot()["counters"]["cluster.c.upstream_rq_total"] == 5


def test_reset_counters_reaches_groups():
    s = Store()
    cl = Cluster("c", s)
    cl.upstream_rq_total.value = 5
    cl.upstream_cx_active.value = 2
    s.reset_counters()
    assert cl.upstream_rq_total.value == 0
    assert cl.upstream_cx_active.value == 2  # gauges are not counters


def test_groups_of_other_kinds_share_a_prefix():
    s = Store()
    Cluster("c", s)
    eds = s.group("cluster.c.", ("update_attempt", "update_success"))
    assert isinstance(eds, StatGroup)
    assert s.group("cluster.c.", ("update_attempt", "update_success")) is eds
    assert s.counter("cluster.c.update_attempt") is eds.c[0]
    snap = s.snapshot()
    assert snap["counters"]["cluster.c.update_success"] == 0
    assert "cluster.c.upstream_rq_total" in snap["counters"]


def test_stores_do_not_share_groups():
    a, b = Store(), Store()
    Cluster("c", a)
    assert "cluster.c.upstream_rq_total" not in b.snapshot()["counters"]
