"""The `envoy.stat_sinks.metrics_service` stats sink, as Envoy 1.40 flushes it: every
`stats_flush_interval` (default 5 s) the proxy's stats, as Prometheus metric families, are
streamed to a metrics service (`envoy.service.metrics.v3.MetricsService/StreamMetrics`, e.g.
`sofamesh mixer`), so report traffic grows with the number of stats, not of requests.

It runs once per proxy, in the process that serves admin, off the request path: it reads
the same snapshot as /stats (summed over workers with --concurrency N) and sends, per flush:
- every used counter: COUNTER, its value, or with report_counters_as_deltas what it grew
  since the last flush (a counter that went down, reset, counts from 0);
- every used gauge: GAUGE;
- every used histogram, over the flush interval (Envoy's interval statistics): SUMMARY
  with Envoy's quantiles (P0 .. P100; NaN with no samples), and/or HISTOGRAM with the
  cumulative count of each of the stats' bucket bounds (histogram_emit_mode);
each metric its own MetricFamily named as the stat (or, with emit_tags_as_labels, the
tag-extracted name with the tags as labels: the tag extraction /stats/prometheus uses) and
stamped with the flush's timestamp_ms. A flush is cut into messages of at most batch_size
families (0: one message); the first message of a stream carries the node (identifier).

    flush timer -> snapshot -> families -> queue (MAX_PENDING flushes) -> sender -> stream

The service down or slow: the sender reconnects with backoff; flushes that find the queue
full are dropped. Counted in sofamesh.metrics_service.{flushes, messages_sent,
flushes_dropped, stream_failures} (Envoy counts nothing here). Nothing else waits.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

log = logging.getLogger("sofamesh.metrics_service")

SINK_TYPE = "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig"
SINK_NAMES = ("envoy.stat_sinks.metrics_service", "envoy.metrics_service")
METHOD = "/envoy.service.metrics.v3.MetricsService/StreamMetrics"
DEFAULT_FLUSH_S = 5.0  # Envoy's stats_flush_interval default
QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0)  # Envoy's
MAX_PENDING = 4  # flushes waiting for the stream; more are dropped
SLICE = 500  # families built between two turns of the event loop
MAX_BACKOFF_S = 30.0
V2 = 1  # envoy.config.core.v3.ApiVersion
# envoy.config.metrics.v3.HistogramEmitMode
EMIT_SUMMARY_AND_HISTOGRAM, EMIT_SUMMARY, EMIT_HISTOGRAM = 0, 1, 2
# io.prometheus.client.MetricType
COUNTER, GAUGE, SUMMARY, HISTOGRAM = 0, 1, 2, 4


def messages() -> tuple[Any, Any, Any]:
    """(StreamMetricsMessage, StreamMetricsResponse, MetricFamily) classes, from proto/."""
    from google.protobuf import descriptor_pool, message_factory

    import sofamesh.filters.network._proto  # noqa: F401  (proto/ into the default pool)

    pool = descriptor_pool.Default()

    def get(name: str) -> Any:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))

    return (
        get("envoy.service.metrics.v3.StreamMetricsMessage"),
        get("envoy.service.metrics.v3.StreamMetricsResponse"),
        get("io.prometheus.client.MetricFamily"),
    )


def _config(sink: Any, path: str) -> Any:
    from envoy.config.metrics.v3 import metrics_service_pb2

    cfg = metrics_service_pb2.MetricsServiceConfig()
    if not sink.typed_config.Unpack(cfg):
        raise UnsupportedConfig(f"{path}.typed_config: expected MetricsServiceConfig")
    return cfg


def check_config(bootstrap: Any) -> list[tuple[str, str]]:
    """(path, problem) for each stats sink sofamesh cannot run as configured (statsd sinks:
    proxy/statsd_sink.py)."""
    from sofamesh.proxy import statsd_sink
    from sofamesh.xds.settings import static_targets

    out = statsd_sink.check_config(bootstrap)
    targets = static_targets(bootstrap)
    for i, sink in enumerate(bootstrap.stats_sinks):
        path = f"stats_sinks[{i}]"
        if sink.typed_config.type_url != SINK_TYPE:
            continue  # other sinks: the extension check names them
        try:
            cfg = _config(sink, path)
        except UnsupportedConfig as e:
            out.append((path, str(e)))
            continue
        tp = f"{path}.typed_config"
        if cfg.transport_api_version == V2:  # AUTO (unset) is V3, as Envoy 1.40 takes it
            out.append(
                (
                    f"{tp}.transport_api_version",
                    ("V2 xDS transport protocol version is deprecated in grpc_service; set V3"),
                )
            )
        if cfg.grpc_service.WhichOneof("target_specifier") != "envoy_grpc":
            out.append((f"{tp}.grpc_service", "only envoy_grpc is implemented by sofamesh"))
        elif cfg.grpc_service.envoy_grpc.cluster_name not in targets:
            out.append(
                (
                    f"{tp}.grpc_service.envoy_grpc.cluster_name",
                    (
                        f"static cluster {cfg.grpc_service.envoy_grpc.cluster_name!r} with "
                        "an endpoint address is required"
                    ),
                )
            )
    return out


def flush_interval(bootstrap: Any) -> float:
    if bootstrap.HasField("stats_flush_interval"):
        return max(bootstrap.stats_flush_interval.ToNanoseconds() / 1e9, 0.001)
    return DEFAULT_FLUSH_S


async def flush_every(interval: float, flush: Any, logger: Any, what: str) -> None:
    """Calls `await flush()` every `interval` seconds until cancelled; a flush that fails is
    logged and the next one comes (the stats sinks' flush timer)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await flush()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bad flush is logged; the next one comes
            logger.exception("%s flush failed", what)


def interval_histogram(cur: dict, prev: dict | None) -> tuple[list[int], float, int]:
    """(bucket counts, sum, count) recorded since `prev` (a histogram that went down, reset,
    counts from nothing)."""
    if prev is None or cur["count"] < prev["count"]:
        return list(cur["counts"]), float(cur["sum"]), int(cur["count"])
    counts = [a - b for a, b in zip(cur["counts"], prev["counts"], strict=False)]
    return counts, float(cur["sum"]) - float(prev["sum"]), int(cur["count"]) - int(prev["count"])


class MetricsServiceSink:
    def __init__(
        self,
        cfg: Any,  # envoy.config.metrics.v3.MetricsServiceConfig
        target: str,  # host:port of the service's cluster
        state: Any,  # admin.handlers.AdminState: snapshot() and stats_view, as /stats reads
        store: Any,  # this process's sofamesh._core.stats.Store
        node: Any,  # envoy.config.core.v3.Node
        interval: float,
        bounds: tuple[float, ...],
    ) -> None:
        self.Message, self.Response, self.Family = messages()
        self.target = target
        authority = cfg.grpc_service.envoy_grpc.authority  # the calls' :authority, if set
        self.channel_options = [("grpc.default_authority", authority)] if authority else []
        self.state = state
        self.node = node
        self.interval = interval
        self.bounds = bounds
        self.deltas = cfg.report_counters_as_deltas.value  # a BoolValue
        self.labels = cfg.emit_tags_as_labels
        mode = cfg.histogram_emit_mode
        self.summary = mode in (EMIT_SUMMARY, EMIT_SUMMARY_AND_HISTOGRAM)
        self.histogram = mode in (EMIT_HISTOGRAM, EMIT_SUMMARY_AND_HISTOGRAM)
        self.batch_size = cfg.batch_size
        self.prev_counters: dict[str, int] = {}
        self.prev_hists: dict[str, dict] = {}
        self.pending: collections.deque[list[Any]] = collections.deque()
        self.wakeup = asyncio.Event()
        self.flushes = store.counter("sofamesh.metrics_service.flushes")
        self.sent = store.counter("sofamesh.metrics_service.messages_sent")
        self.dropped = store.counter("sofamesh.metrics_service.flushes_dropped")
        self.failures = store.counter("sofamesh.metrics_service.stream_failures")
        for c in (self.flushes, self.sent, self.dropped, self.failures):
            c.used = True
        self._tasks: list[asyncio.Task] = []
        self._tag_view: Any = None
        self._tag_cache: dict[str, tuple[str, list[tuple[str, str]]]] = {}

    # -- per flush --------------------------------------------------------------------------
    def _family(self, name: str, kind: int, ts: int, view: Any) -> Any:
        fam = self.Family(type=kind)
        m = fam.metric.add(timestamp_ms=ts)
        if self.labels:
            base, tags = self._tags(name, view)
            fam.name = base
            for k, v in tags:
                m.label.add(name=k, value=v)
        else:
            fam.name = name
        return fam

    def _tags(self, name: str, view: Any) -> tuple[str, list[tuple[str, str]]]:
        """extract_tags, kept per name: the regexes cost more than the rest of a flush.
        PERF: 15k stats flushed with labels, 228 -> 123 ms (measured with a fake snapshot)."""
        if view is not self._tag_view:
            self._tag_view, self._tag_cache = view, {}
        got = self._tag_cache.get(name)
        if got is None:
            from sofamesh.admin.stats_format import extract_tags

            got = self._tag_cache[name] = extract_tags(name, view.extractors, view.fixed)
        return got

    def families(self, snap: dict, view: Any, ts: int) -> list[Any]:
        return list(self._build(snap, view, ts))

    def _build(self, snap: dict, view: Any, ts: int) -> Iterator[Any]:
        from sofamesh.admin.stats_format import quantile

        used = set(snap.get("used", ()))
        for n in sorted(snap["counters"]):
            v = int(snap["counters"][n])
            if n not in used and not v:
                continue
            fam = self._family(n, COUNTER, ts, view)
            if self.deltas:
                prev = self.prev_counters.get(n, 0)
                fam.metric[0].counter.value = v - prev if v >= prev else v
            else:
                fam.metric[0].counter.value = v
            self.prev_counters[n] = v
            yield fam
        for n in sorted(snap["gauges"]):
            v = snap["gauges"][n]
            if n not in used and not v:
                continue
            fam = self._family(n, GAUGE, ts, view)
            fam.metric[0].gauge.value = v
            yield fam
        for n in sorted(snap["histograms"]):
            cur = snap["histograms"][n]
            if n not in used and not cur["count"]:
                continue
            counts, total, count = interval_histogram(cur, self.prev_hists.get(n))
            self.prev_hists[n] = {
                "counts": list(cur["counts"]),
                "sum": cur["sum"],
                "count": cur["count"],
            }
            h = {"counts": counts, "sum": total, "count": count}
            if self.summary:
                fam = self._family(n, SUMMARY, ts, view)
                s = fam.metric[0].summary
                for q in QUANTILES:
                    qv = quantile(h, self.bounds, q)
                    if qv is not None and total >= 0:
                        # no sample exceeds the sum: all-0 ms samples give 0s, as Envoy's
                        # (which keeps the values) does, not points inside the first bucket
                        qv = min(qv, total)
                    s.quantile.add(quantile=q, value=math.nan if qv is None else qv)
                s.sample_count = count
                s.sample_sum = total
                yield fam
            if self.histogram:
                fam = self._family(n, HISTOGRAM, ts, view)
                hm = fam.metric[0].histogram
                hm.sample_count = count
                hm.sample_sum = total
                cum = 0
                for i, le in enumerate(self.bounds):
                    cum += counts[i] if i < len(counts) else 0
                    hm.bucket.add(upper_bound=le, cumulative_count=cum)
                yield fam

    async def flush(self) -> None:
        snap = await self.state.snapshot()
        fams = []
        # in slices, so that a proxy serving from this loop never stalls for a whole flush
        # (PERF: 16k stats take 80-220 ms to build, measured with a fake snapshot)
        for fam in self._build(snap, self.state.stats_view, int(time.time() * 1000)):
            fams.append(fam)
            if len(fams) % SLICE == 0:
                await asyncio.sleep(0)
        self.flushes.value += 1
        if len(self.pending) >= MAX_PENDING:
            self.dropped.value += 1
            return
        self.pending.append(fams)
        self.wakeup.set()

    def _batches(self, fams: list[Any]) -> list[list[Any]]:
        size = self.batch_size or len(fams) or 1
        return [fams[i : i + size] for i in range(0, len(fams), size)] or [[]]

    # -- tasks ------------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._flush_loop()), loop.create_task(self._send_loop())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _flush_loop(self) -> None:
        await flush_every(self.interval, self.flush, log, "metrics service")

    async def _send_loop(self) -> None:
        import grpc

        backoff = 0.5
        while True:
            await self.wakeup.wait()
            channel = grpc.aio.insecure_channel(self.target, options=self.channel_options)
            call = channel.stream_unary(
                METHOD, request_serializer=None, response_deserializer=self.Response.FromString
            )()
            first = True
            try:
                while True:
                    while self.pending:
                        for batch in self._batches(self.pending[0]):
                            msg = self.Message()
                            if first:
                                msg.identifier.node.CopyFrom(self.node)
                            msg.envoy_metrics.extend(batch)
                            await call.write(msg.SerializeToString())
                            first = False
                            self.sent.value += 1
                        self.pending.popleft()
                        backoff = 0.5
                    self.wakeup.clear()
                    await self.wakeup.wait()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any stream failure: counted, reopened
                log.debug("metrics service %s: %r", self.target, e)
                self.failures.value += 1
            finally:
                call.cancel()
                await channel.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)


