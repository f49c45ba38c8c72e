"""HCM `tracing`: what every provider shares, as Envoy 1.40's connection manager traces.

Per request (the connection manager's stream, HTTP/1.1 or HTTP/2; the span context is made
on the hot path, without Python: _core/http_tracing start_trace / inject_trace):
- the connection manager's sampling decision: x-client-trace-id under `client_sampling`,
  else `random_sampling` (Envoy's default 100 %), both times `overall_sampling`; a traced
  request's x-request-id is marked (Envoy's UUID extension: version nibble 9, or b when
  x-client-trace-id forced it);
- the provider continues the caller's context (B3 for Zipkin, W3C traceparent for
  OpenTelemetry) or starts a trace, and replaces it on the upstream request;
- `finish(s, span, status)` when the stream ends: a sampled span becomes a `SpanRecord`
  with Envoy's tags (node_id, zone, guid:x-request-id, http.url, http.method,
  downstream_cluster, user_agent, http.protocol, peer.address, guid:x-client-trace-id,
  grpc.*, request_size, response_size, component, upstream_cluster, http.status_code,
  response_flags, error, custom_tags), and with `spawn_upstream_span` a CLIENT child for
  the upstream request ("router <cluster> egress").
Records leave the hot path as reports do (`SpanReporter`): buffered, handed to the
provider's exporter in batches when 5 are waiting or every 5 s (Envoy's min_flush_spans and
flush_interval_ms), one export in flight, at most 10,000 waiting (later ones dropped and
counted). Tracing off costs one attribute test per request.

Providers register here (`register_provider`): envoy.tracers.zipkin (proxy/tracing_zipkin),
envoy.tracers.opentelemetry (proxy/tracing_otel).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.http_collector import HttpCollector  # noqa: F401 (the providers use it)

log = logging.getLogger("sofamesh.tracing")

MIN_FLUSH_SPANS = 5
FLUSH_INTERVAL_S = 5.0
MAX_PENDING = 10_000
TRACE_B3, TRACE_W3C = 0, 1  # _core/http_tracing.pxd
# gRPC codes that are the server's fault (OpenTelemetry's semantic conventions): Envoy tags
# the span `error` for these
GRPC_SERVER_ERRORS = frozenset({"2", "4", "12", "13", "14", "15"})
# response flags of an upstream reset -> Envoy's error.reason on the upstream span
RESET_REASONS = {
    "UF": "remote connection failure",
    "UR": "remote reset",
    "UC": "connection termination",
    "UO": "overflow",
}
# an upstream attempt's own response flag, from its reset reason (_core/http_router)
REASON_FLAGS = {
    "remote connection failure": "UF",
    "connection timeout": "UF",
    "remote reset": "UR",
    "remote refused stream reset": "UR",
    "protocol error": "UPE",
    "connection termination": "UC",
    "overflow": "UO",
}


def _pct(p: Any, default: float = 100.0) -> float:
    """A Percent field's value (p: None when the field is absent; {value: 0} is 0 %)."""
    return p.value if p is not None else default


def _bump(c: Any, n: int = 1) -> None:
    c.value += n
    c.used = True


def _metadata_tag(t: Any, path: str) -> tuple[str, str, tuple[str, ...], str]:
    """A CustomTag.metadata of kind request: (tag, namespace, keys, default_value)."""
    m = t.metadata
    if m.kind.WhichOneof("kind") != "request":
        raise UnsupportedConfig(
            f"{path}.kind: only request metadata is implemented by sofamesh (the stream's "
            "dynamic metadata)"
        )
    keys = []
    for j, seg in enumerate(m.metadata_key.path):
        if seg.WhichOneof("segment") != "key":
            raise UnsupportedConfig(f"{path}.metadata_key.path[{j}]: only key segments")
        keys.append(seg.key)
    return t.tag, m.metadata_key.key, tuple(keys), m.default_value


def dynamic_metadata(s: Any, namespace: str, keys: tuple[str, ...]) -> str | None:
    """A string value of the stream's dynamic metadata (what filters set: RBAC's shadow
    engine result and policy, proxy/xfcc has none), or None."""
    fs = s.filter_state
    v = fs.get(("metadata", namespace)) if fs else None
    for k in keys:
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return v if isinstance(v, str) else None


