# RPC tracing on the hot path (Bolt, Dubbo): a call's trace context read from its Bolt
# header map / Dubbo attachments (SOFATracer, B3, W3C conventions: docs/RPC_TRACING.md),
# the hop's spans, and the request re-encoded with the context updated for the upstream.
#
# Contract: rpc_proxy calls trace_start() for every call of a listener whose
# RpcProxyConfig.tracing is set (None: tracing off, nothing here runs). A call that gets a
# span carries it in RpcFrame.trace until it is answered: trace_request() gives the bytes
# to send upstream (context updated, the upstream's request id), trace_reply() ends it with
# the upstream's status, trace_fail() with the proxy's own failure reason (WHY_*). Sampled
# spans go to the Python tracer (proxy/rpc_tracing.py) through `report(span)`.

from sofamesh._core.stats cimport Counter
from sofamesh._core.upstream cimport Cluster, Host

cdef enum:
    # where a call's context came from / how it is forwarded
    CTX_NONE = 0        # none: a new trace (SOFATracer keys of the protocol injected)
    CTX_SOFA = 1        # Bolt: rpc_trace_context.sofaTraceId/sofaRpcId/samp header entries
    CTX_SOFA_NEW = 2    # Bolt: new_rpc_trace_context; Dubbo: dubbo.rpc.sofa.tracer (tcid=...)
    CTX_B3 = 3          # Dubbo attachments X-B3-TraceId/SpanId/ParentSpanId/Sampled
    CTX_W3C = 4         # Dubbo attachment traceparent


cdef class RpcTracing:
    """A listener's RPC tracing settings (built by proxy/rpc_tracing.py)."""
    cdef public object tracer           # proxy.rpc_tracing.RpcTracer: report(RpcSpan)
    cdef public int proto               # rpc_upstream P_BOLT / P_DUBBO
    cdef public long long ppm           # new traces sampled per million
    cdef public bint id128              # new trace ids of 128 bits
    cdef public bint shared             # B3: the hop's server span shares the caller's id
    cdef public Counter malformed       # calls whose context could not be read (ignored)
    cdef public Counter started         # new traces started here
    cdef public Counter continued       # calls that carried a context


cdef class RpcSpan:
    """One traced call through the proxy: a SERVER span (the call received; shares the
    caller's span id under the SOFATracer and B3 conventions) and a CLIENT span (the call
    sent upstream; its id is what the upstream receives)."""
    cdef public RpcTracing cfg
    cdef public int fmt                 # CTX_*
    cdef public bint sampled            # reported
    cdef public str trace_id            # as carried (SOFATracer: any string; B3/W3C: hex)
    cdef public str zipkin_trace        # the trace id as Zipkin reports it (16/32 hex)
    cdef public str rpc_id              # the caller's span / rpc id (None: a new trace)
    cdef public str server_id           # zipkin ids (16 hex)
    cdef public str server_parent       # None: a root span
    cdef public str client_rpc_id       # forwarded rpc / span id
    cdef public str client_id
    cdef public str parent_rpc_id       # SOFATracer: the caller's parent rpc id (pspid)
    cdef public bint shared
    cdef public long long start_us
    cdef public long long client_start_us  # 0: never sent upstream
    cdef public long long end_us
    cdef public str service
    cdef public str method
    cdef public str peer                # the client's address
    cdef public Cluster cluster         # the upstream cluster, once routed
    cdef public Host host
    cdef public int status              # the upstream's status (Bolt u16, Dubbo byte); -1
    cdef public int why                 # the proxy's failure reason (WHY_*); 0 none
    cdef public bint business_error     # Dubbo: the provider threw (OK status, flag 0/3)
    cdef public object src              # Dubbo: attachment entries found (list) | Bolt: None


cdef tuple dubbo_trace_keys()
cdef int trace_start(RpcTracing t, object f, object transport) except -1
cdef bytes trace_request(object f, unsigned long long nid, Cluster cl, Host h)
cdef int trace_reply(object f, object reply) except -1
cdef int trace_fail(object f, int why) except -1
cdef int trace_oneway(object f) except -1
