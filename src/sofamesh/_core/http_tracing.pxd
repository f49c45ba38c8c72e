# Trace span contexts made on the hot path, without Python (proxy/tracing.py reports the
# sampled ones): a request's B3 or W3C context continued or started, the sampling decision,
# the upstream request's trace headers, new 64-bit span ids.

from sofamesh._core.hcm_config cimport HcmConfig
from sofamesh._core.headers cimport HeaderMap
from sofamesh._core.http_stream cimport HttpStream, TraceCtx
from sofamesh._core.router cimport Route

cdef enum:
    TRACE_B3 = 0        # Zipkin: x-b3-* headers
    TRACE_W3C = 1       # OpenTelemetry: traceparent / tracestate
    TRACE_SW8 = 2       # SkyWalking: sw8, written by proxy/tracing_skywalking.py at _attach
    # TRACE_PY: the provider's own context, read and written in Python by the tracer's
    # new_context() -> a TraceCtx subclass, start_context(t, h) and context_headers(t) ->
    # ((name, value), ...) set on the upstream request (Datadog: proxy/tracing_datadog.py)
    TRACE_PY = 3

cdef bytes new_span_id()
# spare: the stream's context of its previous request, reused for B3 (Zipkin copies what it
# reports when the request ends, so nothing holds a B3 context after its request), or None
cdef TraceCtx start_trace(HeaderMap h, HcmConfig cfg, TraceCtx spare)
# the span's context onto the upstream request h; returns the request id, marked when the
# connection manager traced the request (rid: the request's x-request-id or None)
cdef bytes inject_trace(TraceCtx t, HeaderMap h, HcmConfig cfg, bytes rid)
# spawn_upstream_span and a retry: the retried attempt's upstream span is reported
# (tracer.attempt(s, t, status, reason)) and h gets the next attempt's new span id; returns
# the request id (as inject_trace)
cdef bytes trace_retry(TraceCtx t, HeaderMap h, HcmConfig cfg, object s, int status,
                       str reason, bytes rid)
# the route's decorator operation, once the request's route is known (before the filters):
# upstream on an egress request, back to the client on an ingress response, local replies
# included (Envoy's decorator propagation, with HCM tracing configured, whatever the tracer)
cdef int decorate(HttpStream s, HeaderMap h) except -1
