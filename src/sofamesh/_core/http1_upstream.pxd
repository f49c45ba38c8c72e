# HTTP/1.1 upstream connection pool and connections (conn_pool.pxd interfaces), mirrors.

from sofamesh._core.codecs.http1 cimport Head, BodyReader
from sofamesh._core.conn_pool cimport PoolConn, UpstreamCallbacks, ConnPool
from sofamesh._core.upstream cimport Cluster, Host


cdef class Http1ConnPool(ConnPool):
    cdef object loop                # the worker's event loop


cdef class ShadowConn:
    cdef Cluster cluster
    cdef Host host
    cdef object loop, transport, task, timer
    cdef list queue
    cdef Py_ssize_t queued
    cdef Py_ssize_t limit
    cdef readonly bint closed
    cdef bint connected, head_req, in_rq, resp_done
    cdef Head rhead
    cdef BodyReader body
    cdef int rstate                 # 0: head, 1: body
    cdef bytes pending
    cdef double t0
    cdef int _end(self, bint ok) except -1
    cdef int send(self, bytes data) except -1
    cdef int reset(self) except -1


cdef class UpstreamConn(PoolConn):
    cdef object loop
    cdef Head head
    cdef BodyReader body
    cdef int state
    cdef bytes pending
    cdef int rq_count
    cdef bint head_req
    cdef bint upgrade
    cdef object task
    cdef void _gone(self)
    cdef int _feed(self, UpstreamCallbacks d, bytes data) except -1


cdef bytes shadow_head(bytes head, bytes local_ip, bint suffix)
