# Trace span contexts made on the hot path (HCM tracing); see http_tracing.pxd.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

cdef extern from "strings.h" nogil:
    int strncasecmp(const char* a, const char* b, size_t n)

from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject

from sofamesh._core.codecs.http1 cimport Head, h1_hdr
from sofamesh._core.hcm_config cimport HcmConfig, replaces_request_id
from sofamesh._core.headers cimport HeaderMap, bytes_len, bytes_ptr
from sofamesh._core.http_common cimport wall_us
from sofamesh._core.http_stream cimport HttpStream, TraceCtx
from sofamesh._core.router cimport Route, rng_next

cdef const char* HEX_DIGITS = "0123456789abcdef"
DEF TRACEPARENT_LEN = 55    # 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>


cdef char HEX_PAIRS[512]        # byte b -> its two hex digits at 2b
cdef int _i
for _i in range(256):
    HEX_PAIRS[2 * _i] = HEX_DIGITS[_i >> 4]
    HEX_PAIRS[2 * _i + 1] = HEX_DIGITS[_i & 15]


cdef bytes new_span_id():
    # PERF(benchmarks/instr_per_request.py --tracing 1): snprintf cost ~1,000 instructions;
    # two digits a step from a table
    cdef char buf[16]
    cdef unsigned long long v = rng_next()
    cdef int i, b
    for i in range(14, -1, -2):
        b = <int>(v & 255)
        buf[i] = HEX_PAIRS[2 * b]
        buf[i + 1] = HEX_PAIRS[2 * b + 1]
        v >>= 8
    return PyBytes_FromStringAndSize(buf, 16)


cdef inline int _drop(HeaderMap h, const char* name, int n) except -1:
    """Removes header `name` if present (a scan, without remove()'s call when absent)."""
    if h.find_from(name, n, 0) >= 0:
        h.remove(name[:n])
    return 0


# the headers B3 tracing reads or replaces, found in one pass over the names (_scan)
cdef enum:
    T_TRACEID = 0       # x-b3-traceid
    T_SPANID = 1        # x-b3-spanid
    T_PARENT = 2        # x-b3-parentspanid
    T_SAMPLED = 3       # x-b3-sampled
    T_FLAGS = 4         # x-b3-flags
    T_B3 = 5            # b3
    T_FORCE = 6         # x-envoy-force-trace
    T_CLIENT = 7        # x-client-trace-id
    T_RID = 8           # x-request-id
    T_COUNT = 9

DEF B3_BITS = 63     # 1 << T_TRACEID .. 1 << T_B3

cdef tuple _B3_NAMES = (b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid",
                        b"x-b3-sampled", b"x-b3-flags", b"b3")


cdef inline int _trace_name(const char* p, int n) noexcept:
    """The T_* of a header name, -1 for any other name."""
    if n == 2:
        if strncasecmp(p, "b3", 2) == 0:
            return T_B3
        return -1
    if n < 10 or (p[0] | 32) != 120 or p[1] != 45:     # "x-": the rest start so
        return -1
    if n == 12 and (p[2] | 32) == 114:                  # 'r'
        if strncasecmp(p, "x-request-id", 12) == 0:
            return T_RID
    elif (p[2] | 32) == 98:                             # "x-b3-..."
        if n == 12:
            if strncasecmp(p, "x-b3-traceid", 12) == 0:
                return T_TRACEID
            if strncasecmp(p, "x-b3-sampled", 12) == 0:
                return T_SAMPLED
        elif n == 11:
            if strncasecmp(p, "x-b3-spanid", 11) == 0:
                return T_SPANID
        elif n == 17:
            if strncasecmp(p, "x-b3-parentspanid", 17) == 0:
                return T_PARENT
        elif n == 10:
            if strncasecmp(p, "x-b3-flags", 10) == 0:
                return T_FLAGS
    elif n == 17 and (p[2] | 32) == 99:                 # 'c'
        if strncasecmp(p, "x-client-trace-id", 17) == 0:
            return T_CLIENT
    elif n == 19 and (p[2] | 32) == 101:                # 'e'
        if strncasecmp(p, "x-envoy-force-trace", 19) == 0:
            return T_FORCE
    return -1


