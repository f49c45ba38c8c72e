"""The mixer's metrics service core (no sockets): stats flushes in, Istio's request series out.
Cumulative counters count what they grew (a restart or reset counts from 0), deltas add up,
histograms merge bucket by bucket, sub-scoped stats are not counted twice, and a node that
streams metrics is counted from them only."""

from __future__ import annotations

from sofamesh.mixer.metrics import DURATION_BUCKETS_MS, RequestMetrics
from sofamesh.mixer.metrics_service import MetricsReports
from sofamesh.proxy.metrics_sink import messages

_, _, Family = messages()
COUNTER, SUMMARY, HISTOGRAM = 0, 2, 4


def counter(name: str, v: float, **labels: str):
    f = Family(name=name, type=COUNTER)
    m = f.metric.add()
    m.counter.value = v
    for k, val in labels.items():
        m.label.add(name=k.replace("_", ".", 1), value=val)
    return f


def hist(name: str, counts: dict[float, int], total: float):
    f = Family(name=name, type=HISTOGRAM)
    h = f.metric.add().histogram
    cum = 0
    for le in DURATION_BUCKETS_MS:
        cum += counts.get(le, 0)
        h.bucket.add(upper_bound=le, cumulative_count=cum)
    h.sample_count = sum(counts.values())
    h.sample_sum = total
    return f


def test_cumulative_counters_count_growth_and_restarts():
    m = RequestMetrics()
    r = MetricsReports(m)
    r.receive("n1", "web", [counter("cluster.db.upstream_rq_200", 10)])
    r.receive("n1", "web", [counter("cluster.db.upstream_rq_200", 10)])  # no traffic
    r.receive("n1", "web", [counter("cluster.db.upstream_rq_200", 15)])
    assert m.total(reporter="n1", source="web", destination="db", response_code="200") == 15
    r.receive("n1", "web", [counter("cluster.db.upstream_rq_200", 3)])  # restarted
    assert m.total(reporter="n1") == 18
    r.receive("n2", "web", [counter("cluster.db.upstream_rq_200", 4)])  # another node
    assert m.total(destination="db") == 22


def test_deltas_add_up():
    m = RequestMetrics()
    r = MetricsReports(m, deltas=True)
    for v in (10, 0, 5):
        r.receive("n1", "web", [counter("cluster.db.upstream_rq_503", v)])
    assert m.total(reporter="n1", response_code="503") == 15


def test_tagged_names_and_sub_scopes():
    m = RequestMetrics()
    r = MetricsReports(m)
    r.receive(
        "n1",
        "web",
        [
            counter("cluster.upstream_rq", 7, envoy_cluster_name="a.b", envoy_response_code="404"),
            counter("cluster.a.b.upstream_rq_200", 2),  # dots in the cluster name
            counter("cluster.a.b.external.upstream_rq_200", 2),  # the same requests again
            counter("cluster.a.b.zone.z1.z2.upstream_rq_200", 2),
            counter("cluster.a.b.upstream_rq_2xx", 2),  # a class, not a code
            counter("cluster.a.b.upstream_rq_total", 9),
        ],
    )
    assert m.total(destination="a.b", response_code="404") == 7
    assert m.total(destination="a.b", response_code="200") == 2
    assert m.total() == 9


def test_histograms_merge_by_bucket():
    m = RequestMetrics()
    r = MetricsReports(m)
    r.receive("n1", "web", [hist("cluster.db.upstream_rq_time", {1.0: 3, 25.0: 1}, 30.0)])
    r.receive("n1", "web", [hist("cluster.db.upstream_rq_time", {5.0: 2}, 8.0)])  # interval
    s = m.series[("n1", "web", "db", "")]
    assert (s.hist_count, s.duration_sum, s.count) == (6, 38.0, 0)
    idx = {le: i for i, le in enumerate(DURATION_BUCKETS_MS)}
    assert s.buckets[idx[1.0]] == 3 and s.buckets[idx[5.0]] == 2 and s.buckets[idx[25.0]] == 1
    text = "\n".join(m.render())
    lab = 'reporter="n1",source="web",destination="db",response_code=""'
    assert f"istio_request_duration_milliseconds_count{{{lab}}} 6" in text
    assert f'istio_request_duration_milliseconds_bucket{{{lab},le="5"}} 5' in text
    assert f"istio_requests_total{{{lab}}}" not in text  # no requests of code ""


def test_a_node_streaming_metrics_is_not_counted_twice():
    m = RequestMetrics()
    r = MetricsReports(m)
    for _ in range(4):  # its access log came first
        m.record(("n1", "web", "db", "200"), 2.0)
    m.record(("other", "web", "db", "200"), 2.0)
    assert m.total(reporter="n1") == 4
    r.receive("n1", "web", [counter("cluster.db.upstream_rq_200", 5)])  # includes those 4
    assert m.total(reporter="n1") == 5
    m.record(("n1", "web", "db", "200"), 2.0)  # its later entries add nothing
    assert m.total(reporter="n1") == 5 and m.entries_skipped == 1
    assert m.total(reporter="other") == 1


def test_raw_families_served_per_node():
    m = RequestMetrics()
    r = MetricsReports(m)
    r.receive("n1", "web", [counter("cluster.db.upstream_rq_200", 5)])
    f = Family(name="cluster.db.upstream_rq_time", type=SUMMARY)
    f.metric.add().summary.sample_count = 3
    r.receive("n1", "web", [f])
    text = "\n".join(r.render_reported())
    assert 'envoy_cluster_db_upstream_rq_200{reporter="n1"} 5' in text
    assert 'envoy_cluster_db_upstream_rq_time_count{reporter="n1"} 3' in text
