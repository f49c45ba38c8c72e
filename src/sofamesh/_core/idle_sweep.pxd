# A cluster's idle-connection sweep (HttpProtocolOptions.common_http_protocol_options
# .idle_timeout): one timer per cluster, armed only while idle connections exist.
#
# Contract: a pooled connection that goes idle stamps the time (`mono()`) and, unless it is
# already listed (its own `swept` flag), calls `add`. The sweep later calls the
# connection's `_idle_check(now, timeout)`, which closes it if it has been idle that long
# and answers its deadline while it stays idle, or -1 once it is busy, closed, or closed now
# (it then clears `swept` and is dropped). No timer per request: a busy keep-alive
# connection costs one clock read and one flag test per request.


cdef class IdleSweep:
    cdef readonly double timeout        # seconds, > 0
    cdef object timer                   # asyncio.TimerHandle | None
    cdef object loop                    # the event loop of the connections
    cdef list conns                     # list[UpstreamConn | H2Connection] gone idle
    cdef int add(self, object conn, object loop) except -1
