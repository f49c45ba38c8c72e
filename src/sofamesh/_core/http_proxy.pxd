# HTTP/1.1 proxying: downstream and upstream connections as uvloop protocols.
#
# Contract: one DownstreamConn per client connection; it is also the "stream" handed to
# HTTP filters (HTTP/1.1 has one active request per connection). An HcmConfig is the
# immutable compiled http_connection_manager; swapping `HcmConfig.routes` or the whole
# config affects the next request. Filters subclass HttpFilter and return FILTER_CONTINUE
# or FILTER_STOP from decode_headers/encode_headers; the router is built in and always last.
# Per-request work allocates the request and response head bytes and nothing else on the
# keep-alive GET path.

from sofamesh._core.buffer cimport WriteBuf
from sofamesh._core.codecs.http1 cimport Head, BodyReader
from sofamesh._core.router cimport Route, RouteTable
from sofamesh._core.stats cimport Counter, Gauge, Histogram, Store
from sofamesh._core.upstream cimport Cluster, Host

cdef enum:
    FILTER_CONTINUE = 0
    FILTER_STOP = 1

cdef class DownstreamConn
cdef class UpstreamConn


cdef class HttpFilter:
    """Base of HTTP filters. Shared by every stream of a listener: per-stream state goes
    on the stream (`s.filter_state`)."""
    cdef readonly str name
    cdef public bint wants_data         # decode_data/encode_data are called
    cdef public bint wants_encode       # encode_headers is called
    cpdef int decode_headers(self, DownstreamConn s, bint end_stream) except -1
    cpdef int decode_data(self, DownstreamConn s, bytes data, bint end_stream) except -1
    cpdef int encode_headers(self, DownstreamConn s, int status, bint end_stream) except -1
    cpdef int encode_data(self, DownstreamConn s, bytes data, bint end_stream) except -1


cdef class HcmConfig:
    cdef public object loop
    cdef public str stat_prefix
    cdef public RouteTable routes
    cdef public dict clusters               # dict[str, Cluster]
    cdef public tuple filters               # tuple[HttpFilter, ...] (router excluded)
    cdef public bint any_encode
    cdef public bint any_data
    cdef public bint use_remote_address
    cdef public bint generate_request_id
    cdef public bint accept_http_10
    cdef public int max_head_bytes
    cdef public int max_headers
    cdef public int buffer_limit
    cdef public frozenset upgrades          # frozenset[bytes] enabled on every route
    cdef public bytes server_line           # b"server: envoy\r\n"
    cdef public object access_log           # sofamesh.proxy.access_log.FileAccessLog | None
    cdef public double idle_timeout         # seconds without a request before closing; 0: off
    cdef public double request_timeout      # HCM request_timeout (s); 0: off
    cdef public double stream_idle_timeout  # HCM stream_idle_timeout (s); 0: off
    cdef public tuple reply_map             # local_reply_config: ((op, value, status, body), ...)
    cdef public int server_mode             # server_header_transformation enum value
    cdef public bint rid_in_response        # always_set_request_id_in_response
    cdef public bytes via_line              # b"via: <via>\r\n" or b""
    cdef public bint skip_xff_append
    cdef public bytes local_ip              # appended to x-forwarded-for for loopback peers
    cdef public bint preserve_external_request_id
    cdef public bint normalize_path
    cdef public bint merge_slashes
    cdef public bint strip_any_host_port
    cdef public bint draining
    cdef public set conns                   # set[DownstreamConn] alive
    cdef public object listener_name
    cdef Counter rq_total
    cdef Counter rq_http1_total
    cdef Counter rq_1xx
    cdef Counter rq_2xx
    cdef Counter rq_3xx
    cdef Counter rq_4xx
    cdef Counter rq_5xx
    cdef Counter rq_completed
    cdef Counter rq_rx_reset
    cdef Counter rq_tx_reset
    cdef Counter rq_timeout
    cdef Counter rq_ws_on_non_ws_route
    cdef Counter cx_total
    cdef Counter cx_http1_total
    cdef Counter cx_destroy
    cdef Counter cx_destroy_remote
    cdef Counter cx_destroy_local
    cdef Counter cx_protocol_error
    cdef Counter cx_rx_bytes_total
    cdef Counter cx_tx_bytes_total
    cdef Counter cx_upgrades_total
    cdef Counter cx_drain_close
    cdef Counter cx_idle_timeout
    cdef Counter rq_idle_timeout
    cdef Counter rq_response_before_rq_complete
    cdef Counter no_route
    cdef Counter no_cluster
    cdef Counter rq_direct_response
    cdef Counter rq_redirect
    cdef Counter rq_header_overflow
    cdef Counter rq_overload_close
    cdef Gauge cx_active
    cdef Gauge cx_http1_active
    cdef Gauge rq_active
    cdef Gauge cx_upgrades_active
    cdef Histogram rq_time
    cdef Counter listener_cx_total
    cdef Gauge listener_cx_active