def start(bootstrap: Any, state: Any, store: Any, opts: Any = None) -> list[Any]:
    """The metrics service and statsd sinks of a bootstrap's stats_sinks, started (each
    has `async stop()`)."""
    from sofamesh import __version__
    from sofamesh._core.stats import DEFAULT_BOUNDS
    from sofamesh.proxy import statsd_sink
    from sofamesh.xds.settings import static_targets

    sinks: list[Any] = statsd_sink.start(bootstrap, state, store)
    targets = static_targets(bootstrap)
    for i, sink in enumerate(bootstrap.stats_sinks):
        if sink.typed_config.type_url != SINK_TYPE:
            continue
        cfg = _config(sink, f"stats_sinks[{i}]")
        node = type(bootstrap.node)()
        node.CopyFrom(bootstrap.node)
        if opts is not None:
            node.id = getattr(opts, "service_node", "") or node.id
            node.cluster = getattr(opts, "service_cluster", "") or node.cluster
        node.user_agent_name = "sofamesh"
        node.user_agent_version = __version__
        target = targets[cfg.grpc_service.envoy_grpc.cluster_name]
        s = MetricsServiceSink(
            cfg, target, state, store, node, flush_interval(bootstrap), DEFAULT_BOUNDS
        )
        s.start()
        sinks.append(s)
    return sinks


def _register() -> None:
    from sofamesh.config.support import register_extension

    register_extension(SINK_TYPE, "sofamesh.proxy.metrics_sink")


_register()