def _hdr(s: Any, name: bytes) -> str | None:
    v = s.get_request_header(name)
    return v.decode("latin-1") if v is not None else None


@dataclass(slots=True)
class SpanRecord:
    """One finished span, provider-neutral: what a reporter batches and an exporter encodes.
    Ids are lower-case hex; times are microseconds since the epoch; tags keep Envoy's order
    (a tag set twice keeps its first place, as Envoy's span overwrites in place)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str  # "SERVER" | "CLIENT"
    start_us: int
    end_us: int
    tags: dict[str, str] = field(default_factory=dict)
    tracestate: str = ""
    shared: bool = False  # Zipkin: the span id is the caller's


class SpanReporter:
    """The bounded buffer between the hot path and a collector. `enqueue(record)` never
    blocks: when MIN_FLUSH_SPANS wait (or a timer of FLUSH_INTERVAL_S fires) the batch goes
    to `export` (a coroutine: records -> True when the collector took them, False when it
    failed, None when skipped), one at a time;
    over MAX_PENDING waiting, records are dropped and counted. counters: sent (spans
    delivered), timer_flushed, dropped (spans), failed (exports that failed)."""

    def __init__(
        self,
        loop: Any,
        export: Callable[[list[Any]], Any],  # SpanRecords, or spans queued as JSON bytes
        counters: dict[str, Any],
        name: str,
    ) -> None:
        self.loop = loop
        self.export = export
        self.c = counters
        self.name = name
        self.pending: list[SpanRecord] = []
        self.timer: Any = None
        self.busy = False

    def enqueue(self, rec: Any) -> None:  # a SpanRecord, or a span's JSON bytes (Zipkin)
        if len(self.pending) >= MAX_PENDING:
            _bump(self.c["dropped"])
            return
        self.pending.append(rec)
        if len(self.pending) >= MIN_FLUSH_SPANS:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_later(FLUSH_INTERVAL_S, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.pending:
            _bump(self.c["timer_flushed"])
            self.flush()

    def flush(self) -> None:
        if self.busy or not self.pending:
            return
        batch, self.pending = self.pending, []
        self.busy = True
        self.loop.create_task(self._send(batch))

    async def _send(self, batch: list[SpanRecord]) -> None:
        try:
            ok = await self.export(batch)
        except Exception as e:  # noqa: BLE001 - a report never takes the proxy down
            log.warning("%s report of %d spans failed: %s", self.name, len(batch), e)
            ok = False
        finally:
            self.busy = False
        if ok is None:  # skipped (no collector host): the export counted it
            pass
        elif ok:
            _bump(self.c["sent"], len(batch))
        else:
            _bump(self.c["failed"])
            if "failed_spans" in self.c:
                _bump(self.c["failed_spans"], len(batch))
        if len(self.pending) >= MIN_FLUSH_SPANS:
            self.flush()
        elif self.pending and self.timer is None:
            self.timer = self.loop.call_later(FLUSH_INTERVAL_S, self._on_timer)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Tracer:
    """What the connection manager holds (HcmConfig.tracer): the sampling settings it copies
    onto the hot path (`configure`), and `finish` for sampled spans. A provider subclasses
    it: TRACE_KIND, `server_name`, `keep_empty_tags`, and `report(records)`."""

    TRACE_KIND = TRACE_B3
    SPAWN = False  # the provider implements spawn_upstream_span
    keep_empty_tags = True
    shared = False
    id128 = False
    stat_prefix = ""  # the connection manager's (set by build)
    outbound = False  # the listener is OUTBOUND, whatever the spans say (set by build)

    def __init__(self, tracing: Any, server: Any, local_ip: str, path: str, egress: bool):
        self.server = server
        self.loop = server._loop
        self.local_ip = local_ip
        self.egress = egress
        self.random = _pct(tracing.random_sampling if tracing.HasField("random_sampling") else None)
        self.overall = _pct(
            tracing.overall_sampling if tracing.HasField("overall_sampling") else None
        )
        self.client = _pct(tracing.client_sampling if tracing.HasField("client_sampling") else None)
        self.max_path = (
            tracing.max_path_tag_length.value if tracing.HasField("max_path_tag_length") else 256
        )
        self.spawn = tracing.spawn_upstream_span.value
        if self.spawn and not self.SPAWN:
            raise UnsupportedConfig(
                f"{path}.spawn_upstream_span: not implemented by sofamesh for this tracer"
            )
        node = getattr(getattr(server, "bootstrap", None), "node", None)
        self.node_id = node.id if node is not None else ""
        self.zone = node.locality.zone if node is not None else ""
        # (tag, value) literal ones, (tag, header name, default) request-header ones
        self.tags: list[tuple[str, str | None, str]] = []
        # (tag, metadata namespace, path of keys, default): request dynamic metadata ones
        self.meta_tags: list[tuple[str, str, tuple[str, ...], str]] = []
        for i, t in enumerate(tracing.custom_tags):
            kind = t.WhichOneof("type")
            if kind == "literal":
                self.tags.append((t.tag, None, t.literal.value))
            elif kind == "request_header":
                rh = t.request_header
                self.tags.append((t.tag, rh.name.lower(), rh.default_value))
            elif kind == "environment":
                v = os.environ.get(t.environment.name, t.environment.default_value)
                self.tags.append((t.tag, None, v))
            elif kind == "metadata":
                self.meta_tags.append(_metadata_tag(t, f"{path}.custom_tags[{i}].metadata"))
            else:
                raise UnsupportedConfig(
                    f"{path}.custom_tags[{i}].{kind}: not implemented by sofamesh"
                )

    # configuration onto the hot path ----------------------------------------------------
    @property
    def sample_ppm(self) -> int:
        """New traces sampled per million: random_sampling x overall_sampling."""
        return int(self.random * self.overall * 100)

    def configure(self, cfg: Any) -> None:
        """Copies the sampling settings onto the connection manager's HcmConfig."""
        cfg.trace_ppm = self.sample_ppm
        cfg.trace_client_ppm = int(self.client * self.overall * 100)
        cfg.trace_random_per10k = int(self.random * 100)
        cfg.trace_overall_per10k = int(self.overall * 100)
        cfg.trace_shared = self.shared
        cfg.trace_id128 = self.id128
        cfg.trace_kind = self.TRACE_KIND
        cfg.trace_spawn = self.spawn
        st = self.server.stats
        p = f"http.{self.stat_prefix}.tracing."
        counters = {}
        for name in (
            "random_sampling",
            "client_enabled",
            "not_traceable",
            "service_forced",
            "health_check",
        ):
            counters[name] = c = st.counter(p + name)
            c.used = True  # Envoy lists them from the start
        cfg.trace_random = counters["random_sampling"]
        cfg.trace_client = counters["client_enabled"]
        cfg.trace_not = counters["not_traceable"]

    # per sampled request ----------------------------------------------------------------
    def server_name(self, s: Any, authority: str) -> str:
        """The downstream span's name when the route has no decorator."""
        return "egress" if self.egress else "ingress"

    def finish(self, s: Any, span: Any, status: int) -> None:
        """A sampled request's spans (span: _core.http_stream.TraceCtx) to the reporter."""
        end = int(time.time() * 1_000_000)
        authority = (s.authority or b"").decode("latin-1")
        route = s.route
        name = route.decorator if route is not None and route.decorator else None
        tid = span.trace_id.decode("latin-1")
        sid = span.span_id.decode("latin-1")
        records = []
        if span.child_id is not None:
            records.append(
                SpanRecord(
                    tid,
                    span.child_id.decode("latin-1"),
                    sid,
                    f"router {s.upstream_cluster} egress",
                    "CLIENT",
                    span.child_us,
                    end,
                    self._upstream_tags(s, span),
                    (span.tracestate or b"").decode("latin-1"),
                )
            )
        records.append(
            SpanRecord(
                tid,
                sid,
                span.parent_id.decode("latin-1") if span.parent_id else None,
                name or self.server_name(s, authority),
                "CLIENT" if self.egress else "SERVER",
                span.start_us,
                end,
                self._server_tags(s, span, status, authority),
                (span.tracestate or b"").decode("latin-1"),
                bool(span.shared),
            )
        )
        self.report(records)

    def report(self, records: list[SpanRecord]) -> None:
        raise NotImplementedError

    def _server_tags(self, s: Any, span: Any, status: int, authority: str) -> dict[str, str]:
        path = (s.path or b"").decode("latin-1")
        tags = {
            "node_id": self.node_id,
            "zone": self.zone,
            "guid:x-request-id": self._request_id(s, span),
            "http.url": ("http://" + authority + path)[: self.max_path],
            "http.method": (s.method or b"").decode("latin-1"),
            "downstream_cluster": _hdr(s, b"x-envoy-downstream-service-cluster") or "-",
            "user_agent": _hdr(s, b"user-agent") or "-",
            "http.protocol": s.protocol,
            "peer.address": s.downstream_remote_address[0],
        }
        client = _hdr(s, b"x-client-trace-id")
        if client is not None:
            tags["guid:x-client-trace-id"] = client
        if s.grpc:  # Envoy's gRPC request tags
            tags["grpc.path"] = path
            tags["grpc.authority"] = authority
            tags["grpc.content_type"] = _hdr(s, b"content-type") or ""
            timeout = _hdr(s, b"grpc-timeout")
            if timeout is not None:
                tags["grpc.timeout"] = timeout
        tags["request_size"] = str(s.bytes_rx)
        tags["response_size"] = str(s.bytes_tx)
        tags["component"] = "proxy"
        self._common_tags(s, tags, status)
        if s.grpc:
            self._grpc_tags(span, tags)
        return self._finish_tags(tags)

    def attempt(self, s: Any, span: Any, status: int, reason: str | None) -> None:
        """spawn_upstream_span and a retry: the attempt that is retried ends its upstream
        span (status: its response's, 0 without one; reason: why it was reset), as Envoy
        ends one upstream span per attempt. The router then gives the next attempt a new
        span id (_core/http_tracing trace_retry)."""
        rec = SpanRecord(
            span.trace_id.decode("latin-1"),
            span.child_id.decode("latin-1"),
            span.span_id.decode("latin-1"),
            f"router {s.upstream_cluster} egress",
            "CLIENT",
            span.child_us,
            int(time.time() * 1_000_000),
            self._upstream_tags(s, span, (status, reason)),
            (span.tracestate or b"").decode("latin-1"),
        )
        self.report([rec])

    def _upstream_tags(
        self, s: Any, span: Any, attempt: tuple[int, str | None] | None = None
    ) -> dict[str, str]:
        tags: dict[str, str] = {}
        if span.attempt:  # Envoy numbers the attempts after the first
            tags["retry.count"] = str(span.attempt)
        if attempt is not None:  # a retried attempt: its own outcome, not the stream's
            responded, reason = attempt[0] > 0, attempt[1]
            if responded:  # Envoy cancels the attempt it retries
                tags["canceled"] = "true"
        else:
            if s.grpc:
                self._grpc_tags(span, tags)
            responded = s.service_ms >= 0
            reason = (span.up_reason or RESET_REASONS.get(s.resp_flags)) if not responded else None
        # the attempt's own flags: its reset's, else the stream's (URX is the stream's only)
        flags = (
            REASON_FLAGS.get(reason, "-")
            if reason
            else ("-" if attempt is not None else s.resp_flags)
        )
        if not responded and reason is not None:
            tags["error"] = "true"
            tags["error.reason"] = reason
        host = span.up_host
        cl = s.cluster
        if not responded and reason is not None or cl is None:
            tags["http.protocol"] = "-"
        else:
            h2 = cl.h2
            tags["http.protocol"] = (
                "HTTP/2" if h2 is not None and (not h2[3] or s.http_version == 20) else "HTTP/1.1"
            )
        if host is not None:
            tags["upstream_address"] = tags["peer.address"] = f"{host.address}:{host.port}"
        tags["component"] = "proxy"
        self._common_tags(s, tags, attempt[0] if attempt else s.resp_status if responded else 0)
        tags["response_flags"] = flags
        return self._finish_tags(tags)

    def _common_tags(self, s: Any, tags: dict[str, str], status: int) -> None:
        cluster = s.upstream_cluster
        if cluster is None and s.route is not None and s.route.cluster:
            # a filter answered before the router: Envoy's stream already has the route's
            # cluster (it routes before the filters run)
            cluster = s.route.cluster
        if cluster is not None:
            tags["upstream_cluster"] = cluster
            tags["upstream_cluster.name"] = cluster
        tags["http.status_code"] = str(status)
        tags["response_flags"] = s.resp_flags
        if status >= 500 or status == 0:
            tags["error"] = "true"
        for tag, header, v in self.tags:
            got = _hdr(s, header.encode()) if header is not None else None
            if got is not None:
                tags[tag] = got
            elif v:
                tags[tag] = v
        for tag, ns, keys, v in self.meta_tags:
            got = dynamic_metadata(s, ns, keys)
            if got is not None:
                tags[tag] = got
            elif v:
                tags[tag] = v

    @staticmethod
    def _grpc_tags(span: Any, tags: dict[str, str]) -> None:
        if span.grpc_status is not None:
            code = span.grpc_status.decode("latin-1")
            tags["grpc.status_code"] = code
            tags["grpc.message"] = (span.grpc_message or b"").decode("latin-1")
            if code in GRPC_SERVER_ERRORS:
                tags["error"] = "true"

    def _finish_tags(self, tags: dict[str, str]) -> dict[str, str]:
        if self.keep_empty_tags:
            return tags
        return {k: v for k, v in tags.items() if v}

    @staticmethod
    def _request_id(s: Any, span: Any) -> str:
        """The request's id; one the router did not set (a local reply) is made here,
        as Envoy's connection manager gives every request one, marked if traced."""
        rid = s.request_id or s.get_request_header(b"x-request-id")
        if not rid:
            rid = str(uuid.uuid4()).encode()
            if span.decision:
                rid = rid[:14] + (b"b" if span.client else b"9") + rid[15:]
            s.request_id = rid
        return rid.decode("latin-1")

    def close(self) -> None:
        pass


