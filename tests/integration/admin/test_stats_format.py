"""Envoy's stats formats from Store snapshots: tag extraction, text, JSON, Prometheus, and
the summing of worker snapshots (no sockets)."""

from __future__ import annotations

import json
import re

import pytest

from sofamesh._core.stats import DEFAULT_BOUNDS, Store
from sofamesh.admin import stats_format as sf


@pytest.mark.parametrize(
    ("name", "base", "tags"),
    [
        (
            "cluster.backend.upstream_rq_total",
            "cluster.upstream_rq_total",
            [("envoy.cluster_name", "backend")],
        ),
        (
            "cluster.backend.upstream_rq_503",
            "cluster.upstream_rq",
            [("envoy.response_code", "503"), ("envoy.cluster_name", "backend")],
        ),
        (
            "http.ingress_http.downstream_rq_2xx",
            "http.downstream_rq_xx",
            [
                ("envoy.response_code_class", "2"),
                ("envoy.http_conn_manager_prefix", "ingress_http"),
            ],
        ),
        (
            "listener.127.0.0.1_8080.http.ingress_http.downstream_rq_5xx",
            "listener.http.downstream_rq_xx",
            [
                ("envoy.response_code_class", "5"),
                ("envoy.http_conn_manager_prefix", "ingress_http"),
                ("envoy.listener_address", "127.0.0.1_8080"),
            ],
        ),
        (
            "listener.127.0.0.1_8080.worker_1.downstream_cx_total",
            "listener.worker_downstream_cx_total",
            [("envoy.worker_id", "1"), ("envoy.listener_address", "127.0.0.1_8080")],
        ),
        (
            "listener.[__1]_8080.downstream_cx_total",
            "listener.downstream_cx_total",
            [("envoy.listener_address", "[__1]_8080")],
        ),
        ("server.live", "server.live", []),
        ("cluster_manager.active_clusters", "cluster_manager.active_clusters", []),
    ],
)
def test_tag_extraction_matches_envoy(name, base, tags):
    assert sf.extract_tags(name) == (base, tags)


def _store(rq: int, ms: list[float]) -> Store:
    s = Store()
    c = s.counter("cluster.backend.upstream_rq_total")
    c.value += rq
    c.used = True
    s.counter("cluster.backend.upstream_rq_timeout")  # never used
    g = s.gauge("cluster.backend.upstream_cx_active")
    g.value = 2
    g.used = True
    h = s.histogram("cluster.backend.upstream_rq_time")
    for v in ms:
        h.add(v)
    s.histogram("cluster.backend.upstream_cx_connect_ms")
    return s


def test_merge_sums_workers():
    snap = sf.merge([_store(3, [1.0, 7.0]).snapshot(), _store(4, [7.0]).snapshot()])
    assert snap["counters"]["cluster.backend.upstream_rq_total"] == 7
    assert snap["gauges"]["cluster.backend.upstream_cx_active"] == 4
    h = snap["histograms"]["cluster.backend.upstream_rq_time"]
    assert h["count"] == 3 and h["sum"] == 15.0
    assert h["counts"][DEFAULT_BOUNDS.index(10.0)] == 2  # 7 ms falls in (5, 10]


def test_text_usedonly_filter_and_histograms():
    snap = _store(5, [7.0]).snapshot()
    full = sf.text(snap, None, False, DEFAULT_BOUNDS)
    assert "cluster.backend.upstream_rq_timeout: 0\n" in full
    assert "cluster.backend.upstream_cx_connect_ms: No recorded values\n" in full
    line = next(x for x in full.splitlines() if x.startswith("cluster.backend.upstream_rq_time:"))
    assert re.fullmatch(
        r"cluster\.backend\.upstream_rq_time: (P[\d.]+\([\d.]+,[\d.]+\) ?){10}", line
    )
    used = sf.text(snap, None, True, DEFAULT_BOUNDS)
    assert "upstream_rq_timeout" not in used and "upstream_rq_total: 5" in used
    only = sf.text(snap, re.compile(r"rq_total$"), False, DEFAULT_BOUNDS)
    assert only == "cluster.backend.upstream_rq_total: 5\n"


def test_json_shape():
    body = json.loads(sf.as_json(_store(1, [3.0]).snapshot(), None, False, DEFAULT_BOUNDS))
    names = [x["name"] for x in body["stats"] if "name" in x]
    assert names == sorted(names)
    hist = body["stats"][-1]["histograms"]
    assert hist["supported_quantiles"] == [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]
    q = {x["name"]: x["values"] for x in hist["computed_quantiles"]}
    assert q["cluster.backend.upstream_cx_connect_ms"][0] == {"interval": None, "cumulative": None}
    assert 1.0 <= q["cluster.backend.upstream_rq_time"][2]["cumulative"] <= 5.0


def test_prometheus_histogram_and_types():
    out = sf.prometheus(_store(2, [7.0, 700.0]).snapshot(), None, False, DEFAULT_BOUNDS)
    lines = out.splitlines()
    assert "# TYPE envoy_cluster_upstream_rq_total counter" in lines
    assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="backend"} 2' in lines
    assert "# TYPE envoy_cluster_upstream_cx_active gauge" in lines
    assert "# TYPE envoy_cluster_upstream_rq_time histogram" in lines
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="backend",le="5"} 0' in lines
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="backend",le="10"} 1' in lines
    assert (
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="backend",le="+Inf"} 2' in lines
    )
    assert 'envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="backend"} 707' in lines
    assert 'envoy_cluster_upstream_rq_time_count{envoy_cluster_name="backend"} 2' in lines
