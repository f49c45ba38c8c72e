# The HTTP stream: one request/response exchange as filters and the router see it, and the
# HttpFilter interface.
#
# Contract: filters get an HttpStream (`s`) and use only its stream API (method, path,
# authority, get_request_header, add_request_header, send_local_reply, ...; Cython code may
# read `s.route`, `s.cluster`, `s.filter_state`). Request headers are read through the
# `headers.HeaderMap` interface. Layers by inheritance, each its own module: HttpStream
# (this: state + filter API) <- http_router.RouterStream (cluster, host, retries, mirrors,
# upstream pool callbacks) <- a codec's connection (http_proxy.DownstreamConn for HTTP/1.1,
# one stream at a time per connection), which implements the abstract methods below.

from sofamesh._core.buffer cimport WriteBuf
from sofamesh._core.codecs.http1 cimport Head
from sofamesh._core.codecs.http1_body cimport BodyReader
from sofamesh._core.conn_pool cimport PoolConn, UpstreamCallbacks
from sofamesh._core.hcm_config cimport HcmConfig
from sofamesh._core.headers cimport HeaderMap, HeaderList
from sofamesh._core.router cimport Route
from sofamesh._core.upstream cimport Cluster, Host

cdef enum:
    FILTER_CONTINUE = 0
    FILTER_STOP = 1


cdef class HttpStream(UpstreamCallbacks)


cdef class StreamLog:
    """An access logger the connection manager calls in C (no Python method call):
    als_wire.HttpLogBuffer. Other loggers are called by their Python `log(stream, ms)`."""
    cdef int log_stream(self, HttpStream s, double duration_ms) except -1


cdef class TraceCtx:
    """A traced request's span context (HCM tracing; proxy/tracing.py reports it).
    trace_id None: an unreadable incoming context (Envoy's null span: nothing reported or
    injected, the request id still marked)."""
    cdef public bytes trace_id
    cdef public bytes span_id
    cdef public bytes parent_id         # None: a root span
    cdef public bint sampled            # the span is reported (x-b3-sampled, else decision)
    cdef public bint decision           # the connection manager sampled it (request id mark)
    cdef public bint shared             # Zipkin shared span context
    cdef public bint client             # x-client-trace-id forced it (request id mark b)
    cdef public long long start_us
    cdef public bytes grpc_status
    cdef public bytes grpc_message
    cdef public bytes tracestate        # W3C tracestate carried on, or None
    cdef public bytes child_id          # spawn_upstream_span: the upstream span's id, or None
    cdef public long long child_us      # when the upstream span started
    cdef public object up_host          # upstream.Host the request went to, or None
    cdef public int attempt             # spawn_upstream_span: retries before this upstream span
    cdef public str up_reason           # why the current attempt failed (Envoy's reset reason)
    # B3 (_core/http_tracing): the trace headers the request had when the trace started
    # (bits T_*), and how many entries its header map (at address hmap) had then: the
    # upstream request's injection scans only the entries added since
    cdef int seen
    cdef int hcount
    cdef size_t hmap
    # 1 + the entry count when the router began its own changes (none is a trace header),
    # so the injection scans only what filters added; 0: unknown, scan to the end
    cdef int hend


cdef class HttpFilter:
    """Base of HTTP filters. Shared by every stream of a listener: per-stream state goes
    on the stream (`s.filter_state`)."""
    cdef readonly str name
    cdef public bint wants_data         # decode_data/encode_data are called
    cdef public bint wants_encode       # encode_headers is called
    cpdef int decode_headers(self, HttpStream s, bint end_stream) except -1
    cpdef int decode_data(self, HttpStream s, bytes data, bint end_stream) except -1
    cpdef int encode_headers(self, HttpStream s, int status, bint end_stream) except -1
    cpdef int encode_data(self, HttpStream s, bytes data, bint end_stream) except -1
    # the response ends with trailers (a HeaderList); called for filters with wants_encode
    cpdef int encode_trailers(self, HttpStream s, object trailers) except -1


