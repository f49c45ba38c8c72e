# A cluster's idle-connection sweep (HttpProtocolOptions.common_http_protocol_options
# .idle_timeout): one timer per cluster, armed only while idle connections exist.
#
# Contract: a pooled connection that goes idle and is not listed yet (its own `swept` flag)
# stamps the time (`mono()`) and its request count, and calls `add`. The sweep, at least
# every eighth of the timeout while any is listed, calls the connection's
# `_idle_check(now, timeout)`: a connection whose request count moved since the last look
# was reused, and counts as idle from then; one idle that long is closed; it answers its
# deadline while it stays idle, or -1 once it is busy, closed, or closed now (it then
# clears `swept` and is dropped). No timer and no clock read per request: a busy
# keep-alive connection costs one flag test per request (PERF(benchmarks/instr_per_request.py)).


cdef inline double idle_deadline(double now, double timeout, int rq_count, int* seen_rq,
                                 double* idle_since) noexcept:
    """A listed idle connection's deadline, or 0.0 once it is past it (to be closed); one
    whose request count moved since the last look was reused, and is idle from `now`."""
    if rq_count != seen_rq[0]:
        seen_rq[0] = rq_count
        idle_since[0] = now
    if now - idle_since[0] < timeout:
        return idle_since[0] + timeout
    return 0.0


cdef class IdleSweep:
    cdef readonly double timeout        # seconds, > 0
    cdef object timer                   # asyncio.TimerHandle | None
    cdef object loop                    # the event loop of the connections
    cdef list conns                     # list[UpstreamConn | H2Connection] gone idle
    cdef int add(self, object conn, object loop) except -1
