# Connection pools behind one interface (Envoy's ConnectionPool::Instance), and what a
# pooled connection tells the stream it serves (the router's upstream request).
#
# Contract: the router asks `ConnPool.new_stream(host, cb)` for an upstream stream; the pool
# either calls `cb._attach(conn)` at once (an idle connection, or a new one that is still
# connecting), queues `cb` until a connection frees up, or returns POOL_OVERFLOW (circuit
# breaker: the caller fails the request). A `PoolConn` is one upstream stream: HTTP/1 gives
# the whole connection to it, HTTP/2 will give one stream of a multiplexed connection.
# Once the response is complete the stream calls `release()` (keep-alive) or `abort()`.
# Pools and connections never reach into the stream: they only call UpstreamCallbacks.
#
# Both directions carry a protocol-neutral message: a HeaderMap, decoded body pieces with
# end_stream, and trailers (which end the stream). The connection's codec frames them
# (HTTP/1: content-length, chunked, or until close) and buffers what it encodes before it
# is connected. An upgraded HTTP/1 exchange (101) then carries raw bytes both ways:
# `write` and `_write`.
#
# The pool behind a cluster is the one for its protocol (`pool_for`): HTTP/1.1 gives a
# request a whole connection, HTTP/2 (http2_upstream) a stream of a shared connection.

from sofamesh._core.headers cimport HeaderMap, HeaderList
from sofamesh._core.upstream cimport Cluster, Host

cdef class UpstreamCallbacks

cdef enum:
    POOL_ATTACHED = 0       # cb._attach(conn) was called
    POOL_QUEUED = 1         # cb waits for a connection (cancel() to give up)
    POOL_OVERFLOW = 2       # max_pending reached: fail the request


cdef class PoolConn:
    cdef Cluster cluster
    cdef Host host
    cdef object transport           # asyncio.Transport | None
    # the transport's write and is_reading, bound while connected
    # (PERF(benchmarks/instr_per_request.py): no method lookup by name per request)
    cdef object t_write
    cdef object t_reading
    cdef UpstreamCallbacks ds       # the stream served, or None
    cdef bint connected
    cdef bint closed
    cdef bint reusable
    cdef int start(self, UpstreamCallbacks ds, bint head_req, bint upgrade) except -1
    cdef int encode_headers(self, HeaderMap h, bint end_stream) except -1
    cdef int encode_data(self, bytes data, bint end_stream) except -1
    cdef int encode_trailers(self, HeaderMap trailers) except -1
    cdef int write(self, bytes data) except -1      # raw bytes of an upgraded tunnel
    cdef int release(self) except -1
    cdef int abort(self) except -1
    # the downstream cannot take more of the response: stop reading it (True) / read again
    cdef int read_pause(self, bint paused) except -1


cdef class UpstreamCallbacks:
    # pool
    cdef bint _wants_connection(self)
    cdef int _attach(self, PoolConn c) except -1
    cdef int _fail(self, int kind, PoolConn c) except -1
    # response decoding
    cdef int _upstream_read(self) except -1       # bytes arrived (stream idle timer)
    cdef int _after_upstream_read(self) except -1
    # False: the stream gave the connection up (a retry): stop decoding this response
    cdef bint _on_upstream_head(self, PoolConn c, HeaderMap rh, bint end_stream) except -1
    cdef int _on_upstream_data(self, bytes data, bint end_stream) except -1
    cdef int _on_upstream_trailers(self, HeaderList trailers) except -1   # ends the response
    cdef int _on_upstream_complete(self, PoolConn c) except -1    # after the end: release c
    cdef int _reset(self) except -1               # the response broke off: reset the stream
    cdef int _write(self, bytes data) except -1   # tunnel bytes for the downstream
    cdef int _tunnel_closed(self) except -1
    # flow control
    cdef int _pause(self, int reason) except -1
    cdef int _resume(self, int reason) except -1


cdef class ConnPool:
    cdef int new_stream(self, Cluster cl, Host host, UpstreamCallbacks cb) except -1
    cdef int _queue(self, Cluster cl, Host host, UpstreamCallbacks cb) except -1
    cdef int cancel(self, Cluster cl, Host host, UpstreamCallbacks cb) except -1


cdef class Mirror(UpstreamCallbacks):
    # a mirrored request (route request_mirror_policies), fire and forget: the router feeds
    # it the request as it goes (http1_upstream.ShadowConn: its own HTTP/1.1 connection;
    # http2_upstream.H2Shadow: a stream of the mirror cluster's HTTP/2 pool)
    cdef readonly bint closed
    cdef Cluster cluster
    cdef Host host
    cdef bint in_rq                             # counted in the cluster's active requests
    cdef double t0
    # the request counted and its host picked (None: refused by the circuit breaker or no
    # healthy host, counted, the mirror closed); then counted active on it; released once
    cdef Host _rq_pick(self, Cluster cluster)
    cdef int _rq_start(self, Host host) except -1
    cdef int _rq_over(self, bint ok) except -1
    cdef int send_data(self, bytes data, bint end_stream) except -1
    cdef int send_trailers(self, HeaderList trailers) except -1
    cdef int reset(self) except -1              # give up on it (too slow, client gone)
