"""Two mixers' quota states sharing one limit through exchanged records (what the etcd store
carries), and the web page's graph: edges, rates over the window, histogram quantiles."""

from __future__ import annotations

import json

import pytest

from sofamesh.mixer.graph import TrafficGraph, quantile, service_name
from sofamesh.mixer.metrics import RequestMetrics
from sofamesh.mixer.policy import parse_policy
from sofamesh.mixer.quota import QuotaState
from sofamesh.mixer.quota_store import QuotaStoreError, bucket_token, parse_store

POLICY = parse_policy(
    {"quotas": [{"domain": "mesh", "bucket": {"name": "x"}, "requests_per_second": 100}]}
)
BUCKET = {"name": "x"}
KEY = ("mesh", (("name", "x"),))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _mixer(origin: str, clock: Clock) -> tuple[QuotaState, list]:
    s = QuotaState(POLICY, clock)
    s.origin = origin
    changed: list = []
    s.listener = changed.append
    return s, changed


def _sync(src: QuotaState, dst: QuotaState) -> None:
    """What the store does: src's records, through JSON, to dst."""
    dst.set_remote(KEY, src.origin, json.loads(json.dumps(src.local_records(KEY))))


def _share(s: QuotaState, client: str) -> int:
    return s.buckets[KEY].assigned[client].requests_per_second


def test_two_states_split_one_limit_by_demand():
    clock = Clock()
    a, a_changed = _mixer("a", clock)
    b, _ = _mixer("b", clock)
    a.report("heavy", "mesh", [(BUCKET, 0, 0, 0.0)])
    b.report("light", "mesh", [(BUCKET, 0, 0, 0.0)])
    assert a_changed == [KEY]
    _sync(a, b)
    _sync(b, a)
    # newcomers on both sides: equal shares, the same split computed on both
    assert _share(a, "heavy") + _share(b, "light") == 100
    clock.t += 1
    a.report("heavy", "mesh", [(BUCKET, 300, 0, 1.0)])
    b.report("light", "mesh", [(BUCKET, 20, 0, 1.0)])
    _sync(a, b)
    _sync(b, a)
    a.take_pushes()
    assert (_share(a, "heavy"), _share(b, "light")) == (80, 20)
    # the light one asks for more: the heavy one's share shrinks when b's record arrives
    clock.t += 1
    b.report("light", "mesh", [(BUCKET, 45, 0, 1.0)])
    _sync(b, a)
    assert a.take_pushes()["heavy"][0][1].requests_per_second == 55
    assert _share(a, "heavy") + _share(b, "light") == 100
    # b's sidecars gone (its key deleted): a's sidecar gets the whole limit
    a.set_remote(KEY, "b", {})
    assert _share(a, "heavy") == 100
    assert a.remote == {}


def test_records_for_the_page_and_without_a_store_nothing_changes():
    clock = Clock()
    a, _ = _mixer("a", clock)
    a.report("c1", "mesh", [(BUCKET, 0, 0, 0.0)])
    assert a.local_records(KEY) == {
        "c1": {"demand": None, "assigned": 100, "allowed": 0, "denied": 0}
    }
    a.set_remote(KEY, "b", {"c2": {"demand": None, "assigned": 50, "allowed": 7, "denied": 1}})
    view = a.buckets_view()
    assert [(c["mixer"], c["client"], c["local"]) for c in view[0]["clients"]] == [
        ("a", "c1", True),
        ("b", "c2", False),
    ]
    assert view[0]["limit"] == 100 and view[0]["allowed"] == 7
    alone = QuotaState(POLICY, clock)
    alone.report("c1", "mesh", [(BUCKET, 0, 0, 0.0)])
    assert alone.buckets_view()[0]["clients"][0]["mixer"] == "this"
    assert alone.snapshot()[0]["client"] == "c1"


def test_store_spec():
    assert parse_store("etcd://127.0.0.1:2379") == ("127.0.0.1", 2379, "/sofamesh/mixer/quota/")
    assert parse_store("etcd://h:1/q/") == ("h", 1, "/q/")
    for bad in ("etcd://h", "zk://h:1", "h:1", "etcd://h:x"):
        with pytest.raises(QuotaStoreError, match="expected etcd://host:port"):
            parse_store(bad)
    assert bucket_token(KEY) == bucket_token(("mesh", (("name", "x"),)))
    assert bucket_token(KEY) != bucket_token(("other", (("name", "x"),)))


def test_quantile_interpolates_within_buckets():
    buckets = [0] * 19
    buckets[2] = 10  # (1, 5] ms
    assert quantile(0.5, buckets, 10) == pytest.approx(3.0)
    assert quantile(0.99, buckets, 10) == pytest.approx(4.96)
    assert quantile(0.5, buckets, 0) is None


def test_graph_edges_rates_and_errors():
    clock = Clock()
    m = RequestMetrics()
    g = TrafficGraph(m, QuotaState(POLICY, clock), clock, window=10.0)
    for _ in range(50):
        m.record(("front-1", "front", "outbound|80||api.default.svc.cluster.local", "200"), 3.0)
    g.sample()
    clock.t += 5
    for code in ["200"] * 16 + ["503"] * 3 + ["429"]:
        m.record(("front-1", "front", "outbound|80||api.default.svc.cluster.local", code), 3.0)
    doc = g.graph()
    (edge,) = doc["edges"]
    assert (edge["source"], edge["destination"]) == ("front", "api.default")
    assert edge["requests"] == 70 and edge["errors"] == 3 and edge["client_errors"] == 1
    assert edge["rps"] == pytest.approx(20 / 5)
    assert edge["error_rate"] == pytest.approx(3 / 20)  # over the window, not the totals
    assert edge["recent"] and 1 < edge["p50_ms"] < 5
    assert [n["id"] for n in doc["nodes"]] == ["api.default", "front"]
    # a quiet edge: no rate, its error rate over all its requests
    for _ in range(12):
        clock.t += 1
        g.sample()
    (edge,) = g.graph()["edges"]
    assert edge["rps"] == 0 and not edge["recent"]
    assert edge["error_rate"] == pytest.approx(3 / 70)
    json.dumps(g.graph(), allow_nan=False)
    assert service_name("inbound|80||") == "inbound|80||"
