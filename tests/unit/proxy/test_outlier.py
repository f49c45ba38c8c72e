"""proxy/outlier.py's Detector and upstream.OutlierMonitor without sockets: outcomes fed
through the monitors, the interval run by hand on a fake clock (Envoy's rules: see the
module's docstring)."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from sofamesh._core.stats import Store
from sofamesh._core.upstream import Cluster, Host
from sofamesh.proxy import outlier
from sofamesh.proxy.errors import UnsupportedConfig

CONNECT_FAILED, TIMEOUT, CONNECT_SUCCESS, EXT_FAILED, EXT_SUCCESS = -1, -2, -3, -4, -5


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.7e9 + self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(outlier, "time", c)
    return c


def make(od: dict, n: int = 3, **cluster):
    c = json_format.ParseDict(
        {"name": "c", "outlier_detection": od, **cluster}, cluster_pb2.Cluster()
    )
    store = Store()
    cl = Cluster("c", store, hosts=[Host("10.0.0.1", 80 + i) for i in range(n)])
    det = outlier.Detector(cl, outlier.parse(c, "c"), store, None)
    cl.outlier = det
    det.hosts_changed()
    return cl, det, store


def feed(h, *results):
    for r in results:
        h.outlier.report(r)


def stat(store, name):
    return store.counter(f"cluster.c.outlier_detection.{name}").value


def test_consecutive_5xx_and_gateway(clock):
    cl, det, store = make(
        {
            "consecutive_5xx": 3,
            "consecutive_gateway_failure": 2,
            "enforcing_consecutive_gateway_failure": 100,
            "max_ejection_percent": 100,
        }
    )
    h0, h1, h2 = cl.hosts
    feed(h0, 500, 200, 500, 500)  # a success ends the run
    assert h0.healthy
    feed(h0, 500)
    assert not h0.healthy and det.ejected(("10.0.0.1", 80))
    assert stat(store, "ejections_enforced_consecutive_5xx") == 1
    feed(h1, 503, 500, 502)  # a 500 ends a gateway run, and the 5xx run reaches 3
    assert not h1.healthy and stat(store, "ejections_detected_consecutive_gateway_failure") == 0
    assert stat(store, "ejections_total") == 2  # consecutive 5xx and success rate only
    assert store.gauge("cluster.c.outlier_detection.ejections_active").value == 2
    assert cl.membership_healthy.value == 1
    cl, det, store = make(
        {
            "consecutive_5xx": 1000,
            "consecutive_gateway_failure": 2,
            "enforcing_consecutive_gateway_failure": 100,
            "max_ejection_percent": 100,
        }
    )
    h0, h1, h2 = cl.hosts
    feed(h1, 503, 500, 502)
    assert h1.healthy
    feed(h1, 504)
    assert not h1.healthy
    assert stat(store, "ejections_enforced_consecutive_gateway_failure") == 1
    assert stat(store, "ejections_total") == 0
    # without the split, a refused connection is a 503, a timeout a 504; an RPC error 500
    feed(h2, CONNECT_FAILED, TIMEOUT)  # two gateway failures
    assert not h2.healthy
    assert stat(store, "ejections_enforced_consecutive_gateway_failure") == 2
    feed(h0, EXT_FAILED)
    assert h0.outlier.n_5xx == 1 and h0.outlier.n_gw == 0
    feed(h0, EXT_SUCCESS)
    assert h0.outlier.n_5xx == 0


def test_split_local_origin(clock):
    cl, _det, store = make(
        {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 2,
            "max_ejection_percent": 100,
        }
    )
    h0 = cl.hosts[0]
    feed(h0, CONNECT_FAILED, 500, 500, CONNECT_SUCCESS, TIMEOUT)
    assert h0.healthy and h0.outlier.n_lo == 1 and h0.outlier.n_gw == 0
    feed(h0, CONNECT_FAILED)
    assert not h0.healthy
    assert stat(store, "ejections_enforced_consecutive_local_origin_failure") == 1
    feed(cl.hosts[1], EXT_FAILED, EXT_FAILED)  # an RPC error is a 503 with the split
    assert cl.hosts[1].outlier.n_gw == 2


def test_ejection_time_grows_and_decays(clock):
    cl, det, _store = make(
        {
            "consecutive_5xx": 1,
            "interval": "0.5s",
            "base_ejection_time": "1s",
            "max_ejection_time": "3s",
            "max_ejection_percent": 100,
        }
    )
    h = cl.hosts[0]
    out = []
    for _ in range(5):
        feed(h, 503)
        assert not h.healthy
        t0 = clock.now
        while not h.healthy:
            clock.now += 0.5
            det.tick(clock.now)
        out.append(clock.now - t0)
    assert out == [1.0, 2.0, 3.0, 3.0, 3.0]  # base * ejections, capped by max_ejection_time
    st = det.hosts[("10.0.0.1", 80)]
    assert st.backoff == 4 and st.num_ejections == 5
    for _ in range(10):  # an interval after its return, each tick takes one back
        clock.now += 0.5
        det.tick(clock.now)
    assert st.backoff == 0
    feed(h, 503)
    clock.now += 1.0
    det.tick(clock.now)
    assert h.healthy  # base again


def test_overflow_and_always_eject_one(clock):
    cl, _det, store = make({"consecutive_5xx": 1})  # max_ejection_percent 10: 1 of 3 is 33
    feed(cl.hosts[0], 503)
    assert cl.hosts[0].healthy and stat(store, "ejections_overflow") == 1
    cl, _det, store = make({"consecutive_5xx": 1, "always_eject_one_host": True})
    feed(cl.hosts[0], 503)
    feed(cl.hosts[1], 503)
    assert not cl.hosts[0].healthy and cl.hosts[1].healthy
    assert stat(store, "ejections_overflow") == 1


def test_enforcing_zero_detects_only(clock):
    cl, _det, store = make(
        {"consecutive_5xx": 2, "enforcing_consecutive_5xx": 0, "max_ejection_percent": 100}
    )
    feed(cl.hosts[0], 503, 503)
    assert cl.hosts[0].healthy
    assert stat(store, "ejections_detected_consecutive_5xx") == 1
    assert stat(store, "ejections_enforced_total") == 0


def test_success_rate_threshold(clock):
    # Envoy's example: rates {50, 100, 100, 100, 100}: mean 90, stdev 20, threshold 52
    cl, det, store = make(
        {
            "interval": "1s",
            "consecutive_5xx": 1000,
            "success_rate_request_volume": 10,
            "max_ejection_percent": 100,
        },
        n=5,
    )
    for i, h in enumerate(cl.hosts):
        feed(h, *([200] * 10 if i else [200, 503] * 5))
    det.tick(clock.now)
    assert det.sr_nums[0] == (90.0, 52.0)
    assert not cl.hosts[0].healthy and all(h.healthy for h in cl.hosts[1:])
    assert stat(store, "ejections_enforced_success_rate") == 1
    assert det.success_rate(("10.0.0.1", 81)) == 100.0
    det.tick(clock.now + 1)  # nothing in the last interval: no rate
    assert det.success_rate(("10.0.0.1", 81)) == -1.0


def test_failure_percentage(clock):
    cl, det, store = make(
        {
            "consecutive_5xx": 1000,
            "failure_percentage_minimum_hosts": 3,
            "failure_percentage_request_volume": 4,
            "failure_percentage_threshold": 75,
            "enforcing_failure_percentage": 100,
            "max_ejection_percent": 100,
        }
    )
    feed(cl.hosts[0], 503, 503, 503, 200)  # 75% failed
    feed(cl.hosts[1], 503, 503, 200, 200)
    feed(cl.hosts[2], 200, 200, 200)  # under the request volume: 2 hosts, under the minimum
    det.tick(clock.now)
    assert all(h.healthy for h in cl.hosts)
    feed(cl.hosts[0], 503, 503, 503, 200)
    feed(cl.hosts[1], 503, 503, 200, 200)
    feed(cl.hosts[2], 200, 200, 200, 200)
    det.tick(clock.now)
    assert [h.healthy for h in cl.hosts] == [False, True, True]
    assert stat(store, "ejections_enforced_failure_percentage") == 1


def test_removed_host_and_eds_health(clock):
    cl, det, store = make({"consecutive_5xx": 1, "max_ejection_percent": 100})
    feed(cl.hosts[0], 503)
    active = store.gauge("cluster.c.outlier_detection.ejections_active")
    assert active.value == 1
    # an EDS update keeps the ejected host out; its EDS health is kept for its return
    hosts = [Host("10.0.0.1", 80 + i) for i in range(3)]
    hosts[0].healthy = False
    cl.set_hosts(hosts)
    assert not cl.hosts[0].healthy and cl.hosts[0].outlier.base_healthy is False
    cl.set_hosts(cl.hosts[1:])
    assert active.value == 0 and len(det.hosts) == 2


def test_refused_config():
    c = json_format.ParseDict(
        {
            "name": "c",
            "outlier_detection": {"base_ejection_time": "10s", "max_ejection_time": "5s"},
        },
        cluster_pb2.Cluster(),
    )
    with pytest.raises(UnsupportedConfig, match="max_ejection_time cannot be smaller"):
        outlier.parse(c, "c")
    c = json_format.ParseDict(
        {"name": "c", "outlier_detection": {}, "health_checks": [{"timeout": "1s"}]},
        cluster_pb2.Cluster(),
    )
    with pytest.raises(UnsupportedConfig, match="with health_checks is not implemented"):
        outlier.parse(c, "c")
