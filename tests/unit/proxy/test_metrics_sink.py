"""The metrics service sink's flush (no sockets): which stats a snapshot becomes, counters as
values or deltas, histograms over the flush interval, Envoy's quantiles, tag-extracted names,
batches."""

from __future__ import annotations

import math

from envoy.config.core.v3 import base_pb2
from envoy.config.metrics.v3 import metrics_service_pb2

from sofamesh._core.stats import DEFAULT_BOUNDS, Store
from sofamesh.proxy.metrics_sink import QUANTILES, MetricsServiceSink

COUNTER, GAUGE, SUMMARY, HISTOGRAM = 0, 1, 2, 4
SUMMARY_AND_HISTOGRAM, ONLY_SUMMARY, ONLY_HISTOGRAM = 0, 1, 2


class View:
    extractors = None  # Envoy's default tag extractors
    fixed = ()


def sink(**cfg) -> MetricsServiceSink:
    c = metrics_service_pb2.MetricsServiceConfig(**cfg)
    return MetricsServiceSink(c, "x:1", None, Store(), base_pb2.Node(id="n"), 5.0, DEFAULT_BOUNDS)


def snap(rq200: int, hist_counts: list[int], hist_sum: float, unused: int = 0) -> dict:
    return {
        "counters": {"cluster.db.upstream_rq_200": rq200, "cluster.db.never": unused},
        "gauges": {"cluster.db.upstream_rq_active": 2},
        "histograms": {
            "cluster.db.upstream_rq_time": {
                "counts": hist_counts,
                "sum": hist_sum,
                "count": sum(hist_counts),
            }
        },
        "used": {"cluster.db.upstream_rq_200", "cluster.db.upstream_rq_active"},
    }


def by_name(fams) -> dict:
    return {(f.name, f.type): f.metric[0] for f in fams}


def counts(**at: int) -> list[int]:
    """Per-bucket counts with n samples in the bucket of bound `b<bound>`."""
    out = [0] * (len(DEFAULT_BOUNDS) + 1)
    for k, n in at.items():
        out[DEFAULT_BOUNDS.index(float(k[1:].replace("_", ".")))] = n
    return out


def test_cumulative_counters_gauges_and_interval_histograms():
    s = sink(histogram_emit_mode=SUMMARY_AND_HISTOGRAM)
    f1 = by_name(s.families(snap(10, counts(b1=4, b25=6), 70.0), View, 1000))
    assert f1[("cluster.db.upstream_rq_200", COUNTER)].counter.value == 10
    assert f1[("cluster.db.upstream_rq_active", GAUGE)].gauge.value == 2
    assert ("cluster.db.never", COUNTER) not in f1  # neither used nor counted
    h = f1[("cluster.db.upstream_rq_time", HISTOGRAM)].histogram
    assert (h.sample_count, h.sample_sum) == (10, 70.0)
    assert [b.upper_bound for b in h.bucket] == list(DEFAULT_BOUNDS)
    cum = {b.upper_bound: b.cumulative_count for b in h.bucket}
    assert (cum[0.5], cum[1.0], cum[10.0], cum[25.0], cum[3600000.0]) == (0, 4, 4, 10, 10)
    summ = f1[("cluster.db.upstream_rq_time", SUMMARY)].summary
    assert [q.quantile for q in summ.quantile] == list(QUANTILES)
    assert summ.sample_count == 10
    assert all(m.timestamp_ms == 1000 for m in f1.values())
    # next flush: the counter's value again, the histogram's new samples only
    f2 = by_name(s.families(snap(15, counts(b1=4, b25=7), 90.0), View, 2000))
    assert f2[("cluster.db.upstream_rq_200", COUNTER)].counter.value == 15
    h2 = f2[("cluster.db.upstream_rq_time", HISTOGRAM)].histogram
    assert (h2.sample_count, h2.sample_sum) == (1, 20.0)
    assert {b.upper_bound: b.cumulative_count for b in h2.bucket}[25.0] == 1
    # nothing new: Envoy's NaN quantiles and 0 samples
    f3 = by_name(s.families(snap(15, counts(b1=4, b25=7), 90.0), View, 3000))
    s3 = f3[("cluster.db.upstream_rq_time", SUMMARY)].summary
    assert s3.sample_count == 0 and all(math.isnan(q.value) for q in s3.quantile)


def test_deltas_and_a_reset():
    s = sink(report_counters_as_deltas={"value": True}, histogram_emit_mode=ONLY_SUMMARY)
    got = []
    for v in (10, 10, 25, 4):  # 4: the counters were reset
        f = by_name(s.families(snap(v, counts(b1=1), 1.0), View, 1))
        got.append(f[("cluster.db.upstream_rq_200", COUNTER)].counter.value)
        assert ("cluster.db.upstream_rq_time", HISTOGRAM) not in f
    assert got == [10, 0, 15, 4]


def test_zero_millisecond_samples_give_zero_quantiles():
    s = sink(histogram_emit_mode=ONLY_SUMMARY)
    f = by_name(s.families(snap(3, counts(b0_5=3), 0.0), View, 1))
    assert [q.value for q in f[("cluster.db.upstream_rq_time", SUMMARY)].summary.quantile] == [
        0.0
    ] * len(QUANTILES)


def test_tags_as_labels():
    s = sink(emit_tags_as_labels=True, histogram_emit_mode=ONLY_HISTOGRAM)
    fams = s.families(snap(3, counts(b1=3), 3.0), View, 1)
    f = {(x.name, x.type): [(lp.name, lp.value) for lp in x.metric[0].label] for x in fams}
    assert f[("cluster.upstream_rq", COUNTER)] == [
        ("envoy.response_code", "200"),
        ("envoy.cluster_name", "db"),
    ]
    assert f[("cluster.upstream_rq_time", HISTOGRAM)] == [("envoy.cluster_name", "db")]


def test_batches():
    s = sink(batch_size=2)
    fams = s.families(snap(3, counts(b1=3), 3.0), View, 1)
    assert len(fams) == 4  # counter, gauge, summary, histogram
    assert [len(b) for b in s._batches(fams)] == [2, 2]
    assert [len(b) for b in sink()._batches(fams)] == [4]
