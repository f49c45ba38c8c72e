# HTTP/1.1 upstream connection pool and connections (conn_pool.pxd interfaces), mirrors.

from sofamesh._core.buffer cimport WriteBuf
from sofamesh._core.codecs.http1 cimport Head
from sofamesh._core.codecs.http1_body cimport BodyReader
from sofamesh._core.conn_pool cimport PoolConn, UpstreamCallbacks, ConnPool, Mirror
from sofamesh._core.headers cimport HeaderMap, HeaderList
from sofamesh._core.upstream cimport Cluster, Host


cdef class Http1ConnPool(ConnPool):
    cdef object loop                # the worker's event loop


# a mirror's request headers (Envoy's async client: x-envoy-internal, this node appended
# to x-forwarded-for, the authority suffixed -shadow unless `suffix` is off)
cdef HeaderList mirror_headers(HeaderMap h, bytes local_ip, bint suffix)


cdef class ShadowConn(Mirror):
    cdef object loop, transport, task, timer
    cdef list queue
    cdef Py_ssize_t queued
    cdef Py_ssize_t limit
    cdef bint connected, head_req, resp_done, chunked
    cdef Head rhead
    cdef BodyReader body
    cdef int rstate                 # 0: head, 1: body
    cdef bytes pending
    cdef int _end(self, bint ok) except -1
    cdef int _send(self, bytes data) except -1
    cdef int send_data(self, bytes data, bint end_stream) except -1
    cdef int send_trailers(self, HeaderList trailers) except -1
    cdef int reset(self) except -1


cdef class UpstreamConn(PoolConn):
    cdef object loop
    cdef Head head
    cdef BodyReader body
    cdef WriteBuf wb
    cdef int state
    cdef bytes pending
    cdef int rq_count
    cdef bint head_req
    cdef bint upgrade
    cdef bint chunked               # the request body is chunk-encoded
    cdef list out                   # list[bytes] | None: encoded before the connection is up
    cdef Py_ssize_t out_len
    cdef list trailer_raw           # list[bytes] | None: the response's trailer section
    cdef object task
    cdef double idle_since          # when it went idle (as the sweep knows it)
    cdef int seen_rq                # rq_count at the sweep's last look
    cdef bint swept                 # listed by the cluster's IdleSweep
    cdef object max_timer           # asyncio.TimerHandle | None: max_connection_duration
    cdef void _gone(self)
    cdef int _send(self, bytes data) except -1
    cdef int _feed(self, UpstreamCallbacks d, bytes data) except -1
    cdef int _body(self, UpstreamCallbacks d, bytes data, Py_ssize_t off, Py_ssize_t k) except -1
