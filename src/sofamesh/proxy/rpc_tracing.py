"""RPC tracing (`sofamesh.filters.rpc.tracing`): Bolt and Dubbo hops in the same traces as
the HTTP ones, which Envoy's dubbo_proxy cannot do.

Config: an entry of BoltProxy `bolt_filters` / DubboProxy `dubbo_filters` (before the
router) named `sofamesh.filters.rpc.tracing` whose `config` is Envoy's HCM tracing message
(`type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3
.HttpConnectionManager.Tracing`): the same `provider` (envoy.tracers.zipkin, or any provider
proxy/tracing registers), `random_sampling` and `overall_sampling` as an HCM's. See
docs/RPC_TRACING.md for the conventions read and written and their sources.

Per call (_core/rpc_tracing, on the hot path): the caller's context is read from the Bolt
header map (SOFARPC's `rpc_trace_context.*` entries or `new_rpc_trace_context`) or the
Dubbo attachments (SOFATracer's `dubbo.rpc.sofa.tracer`, B3 `X-B3-*`, W3C `traceparent`);
a call without one starts a trace when sampled; a malformed one is counted
(`<bolt|dubbo>.<stat_prefix>.tracing.context_malformed`) and treated as none. The call goes
upstream with the context updated (the proxy's own span id), re-encoded; a call with no
context that is not sampled goes as it came. A sampled call gives two spans: SERVER (the
call received; under SOFATracer and B3 it shares the caller's span id) and CLIENT (the call
sent upstream, the upstream's parent), as Envoy's HCM does with spawn_upstream_span.
"""

from __future__ import annotations

from typing import Any

from sofamesh.config.support import register_extension
from sofamesh.proxy.errors import UnsupportedConfig

FILTER_NAME = "sofamesh.filters.rpc.tracing"
TRACING_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager.Tracing"
)
# rpc_upstream WHY_* -> Envoy's response flag for the same condition
RESPONSE_FLAGS = {
    1: "NR",
    2: "NC",
    3: "UH",
    4: "UT",
    5: "UC",
    6: "UF",
    7: "UPE",
    8: "DO",
    9: "RBAC",
    10: "RL",
}
CONTEXTS = {0: "new", 1: "sofatracer", 2: "sofatracer", 3: "b3", 4: "w3c"}


class RpcTracer:
    """Turns a finished RpcSpan (_core/rpc_tracing) into the provider's span records."""

    def __init__(self, tracer: Any, protocol: str) -> None:
        from sofamesh.proxy.tracing import SpanRecord

        self.tracer = tracer
        self.protocol = protocol
        self.record = SpanRecord

    def report(self, s: Any) -> None:
        name = f"{s.service or '-'}#{s.method or '-'}"
        cluster = s.cluster.name if s.cluster is not None else None
        error = bool(s.why) or s.business_error
        if s.status >= 0:
            error = error or s.status != (0 if self.protocol == "bolt" else 20)
        common = {"component": "proxy", "rpc.protocol": self.protocol}
        if s.service:
            common["rpc.service"] = s.service
        if s.method:
            common["rpc.method"] = s.method
        if cluster is not None:
            common["upstream_cluster"] = cluster
        if s.status >= 0:
            common["rpc.status_code"] = str(s.status)
        if s.why:
            common["response_flags"] = RESPONSE_FLAGS.get(s.why, "-")
        if error:
            common["error"] = "true"
        records = []
        if s.client_start_us:
            tags = dict(common)
            if s.host is not None:
                tags["upstream_address"] = f"{s.host.address}:{s.host.port}"
            if s.client_rpc_id != s.client_id:
                tags["rpc.id"] = s.client_rpc_id  # SOFATracer's id (Zipkin's is its hash)
            records.append(
                self.record(
                    s.zipkin_trace,
                    s.client_id,
                    s.server_id,
                    name,
                    "CLIENT",
                    s.client_start_us,
                    s.end_us,
                    tags,
                )
            )
        tags = {**common, "rpc.trace_context": CONTEXTS.get(s.fmt, "-")}
        if s.peer:
            tags["peer.address"] = s.peer
        if s.rpc_id is not None and s.rpc_id != s.server_id:
            tags["rpc.id"] = s.rpc_id
        records.append(
            self.record(
                s.zipkin_trace,
                s.server_id,
                s.server_parent,
                name,
                "SERVER",
                s.start_us,
                s.end_us,
                tags,
                shared=bool(s.shared),
            )
        )
        self.tracer.report(records)


def build(filters: Any, ctx: dict, proto: int, stat_prefix: str, path: str) -> Any:
    """The RpcTracing of a BoltProxy `bolt_filters` / DubboProxy `dubbo_filters` list, or
    None (no tracing entry, or one without a provider: nothing is traced, as in Envoy)."""
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    from sofamesh._core.rpc_tracing import RpcTracing
    from sofamesh.filters.network.http_connection_manager import local_ip
    from sofamesh.proxy import tracing

    found = None
    for i, f in enumerate(filters):
        if f.name != FILTER_NAME:
            continue
        fpath = f"{path}[{i}].config"
        if found is not None:
            raise UnsupportedConfig(f"{path}[{i}]: one {FILTER_NAME} per proxy is supported")
        msg = hcm_pb2.HttpConnectionManager.Tracing()
        if not f.config.Unpack(msg):
            raise UnsupportedConfig(f"{fpath}: expected {TRACING_TYPE}")
        if msg.HasField("client_sampling"):
            raise UnsupportedConfig(f"{fpath}.client_sampling: RPC calls have no client trace id")
        if msg.spawn_upstream_span.value:
            raise UnsupportedConfig(
                f"{fpath}.spawn_upstream_span: an RPC hop always has its upstream span"
            )
        if msg.custom_tags:
            raise UnsupportedConfig(f"{fpath}.custom_tags: not implemented for RPC by sofamesh")
        tracer = tracing.build(msg, ctx["server"], stat_prefix, local_ip(), fpath)
        if tracer is None:
            found = None
            continue
        if tracer.TRACE_KIND not in (tracing.TRACE_B3, tracing.TRACE_W3C):
            # SkyWalking and Datadog write their own spans, not SpanRecords
            tracer.close()
            raise UnsupportedConfig(
                f"{fpath}.provider: {msg.provider.name or msg.provider.typed_config.type_url} "
                "is not implemented for RPC by sofamesh (envoy.tracers.zipkin and "
                "envoy.tracers.opentelemetry are)"
            )
        kind = "bolt" if proto == 1 else "dubbo"
        st = ctx["stats"]
        p = f"{kind}.{stat_prefix}.tracing."
        found = RpcTracing(
            RpcTracer(tracer, kind),
            proto,
            tracer.sample_ppm,
            bool(tracer.id128),
            bool(tracer.shared),
            st.counter(p + "context_malformed"),
            st.counter(p + "trace_started"),
            st.counter(p + "context_continued"),
        )
    return found


# The filter's config is this message in an Any that config validation walks.
register_extension(TRACING_TYPE, __name__)