cdef class DownstreamConn:
    cdef HcmConfig cfg
    cdef object transport
    cdef public bytes remote_ip
    cdef bytes xff_ip                   # what use_remote_address appends to x-forwarded-for
    cdef int remote_port
    cdef int state
    cdef bytes pending
    cdef Head head
    cdef BodyReader body
    cdef WriteBuf wb
    cdef public Route route
    cdef public Cluster cluster
    cdef Host host
    cdef UpstreamConn up
    cdef bytes up_head                  # rendered request head for the upstream
    cdef list up_queue                  # list[bytes] waiting for the upstream connection
    cdef Py_ssize_t up_queued
    cdef list retry_body                # list[bytes] | None: request body kept for retries
    cdef list shadows                   # list[ShadowConn] | None: mirrors still taking the body
    cdef Py_ssize_t retry_bytes
    cdef bint retry_ok
    cdef int attempts
    cdef object retry_timer
    cdef double t_start
    cdef double t_upstream
    cdef double deadline
    cdef double timer_at                # when the armed timer fires (mono clock)
    cdef double try_deadline            # this attempt's per_try_timeout deadline; 0: none
    cdef object timer
    cdef object stream_timer            # request_timeout / stream_idle_timeout, when configured
    cdef double rq_due                  # mono() deadline for the whole request; 0: none
    cdef double idle_due                # mono() deadline for the next stream activity; 0: none
    cdef bint timer_armed
    cdef bint close_after
    cdef bint req_done
    cdef bint resp_started
    cdef bint resp_chunk_encode
    cdef bint in_request
    cdef bint more_data                 # bytes of a pipelined request follow this head
    cdef bint drop_pipelined            # closing after a local reply drops what follows
    cdef bint upgrade
    cdef bint stopped
    cdef int fidx
    cdef int pause_mask
    cdef public int resp_status
    cdef public str resp_flags
    cdef public object filter_state     # dict | None, per-stream filter state
    cdef list req_add_extra             # list[bytes] rendered lines from filters
    cdef list resp_add_extra
    cdef set req_remove_extra
    cdef public bytes request_id
    cdef public double wall_start
    cdef public unsigned long long bytes_rx
    cdef public unsigned long long bytes_tx
    cdef public str upstream_host
    cdef public int service_ms
    cdef bytes out_head                 # response head not yet written (joins the body)

    cdef int _process(self, bytes data, Py_ssize_t off) except -1
    cdef int _on_head(self) except -1
    cdef int _decode_continue(self) except -1
    cdef int _router(self) except -1
    cdef int _render_upstream_head(self) except -1
    cdef int _send_up(self, bytes data) except -1
    cdef int _assign(self, Host host) except -1
    cdef int _attach(self, UpstreamConn c) except -1
    cdef int _fail(self, int kind, UpstreamConn c) except -1
    cdef bint _on_upstream_head(self, UpstreamConn c, Head rh, int framing) except -1
    cdef int _on_upstream_body(self, bytes data) except -1
    cdef int _on_upstream_complete(self, UpstreamConn c) except -1
    cdef int _finish(self) except -1
    cdef int _local_reply(self, int code, bytes body, bytes extra, bint close) except -1
    cdef int _error_reply(self, int err) except -1
    cdef int _pause(self, int reason) except -1
    cdef int _resume(self, int reason) except -1
    cdef int _arm_timer(self) except -1
    cdef int _arm_idle(self) except -1
    cdef int _arm_at(self, double when) except -1
    cdef int _request_complete(self) except -1
    cdef int _data_filters(self, BodyReader body, bint encode) except -1
    cdef bytes _location(self)
    cdef bint _removed(self, Head h, int i)
    cdef int _start_shadows(self, Route route) except -1
    cdef int _drop_shadows(self) except -1
    cdef Host _hash_pick(self, Cluster cl, Route route)
    cdef int _arm_stream_timer(self) except -1
    cdef int _flush_up(self) except -1
    cdef bint _can_retry(self, int bit)
    cdef int _schedule_retry(self) except -1
    cdef int _write(self, bytes data) except -1
    cdef int _flush_out(self) except -1
    cdef int _end_request_stats(self, int status) except -1
    cdef int _reset(self) except -1


cdef class UpstreamConn:
    cdef object loop
    cdef object transport
    cdef Cluster cluster
    cdef Host host
    cdef DownstreamConn ds
    cdef Head head
    cdef BodyReader body
    cdef int state
    cdef bytes pending
    cdef bint reusable
    cdef bint connected
    cdef bint closed
    cdef int rq_count
    cdef bint head_req
    cdef bint upgrade
    cdef object task

    cdef int start(self, DownstreamConn ds, bint head_req, bint upgrade) except -1
    cdef int release(self) except -1
    cdef int abort(self) except -1
    cdef void _gone(self)
    cdef int _feed(self, DownstreamConn d, bytes data) except -1