cdef int _scan(HeaderMap h, int* idx, int start, int end) noexcept:
    """idx[T_*]: the first live entry of each name in entries [start, end) (end -1: all
    from start), -1 when absent.
    PERF(benchmarks/instr_per_request.py --tracing 0): one pass over the names instead of
    ten find_from scans per request (~1,300 instructions); an HTTP/1 head's parsed lines
    and added entries read directly, not through the HeaderMap interface."""
    cdef int i, n, t, nhdr
    cdef const char* p
    cdef Head hh
    cdef h1_hdr* hd
    cdef list added
    cdef PyObject* o
    for t in range(T_COUNT):
        idx[t] = -1
    if end < 0:
        end = h.count()
    if type(h) is Head:
        hh = <Head>h
        nhdr = hh.nhdr if hh.nhdr < end else end
        for i in range(start, nhdr):
            hd = &hh.hdrs[i]
            if hd.skip:
                continue
            t = _trace_name(hh.base + hd.name_off, hd.name_len)
            if t >= 0 and idx[t] < 0:
                idx[t] = i
        nhdr = hh.nhdr
        added = hh.added
        if added is not None and end > nhdr:
            i = start - nhdr if start > nhdr else 0
            while 2 * i < PyList_GET_SIZE(added) and nhdr + i < end:
                o = PyList_GET_ITEM(added, 2 * i)
                if o != <PyObject*>None:
                    t = _trace_name(bytes_ptr(o), <int>bytes_len(o))
                    if t >= 0 and idx[t] < 0:
                        idx[t] = nhdr + i
                i += 1
        return 0
    for i in range(start, end):
        p = h.name_ptr(i, &n)
        if p == NULL:
            continue
        t = _trace_name(p, n)
        if t >= 0 and idx[t] < 0:
            idx[t] = i
    return 0


cdef long long _rid_bucket(bytes rid) noexcept:
    """Envoy's integer of a UUID request id: its first 8 characters as hex, % 10000;
    -1 when they are not 8 hex digits."""
    cdef const char* p = PyBytes_AS_STRING(rid)
    cdef unsigned long long v = 0
    cdef int i, d
    if PyBytes_GET_SIZE(rid) < 8:
        return -1
    for i in range(8):
        d = hex_val(p[i])
        if d < 0:
            return -1
        v = v * 16 + <unsigned long long>d
    return <long long>(v % 10000)


cdef inline int hex_val(char c) noexcept:
    # plain C arithmetic: Cython would make `c - b'0'` a Python operation
    if 48 <= c <= 57:           # 0-9
        return c - 48
    if 97 <= c <= 102:          # a-f
        return c - 87
    if 65 <= c <= 70:           # A-F
        return c - 55
    return -1


cdef int traceparent_flags(bytes v) noexcept:
    """The trace flags of a W3C traceparent as Envoy's extractor reads it (55 bytes, four
    dash-separated hex fields of 2, 32, 16 and 2 digits, ids not all zero); -1: unreadable."""
    cdef const char* p = PyBytes_AS_STRING(v)
    cdef Py_ssize_t i
    cdef bint tid_zero = True, pid_zero = True
    if PyBytes_GET_SIZE(v) != TRACEPARENT_LEN or p[2] != b'-' or p[35] != b'-' \
            or p[52] != b'-':
        return -1
    for i in range(TRACEPARENT_LEN):
        if i == 2 or i == 35 or i == 52:
            continue
        if hex_val(p[i]) < 0:
            return -1
        if p[i] != b'0':
            if 3 <= i < 35:
                tid_zero = False
            elif 36 <= i < 52:
                pid_zero = False
    if tid_zero or pid_zero:
        return -1
    return hex_val(p[53]) * 16 + hex_val(p[54])


cdef inline void _reset(TraceCtx t) noexcept:
    # (a field tested before it is cleared: most are still None after an unsampled request)
    t.trace_id = None
    t.span_id = None
    if t.parent_id is not None:
        t.parent_id = None
    t.sampled = t.decision = t.shared = t.client = False
    t.start_us = 0
    if t.grpc_status is not None:
        t.grpc_status = None
    if t.grpc_message is not None:
        t.grpc_message = None
    if t.tracestate is not None:
        t.tracestate = None
    if t.child_id is not None:
        t.child_id = None
    t.child_us = 0
    if t.up_host is not None:
        t.up_host = None
    t.attempt = 0
    if t.up_reason is not None:
        t.up_reason = None
    t.seen = t.hcount = t.hend = 0
    t.hmap = 0


