# The router filter's part of a stream (see http_stream.pxd for the layering).
#
# Contract: the router sees the stream's request as a HeaderMap and decoded body pieces;
# `_mutate_request` applies Envoy's upstream header mutations to the map once, and every
# upstream stream (a try, a retry, a mirror) encodes the map in its own codec
# (PoolConn.encode_headers / encode_data / encode_trailers), replaying the buffered body.

from sofamesh._core.conn_pool cimport PoolConn
from sofamesh._core.headers cimport HeaderMap, HeaderList
from sofamesh._core.http_stream cimport HttpStream
from sofamesh._core.router cimport Route
from sofamesh._core.upstream cimport Cluster, Host


cdef class RouterStream(HttpStream):
    cdef int _router(self) except -1
    cdef int _arm_stream_timer(self) except -1  # request_timeout / stream_idle_timeout
    cdef int _decode_continue(self) except -1     # the filter chain from fidx, then _router
    cdef int _hcm_response(self, HeaderMap rh, int status, bint end_stream) except -1
    cdef int _encode_trailers(self, HeaderList trailers) except -1
    cdef bytes _encode_filters_data(self, bytes data, bint end_stream)
    cdef tuple _map_reply(self, int code, bytes body)     # local_reply_config
    cdef int _drop_upstream(self) except -1
    cdef int _trace_grpc(self, HeaderMap m) except -1
    cdef int _inject_trace(self, HeaderMap h) except -1
    cdef bytes _location(self)
    cdef int _mutate_request(self, HeaderMap h) except -1
    cdef bint _router_response(self, PoolConn c, HeaderMap rh) except -1
    cdef int _start_shadows(self, Route route) except -1
    cdef Host _hash_pick(self, Cluster cl, Route route)
    cdef int _drop_shadows(self) except -1
    cdef int _send_data(self, bytes data, bint end_stream) except -1
    cdef int _send_trailers(self, HeaderList trailers) except -1
    cdef int _replay(self, PoolConn c) except -1
    cdef int _assign(self, Host host) except -1
    cdef bint _h2(self, Cluster cl)
    cdef int _attach(self, PoolConn c) except -1
    cdef bint _can_retry(self, int bit)
    cdef int _schedule_retry(self) except -1
    cdef int _fail(self, int kind, PoolConn c) except -1
    cdef int _arm_timer(self) except -1
    cdef int _arm_at(self, double when) except -1