cdef class HttpStream(UpstreamCallbacks):
    cdef HcmConfig cfg
    cdef object transport
    cdef public bytes remote_ip
    cdef bytes xff_ip                   # what use_remote_address appends to x-forwarded-for
    cdef int remote_port
    cdef int state
    cdef bytes pending
    cdef HeaderMap head                 # the request headers (HTTP/1: a codecs.http1.Head)
    cdef public int http_version        # 10, 11 or 20: the downstream protocol
    cdef public bint grpc               # content-type application/grpc*: a gRPC request
    cdef double dur_due                 # mono() deadline: the stream's max duration; 0: none
    cdef BodyReader body
    cdef WriteBuf wb
    cdef public Route route
    cdef public Cluster cluster
    cdef Host host
    cdef PoolConn up                    # the upstream stream serving this request
    cdef list up_queue                  # list[bytes]: decoded request body not yet upstream
    cdef Py_ssize_t up_queued
    cdef bint up_end                    # the request's end (last data or trailers) was seen
    cdef HeaderList req_trailers        # request trailers to forward, or None
    cdef list retry_body                # list[bytes] | None: decoded request body for retries
    cdef list shadows                   # list[http1_upstream.ShadowConn] | None: mirrors
    cdef Py_ssize_t retry_bytes
    cdef bint retry_ok
    cdef int attempts
    cdef object retry_timer
    cdef double t_start
    cdef double t_upstream
    cdef double t_sent                  # the request's end went upstream (service time from it)
    cdef double deadline
    cdef double rq_timeout              # the router's timeout of this request (s; 0: none)
    cdef list tried_hosts               # list[Host]: tried so far (previous_hosts), or None
    cdef double timer_at                # when the armed timer fires (mono clock)
    cdef double try_deadline            # this attempt's per_try_timeout deadline; 0: none
    cdef object timer
    cdef object stream_timer            # request_timeout / stream_idle_timeout, when configured
    cdef double rq_due                  # mono() deadline for the whole request; 0: none
    cdef double idle_due                # mono() deadline for the next stream activity; 0: none
    cdef bint idle_draining             # HTTP/1: the idle timeout started Envoy's drain
    cdef bint got_data                  # HTTP/1: a byte came (Envoy: the codec exists)
    cdef bint timer_armed
    cdef bint close_after
    cdef bint req_done
    cdef bint resp_started
    cdef bint resp_chunk_encode
    cdef bint in_request
    cdef bint upgrade
    # a CONNECT terminated here (the route's connect_config): a raw TCP upstream
    # (tcp_upstream); set on CONNECT only, which is a connection's last request
    cdef bint connect
    cdef bint ds_eof                    # CONNECT tunnel: the client half-closed
    cdef bint head_req                  # a HEAD request: the response has no body
    cdef int resp_framing               # the downstream codec's framing of the response body
    cdef bint stopped
    cdef int fidx
    cdef int pause_mask
    cdef public int resp_status
    cdef public str resp_flags
    cdef public object filter_state     # dict | None, per-stream filter state
    cdef list resp_add_extra            # list[bytes] | None: name, value, ... added by filters
    cdef public bytes request_id
    cdef public unsigned long long bytes_rx
    cdef public unsigned long long bytes_tx
    cdef public str upstream_host
    cdef public int service_ms
    cdef bytes out_head                 # response head not yet written (joins the body)
    cdef list trailers_raw              # list[bytes] | None: request trailer block being read
    cdef HeaderMap resp_head            # the proxied response's headers (encode filters read it)
    cdef bytes enc_swap                 # set by s.replace_data(): the body bytes passed on instead
    cdef public TraceCtx trace          # this request's span context, or None (not traced)
    cdef TraceCtx trace_spare           # B3: the last request's, reused (http_tracing)

    cdef int _end_request_stats(self, int status) except -1

    # implemented by the codec's connection
    cdef int _decode_continue(self) except -1
    # extra: (name, value, ...) response headers, or None
    cdef int _local_reply(self, int code, bytes body, tuple extra, bint close) except -1
    cdef int _overloaded(self) except -1
    cdef int _flush_out(self) except -1


# header values with %OPERATORS%, evaluated for this stream, added to h (route header add)
cdef int add_formatted(HttpStream s, tuple dyn, HeaderMap h) except -1
