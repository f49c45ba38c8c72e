# Shared by the HTTP stream layer: clock, enums, reason phrases, date and request ids.

from cpython.bytes cimport PyBytes_FromStringAndSize

from sofamesh._core.codecs.http1 cimport Head

cdef extern from "time.h" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk, timespec* ts)
    clockid_t CLOCK_MONOTONIC
    clockid_t CLOCK_REALTIME


cdef inline double mono() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline bytes int_bytes(long long v):
    """str(v).encode() without the formatter: header values such as
    x-envoy-upstream-service-time on every response (PERF(benchmarks/instr_per_request.py):
    PyBytes_FromFormat cost ~900 instructions a call, this ~60)."""
    cdef char buf[24]
    cdef int i = 24
    cdef unsigned long long u = <unsigned long long>(-v) if v < 0 else <unsigned long long>v
    while True:
        i -= 1
        buf[i] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if v < 0:
        i -= 1
        buf[i] = 45
    return PyBytes_FromStringAndSize(buf + i, 24 - i)


cdef inline long long wall_us() noexcept:
    """Microseconds since the epoch (trace span timestamps)."""
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <long long>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


# stream states (of the downstream request/response exchange)
cdef enum:
    DS_HEAD = 0         # waiting for a request head
    DS_BODY = 1         # request body streaming upstream
    DS_WAIT = 2         # request complete, response in progress
    DS_DRAIN = 3        # discarding a request body after a local reply
    DS_TUNNEL = 4       # upgraded: raw bytes both ways
    DS_CLOSED = 5

# why an upstream request failed (ConnPool -> UpstreamCallbacks._fail)
cdef enum:
    FAIL_NO_HEALTHY = 0
    FAIL_OVERFLOW = 1
    FAIL_CONNECT = 2
    FAIL_CONNECT_TIMEOUT = 3
    FAIL_RESET = 4
    FAIL_PROTOCOL = 5
    FAIL_TIMEOUT = 6
    FAIL_REMOTE_RESET = 7       # an HTTP/2 upstream reset the stream (RST_STREAM)
    FAIL_REFUSED = 8            # ... with REFUSED_STREAM, or above its GOAWAY's last id

# server_header_transformation (Envoy's enum values)
cdef enum:
    SERVER_OVERWRITE = 0
    SERVER_APPEND_IF_ABSENT = 1
    SERVER_PASS_THROUGH = 2

# why downstream reading is paused (bits)
cdef enum:
    PAUSE_UPSTREAM_FULL = 1     # upstream write buffer above high water
    PAUSE_PIPELINE = 2          # too many pipelined bytes buffered
    PAUSE_QUEUE = 4             # body queued while the upstream connects


cdef bytes date_value()               # the date header's value, cached per second
cdef bytes uuid4()
cdef bint needs_normalizing(Head h, bint merge) noexcept
cdef bytes fmt_address(host, port)
cdef bytes strip_port(bytes host)
