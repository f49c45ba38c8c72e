# The router filter's part of a stream (see http_stream.pxd for the layering).

from sofamesh._core.codecs.http1 cimport Head
from sofamesh._core.conn_pool cimport PoolConn
from sofamesh._core.http_stream cimport HttpStream
from sofamesh._core.router cimport Route
from sofamesh._core.upstream cimport Cluster, Host


cdef class RouterStream(HttpStream):
    cdef int _router(self) except -1
    cdef bytes _location(self)
    cdef int _render_upstream_head(self) except -1
    cdef int _start_shadows(self, Route route) except -1
    cdef Host _hash_pick(self, Cluster cl, Route route)
    cdef int _drop_shadows(self) except -1
    cdef bint _removed(self, Head h, int i)
    cdef int _send_up(self, bytes data) except -1
    cdef int _flush_up(self) except -1
    cdef int _assign(self, Host host) except -1
    cdef int _attach(self, PoolConn c) except -1
    cdef bint _can_retry(self, int bit)
    cdef int _schedule_retry(self) except -1
    cdef int _fail(self, int kind, PoolConn c) except -1
    cdef int _arm_timer(self) except -1
    cdef int _arm_at(self, double when) except -1
