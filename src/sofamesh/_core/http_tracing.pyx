# Trace span contexts made on the hot path (HCM tracing); see http_tracing.pxd.

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdio cimport snprintf

from sofamesh._core.hcm_config cimport HcmConfig
from sofamesh._core.headers cimport HeaderMap
from sofamesh._core.http_common cimport wall_us
from sofamesh._core.http_stream cimport TraceCtx
from sofamesh._core.router cimport rng_next

cdef bytes new_span_id():
    cdef char buf[17]
    snprintf(buf, 17, "%016llx", rng_next())
    return PyBytes_FromStringAndSize(buf, 16)


cdef TraceCtx start_trace(HeaderMap h, HcmConfig cfg):
    """The span context of a request, as Envoy's Zipkin tracer makes it: an incoming B3
    context continued (shared_span_context: the caller's span id), else a new trace; the
    connection manager's sampling decision drawn for every request, x-b3-sampled honoured."""
    cdef TraceCtx t = TraceCtx.__new__(TraceCtx)
    cdef int i = h.find_from("x-b3-traceid", 12, 0)
    cdef int j = h.find_from("x-b3-spanid", 11, 0)
    cdef int k = h.find_from("x-b3-sampled", 12, 0)
    cdef int p
    cdef bytes v
    t.decision = <long long>(rng_next() % 1000000) < cfg.trace_ppm
    if k >= 0:
        v = h.value_at(k)
        t.sampled = v == b"1" or v == b"true" or v == b"d"
    else:
        t.sampled = t.decision
    if i >= 0 and j >= 0:
        t.trace_id = h.value_at(i)
        if cfg.trace_shared:
            t.span_id = h.value_at(j)
            t.shared = True
            p = h.find_from("x-b3-parentspanid", 17, 0)
            t.parent_id = h.value_at(p) if p >= 0 else None
        else:
            t.span_id = new_span_id()
            t.parent_id = h.value_at(j)
    else:
        t.span_id = new_span_id()
        t.trace_id = new_span_id() + t.span_id if cfg.trace_id128 else t.span_id
        t.shared = cfg.trace_shared
    t.start_us = wall_us()
    return t
