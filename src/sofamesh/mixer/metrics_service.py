"""The mixer's metrics service (`envoy.service.metrics.v3.MetricsService/StreamMetrics`): what
Envoy's and sofamesh's `envoy.stat_sinks.metrics_service` stats sink streams every stats
flush, turned into Istio's request metrics. Report traffic is one message per flush (or per
batch_size families), whatever the number of requests.

Per node (the stream's first message names it; `reporter` = node.id, `source` = node.cluster):
- `istio_requests_total{reporter, source, destination=<cluster>, response_code}` from each
  `cluster.<name>.upstream_rq_<3-digit code>` counter (or, with emit_tags_as_labels,
  `cluster.upstream_rq` labelled envoy.cluster_name / envoy.response_code). Counters are
  cumulative by default (Envoy's): what a counter grew since the node's last report is added
  (a smaller value means the sidecar restarted or reset its counters: the value is added);
  `sofamesh mixer --metrics-counters delta` for sidecars with report_counters_as_deltas.
  Values are kept by node id across streams, so a reconnect counts nothing twice: node ids
  must be unique in the mesh (Istio's are).
- `istio_request_duration_milliseconds{reporter, source, destination, response_code=""}`
  from `cluster.<name>.upstream_rq_time` sent as HISTOGRAM (histogram_emit_mode HISTOGRAM or
  SUMMARY_AND_HISTOGRAM; a SUMMARY cannot be merged). Its samples are the flush interval's
  (Envoy's interval statistics) and are added as they come. Envoy's default bucket bounds
  are Istio's, the mixer's: buckets merge one to one (a bound the mixer lacks goes to the
  next larger one). Envoy's histogram is per cluster, not per response code: the series has
  an empty response_code (absent, to Prometheus).
- A node that streams metrics is counted from them only (RequestMetrics.use_metrics): the
  request series its access log entries made are dropped at its first metrics message (its
  counters include those requests since the sidecar started) and its later HTTP entries add
  nothing, so a node sending both is not counted twice. Its TCP entries still count.
The last value of every received metric is kept per node and served on `/metrics/reported`.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc

from sofamesh.mixer.metrics import DURATION_BUCKETS_MS, RequestMetrics, _labels

SERVICE = "envoy.service.metrics.v3.MetricsService"
# io.prometheus.client.MetricType
COUNTER, GAUGE, SUMMARY, UNTYPED, HISTOGRAM = 0, 1, 2, 3, 4
_RQ = re.compile(r"^cluster\.(.+)\.upstream_rq_(\d{3})$")
_RQ_TIME = re.compile(r"^cluster\.(.+)\.upstream_rq_time$")
# cluster.<name>.{internal,external,canary,zone.<from>.<to>}.upstream_rq_*: the same
# requests again, split by origin
_SUBSCOPE = re.compile(r"\.(?:internal|external|canary)$|\.zone\.")


def _cluster_and_code(fam: Any, m: Any) -> tuple[str, str] | None:
    """(cluster, code) of an upstream_rq_<code> counter, whichever way it is named."""
    if m.label:
        if fam.name != "cluster.upstream_rq":
            return None
        tags = {lp.name: lp.value for lp in m.label}
        cl, code = tags.get("envoy.cluster_name"), tags.get("envoy.response_code")
        if not cl or not code or len(tags) != 2:
            return None
        return cl, code
    r = _RQ.match(fam.name)
    if r is None or _SUBSCOPE.search(r.group(1)):
        return None
    return r.group(1), r.group(2)


def _rq_time_cluster(fam: Any, m: Any) -> str | None:
    if m.label:
        tags = {lp.name: lp.value for lp in m.label}
        if fam.name != "cluster.upstream_rq_time" or len(tags) != 1:
            return None
        return tags.get("envoy.cluster_name") or None
    r = _RQ_TIME.match(fam.name)
    if r is None or _SUBSCOPE.search(r.group(1)):
        return None
    return r.group(1)


def _value(fam: Any, m: Any) -> float:
    if fam.type == COUNTER:
        return m.counter.value
    if fam.type == GAUGE:
        return m.gauge.value
    if fam.type == UNTYPED:
        return m.untyped.value
    if fam.type == SUMMARY:
        return float(m.summary.sample_count)
    return float(m.histogram.sample_count)


class MetricsReports:
    """Sans-IO: messages in, RequestMetrics counts out (one asyncio loop: no locks)."""

    def __init__(self, metrics: RequestMetrics, deltas: bool = False) -> None:
        self.metrics = metrics
        self.deltas = deltas
        self.last: dict[tuple[str, str, str], float] = {}  # (node, cluster, code) -> value
        self.reported: dict[str, dict[tuple[str, int, tuple], float]] = {}  # node -> last
        self.messages = 0
        self.families = 0
        self.streams = 0
        self.rejected = 0  # metrics that named no node (no identifier on the stream)

    def receive(self, node_id: str, node_cluster: str, families: Any) -> None:
        self.messages += 1
        reporter = node_id or "unknown"
        source = node_cluster or reporter
        self.metrics.use_metrics(reporter)
        raw = self.reported.setdefault(reporter, {})
        for fam in families:
            self.families += 1
            for m in fam.metric:
                key = (fam.name, fam.type, tuple((lp.name, lp.value) for lp in m.label))
                raw[key] = _value(fam, m)
                if fam.type == COUNTER:
                    cc = _cluster_and_code(fam, m)
                    if cc is not None:
                        self._count(reporter, source, cc[0], cc[1], m.counter.value)
                elif fam.type == HISTOGRAM:
                    cl = _rq_time_cluster(fam, m)
                    if cl is not None:
                        self._durations(reporter, source, cl, m.histogram)

    def _count(self, reporter: str, source: str, cluster: str, code: str, v: float) -> None:
        if not math.isfinite(v) or v < 0:
            return
        if self.deltas:
            n = int(v)
        else:
            k = (reporter, cluster, code)
            last = self.last.get(k, 0.0)
            n = int(v - last) if v >= last else int(v)  # smaller: restarted or reset
            self.last[k] = v
        if n:
            self.metrics.add_count((reporter, source, cluster, code), n)

    def _durations(self, reporter: str, source: str, cluster: str, h: Any) -> None:
        if not h.sample_count:
            return
        buckets = [0] * len(DURATION_BUCKETS_MS)
        prev = 0
        for b in sorted(h.bucket, key=lambda b: b.upper_bound):
            n = b.cumulative_count - prev
            prev = b.cumulative_count
            i = bisect.bisect_left(DURATION_BUCKETS_MS, b.upper_bound)
            if n > 0 and i < len(buckets):
                buckets[i] += n
        total = h.sample_sum if math.isfinite(h.sample_sum) else 0.0
        self.metrics.add_histogram((reporter, source, cluster, ""), buckets, total, h.sample_count)

    def render_reported(self) -> list[str]:
        """The last received value of each metric, per node, as Prometheus text: counters and
        gauges as sent, summaries and histograms as their sample count (`_count`)."""
        by_name: dict[str, list[str]] = {}
        for reporter, raw in sorted(self.reported.items()):
            for (name, kind, labels), v in sorted(raw.items()):
                pname = "envoy_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)
                if kind in (SUMMARY, HISTOGRAM):
                    pname += "_count"
                names = ("reporter", *(re.sub(r"[^a-zA-Z0-9_]", "_", k) for k, _ in labels))
                values = (reporter, *(val for _, val in labels))
                num = format(v, "g") if math.isfinite(v) else "NaN"
                by_name.setdefault(pname, []).append(f"{pname}{_labels(names, values)} {num}")
        out = []
        for pname, lines in sorted(by_name.items()):
            out += [f"# TYPE {pname} untyped", *lines]
        return out


class MetricsService:
    """The StreamMetrics handler (a generic handler: xds-protos has no generated stubs)."""

    def __init__(self, reports: MetricsReports) -> None:
        from sofamesh.proxy.metrics_sink import messages

        self.reports = reports
        self.Message, self.Response, _ = messages()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "StreamMetrics": grpc.stream_unary_rpc_method_handler(
                    self.StreamMetrics,
                    request_deserializer=self.Message.FromString,
                    response_serializer=self.Response.SerializeToString,
                )
            },
        )

    async def StreamMetrics(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> Any:
        node: Any = None
        self.reports.streams += 1
        async for msg in request_iterator:
            if msg.HasField("identifier"):  # first message of a stream
                node = msg.identifier.node
            if node is None:
                self.reports.rejected += len(msg.envoy_metrics)
                continue
            self.reports.receive(node.id, node.cluster, msg.envoy_metrics)
        return self.Response()