cdef TraceCtx start_trace(HeaderMap h, HcmConfig cfg, TraceCtx spare):
    """The span context of a request. The connection manager's decision is drawn for every
    request: x-client-trace-id under client_sampling, else random_sampling (both times
    overall_sampling). Zipkin continues an incoming B3 context (shared_span_context: the
    caller's span id), x-b3-sampled honoured; OpenTelemetry continues a traceparent (a child
    of the caller's span, sampled when both the caller and the decision say so)."""
    cdef TraceCtx t
    if cfg.trace_kind == TRACE_PY:
        t = cfg.tracer.new_context()
    elif spare is not None and cfg.trace_kind == TRACE_B3:
        # PERF(benchmarks/instr_per_request.py --tracing 0): ~120 instructions less than
        # a new one (free-listed: field set-up and tear-down)
        t = spare
        _reset(t)
    else:
        t = TraceCtx.__new__(TraceCtx)
    cdef int idx[T_COUNT]
    cdef bytes rid
    cdef long long bucket
    cdef char mark = 0
    cdef int k
    _scan(h, idx, 0, -1)
    if cfg.trace_kind == TRACE_B3:
        # what inject_trace replaces, so that it scans only the entries added after this
        for k in range(T_FORCE + 1):
            if idx[k] >= 0:
                t.seen |= 1 << k
        t.hcount = h.count()
        t.hmap = <size_t><void*>h
    if idx[T_RID] >= 0 and not replaces_request_id(cfg):
        # Envoy's decision from the caller's request id (kept, not regenerated): an id
        # another proxy marked traced stays traced; else its value decides, so that every
        # proxy a request passes makes the same decision; an id that is not hex, never
        rid = h.value_at(idx[T_RID])
        bucket = _rid_bucket(rid)
        if PyBytes_GET_SIZE(rid) == 36:
            mark = PyBytes_AS_STRING(rid)[14]
            if mark != b'9' and mark != b'a' and mark != b'b':
                mark = 0
        if bucket < 0:
            t.decision = mark != 0
            t.client = mark == b'b'
        elif mark:
            t.decision = bucket < cfg.trace_overall_per10k
            t.client = mark == b'b'
        elif cfg.trace_client_ppm > 0 and idx[T_CLIENT] >= 0 and \
                <long long>(rng_next() % 1000000) < cfg.trace_client_ppm:
            t.decision = True
            t.client = True
        else:
            t.decision = bucket < cfg.trace_random_per10k and \
                bucket < cfg.trace_overall_per10k
    elif cfg.trace_client_ppm > 0 and idx[T_CLIENT] >= 0 and \
            <long long>(rng_next() % 1000000) < cfg.trace_client_ppm:
        t.decision = True
        t.client = True
    else:
        t.decision = <long long>(rng_next() % 1000000) < cfg.trace_ppm
    if cfg.trace_random is not None:
        (cfg.trace_client if t.client else cfg.trace_random if t.decision
         else cfg.trace_not).inc()
    if cfg.trace_kind == TRACE_B3:
        start_b3(t, h, cfg, idx)
        if t.sampled:       # (an unreported span needs no time)
            t.start_us = wall_us()
        return t
    t.start_us = wall_us()
    if cfg.trace_kind == TRACE_W3C:
        start_w3c(t, h)
    elif cfg.trace_kind == TRACE_SW8:
        start_sw8(t, h)
    else:
        cfg.tracer.start_context(t, h)      # TRACE_PY; never raises (the provider's contract)
    return t


cdef int start_sw8(TraceCtx t, HeaderMap h) except -1:
    """SkyWalking traces a request that carries a context (sw8) whatever the decision, and
    starts one when the decision says so; else Envoy's null span. The caller's sw8 is kept
    (in tracestate) for proxy/tracing_skywalking.py, which makes the ids and writes the
    upstream sw8 once the upstream host is known."""
    cdef int i = h.find_from("sw8", 3, 0)
    t.span_id = b"0"
    if i >= 0:
        t.tracestate = h.value_at(i)
    elif not t.decision:
        t.trace_id = None
        t.sampled = False
        return 0
    t.trace_id = b""
    t.sampled = True
    return 0


cdef int start_b3(TraceCtx t, HeaderMap h, HcmConfig cfg, int* idx) except -1:
    cdef int i = idx[T_TRACEID]
    cdef int j = idx[T_SPANID]
    cdef int k = idx[T_SAMPLED]
    cdef int p
    cdef bytes v
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
            p = idx[T_PARENT]
            t.parent_id = h.value_at(p) if p >= 0 else None
        else:
            t.span_id = new_span_id()
            t.parent_id = h.value_at(j)
    else:
        t.span_id = new_span_id()
        t.trace_id = new_span_id() + t.span_id if cfg.trace_id128 else t.span_id
        t.shared = cfg.trace_shared
    return 0


cdef int start_w3c(TraceCtx t, HeaderMap h) except -1:
    cdef int i = h.find_from("traceparent", 11, 0)
    cdef int flags
    cdef bytes v
    t.span_id = new_span_id()
    if i < 0:
        t.trace_id = new_span_id() + new_span_id()
        t.sampled = t.decision
        return 0
    v = h.value_at(i)
    flags = traceparent_flags(v)
    if flags < 0:
        t.trace_id = None       # Envoy's null span
        t.sampled = False
        return 0
    t.trace_id = v[3:35].lower()
    t.parent_id = v[36:52].lower()
    t.sampled = t.decision and (flags & 1)
    t.tracestate = h.get_all(b"tracestate")
    return 0


