"""Load balancers, host sets and token buckets (no sockets)."""

from __future__ import annotations

import collections

from sofamesh._core.ratelimit import TokenBucket
from sofamesh._core.stats import Store
from sofamesh._core.upstream import Cluster, Host


def hosts(*weights):
    return [Host("127.0.0.1", 1000 + i, w) for i, w in enumerate(weights)]


def test_round_robin_cycles_and_skips_unhealthy():
    c = Cluster("c", Store(), hosts=hosts(1, 1, 1))
    got = [c.pick().port for _ in range(6)]
    assert sorted(got[:3]) == [1000, 1001, 1002] and got[:3] == got[3:]
    c.hosts[1].healthy = False
    assert 1001 not in [c.pick().port for _ in range(6)]
    for h in c.hosts:
        h.healthy = False
    assert c.pick() is None


def test_weighted_round_robin_is_smooth_and_exact():
    c = Cluster("c", Store(), hosts=hosts(5, 1, 1))
    seq = [c.pick().port for _ in range(7)]
    assert collections.Counter(seq) == {1000: 5, 1001: 1, 1002: 1}
    assert seq[0] == 1000 and seq[1] == 1000 and 1001 in seq[2:5]  # spread, not 5 in a row


def test_least_request_avoids_busy_hosts():
    c = Cluster("c", Store(), hosts=hosts(1, 1), lb_policy="LEAST_REQUEST")
    c.hosts[0].rq_active = 50
    seen = collections.Counter(c.pick().port for _ in range(1000))
    # two random choices: the busy host only wins when both choices land on it (~25%)
    assert seen[1001] > 650
    c2 = Cluster("c", Store(), hosts=hosts(1, 1, 1, 1), lb_policy="LEAST_REQUEST", choice_count=4)
    c2.hosts[2].rq_active = -1  # the least loaded
    # P(a choice hits it) = 1 - (3/4)^4 = 68%, against 44% with two choices
    assert collections.Counter(c2.pick().port for _ in range(400))[1002] > 230


def test_random_spreads():
    c = Cluster("c", Store(), hosts=hosts(1, 1, 1, 1), lb_policy="RANDOM")
    seen = collections.Counter(c.pick().port for _ in range(4000))
    assert all(800 < v < 1200 for v in seen.values())


def test_set_hosts_keeps_surviving_hosts_and_membership_gauges():
    s = Store()
    c = Cluster("c", s, hosts=hosts(1, 1))
    keep = c.hosts[0]
    c.set_hosts([Host("127.0.0.1", 1000, 3), Host("127.0.0.2", 80)])
    assert c.hosts[0] is keep and keep.weight == 3
    assert s.gauge("cluster.c.membership_total").value == 2
    assert s.gauge("cluster.c.membership_healthy").value == 2


def test_cluster_stats_use_envoy_names():
    s = Store()
    Cluster("svc", s, hosts=hosts(1))
    names = set(s.counters())
    for n in (
        "upstream_rq_total",
        "upstream_cx_total",
        "upstream_cx_connect_fail",
        "upstream_rq_timeout",
        "upstream_rq_retry",
        "upstream_rq_pending_overflow",
    ):
        assert f"cluster.svc.{n}" in names
    assert "cluster.svc.upstream_cx_active" in s.gauges()


def test_token_bucket_refills_per_interval():
    b = TokenBucket(3, 2, 1.0, now=100.0)
    assert [b.try_consume(100.0) for _ in range(4)] == [True, True, True, False]
    assert b.try_consume(100.9) is False
    assert b.try_consume(101.0) is True and b.try_consume(101.0) is True
    assert b.try_consume(101.5) is False
    assert b.try_consume(110.0) is True  # capped at max_tokens
    assert b.available_at(110.0) == 2
    assert b.available_at(111.0) == 3 and b.available == 3  # full again by now
