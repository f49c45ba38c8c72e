# The compiled http_connection_manager: settings, route table, filters and stats of one
# listener, shared by all its connections and streams. Immutable but for `routes` (and
# `clusters`), which a config change swaps whole; the next request sees the new one.

from sofamesh._core.conn_pool cimport ConnPool
from sofamesh._core.headers cimport HeaderMap
from sofamesh._core.router cimport RouteTable, rng_next
from sofamesh._core.stats cimport Counter, Gauge, Histogram, Store


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
    cdef public bytes server_name           # the server header's value (b"envoy")
    cdef public object access_log           # sofamesh.proxy.access_log.FileAccessLog | None
    cdef public object tracer               # sofamesh.proxy.tracing.Tracer | None
    cdef public long long trace_ppm         # new traces sampled per million; -1: no tracing
    cdef public bint trace_shared           # Zipkin shared_span_context
    cdef public bint trace_id128            # 128-bit trace ids
    cdef public int trace_kind              # TRACE_B3 / TRACE_W3C (_core/http_tracing.pxd)
    cdef public long long trace_client_ppm  # x-client-trace-id: traced per million
    # a caller's request id decides: traced when its bucket (first 8 hex digits % 10000)
    # is below random and overall sampling (per 10,000); a marked id: below overall
    cdef public long long trace_random_per10k
    cdef public long long trace_overall_per10k
    cdef public bint trace_spawn            # spawn_upstream_span: a CLIENT span upstream
    # http.<stat_prefix>.tracing.{random_sampling, client_enabled, not_traceable}: the
    # connection manager's decision per request (set with the tracer, else None)
    cdef public Counter trace_random
    cdef public Counter trace_client
    cdef public Counter trace_not
    cdef public double idle_timeout         # seconds without a request before closing; 0: off
    cdef public double request_timeout      # HCM request_timeout (s); 0: off
    cdef public double stream_idle_timeout  # HCM stream_idle_timeout (s); 0: off
    cdef public double request_headers_timeout  # HCM request_headers_timeout (s); 0: off
    cdef public double drain_timeout        # HCM drain_timeout (s): HTTP/2's two-step GOAWAY
    cdef public tuple reply_map             # local_reply_config: ((op, value, status, body), ...)
    cdef public int server_mode             # server_header_transformation enum value
    cdef public bint rid_in_response        # always_set_request_id_in_response
    cdef public bytes via                   # the via header's value, or None
    cdef public bint skip_xff_append
    # forward_client_cert_details (XFCC_*: Envoy's enum values) and, for APPEND_FORWARD and
    # SANITIZE_SET, (transport) -> str | None: the client certificate's details as
    # set_current_client_cert_details asks (None: not mutual TLS; proxy/xfcc.py)
    cdef public int xfcc
    cdef public object xfcc_details
    cdef public bytes local_ip              # appended to x-forwarded-for for loopback peers
    cdef public bint preserve_external_request_id
    cdef public bint normalize_path
    cdef public bint merge_slashes
    cdef public bint strip_any_host_port
    cdef public bint draining
    cdef public object hand_over          # hot restart: callable(conn) once a conn is idle
    # overload manager (proxy/overload.py): the action's value in [0, 1], each request
    # drawn against it as Envoy's bernoulli (0: off, 1: every request)
    cdef public double overload_reject      # stop_accepting_requests
    cdef public double overload_no_keepalive  # disable_http_keepalive
    cdef public bint enable_trailers     # http_protocol_options.enable_trailers
    cdef ConnPool pool                  # HTTP/1 upstream pool
    cdef ConnPool pool2                 # HTTP/2 upstream pool (clusters with Cluster.h2)
    cdef public int codec_type              # HCM codec_type: 0 AUTO, 1 HTTP1, 2 HTTP2
    cdef public dict h2_options             # codecs.http2.Connection keyword arguments
    cdef public dict h2_stats               # dict[str, Counter]: http2.* codec counters
    cdef public set conns                   # set[DownstreamConn] alive
    cdef public object listener_name
    # proxy.filter_state.ConnState: what the chain's network filters before the HCM set on
    # each connection (set_filter_state, istio_authn), read by RBAC filter_state rules
    cdef public object conn_state
    # HCM tracing configured: the route decorator's propagation (http_tracing.decorate):
    # 0 none, 1 ingress (the response carries it), 2 egress (OUTBOUND: the request does)
    cdef public int decorate
    cdef Counter rq_total
    cdef Counter rq_http1_total
    cdef Counter rq_http2_total
    cdef Counter cx_http2_total
    cdef Gauge cx_http2_active
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
    cdef Counter rq_max_duration_reached
    cdef Counter rq_response_before_rq_complete
    cdef Counter no_route
    cdef Counter router_rq_total         # the router's rq_total: requests it decoded
    cdef Counter no_cluster
    cdef Counter rq_direct_response
    cdef Counter rq_redirect
    cdef Counter rq_header_overflow
    cdef Counter rq_overload_close
    cdef Counter cx_overload_disable_keepalive
    cdef Counter rq_header_timeout
    cdef Gauge cx_active
    cdef Gauge cx_http1_active
    cdef Gauge rq_active
    cdef Gauge cx_upgrades_active
    cdef Histogram rq_time
    cdef Counter listener_cx_total
    cdef Gauge listener_cx_active
    cdef Counter listener_cx_destroy
    # b"https" for an HCM on a TLS filter chain (proxy/listener_chains.py): the scheme
    # x-forwarded-proto carries, as Envoy's (None: b"http")
    cdef public bytes scheme


cdef inline bint replaces_request_id(HcmConfig cfg) noexcept:
    """An edge proxy gives every request a new x-request-id, whatever the caller sent
    (Envoy's use_remote_address with generate_request_id, unless
    preserve_external_request_id)."""
    return cfg.use_remote_address and cfg.generate_request_id and \
        not cfg.preserve_external_request_id


# forward_client_cert_details on a request's headers, before the filters (Envoy's
# mutateXfccRequestHeader); `transport` is the downstream connection's
cdef int mutate_xfcc(HcmConfig cfg, HeaderMap head, object transport) except -1


cdef inline bint overload_hit(double p) noexcept:
    """Envoy's `random.bernoulli(p)` for an overload action's value `p` in [0, 1]."""
    if p <= 0.0:
        return False
    if p >= 1.0:
        return True
    return <double>(rng_next() >> 11) * (1.0 / 9007199254740992.0) < p