cdef bytes inject_trace(TraceCtx t, HeaderMap h, HcmConfig cfg, bytes rid):
    cdef bytes sid
    cdef char mark
    cdef bint marked
    if cfg.trace_spawn and t.trace_id is not None:
        t.child_id = new_span_id()
        t.child_us = wall_us()
        sid = t.child_id
    else:
        sid = t.span_id
    cdef int idx[T_COUNT]
    cdef int k
    # Envoy honours x-envoy-force-trace only from internal requests, and with no
    # internal_address_config (1.40's default) none is: the header is dropped as external
    cdef int seen = 0
    if cfg.trace_kind == TRACE_B3:
        if t.hmap == <size_t><void*>h:
            # the names start_trace saw, and any added since by filters (the router's own
            # additions before this are never trace headers); a retry's second injection
            # scans to the end (the first one's headers are replaced)
            _scan(h, idx, t.hcount, t.hend - 1 if t.hend > 0 else -1)
            t.hend = 0
            seen = t.seen
        else:
            _scan(h, idx, 0, -1)
        for k in range(T_FORCE + 1):
            if idx[k] >= 0:
                seen |= 1 << k
        if seen & (1 << T_FORCE):
            h.remove(b"x-envoy-force-trace")
    else:
        _drop(h, "x-envoy-force-trace", 19)
    if cfg.trace_kind == TRACE_SW8:
        pass    # sw8 names the upstream host: written when it is chosen (RouterStream._attach)
    elif cfg.trace_kind == TRACE_PY:
        if t.trace_id is not None:
            for name, value in cfg.tracer.context_headers(t):
                h.remove(name)
                h.add(name, value)
    elif cfg.trace_kind == TRACE_W3C:
        if t.trace_id is not None:
            h.remove(b"traceparent")
            h.remove(b"tracestate")
            h.add(b"traceparent", b"00-" + t.trace_id + b"-" + sid +
                  (b"-01" if t.sampled else b"-00"))
            h.add(b"tracestate", t.tracestate if t.tracestate is not None else b"")
    else:
        # remove() only the B3 headers a caller sent (_scan found them)
        if seen & B3_BITS:
            for k in range(T_B3 + 1):
                if seen & (1 << k):
                    h.remove(<bytes>_B3_NAMES[k])
        h.add(b"x-b3-traceid", t.trace_id)
        h.add(b"x-b3-spanid", sid)
        if t.child_id is not None:
            h.add(b"x-b3-parentspanid", t.span_id)
        elif t.parent_id is not None:
            h.add(b"x-b3-parentspanid", t.parent_id)
        h.add(b"x-b3-sampled", b"1" if t.sampled else b"0")
    if rid is not None and PyBytes_GET_SIZE(rid) == 36:
        # Envoy's UUID request id carries the trace reason in its version nibble: a traced
        # request's id keeps a caller's mark (9, a, b) or gets 9 (b: client-forced); an
        # untraced one loses a caller's mark (4)
        mark = PyBytes_AS_STRING(rid)[14]
        marked = mark == b'9' or mark == b'a' or mark == b'b'
        if t.decision and not marked:
            rid = rid[:14] + (b"b" if t.client else b"9") + rid[15:]
        elif not t.decision and marked:
            rid = rid[:14] + b"4" + rid[15:]
        else:
            return rid
        h.remove(b"x-request-id")
        h.add(b"x-request-id", rid)
    return rid


cdef bytes trace_retry(TraceCtx t, HeaderMap h, HcmConfig cfg, object s, int status,
                       str reason, bytes rid):
    if t.child_id is None:
        return rid
    if t.sampled:
        try:
            cfg.tracer.attempt(s, t, status, reason)
        except Exception:
            pass    # a report never fails the request
    t.attempt += 1
    t.up_reason = None
    return inject_trace(t, h, cfg, rid)


cdef int decorate(HttpStream s, HeaderMap h) except -1:
    """Envoy's decorator propagation when the HCM has tracing configured (HcmConfig.decorate),
    whatever the tracer, traced or not: an egress request carries the route's decorator
    operation upstream (x-envoy-decorator-operation); an ingress response, a local reply
    too, carries it back to the client, unless the request named its own operation (that
    header is not passed upstream)."""
    cdef Route route = s.route
    if route is None or route.decorator is None or not s.cfg.decorate:
        return 0
    cdef bytes op = route.decorator.encode()
    if s.cfg.decorate == 2:
        h.remove(b"x-envoy-decorator-operation")
        h.add(b"x-envoy-decorator-operation", op)
    elif h.find_from("x-envoy-decorator-operation", 27, 0) >= 0:
        h.remove(b"x-envoy-decorator-operation")
    else:
        if s.resp_add_extra is None:
            s.resp_add_extra = []
        s.resp_add_extra.append(b"x-envoy-decorator-operation")
        s.resp_add_extra.append(op)
    return 0
