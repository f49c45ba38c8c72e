# gRPC rules of the router (retry conditions, outlier outcomes, grpc-timeout); see
# http_grpc.pxd.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from sofamesh._core.headers cimport HeaderMap
from sofamesh._core.router cimport (
    Route, RETRY_GRPC_CANCELLED, RETRY_GRPC_DEADLINE_EXCEEDED, RETRY_GRPC_INTERNAL,
    RETRY_GRPC_RESOURCE_EXHAUSTED, RETRY_GRPC_UNAVAILABLE,
)


cdef int grpc_retry_bit(HeaderMap rh) except -1:
    """The retry_on bit of a trailers-only gRPC response's grpc-status, or 0."""
    cdef int i = rh.find_from("grpc-status", 11, 0)
    cdef bytes v
    if i < 0:
        return 0
    v = rh.value_at(i)
    if v == b"1":
        return RETRY_GRPC_CANCELLED
    if v == b"4":
        return RETRY_GRPC_DEADLINE_EXCEEDED
    if v == b"13":
        return RETRY_GRPC_INTERNAL
    if v == b"8":
        return RETRY_GRPC_RESOURCE_EXHAUSTED
    if v == b"14":
        return RETRY_GRPC_UNAVAILABLE
    return 0


# Envoy's Grpc::Utility::grpcToHttpStatus, by grpc-status 0..16 (others: 500)
cdef tuple GRPC_HTTP = (200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500,
                        503, 500, 401)


cdef int grpc_outcome(HeaderMap rh, int status) except -1:
    """The status outlier detection counts for a gRPC response head (Envoy's router): its
    grpc-status as an HTTP status when the head carries one (trailers-only), else `status`."""
    cdef int i = rh.find_from("grpc-status", 11, 0)
    cdef bytes v
    if i < 0:
        return status
    v = rh.value_at(i)
    if 1 <= PyBytes_GET_SIZE(v) <= 2 and v.isdigit() and int(v) <= 16:
        return <int>GRPC_HTTP[int(v)]
    return 500


cdef dict GRPC_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 0.001, b"u": 1e-6,
                        b"n": 1e-9}


cdef double grpc_timeout(HeaderMap h, Route route):
    """A gRPC request's timeout under max_stream_duration.grpc_timeout_header_max (Envoy's
    router): its grpc-timeout (1-8 digits and a unit) less the offset, capped by the max
    unless that is 0; absent or invalid: the max (0: none)."""
    cdef int i = h.find_from("grpc-timeout", 12, 0)
    cdef double t = 0
    cdef bytes v, digits, unit
    cdef Py_ssize_t n
    if i >= 0:
        v = h.value_at(i)
        n = PyBytes_GET_SIZE(v)
        digits = v[:n - 1]
        unit = v[n - 1:n]
        if 2 <= n <= 9 and digits.isdigit() and unit in GRPC_UNITS:
            t = int(digits) * GRPC_UNITS[unit]
            if route.grpc_timeout_offset > 0:
                t = t - route.grpc_timeout_offset if t > route.grpc_timeout_offset else 0
    if route.grpc_timeout_max > 0 and (t <= 0 or t > route.grpc_timeout_max):
        t = route.grpc_timeout_max
    return t


cdef long long grpc_timeout_ms(HeaderMap h):
    """A request's grpc-timeout in ms (Envoy's Grpc::Common::getGrpcTimeout: up to 8
    digits and a unit, u and n rounded up to whole ms), or -1 when absent or invalid."""
    cdef int i = h.find_from("grpc-timeout", 12, 0)
    cdef bytes v, digits
    cdef Py_ssize_t n
    cdef long long x
    cdef char unit
    if i < 0:
        return -1
    v = h.value_at(i)
    n = PyBytes_GET_SIZE(v)
    digits = v[:n - 1]
    if not 2 <= n <= 9 or not digits.isdigit():
        return -1
    x = int(digits)
    unit = PyBytes_AS_STRING(v)[n - 1]
    if unit == b'H':
        return x * 3600000
    if unit == b'M':
        return x * 60000
    if unit == b'S':
        return x * 1000
    if unit == b'm':
        return x
    if unit == b'u':
        return (x + 999) // 1000
    if unit == b'n':
        return (x + 999999) // 1000000
    return -1


cdef double grpc_route_timeout(HeaderMap h, Route route):
    """The router's timeout for a gRPC request on a route with max_grpc_timeout (Envoy's
    FilterUtility::finalTimeout): the grpc-timeout (absent: 0), less grpc_timeout_offset
    only when that leaves more than 0, capped by max_grpc_timeout unless it is 0; the
    route's own timeout does not apply. Seconds; 0: none."""
    cdef long long t = grpc_timeout_ms(h)
    cdef long long off = <long long>(route.grpc_offset * 1000 + 0.5)
    cdef long long cap = <long long>(route.max_grpc_timeout * 1000 + 0.5)
    if t < 0:
        t = 0
    if off > 0 and off < t:
        t -= off
    if cap > 0 and (t == 0 or t > cap):
        t = cap
    return t / 1000.0


cdef int set_grpc_timeout_headers(HeaderMap h, double timeout, double per_try) except -1:
    """What a try of a gRPC request under max_grpc_timeout tells the upstream (Envoy's
    FilterUtility::setTimeoutHeaders): the time left (or the per-try timeout when
    shorter) in x-envoy-expected-rq-timeout-ms, and the same in grpc-timeout, replacing
    the caller's (milliseconds; S, M, H once it takes more than 8 digits). No timeout:
    neither is touched."""
    cdef double t = timeout
    cdef long long ms
    cdef bytes unit = b"m"
    if per_try > 0 and (t <= 0 or per_try < t):
        t = per_try
    if t <= 0:
        return 0
    ms = <long long>(t * 1000)
    if ms < 1:
        ms = 1
    h.remove(b"x-envoy-expected-rq-timeout-ms")
    h.add(b"x-envoy-expected-rq-timeout-ms", b"%d" % ms)
    if ms >= 100000000:
        ms //= 1000
        unit = b"S"
        if ms >= 100000000:
            ms //= 60
            unit = b"M"
            if ms >= 100000000:
                ms //= 60
                unit = b"H"
    h.remove(b"grpc-timeout")
    h.add(b"grpc-timeout", b"%d" % ms + unit)
    return 0


# Envoy's HTTP status -> gRPC status for local replies to gRPC requests
# (Grpc::Utility::httpToGrpcStatus)
cdef dict GRPC_STATUS = {400: b"13", 401: b"16", 403: b"7", 404: b"12", 429: b"14",
                         502: b"14", 503: b"14", 504: b"14"}


cdef bytes grpc_local_status(int code):
    return GRPC_STATUS.get(code, b"2")


cdef bint is_grpc_request(HeaderMap h):
    cdef int i = h.find_from("content-type", 12, 0)
    return i >= 0 and h.value_at(i).startswith(b"application/grpc")


cdef bytes grpc_message_encode(bytes msg):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(msg)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(msg)
    cdef unsigned char c
    cdef list out
    for i in range(n):
        c = p[i]
        if c < 0x20 or c > 0x7e or c == 0x25:
            break
    else:
        return msg
    out = []
    for i in range(n):
        c = p[i]
        if c < 0x20 or c > 0x7e or c == 0x25:
            out.append(b"%%%02X" % c)
        else:
            out.append(msg[i:i + 1])
    return b"".join(out)
