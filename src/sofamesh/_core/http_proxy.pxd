# HTTP/1.1 downstream connections: the HTTP/1 server codec's connection and the connection
# manager's per-stream flow (filters, local replies, timers, stats, access log).
#
# Contract: one DownstreamConn per client connection, made by `HcmConfig.protocol_factory`
# (registered as codec "http1"); HTTP/1.1 has one active stream per connection, so the
# connection is also that stream (it extends http_router.RouterStream <- HttpStream, see
# http_stream.pxd). Filters get it typed as HttpStream and use only the stream API.
# Per-request work allocates the request and response head bytes and nothing else on the
# keep-alive GET path.

from sofamesh._core.codecs.http1 cimport Head
from sofamesh._core.conn_pool cimport PoolConn
from sofamesh._core.hcm_config cimport HcmConfig
from sofamesh._core.headers cimport HeaderMap, HeaderList
from sofamesh._core.http_router cimport RouterStream
from sofamesh._core.http_stream cimport HttpFilter, HttpStream, FILTER_CONTINUE, FILTER_STOP


cdef class DownstreamConn(RouterStream):
    cdef Head h1                        # the request head (self.head, typed as HTTP/1's)
    # Envoy's HTTP/1 pipelining flood check (see _flood): responses Envoy would still count
    # as queued. resp_pending: written in this run of the event loop (a read, or the parse
    # resumed after a response); resp_held: a response whose end Envoy's codec flushed with
    # no bytes (a content-length body), its marker kept until the next response's head.
    cdef int resp_pending
    cdef int resp_held
    cdef bint dispatching               # parsing requests (not an upstream or timer callback)
    cdef bint sniff                     # AUTO codec: no byte read yet (HTTP/2 preface?)
    cdef bint h1_counted                # counted as an HTTP/1 connection
    cdef object hdr_timer               # HCM request_headers_timeout, armed by a partial head
    cdef object t_write                 # transport.write while connected (no lookup a request)
    # a proxied response held whole until it ends (hold_response(): the gRPC HTTP/1.1
    # bridge), then sent after the encode filters saw all of it (status, headers changed)
    cdef HeaderMap held_head            # its head, None until the upstream's arrives
    cdef list held_body                 # list[bytes]; None: not holding
    cdef Py_ssize_t held_size           # bytes in held_body (at most HOLD_LIMIT)
    cdef bint held_announce
    cdef int _release_held(self) except -1
    cdef int _count_http1(self) except -1
    cdef int _process(self, bytes data, Py_ssize_t off) except -1
    cdef int _on_head(self) except -1
    cdef int _on_connect_head(self) except -1
    cdef int _request_complete(self) except -1
    cdef int _request_body(self, bytes data, Py_ssize_t off, Py_ssize_t k) except -1
    cdef int _decode_data(self, bytes data, bint end_stream) except -1
    cdef int _tunnel_up(self, bytes data) except -1
    cdef int _encode_headers(self, HeaderMap h, bint end_stream, bint announce_close) except -1
    cdef int _encode_data(self, bytes data, bint end_stream) except -1
    cdef int _finish(self, bint held) except -1
    cdef int _error_reply(self, int err) except -1
    cdef int _flood(self) except -1
    cdef int _arm_idle(self) except -1
    # HttpStream / UpstreamCallbacks
    cdef int _local_reply(self, int code, bytes body, tuple extra, bint close) except -1
    cdef int _flush_out(self) except -1
    cdef bint _wants_connection(self)
    cdef int _upstream_read(self) except -1
    cdef int _after_upstream_read(self) except -1
    cdef bint _on_upstream_head(self, PoolConn c, HeaderMap rh, bint end_stream) except -1
    cdef int _on_upstream_data(self, bytes data, bint end_stream) except -1
    cdef int _on_upstream_trailers(self, HeaderList trailers) except -1
    cdef int _on_upstream_complete(self, PoolConn c) except -1
    cdef int _reset(self) except -1
    cdef int _write(self, bytes data) except -1
    cdef int _tunnel_closed(self) except -1
    cdef int _delayed_close(self) except -1
    cdef int _pause(self, int reason) except -1
    cdef int _resume(self, int reason) except -1