# provider registry -------------------------------------------------------------------------
# type URL or name -> factory(tracing, server, stat_prefix, local_ip, path, egress) -> Tracer
PROVIDERS: dict[str, Callable[..., Tracer]] = {}


def register_provider(type_url: str, names: tuple[str, ...], factory: Callable[..., Tracer]):
    """A tracer provider: its typed_config type URL (registered as an extension) and names."""
    from sofamesh.config.support import register_extension

    register_extension(type_url, factory.__module__)
    PROVIDERS[type_url] = factory
    for n in names:
        PROVIDERS[n] = factory


def build(
    tracing: Any,
    server: Any,
    stat_prefix: str,
    local_ip: str,
    path: str,
    egress: bool = False,
) -> Any:
    """The HCM's tracer, or None when neither `tracing` nor the bootstrap names a provider
    (Envoy then traces nothing). Without its own provider, the HCM uses the bootstrap's
    `tracing.http`, the server-wide default, as Envoy does. egress: the listener's
    traffic_direction is OUTBOUND (Envoy's egress operation: CLIENT spans named
    "egress")."""
    if not tracing.HasField("provider"):
        boot = getattr(server, "bootstrap", None)
        if boot is None or not boot.tracing.HasField("http"):
            return None
        own = type(tracing)()
        own.CopyFrom(tracing)
        own.provider.CopyFrom(boot.tracing.http)
        tracing = own
    prov = tracing.provider
    factory = PROVIDERS.get(prov.typed_config.type_url) or PROVIDERS.get(prov.name)
    if factory is None:
        raise UnsupportedConfig(
            f"{path}.provider: tracer {prov.name or prov.typed_config.type_url!r} is not "
            f"implemented by sofamesh (these are: {', '.join(sorted(_names()))})"
        )
    tracer = factory(tracing, server, stat_prefix, local_ip, path, egress)
    tracer.stat_prefix = stat_prefix
    tracer.outbound = egress  # the decorator's propagation follows the listener (_core)
    return tracer


def _names() -> set[str]:
    return {k for k in PROVIDERS if not k.startswith("type.googleapis.com/")}


# the providers register themselves (imported last: they subclass what is above)
from sofamesh.proxy import tracing_otel, tracing_zipkin

ZipkinTracer = tracing_zipkin.ZipkinTracer
OtelTracer = tracing_otel.OtelTracer
ZIPKIN_TYPE = tracing_zipkin.ZIPKIN_TYPE
OTEL_TYPE = tracing_otel.OTEL_TYPE
