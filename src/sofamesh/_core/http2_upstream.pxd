# HTTP/2 upstream (conn_pool.pxd interfaces): multiplexed connections per host
# (Host.h2conns), each request one stream of one of them.
#
# Contract: `Http2ConnPool.new_stream` attaches the caller to a stream of a connection
# with room (below the peer's SETTINGS_MAX_CONCURRENT_STREAMS, the cluster's
# http2_protocol_options.max_concurrent_streams and max_requests_per_connection), opens a
# new connection below the circuit breaker's max_connections, or queues the caller on
# Host.waiting. A stream's request is encoded as soon as it is given (the sans-IO codec
# keeps the bytes until the connection is up). Inbound DATA is acknowledged (window given
# back) as the downstream takes it: `read_pause(True)` holds the acknowledgements of that
# stream only, so one slow client never stalls the other streams of the connection.

from sofamesh._core.codecs.http2 cimport Connection
from sofamesh._core.codecs.http2_events cimport Data
from sofamesh._core.conn_pool cimport PoolConn, UpstreamCallbacks, ConnPool, Mirror
from sofamesh._core.headers cimport HeaderMap, HeaderList
from sofamesh._core.upstream cimport Cluster, Host


cdef class Http2ConnPool(ConnPool):
    cdef object loop


cdef class H2Connection:
    cdef Cluster cluster
    cdef Host host
    cdef object loop
    cdef object transport
    cdef object task                    # the connect task
    cdef Connection codec
    cdef dict streams                   # dict[int, H2UpStream]: open streams by id
    cdef bint connected
    cdef bint closed
    cdef bint draining                  # no new streams (GOAWAY either way, host removed)
    cdef bint write_paused
    cdef int rq_count                   # streams opened on this connection
    cdef int max_streams                # the cluster's max_concurrent_streams
    cdef double idle_since              # when it went idle (as the sweep knows it)
    cdef int seen_rq                    # rq_count at the sweep's last look
    cdef bint swept                     # listed by the cluster's IdleSweep
    cdef object max_timer               # asyncio.TimerHandle | None: max_connection_duration
    cdef bint local_close               # closed by us (idle, max duration): destroy_local
    cdef bint can_take(self)
    cdef H2UpStream open_stream(self)
    cdef bint flush_pending             # a write of what the codec queued is scheduled
    cdef int flush(self) except -1      # schedule the write (once per loop turn)
    cdef int write_now(self) except -1
    cdef int stream_done(self, H2UpStream s) except -1
    cdef int _dispatch(self, list events) except -1
    cdef int _tunnel_data(self, H2UpStream s, UpstreamCallbacks d, Data ev) except -1
    cdef int _fail_all(self, int kind) except -1
    cdef int _leave_pool(self) except -1
    cdef int _serve_waiting(self) except -1


cdef class H2UpStream(PoolConn):
    cdef H2Connection conn
    cdef unsigned int sid               # 0 until the request headers are sent
    cdef bint head_req
    cdef bint got_head                  # the final response headers arrived
    cdef bint sent_end                  # our request ended
    cdef bint recv_end                  # the response ended
    cdef bint done                      # released, aborted or reset: the stream is over
    cdef bint paused                    # read_pause: acknowledgements held
    cdef bint upstream_full             # the downstream was paused for our window
    cdef long long unacked              # DATA bytes taken but not acknowledged (paused)
    # an HTTP/1.1 upgrade sent as extended CONNECT (RFC 8441): its :protocol, and whether
    # the upstream took it (its 200, given to the router as the 101 it stands for; the
    # stream's DATA is then the tunnel's bytes both ways)
    cdef bytes upgrade
    cdef bint tunnel


cdef class H2Shadow(Mirror):
    cdef ConnPool pool
    cdef HeaderMap headers              # until the stream is given
    cdef bint end_headers, head_req, waiting
    cdef H2UpStream up
    cdef list queue                     # [(bytes, end) | HeaderList] until the stream is given
    cdef Py_ssize_t queued
    cdef Py_ssize_t limit
    cdef object timer
    cdef int _end(self, bint ok) except -1
