"""`envoy.tracers.zipkin` (HTTP JSON v2, B3 headers), as Envoy 1.40 traces.

The hot path (_core/http_tracing, TRACE_B3) continues an incoming B3 context (x-b3-traceid,
x-b3-spanid, x-b3-sampled; with `shared_span_context` (default) the server span shares the
caller's span id, else it is a child), or starts a trace, and writes the span's B3 headers
on the upstream request (incoming ones replaced). A sampled span becomes a Zipkin v2 SERVER
span named for the authority (or the route's decorator), with Envoy's tags (proxy/tracing;
empty ones left out, as Envoy's Zipkin span does); with `spawn_upstream_span` a CLIENT
child "router <cluster> egress" too, whose id (parent: the server span) goes upstream. Reports are POSTed as one JSON array to
the collector cluster (proxy/tracing SpanReporter). Stats: tracing.zipkin.{spans_sent,
timer_flushed, reports_sent, reports_failed, reports_dropped, reports_skipped_no_cluster}.
"""

from __future__ import annotations

import json
from typing import Any

from sofamesh._core.zipkin_json import ZipkinSpanWriter
from sofamesh.proxy import tracing
from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.tracing import HttpCollector, SpanRecord, SpanReporter, Tracer, _bump

ZIPKIN_TYPE = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"
ZIPKIN_NAMES = ("envoy.tracers.zipkin", "envoy.zipkin")
B3 = (b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags", b"b3")


class ZipkinTracer(Tracer):
    TRACE_KIND = tracing.TRACE_B3
    SPAWN = True
    keep_empty_tags = False

    def __init__(
        self, tracing_cfg: Any, server: Any, stat_prefix: str, local_ip: str, path: str
    ) -> None:
        from envoy.config.trace.v3 import zipkin_pb2

        super().__init__(tracing_cfg, server, local_ip, path, egress=False)
        prov = tracing_cfg.provider
        z = zipkin_pb2.ZipkinConfig()
        if not prov.typed_config.Unpack(z):
            raise UnsupportedConfig(f"{path}.provider.typed_config: expected ZipkinConfig")
        if z.collector_endpoint_version != 1:  # HTTP_JSON
            raise UnsupportedConfig(
                f"{path}.provider.typed_config.collector_endpoint_version: only HTTP_JSON is "
                "implemented by sofamesh"
            )
        if not z.collector_cluster or not z.collector_endpoint:
            raise UnsupportedConfig(
                f"{path}.provider.typed_config: collector_cluster and collector_endpoint are "
                "required"
            )
        self.cluster = z.collector_cluster
        self.endpoint = z.collector_endpoint
        self.hostname = z.collector_hostname or z.collector_cluster
        self.shared = z.shared_span_context.value if z.HasField("shared_span_context") else True
        self.id128 = z.trace_id_128bit
        self.collector = HttpCollector(server, self.cluster)
        # a plain server span's JSON written in C (_core/zipkin_json); the rest here
        self.writer = ZipkinSpanWriter(local_ip, self.node_id, self.zone, self.max_path, self.tags)
        st = server.stats
        p = "tracing.zipkin."
        self.spans_sent = st.counter(p + "spans_sent")
        self.no_cluster = st.counter(p + "reports_skipped_no_cluster")
        self.reports_sent = st.counter(p + "reports_sent")
        self.reporter = SpanReporter(
            self.loop,
            self._export,
            {
                "sent": self.spans_sent,
                "timer_flushed": st.counter(p + "timer_flushed"),
                "dropped": st.counter(p + "reports_dropped"),
                "failed": st.counter(p + "reports_failed"),
            },
            "zipkin",
        )

    def server_name(self, s: Any, authority: str) -> str:
        return authority

    def finish(self, s: Any, span: Any, status: int) -> None:
        # tags from dynamic metadata: the Python path writes the span
        js = None if self.meta_tags else self.writer.server_span(s, span, status, self.egress)
        if js is None:
            super().finish(s, span, status)
        else:
            self.reporter.enqueue(js)

    def report(self, records: list[SpanRecord]) -> None:
        # queued as their JSON, as the C writer's spans are
        for r in records:
            self.reporter.enqueue(json.dumps(self._json(r), separators=(",", ":")).encode())

    def _json(self, r: SpanRecord) -> dict:
        span: dict[str, Any] = {
            "traceId": r.trace_id,
            "id": r.span_id,
            "name": r.name,
            "kind": r.kind,
            "timestamp": r.start_us,
            "duration": max(r.end_us - r.start_us, 0),
            "localEndpoint": {"ipv4": self.local_ip, "port": 0},
            # v2 keeps the end event: server send, or client receive (kind says the rest)
            "annotations": [{"timestamp": r.end_us, "value": "cr" if r.kind == "CLIENT" else "ss"}],
            "tags": r.tags,
        }
        if r.parent_id:
            span["parentId"] = r.parent_id
        if r.shared:
            span["shared"] = True
        return span

    async def _export(self, batch: list[bytes]) -> bool | None:
        body = b"[" + b",".join(batch) + b"]"
        try:
            status = await self.collector.post(
                self.endpoint, self.hostname, "application/json", body
            )
        except Exception:
            self.collector.drop()
            raise
        if status is None:
            _bump(self.no_cluster)
            return None
        if 200 <= status < 300:
            _bump(self.reports_sent)
            return True
        return False

    def close(self) -> None:
        self.reporter.close()
        self.collector.drop()


def _factory(
    tracing_cfg: Any, server: Any, stat_prefix: str, local_ip: str, path: str, egress: bool
) -> ZipkinTracer:
    return ZipkinTracer(tracing_cfg, server, stat_prefix, local_ip, path)


tracing.register_provider(ZIPKIN_TYPE, ZIPKIN_NAMES, _factory)
